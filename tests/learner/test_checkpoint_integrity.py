"""Damaged model folders: a checksum per file written at save and checked at load, a separate
check for non-finite weights, one clear line from `plaudit generate`, and a policy that
restores only an intact checkpoint (the damage is done with real file writes)."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from plaudit.daemon import _cli_learner
from plaudit.learner import (
    ModelConfig,
    ModelLoadError,
    Policy,
    Tokenizer,
    Transformer,
    load_model,
    save_model,
)

WEIGHTS = "model.safetensors"
CHECKSUMS = "checksums.json"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(
        ["the cat sat on the mat", "a dog ran in the park"] * 20, vocab_size=290
    )


def tiny(tokenizer: Tokenizer, *, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, max_seq_len=32, n_layer=1, n_head=2, n_kv_head=1,
        n_embd=32, intermediate_size=64,
    )  # fmt: skip
    return Transformer(cfg)


@pytest.fixture
def folder(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    save_model(tmp_path / "model", model=tiny(tokenizer), tokenizer=tokenizer)
    return tmp_path / "model"


def data_start(weights: Path) -> int:
    """Where a safetensors file's tensor bytes begin (after its 8-byte length and JSON header)."""
    with weights.open("rb") as f:
        (header,) = struct.unpack("<Q", f.read(8))
    return 8 + header


def overwrite_4k_with_nan(weights: Path) -> None:
    """4 KB of the tensor data set to 0xFF bytes: float32 NaNs, as a bad disk block would."""
    with weights.open("r+b") as f:
        f.seek(data_start(weights) + 256)
        f.write(b"\xff" * 4096)


def truncate(file: Path) -> None:
    with file.open("r+b") as f:
        f.truncate(file.stat().st_size // 2)


def test_save_writes_a_checksum_per_file_and_load_checks_them(folder: Path) -> None:
    listed = json.loads((folder / CHECKSUMS).read_text())
    assert listed["algorithm"] == "xxh3_128"
    on_disk = {p.name for p in folder.iterdir()} - {CHECKSUMS}
    assert set(listed["files"]) == on_disk and WEIGHTS in on_disk
    assert listed["files"][WEIGHTS]["size"] == (folder / WEIGHTS).stat().st_size
    assert load_model(folder).model.config.n_layer == 1


def test_truncated_weights_name_the_file_and_the_fix(folder: Path) -> None:
    truncate(folder / WEIGHTS)
    with pytest.raises(ModelLoadError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert type(caught.value).__name__ == "DamagedModelError"
    assert str(folder / WEIGHTS) in message and "truncated" in message
    assert "restore" in message  # the fix


def test_nan_overwrite_fails_the_checksum(folder: Path) -> None:
    overwrite_4k_with_nan(folder / WEIGHTS)
    with pytest.raises(ModelLoadError, match="checksum") as caught:
        load_model(folder)
    assert type(caught.value).__name__ == "DamagedModelError"
    assert str(folder / WEIGHTS) in str(caught.value)


def test_a_folder_saved_before_checksums_loads_with_a_warning(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (folder / CHECKSUMS).unlink()
    with caplog.at_level(logging.WARNING, logger="plaudit.learner"):
        assert load_model(folder).model.config.n_layer == 1
    assert any("no checksums" in r.getMessage() for r in caplog.records), caplog.text


def test_nan_weights_without_checksums_are_still_refused(folder: Path) -> None:
    (folder / CHECKSUMS).unlink()
    overwrite_4k_with_nan(folder / WEIGHTS)
    with pytest.raises(ModelLoadError, match="NaN or infinite") as caught:
        load_model(folder)
    assert type(caught.value).__name__ == "DamagedModelError"


def test_weights_saved_non_finite_are_refused_despite_a_good_checksum(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    model = tiny(tokenizer)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    save_model(tmp_path / "m", model=model, tokenizer=tokenizer)
    with pytest.raises(ModelLoadError, match="NaN or infinite"):
        load_model(tmp_path / "m")


def cli(*args: str) -> tuple[int, str, BaseException | None]:
    app = typer.Typer()
    _cli_learner.register(app)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout + result.stderr, result.exception


@pytest.mark.parametrize("damage", ["nan", "nan_unchecked", "truncated"])
def test_generate_prints_one_line_for_a_damaged_folder(folder: Path, damage: str) -> None:
    if damage == "nan_unchecked":
        (folder / CHECKSUMS).unlink()
    if damage.startswith("nan"):
        overwrite_4k_with_nan(folder / WEIGHTS)
    else:
        truncate(folder / WEIGHTS)
    code, output, exc = cli("generate", "--model", str(folder), "--prompt", "the cat")
    assert code != 0
    assert isinstance(exc, SystemExit), f"{type(exc).__name__}: {exc}"
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    assert str(folder / WEIGHTS) in lines[0] and "restore" in lines[0]


# -- the policy: a checkpoint is taken whole or not at all ------------------------------------


def test_restore_takes_an_intact_checkpoint_and_says_what_it_carried(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    base = tmp_path / "base"
    save_model(base, model=tiny(tokenizer, seed=0), tokenizer=tokenizer)
    trained = Policy.load(base, lr=1e-3)
    with torch.no_grad():
        for p in trained.model.parameters():
            p.add_(0.01)
    trained.optimizer  # noqa: B018 - created, so its state is saved
    trained.save(tmp_path / "with-optimizer")
    trained._optimizer = None
    trained.save(tmp_path / "without-optimizer")

    policy = Policy.load(base, lr=1e-3)
    done = policy.restore(tmp_path / "with-optimizer", version=7)
    assert (done.optimizer, done.checksums, policy.version) == (True, True, 7)
    assert all(
        torch.equal(a, b)
        for a, b in zip(policy.model.parameters(), trained.model.parameters(), strict=True)
    )
    assert policy.source == str(tmp_path / "with-optimizer")
    assert policy.restore(tmp_path / "without-optimizer", version=6).optimizer is False
    assert policy._optimizer is None  # starts afresh at the first update


def test_restore_refuses_a_damaged_checkpoint_and_changes_nothing(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    base = tmp_path / "base"
    save_model(base, model=tiny(tokenizer, seed=0), tokenizer=tokenizer)
    policy = Policy.load(base, lr=1e-3, version=3)
    policy.optimizer  # noqa: B018
    policy.save(tmp_path / "ckpt")
    truncate(tmp_path / "ckpt" / "online_optimizer.pt")
    model, optimizer = policy.model, policy._optimizer
    with pytest.raises(ModelLoadError, match=r"online_optimizer\.pt") as caught:
        policy.restore(tmp_path / "ckpt", version=9)
    assert type(caught.value).__name__ == "DamagedModelError"
    assert (policy.model, policy._optimizer, policy.version) == (model, optimizer, 3)
