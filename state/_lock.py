"""One daemon per state folder: an exclusive ``flock`` on ``plaudit.pid``, which holds its pid.

The kernel drops the lock when the process dies, so a pid file left by a crash (stale) is
detected and taken over, while a live second daemon is refused."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from plaudit.state._errors import StoreLocked

PID_FILE = "plaudit.pid"


class StateLock:
    def __init__(self, *, folder: Path) -> None:
        self.path = folder / PID_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; return True when a stale pid file from a dead process was found."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"another plaudit daemon (pid {holder}) is running on state folder "
                f"{self.path.parent}: stop it first, or use another --state-dir"
            ) from None
        stale = os.fstat(fd).st_size > 0
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return stale

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def running_pid(folder: Path) -> int | None:
        """The pid of the daemon that holds ``folder``, or None when none does."""
        path = folder / PID_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode(errors="replace").strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # the file is there but nobody holds it: stale
        finally:
            os.close(fd)
