"""Training checkpoints in a run folder, written atomically.

    RUN/run.json                      what the run was started with (config, data, model)
    RUN/checkpoints/step-00000500/    a plaudit model folder (save_model) + trainer_state.pt
    RUN/best/                         the same, for the lowest validation loss so far

A checkpoint is written into a hidden temporary folder, every file fsynced, then renamed into
place (and the parent folder fsynced), so a crash or `kill -9` leaves either the old set of
checkpoints or the new one, never a half-written folder. The trainer state is a plain dict
(optimizer, step, data position, RNG states, best validation loss, config).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._errors import CheckpointError

if TYPE_CHECKING:
    from ._model import Transformer
    from ._tokenizer import Tokenizer

TRAINER_STATE = "trainer_state.pt"
MODEL_MARKER = "plaudit_model.json"  # written by save_model
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` into a temporary sibling folder, fsync it, then swap it in as `final`
    (an existing `final` is replaced; between the two renames it survives as `.old-NAME`)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}"
    old = final.parent / f".old-{final.name}"
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir()
    write(tmp)
    _fsync_tree(tmp)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)
    return final


def _write_model_and_state(
    folder: Path,
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    state: dict[str, Any] | None,
    weights: dict[str, Tensor] | None = None,
) -> None:
    from ._load import save_model

    save_model(folder, model=model, tokenizer=tokenizer, weights=weights)
    if state is not None:
        torch.save(state, folder / TRAINER_STATE)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: Path,
    *,
    step: int,
    model: Transformer,
    tokenizer: Tokenizer,
    state: dict[str, Any],
    keep: int,
    weights: dict[str, Tensor] | None = None,
) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep`. `weights`
    replaces the model's own state_dict() (the whole weights gathered from FSDP shards)."""
    if keep < 1:
        raise CheckpointError(f"--keep must be at least 1, got {keep}.")
    final = run_dir / "checkpoints" / f"step-{step:08d}"
    write_atomic_dir(
        final,
        lambda tmp: _write_model_and_state(
            tmp, model=model, tokenizer=tokenizer, state=state, weights=weights
        ),
    )
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def save_best(
    run_dir: Path,
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    state: dict[str, Any],
    weights: dict[str, Tensor] | None = None,
) -> Path:
    """Replace RUN/best atomically (model folder + the trainer state of that step)."""
    return write_atomic_dir(
        run_dir / "best",
        lambda tmp: _write_model_and_state(
            tmp, model=model, tokenizer=tokenizer, state=state, weights=weights
        ),
    )


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / TRAINER_STATE
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} has no {TRAINER_STATE}, so training cannot resume from it; it is a "
            f"model folder, not a training checkpoint (fine-tune from it with --model instead)."
        )
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on a damaged pickle/zip
        raise CheckpointError(
            f"{path} cannot be read ({type(e).__name__}: {e}); delete {checkpoint} to resume from "
            f"the checkpoint before it."
        ) from e
    return state


def resolve_model_dir(path: str | Path) -> Path | None:
    """The model folder a path means: a model folder itself, or a run folder (its best/, else
    its newest checkpoint). None when the path is neither (e.g. a preset or "smollm2")."""
    p = Path(path)
    if (p / MODEL_MARKER).is_file():
        return p
    if (p / "best" / MODEL_MARKER).is_file():
        return p / "best"
    newest = latest_checkpoint(p)
    return newest if newest is not None else None
