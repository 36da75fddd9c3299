"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Write to a temporary sibling, fsync it, rename over the target, fsync the folder. A crash at
any point leaves the previous version intact (and at worst a stray ``.tmp-*`` file)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from plaudit.state._errors import DiskFull, StateError


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translate(exc: OSError, path: Path) -> StateError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"no space left to write {path}: free disk space (the previous version is intact)"
        )
    return StateError(f"cannot write {path}: {exc.strerror or exc}")


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _translate(exc, path) from exc


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


@contextlib.contextmanager
def atomic_dir(path: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it is fsynced and renamed to ``path``.

    With ``replace`` an existing ``path`` is swapped out (renamed aside, then removed); without
    it an existing ``path`` is an error, so nothing is ever overwritten by surprise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not replace:
        raise StateError(f"{path} already exists: remove it or choose another folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _translate(exc, path) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
