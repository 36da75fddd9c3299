"""`plaudit state backup` and `plaudit state restore` on a real state folder: a store, a tiny
policy's checkpoint, a face's journal; restored elsewhere, the checkpoint loads from there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from plaudit.daemon import _cli_state
from plaudit.learner import Policy
from plaudit.state import NewCandidate, StateLock, Store


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def cli(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    _cli_state.register(app)
    result = CliRunner().invoke(app, ["state", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout + result.stderr


def build_state(state: Path, model_dir: Path) -> None:
    policy = Policy.load(model_dir, lr=1e-3, version=3)
    folder = state / "checkpoints" / "v000003"
    policy.save(folder)
    with Store.open(state) as store:
        store.add_candidates(face="sim", cycle_id="c", candidates=[NewCandidate(text="a post")])
        store.add_checkpoint(path=folder, policy_version=3, kind="online")
    (state / "faces" / "sim").mkdir(parents=True)
    (state / "faces" / "sim" / "published.jsonl").write_text('{"id": 1}\n')


def test_backup_while_running_then_restore_elsewhere_and_load_the_checkpoint(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    state = tmp_path / "state"
    build_state(state, tiny_model_dir)
    daemon = StateLock(folder=state)
    daemon.acquire()  # a running daemon: a backup goes ahead
    try:
        code, out = cli("backup", str(tmp_path / "backup"), "--state-dir", str(state))
    finally:
        daemon.release()
    assert code == 0, out
    assert f"backed up {state} to {tmp_path / 'backup'}: plaudit.sqlite3, checkpoints, faces" in out
    assert "checkpoints matching their checksums: v000003" in out

    elsewhere = tmp_path / "moved" / "state"
    code, out = cli("restore", str(tmp_path / "backup"), "--state-dir", str(elsewhere))
    assert code == 0, out
    with Store.open(elsewhere, check=True) as store:
        latest = store.latest_checkpoint()
        assert latest is not None and latest.path == str(elsewhere / "checkpoints" / "v000003")
        assert [p.text for p in store.posts()] == ["a post"]
    restored = Policy.load(tiny_model_dir).restore(Path(latest.path), version=3)
    assert restored.checksums and not restored.optimizer
    assert (elsewhere / "faces" / "sim" / "published.jsonl").read_text() == '{"id": 1}\n'


def test_restore_is_refused_while_a_daemon_runs_and_needs_force_over_state(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    state = tmp_path / "state"
    build_state(state, tiny_model_dir)
    assert cli("backup", str(tmp_path / "backup"), "--state-dir", str(state))[0] == 0
    daemon = StateLock(folder=state)
    daemon.acquire()
    try:
        code, out = cli("restore", str(tmp_path / "backup"), "--state-dir", str(state), "--force")
    finally:
        daemon.release()
    assert code == 1
    assert f"another plaudit daemon (pid {os.getpid()})" in out and "stop it first" in out, out
    code, out = cli("restore", str(tmp_path / "backup"), "--state-dir", str(state))
    assert code == 1 and "--force" in out, out
    code, out = cli("restore", str(tmp_path / "backup"), "--state-dir", str(state), "--force")
    assert code == 0, out
    assert "the previous contents are in" in out and ".before-restore-" in out


def test_a_backup_with_a_damaged_checkpoint_says_which_file(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    state = tmp_path / "state"
    build_state(state, tiny_model_dir)
    weights = state / "checkpoints" / "v000003" / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    code, out = cli("backup", str(tmp_path / "backup"), "--state-dir", str(state))
    assert code == 1
    assert "damaged checkpoints in the backup" in out
    assert str(tmp_path / "backup" / "checkpoints" / "v000003" / "model.safetensors") in out
    assert "truncated" in out and "Traceback" not in out
