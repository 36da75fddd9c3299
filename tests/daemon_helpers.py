"""Run the real daemon as a subprocess in tests: config, logs, notify socket, state database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLAUDIT = [sys.executable, "-c", "from plaudit.daemon._cli import main; main()"]


def tiny_config(
    *,
    state_dir: Path,
    model_dir: Path,
    offline_steps: int = 4,
    extra: str = "",
    horizons: str = '["2s", "4s"]',
) -> str:
    return f"""
state_dir = "{state_dir}"
[log]
level = "info"
format = "json"
[http]
port = 0
[model]
name = "{model_dir}"
[sampling]
max_new_tokens = 24
[controller]
post_interval = "1500ms"
post_jitter = "0s"
daily_cap = 0
candidates = 4
horizons = {horizons}
collect_interval = "1s"
learn_interval = "2s"
learn_min_rewards = 2
offline_interval = "1h"
offline_max_posts = 300
shutdown_timeout = "20s"
[offline]
max_steps = {offline_steps}
epochs = {offline_steps}
batch_size = 4
max_seq_len = 32
[faces.sim]
type = "simulated"
time_scale = 20000.0
seed = 1
{extra}
"""


class NotifySocket:
    """A real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def fields(self) -> list[str]:
        return [f for _, m in self.messages for f in m.split("\n") if f]

    def times_of(self, field: str) -> list[float]:
        return [t for t, m in self.messages if field in m.split("\n")]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class DaemonProcess:
    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*PLAUDIT, "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=full_env,
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            with contextlib.suppress(ValueError):  # not every line is JSON (tracebacks)
                self.events.append(json.loads(line))

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) while waiting for {what}:\n{self.tail()}"
                )
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.tail()}")

    def wait_event(self, event: str, *, timeout: float = 60.0, after: int = 0) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events[after:] if e.get("event") == event]
            return bool(found)

        self.wait_for(seen, timeout=timeout, what=f"log event {event!r}")
        return found[0]

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, *, timeout: float = 30.0) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])


def query(state_dir: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the daemon's database from outside (WAL: readers never block the writer)."""
    conn = sqlite3.connect(f"file:{state_dir / 'plaudit.sqlite3'}?mode=ro", uri=True, timeout=10)
    try:
        return list(conn.execute(sql, args).fetchall())
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
