"""Where the daemon a user last started keeps its state: a small pointer file in the user's
runtime folder, so `plaudit status` (and other commands that read the state) find the daemon
that `make run` just started without repeating its `--config`.

The pointer is written at start-up, once the state lock is held, and left in place at exit: a
stopped daemon's state is still worth showing (`plaudit status` then says "not running")."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

RUN_FILE = "last-daemon.json"


def run_dir() -> Path:
    """$XDG_RUNTIME_DIR/plaudit where there is one, else a per-user state folder."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "plaudit"
    import platformdirs

    return Path(platformdirs.user_state_dir("plaudit", appauthor=False))


@dataclass(frozen=True)
class LastDaemon:
    state_dir: Path
    config: Path | None
    pid: int
    started_at: float


def announce(*, state_dir: Path, config: Path | None) -> None:
    """Record this process as the last daemon started (best effort: a read-only home or a
    full disk must not stop the daemon)."""
    folder = run_dir()
    record = {
        "state_dir": str(state_dir.resolve()),
        "config": str(config.resolve()) if config is not None else None,
        "pid": os.getpid(),
        "started_at": time.time(),
    }
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{RUN_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        tmp.replace(folder / RUN_FILE)
    except OSError:
        pass


def last() -> LastDaemon | None:
    """The last daemon started by this user, or None (never started, or the file unreadable)."""
    try:
        record = json.loads((run_dir() / RUN_FILE).read_text(encoding="utf-8"))
        return LastDaemon(
            state_dir=Path(record["state_dir"]),
            config=Path(record["config"]) if record.get("config") else None,
            pid=int(record["pid"]),
            started_at=float(record["started_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
