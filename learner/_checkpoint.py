"""Training checkpoints in a run folder, written atomically.

    RUN/run.json                      what the run was started with (config, data, model)
    RUN/checkpoints/step-00000500/    a plaudit model folder (save_model) + trainer_state.pt
    RUN/best/                         the same, for the lowest validation loss so far

A checkpoint is written with `plaudit.state.atomic_folder` (a hidden temporary folder, every
file fsynced, then renamed into place), so a crash or `kill -9` leaves either the old set of
checkpoints or the new one, never a half-written folder; its `checksums.json` (written last)
lets a load tell a checkpoint damaged later from an intact one. The trainer state is a plain dict
(optimizer, step, data position, RNG states, best validation loss, config).

`drop_file` takes one file out of a model folder crash-safely, its checksums kept consistent
(the daemon strips its older checkpoints to weights only with it).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from plaudit.state import atomic_write_text, fsync_dir

from ._errors import CheckpointError, DamagedModelError
from ._load import (
    CHECKSUMS_FILE,
    FOLDER_MANIFEST,
    model_folder_writer,
    verify_model_folder,
    write_model_folder,
)
from ._model import Transformer
from ._tokenizer import Tokenizer

TRAINER_STATE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _save_model_and_state(
    folder: Path,
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    state: dict[str, Any],
    weights: dict[str, Tensor] | None,
) -> Path:
    """A model folder plus the trainer state, written atomically as one (replacing `folder`)."""
    with model_folder_writer(folder) as tmp:
        write_model_folder(tmp, model=model, tokenizer=tokenizer, weights=weights)
        torch.save(state, tmp / TRAINER_STATE)
    return folder


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
    final = _save_model_and_state(
        run_dir / "checkpoints" / f"step-{step:08d}",
        model=model,
        tokenizer=tokenizer,
        state=state,
        weights=weights,
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
    return _save_model_and_state(
        run_dir / "best", model=model, tokenizer=tokenizer, state=state, weights=weights
    )


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / TRAINER_STATE
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} has no {TRAINER_STATE}, so training cannot resume from it; it is a "
            f"model folder, not a training checkpoint (fine-tune from it with --model instead)."
        )
    try:
        verify_model_folder(checkpoint)
    except DamagedModelError as e:
        raise CheckpointError(
            f"{e} To resume from the checkpoint before it, delete {checkpoint}."
        ) from e
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
    if (p / FOLDER_MANIFEST).is_file():
        return p
    if (p / "best" / FOLDER_MANIFEST).is_file():
        return p / "best"
    newest = latest_checkpoint(p)
    return newest if newest is not None else None


def listed_files(folder: Path) -> set[str] | None:
    """The files the model folder's checksums.json lists (None: it has none, a folder saved
    before checksums). A damaged listing raises `DamagedModelError`."""
    listing = folder / CHECKSUMS_FILE
    if not listing.is_file():
        return None
    return set(_read_listing(listing)["files"])


def drop_file(folder: Path, name: str) -> int:
    """Delete the file ``name`` of the model folder ``folder`` and its entry in checksums.json;
    return the bytes freed (0: there was no such file).

    Crash-safe by its order: checksums.json without the entry is written first (atomically),
    then the file is unlinked. A crash between the two leaves the folder intact with the file
    unlisted, which loads ignore (`listed_files`) and the next drop removes. The other entries
    are kept as they were, so nothing is hashed again."""
    file = folder / name
    if not file.is_file():
        return 0
    size = file.stat().st_size
    listing = folder / CHECKSUMS_FILE
    if listing.is_file():
        data = _read_listing(listing)
        if data["files"].pop(name, None) is not None:
            atomic_write_text(listing, json.dumps(data, indent=2) + "\n")
    file.unlink()
    fsync_dir(folder)
    return size


def _read_listing(listing: Path) -> dict[str, Any]:
    try:
        data = json.loads(listing.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("no 'files' table")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DamagedModelError(
            f"{listing} is damaged ({type(e).__name__}: {e}), so the folder cannot be checked; "
            f"restore the folder from a backup, or use an older checkpoint.",
            path=str(listing),
        ) from e
    return data
