"""Atomic files and folders: a reader sees the old version or the new one, never half of either.

Write to a temporary sibling, fsync it, rename over the target, fsync the parent folder. A
crash at any point leaves the previous version intact and at worst a stray ``.tmp-*`` sibling,
named with the writer's pid: a folder's is cleared by the next write of that folder, and
`clear_stale_temporaries` (the daemon's start-up) clears every one whose writer is gone."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from plaudit.state._errors import DiskFull, StateError
from plaudit.state._store import DB_NAME

# What follows `.tmp-NAME-` / `.old-NAME-`: the writer's pid, then a random tag (no hyphen).
_LEFTOVER_TAIL = re.compile(r"(\d+)-[a-z0-9_]+")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the names renamed into it) to disk."""
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


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``path`` whole or not at all. ``mode`` is narrowed by the process umask, as
    open() would (mkstemp's own 0600 is replaced), so a private daemon keeps files private."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _translate(exc, path) from exc


def atomic_write_text(path: Path, text: str, *, mode: int = 0o666) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


@contextlib.contextmanager
def atomic_folder(path: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` to fill; when the block ends without an
    exception, every file and folder in it is fsynced and it is renamed to ``path``.

    Without ``replace``, a ``path`` that holds anything is an error, raised before the block
    runs, so nothing is overwritten by surprise (an empty folder holds nothing to lose). With
    it, an existing ``path`` is renamed aside, the new folder renamed in, the old one removed.
    On any failure the temporary folder is removed and ``path`` is untouched. The result gets
    the permissions a plain ``mkdir``/``open`` would give (the temporary folder is created
    0700, and some writers, safetensors among them, create files 0600).

    Temporary names carry the writer's pid: leftovers of a writer that is gone (killed mid-way)
    are cleared on the next write of ``path``, and if the kill fell between the two renames the
    old version is put back first."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear_leftovers(path)  # first: it may put the previous version back
    except OSError as exc:
        raise _translate(exc, path) from exc
    if path.exists() and not path.is_dir():
        raise StateError(f"{path} exists and is a file: give a folder path")
    if not replace and path.is_dir() and any(path.iterdir()):
        raise StateError(
            f"{path} already exists and is not empty: remove it or choose another folder"
        )
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-{os.getpid()}-", dir=path.parent))
    except OSError as exc:
        raise _translate(exc, path) from exc
    try:
        yield tmp
        _publish(tmp)
        old = None
        if path.is_dir():
            old = path.with_name(f".old-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _translate(exc, path) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Leftovers:
    """What `clear_stale_temporaries` did."""

    removed: list[Path] = field(default_factory=list)  # temporaries of writers that are gone
    restored: list[Path] = field(default_factory=list)  # previous versions put back in place


def clear_stale_temporaries(folder: Path) -> Leftovers:
    """Clear what killed writers left in ``folder`` (not below it): their ``.tmp-`` files and
    folders are removed, and an ``.old-`` previous version is renamed back where its target is
    missing (a kill between the two renames), else removed. A running writer's are left."""
    done = Leftovers()
    if not folder.is_dir():
        return done
    for kind in (".old-", ".tmp-"):
        for entry in sorted(folder.iterdir()):
            parsed = _leftover(entry.name, kind)
            if parsed is None or _running(parsed[1]):
                continue
            target = folder / parsed[0]
            if kind == ".old-" and not target.exists():
                os.replace(entry, target)
                done.restored.append(target)
            else:
                _remove(entry)
                done.removed.append(entry)
    return done


def _leftover(name: str, kind: str) -> tuple[str, int] | None:
    """(target name, writer pid) of a ``KIND-NAME-PID-TAG`` entry, else None."""
    if not name.startswith(kind):
        return None
    target, _, tail = name.removeprefix(kind).rpartition("-")
    target, _, pid = target.rpartition("-")
    if not target or not pid.isdigit() or _LEFTOVER_TAIL.fullmatch(f"{pid}-{tail}") is None:
        return None
    return target, int(pid)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def _clear_leftovers(path: Path) -> None:
    """Remove the ``.tmp-``/``.old-`` siblings of ``path`` left by writers that no longer run
    (an ``.old-`` one is renamed back first when ``path`` itself is missing)."""
    for kind in (".old-", ".tmp-"):
        prefix = f"{kind}{path.name}-"
        for entry in path.parent.iterdir():
            tail = _LEFTOVER_TAIL.fullmatch(entry.name.removeprefix(prefix))
            if not entry.name.startswith(prefix) or tail is None or _running(int(tail[1])):
                continue
            if kind == ".old-" and not path.exists():
                os.replace(entry, path)
            else:
                shutil.rmtree(entry, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _publish(root: Path) -> None:
    """Give a finished folder ordinary permissions and flush all of it to disk, so the rename
    that follows never exposes missing data after a crash."""
    mask = _umask()
    for folder, _dirs, files in os.walk(root):
        for name in files:
            file = Path(folder, name)
            file.chmod(0o666 & ~mask)
            with file.open("rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(folder))
    root.chmod(0o777 & ~mask)


def _umask() -> int:
    # Linux shows it without changing it; os.umask() can only read by setting (racy in threads).
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The parts of a state folder `state_size` reports, by top-level name: the checkpoints, the
# database (with its -wal and -shm files), the converted-model cache; all else is "other"
# (each face's own state, the HTTP token, the pid file, a leftover offline fit's files).
STATE_PARTS: tuple[str, ...] = ("checkpoints", "database", "cache", "other")


def state_size(folder: Path) -> dict[str, int]:
    """Bytes in the state folder ``folder`` by part (`STATE_PARTS`, every one present): the
    sizes of its files as stat gives them, summed with os.scandir (no file is read; a few
    milliseconds for a folder of a hundred files). Entries that vanish or cannot be read
    while it walks (a checkpoint rotated out) count 0; a missing folder is all zeros."""
    sizes = dict.fromkeys(STATE_PARTS, 0)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return sizes
    for entry in entries:
        name = entry.name
        if name.startswith(DB_NAME):
            part = "database"
        elif name in ("checkpoints", "cache"):
            part = name
        else:
            part = "other"
        sizes[part] += _tree_bytes(entry)
    return sizes


def _tree_bytes(entry: os.DirEntry[str]) -> int:
    try:
        if entry.is_dir(follow_symlinks=False):
            with os.scandir(entry.path) as inner:
                return sum(_tree_bytes(e) for e in inner)
        if entry.is_file(follow_symlinks=False):
            return entry.stat(follow_symlinks=False).st_size
    except OSError:  # gone since the listing, or unreadable: a size, not worth a failure
        pass
    return 0
