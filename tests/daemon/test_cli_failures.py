"""Commands that fail must fail cleanly (issue 16, problems 7 and 8): `plaudit generate` out of
memory says so in one line, a failed `train offline` leaves no empty run folder behind, and
`plaudit run` outside systemd keeps its state folder to the daemon's user."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import PLAUDIT

from plaudit.daemon import _cli


def test_generate_out_of_memory_is_one_line_naming_the_model(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`prlimit --as` too small for the model: the loader's MemoryError used to be a
    traceback. (The limit is stood in for by a loader that raises MemoryError.)"""
    import plaudit.learner

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(plaudit.learner, "load_model", no_memory)
    argv = ["plaudit", "generate", "--prompt", "hi", "--model", str(tiny_model_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        _cli.main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: out of memory")
    assert str(tiny_model_dir) in line and "MB on disk" in line
    assert "ulimit -v" in line and "smaller --model" in line


def train_offline(out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["train", "offline", "--model", "nano", "--data", str(data), "--out", str(out)]
    return subprocess.run(
        [*PLAUDIT, *args, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def test_a_failed_offline_run_removes_the_run_folder_it_created(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")  # fails after the run folder is made
    out = tmp_path / "runs" / "new"
    done = train_offline(out, bad)
    assert done.returncode == 1 and "not valid UTF-8" in done.stderr
    assert not out.exists(), f"left behind: {sorted(p.name for p in out.iterdir())}"
    assert (tmp_path / "runs").is_dir()  # only what the run made is removed

    mine = tmp_path / "mine"
    mine.mkdir()  # made by the user: kept, even empty
    done = train_offline(mine, bad)
    assert done.returncode == 1 and mine.is_dir()


def test_run_keeps_the_state_folder_private_outside_systemd(tmp_path: Path) -> None:
    """Under systemd the unit sets UMask=0077; started by hand with umask 022 the database
    used to be 0644 in a 0755 folder, readable by every user."""
    config = tmp_path / "c.toml"
    config.write_text('[faces.x]\ntype = "no-such-face-type"\n')  # stops right after the store
    state = tmp_path / "state"
    shell = ["sh", "-c", 'umask 022 && exec "$@"', "sh"]  # the usual umask of a login
    done = subprocess.run(
        [*shell, *PLAUDIT, "run", "-c", str(config), "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "no-such-face-type" in done.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    created = [p for p in state.iterdir() if p.is_file()]
    assert any(p.name == "plaudit.sqlite3" for p in created)
    for path in created:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_train_offline_on_a_face_without_history_names_the_face(tmp_path: Path) -> None:
    """It used to say "No training data: pass --data FILE ... or --face NAME", although the
    face was given."""
    args = ["train", "offline", "--model", "nano", "--face", "memory"]
    args += ["--state-dir", str(tmp_path / "s"), "--out", str(tmp_path / "run")]
    done = subprocess.run(
        [*PLAUDIT, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "face 'memory' has no history" in done.stderr and "--data" in done.stderr
    assert not (tmp_path / "run").exists()


async def test_run_out_of_memory_while_loading_is_one_line(
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`plaudit run` whose model does not fit: one line naming the model, exit 1, no
    traceback (a loader that raises MemoryError stands in for the limit)."""
    from daemon_helpers import tiny_config

    import plaudit.learner
    from plaudit.daemon._daemon import Daemon

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(plaudit.learner.Policy, "load", no_memory)
    cfg = tmp_path / "plaudit.toml"
    cfg.write_text(tiny_config(state_dir=tmp_path / "state", model_dir=tiny_model_dir))
    daemon = Daemon(config_file=cfg, state_dir=None, credentials_dir=None)
    assert await daemon.run() == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("plaudit: "))
    assert "out of memory" in line and str(tiny_model_dir) in line and "MemoryMax" in line
