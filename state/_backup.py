"""Back up a state folder and restore it, elsewhere or in place.

A backup is a folder: the database as one self-contained file, copied with SQLite's online
backup API (consistent even while the daemon writes), then every other file and folder of the
state folder except what is rebuilt or belongs to a running process (the converted-model
cache, the pid and URL files, temporaries). Checkpoint folders are written once and renamed
into place, so a copy taken while the daemon runs is whole; one pruned during the copy is left
out and named. A face's own files are copied as they are at that moment: for an exact copy of
those, stop the daemon first. The backup is written beside its destination and renamed into
place: a failed backup leaves nothing behind.

Checkpoint paths are stored relative to the state folder, so a restored folder works wherever
it lies. Restoring takes the state lock for its whole run: it is refused while a daemon uses
the folder, and no daemon starts while it copies.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from plaudit.state._errors import DatabaseDamaged, StateError
from plaudit.state._files import _translate, fsync_dir
from plaudit.state._lock import PID_FILE, StateLock
from plaudit.state._store import DB_NAME, Store

# Not copied: rebuilt on demand (the converted-model cache) or tied to a running process.
_SKIPPED = frozenset({"cache", PID_FILE, "http-url"})


@dataclass
class BackupReport:
    dest: Path
    copied: list[str] = field(default_factory=list)  # top-level names, the database first
    vanished: list[str] = field(default_factory=list)  # removed by the daemon during the copy


@dataclass
class RestoreReport:
    folder: Path
    copied: list[str] = field(default_factory=list)
    # Where the folder's previous contents were moved (``--force``); None when it held none.
    previous: Path | None = None


def _db_files(name: str) -> bool:
    return name == DB_NAME or name.startswith(f"{DB_NAME}-")


def _copied_entries(folder: Path) -> list[Path]:
    """What a backup or restore copies besides the database, in name order."""
    return [
        p
        for p in sorted(folder.iterdir())
        if p.name not in _SKIPPED and not p.name.startswith(".") and not _db_files(p.name)
    ]


def backup_state(folder: Path, dest: Path) -> BackupReport:
    """Back up the state folder ``folder`` into the new folder ``dest`` (created 0700: a
    backup holds the HTTP token and the faces' state; every file keeps its own mode)."""
    if not (folder / DB_NAME).is_file():
        raise StateError(f"{folder} holds no plaudit state ({DB_NAME}): check --state-dir")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StateError(f"{dest} already exists: give a new folder for the backup")
    report = BackupReport(dest=dest)
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}-backup")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        with Store.open(folder, check=True) as store:  # a damaged database is no backup
            store.backup(tmp / DB_NAME)
        report.copied.append(DB_NAME)
        for entry in _copied_entries(folder):
            if _copy(entry, tmp / entry.name, report.vanished):
                report.copied.append(entry.name)
        _fsync_tree(tmp)
        if dest.is_dir():
            dest.rmdir()  # empty, checked above
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _translate(exc, dest) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _fsync_tree(root: Path) -> None:
    for where, _dirs, files in os.walk(root):
        for name in files:
            with Path(where, name).open("rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(where))


def _copy(src: Path, dst: Path, vanished: list[str], prefix: str = "") -> bool:
    """Copy a file or a folder tree (modes kept). A checkpoint folder that disappears while it
    is copied (pruned by a running daemon) is left out and named in ``vanished``."""
    try:
        if src.is_dir() and not src.is_symlink():
            dst.mkdir()
            shutil.copystat(src, dst)
            for child in sorted(src.iterdir()):
                if not child.name.startswith(".tmp-") and not child.name.startswith(".old-"):
                    _copy(child, dst / child.name, vanished, f"{prefix}{src.name}/")
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
    except FileNotFoundError:
        if dst.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
        else:
            dst.unlink(missing_ok=True)
        vanished.append(f"{prefix}{src.name}")
        return False
    except OSError as exc:
        raise _translate(exc, dst) from exc
    return True


def restore_state(src: Path, folder: Path, *, force: bool = False) -> RestoreReport:
    """Restore the backup ``src`` into the state folder ``folder`` (created if missing).

    Refused while a daemon holds ``folder``, and for a backup whose database fails SQLite's
    ``quick_check``. A folder that holds anything already is replaced only with ``force``, and
    its previous contents are moved (never deleted) into ``folder/.before-restore-<time>/``,
    which the report names."""
    _check_backup(src / DB_NAME)
    folder.mkdir(parents=True, exist_ok=True)
    lock = StateLock(folder=folder)
    lock.acquire()  # StoreLocked names the running daemon's pid
    try:
        report = RestoreReport(folder=folder)
        current = [p for p in sorted(folder.iterdir()) if p.name != PID_FILE]
        if current and not force:
            raise StateError(
                f"{folder} is not empty: restoring replaces what it holds. Add --force (the "
                f"current contents are kept in {folder}/.before-restore-<time>/)"
            )
        try:
            if current:
                aside = folder / time.strftime(".before-restore-%Y%m%dT%H%M%S")
                aside.mkdir(mode=0o700)
                for entry in current:
                    os.replace(entry, aside / entry.name)
                report.previous = aside
            _restore_database(src / DB_NAME, folder / DB_NAME)
            report.copied.append(DB_NAME)
            for entry in _copied_entries(src):
                _copy(entry, folder / entry.name, [])
                report.copied.append(entry.name)
            _fsync_tree(folder)
        except OSError as exc:
            raise _translate(exc, folder) from exc
        return report
    finally:
        lock.release()


def _check_backup(db: Path) -> None:
    """The backup's database must be whole: read-only ``quick_check``, nothing written."""
    if not db.is_file():
        raise StateError(f"{db.parent} is not a plaudit backup: it has no {DB_NAME}")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            found = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        found = [str(exc)]
    if found != ["ok"]:
        raise DatabaseDamaged(
            f"backup database {db} is damaged ({'; '.join(found)}): restore another backup"
        )


def _restore_database(src: Path, dest: Path) -> None:
    """Copy with the backup API into a temporary file, then rename it into place."""
    tmp = dest.with_name(f".tmp-{dest.name}-{os.getpid()}-restore")
    tmp.unlink(missing_ok=True)
    try:
        source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        target = sqlite3.connect(tmp, isolation_level=None)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
            source.close()
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except sqlite3.DatabaseError as exc:
        tmp.unlink(missing_ok=True)
        raise StateError(f"cannot restore {src} to {dest}: {exc}") from None
