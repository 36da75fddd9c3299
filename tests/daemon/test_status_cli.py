"""`plaudit status` finds the daemon a user just started (no --config needed), answers as
`systemctl status` does (0 running, 3 not running, 4 no state) and has --json."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from daemon_helpers import PLAUDIT, DaemonProcess, tiny_config


def status(*args: str, cwd: Path, runtime: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    env.pop("STATE_DIRECTORY", None)
    return subprocess.run(
        [*PLAUDIT, "status", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_status_finds_the_daemon_just_started_and_exits_like_systemctl(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    runtime, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    runtime.mkdir()
    elsewhere.mkdir()  # no plaudit.toml here: status has only the pointer to go by
    state = tmp_path / "state"
    cfg = tmp_path / "demo.toml"
    cfg.write_text(tiny_config(state_dir=state, model_dir=tiny_model_dir))
    daemon = DaemonProcess(cfg, env={"XDG_RUNTIME_DIR": str(runtime)})
    try:
        daemon.wait_event("ready", timeout=120)
        shown = status(cwd=elsewhere, runtime=runtime)
        assert shown.returncode == 0, shown.stderr
        assert str(state) in shown.stdout and "running" in shown.stdout
        as_json = status("--json", cwd=elsewhere, runtime=runtime)
        assert as_json.returncode == 0, as_json.stderr
        view = json.loads(as_json.stdout)
        assert view["state"] == "running" and view["state_dir"] == str(state)
        assert view["reward_model"]["enabled"] is True
        rc, _ = daemon.stop()
        assert rc == 0
    finally:
        daemon.kill()
    stopped = status(cwd=elsewhere, runtime=runtime)
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert "not running" in stopped.stdout
    stopped_json = json.loads(status("--json", cwd=elsewhere, runtime=runtime).stdout)
    assert stopped_json["daemon"] == "not running" and stopped_json["pid"] is None
    # No daemon was ever started by this user (an empty runtime folder), no state: 4.
    (tmp_path / "empty-run").mkdir()
    none = status(
        "--state-dir", str(tmp_path / "nothing"), cwd=elsewhere, runtime=tmp_path / "empty-run"
    )
    assert none.returncode == 4 and "no plaudit state" in none.stderr
