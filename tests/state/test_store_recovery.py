"""Recovering a state folder: checkpoint paths that survive a move, damaged checkpoints
marked, a damaged database caught at open, stale temporaries cleared, backup and restore."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from plaudit.state import (
    SCHEMA_VERSION,
    DatabaseDamaged,
    NewCandidate,
    StateError,
    StateLock,
    Store,
    StoreLocked,
    atomic_folder,
    atomic_write_text,
    backup_state,
    clear_stale_temporaries,
    restore_state,
)


def stored_paths(folder: Path) -> list[str]:
    conn = sqlite3.connect(folder / "plaudit.sqlite3")
    try:
        return [r[0] for r in conn.execute("SELECT path FROM checkpoints ORDER BY id")]
    finally:
        conn.close()


def test_checkpoint_paths_are_stored_relative_so_the_folder_can_move(tmp_path: Path) -> None:
    first = tmp_path / "first"
    outside = tmp_path / "elsewhere" / "v000002"
    with Store.open(first) as store:
        store.add_checkpoint(path=first / "checkpoints" / "v000001", policy_version=1, kind="a")
        store.add_checkpoint(path=outside, policy_version=2, kind="a")
    assert stored_paths(first) == ["checkpoints/v000001", str(outside)]
    first.rename(tmp_path / "moved")
    with Store.open(tmp_path / "moved") as store:
        assert [c.path for c in store.checkpoints()] == [
            str(outside),
            str(tmp_path / "moved" / "checkpoints" / "v000001"),
        ]


def test_absolute_paths_inside_the_folder_migrate_and_others_are_kept(tmp_path: Path) -> None:
    from plaudit.state._store import MIGRATIONS

    folder = tmp_path / "state"
    folder.mkdir()
    conn = sqlite3.connect(folder / "plaudit.sqlite3")
    for script in MIGRATIONS[:2]:
        assert isinstance(script, str)
        conn.executescript(script)
    rows = [
        (str(folder / "checkpoints" / "v000001"), 1),  # written by plaudit before schema 3
        ("/srv/old-place/checkpoints/v000002", 2),  # outside: read as it is
    ]
    conn.executemany(
        "INSERT INTO checkpoints (path, policy_version, kind, created_at) VALUES (?, ?, 'a', 0)",
        rows,
    )
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    with Store.open(folder) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert [c.path for c in store.checkpoints()] == [rows[1][0], rows[0][0]]
        assert all(c.damaged is None for c in store.checkpoints())
    assert stored_paths(folder) == ["checkpoints/v000001", rows[1][0]]


def test_a_checkpoint_marked_damaged_is_never_the_latest_again(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        ids = [
            store.add_checkpoint(
                path=tmp_path / "checkpoints" / f"v{v:06d}", policy_version=v, kind="a"
            )
            for v in (1, 2, 3)
        ]
        aside = tmp_path / "checkpoints" / "damaged-v000003"
        store.mark_checkpoint_damaged(ids[2], reason="model.safetensors is truncated", path=aside)
        latest = store.latest_checkpoint()
        assert latest is not None and latest.policy_version == 2
        assert store.policy_version() == 2
        assert [c.policy_version for c in store.checkpoints(intact_only=True)] == [2, 1]
        damaged = store.checkpoints()[0]
        assert (damaged.damaged, damaged.path) == ("model.safetensors is truncated", str(aside))
    assert stored_paths(tmp_path)[2] == "checkpoints/damaged-v000003"


def zero_page(db: Path, page: int, size: int = 4096) -> None:
    with db.open("r+b") as f:
        f.seek((page - 1) * size)
        f.write(bytes(size))


def posts_leaf(db: Path) -> int:
    """A leaf page of the posts table (where it lies moves with the schema's other objects)."""
    conn = sqlite3.connect(db)
    try:
        query = "SELECT MIN(pageno) FROM dbstat WHERE name = 'posts' AND pagetype = 'leaf'"
        return int(conn.execute(query).fetchone()[0])
    finally:
        conn.close()


def test_a_zeroed_page_is_caught_at_open_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        for i in range(40):
            store.add_candidates(face="f", cycle_id=str(i), candidates=[NewCandidate("x" * 2000)])
    db = tmp_path / "plaudit.sqlite3"
    zero_page(db, posts_leaf(db))
    # Without the check the database opens, and the damage shows only when a job reads it.
    with Store.open(tmp_path) as store, pytest.raises(StateError, match="malformed"):
        store.posts(limit=1000)
    with pytest.raises(DatabaseDamaged) as caught:
        Store.open(tmp_path, check=True)
    message = str(caught.value)
    assert str(db) in message and "plaudit state restore" in message, message
    assert db.stat().st_size > 0  # never deleted


def test_stale_temporaries_are_cleared_and_a_live_writers_kept(tmp_path: Path) -> None:
    dead = int(subprocess.check_output([sys.executable, "-c", "import os; print(os.getpid())"]))
    killed_save = tmp_path / f".tmp-v000003-{dead}-abc123"  # a checkpoint save, killed
    killed_save.mkdir()
    (killed_save / "model.safetensors").write_bytes(b"half")
    killed_write = tmp_path / f".tmp-http-token-{dead}-k2_x9q"  # an atomic file write, killed
    killed_write.write_text("half")
    between = tmp_path / f".old-v000002-{dead}-abc123"  # killed between the two renames
    between.mkdir()
    live = tmp_path / f".tmp-v000004-{os.getpid()}-abc123"
    live.mkdir()
    (tmp_path / "v000001").mkdir()
    done = clear_stale_temporaries(tmp_path)
    assert sorted(done.removed) == sorted([killed_save, killed_write])
    assert done.restored == [tmp_path / "v000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["v000001", "v000002", live.name])


def test_an_atomic_write_names_its_temporary_with_the_writers_pid(tmp_path: Path) -> None:
    seen: list[str] = []
    real = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        seen.append(Path(src).name)
        real(src, dst)

    os.replace = spy  # type: ignore[assignment]
    try:
        atomic_write_text(tmp_path / "token", "x")
    finally:
        os.replace = real
    assert seen[0].startswith(f".tmp-token-{os.getpid()}-")


def build_state(folder: Path) -> None:
    with Store.open(folder) as store:
        store.add_candidates(face="f", cycle_id="c", candidates=[NewCandidate(text="a post")])
        ckpt = folder / "checkpoints" / "v000001"
        with atomic_folder(ckpt) as tmp:
            (tmp / "model.safetensors").write_bytes(b"weights")
        store.add_checkpoint(path=ckpt, policy_version=1, kind="online")
    (folder / "faces" / "sim").mkdir(parents=True)
    (folder / "faces" / "sim" / "journal").write_text("one line\n")
    atomic_write_text(folder / "http-token", "secret\n", mode=0o600)
    (folder / "http-url").write_text("http://127.0.0.1:1\n")
    (folder / "cache" / "gguf-abc").mkdir(parents=True)  # rebuilt on demand: not copied
    (folder / "checkpoints" / f".tmp-v000002-{os.getpid()}-abc").mkdir()  # a save under way


def test_backup_while_the_daemon_runs_and_restore_elsewhere(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build_state(state)
    daemon = StateLock(folder=state)
    daemon.acquire()  # a running daemon does not stop a backup
    try:
        report = backup_state(state, tmp_path / "backup")
    finally:
        daemon.release()
    backup = tmp_path / "backup"
    assert report.copied == ["plaudit.sqlite3", "checkpoints", "faces", "http-token"]
    assert sorted(p.name for p in backup.iterdir()) == sorted(report.copied)
    assert [p.name for p in (backup / "checkpoints").iterdir()] == ["v000001"]
    assert (backup / "http-token").stat().st_mode & 0o777 == 0o600
    assert backup.stat().st_mode & 0o777 == 0o700
    with pytest.raises(StateError, match="already exists"):
        backup_state(state, backup)

    # Restored into a folder of another name: the checkpoint is found there.
    restored = restore_state(backup, tmp_path / "elsewhere")
    assert restored.previous is None and restored.copied == report.copied
    with Store.open(tmp_path / "elsewhere", check=True) as store:
        assert store.integrity_check() == "ok"
        assert [p.text for p in store.posts()] == ["a post"]
        latest = store.latest_checkpoint()
        assert latest is not None
        assert latest.path == str(tmp_path / "elsewhere" / "checkpoints" / "v000001")
        assert (Path(latest.path) / "model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "elsewhere" / "faces" / "sim" / "journal").read_text() == "one line\n"


def test_restore_is_refused_while_a_daemon_holds_the_folder_and_keeps_what_it_replaces(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    build_state(state)
    backup_state(state, tmp_path / "backup")
    with Store.open(state) as store:  # work done after the backup
        store.add_candidates(face="f", cycle_id="d", candidates=[NewCandidate(text="later")])
    daemon = StateLock(folder=state)
    daemon.acquire()
    try:
        with pytest.raises(StoreLocked, match=f"pid {os.getpid()}.*stop it first"):
            restore_state(tmp_path / "backup", state, force=True)
    finally:
        daemon.release()
    with pytest.raises(StateError, match="--force"):
        restore_state(tmp_path / "backup", state)
    report = restore_state(tmp_path / "backup", state, force=True)
    assert report.previous is not None and report.previous.parent == state
    with Store.open(state) as store:
        assert [p.text for p in store.posts()] == ["a post"]
    with Store.open(report.previous) as store:  # the replaced state, kept whole
        assert {p.text for p in store.posts()} == {"a post", "later"}


def test_a_damaged_backup_is_refused_before_anything_moves(tmp_path: Path) -> None:
    state = tmp_path / "state"
    build_state(state)
    with Store.open(state) as store:
        for i in range(40):
            store.add_candidates(face="f", cycle_id=str(i), candidates=[NewCandidate("x" * 2000)])
    backup_state(state, tmp_path / "backup")
    zero_page(tmp_path / "backup" / "plaudit.sqlite3", 16)
    with pytest.raises(DatabaseDamaged, match="restore another backup"):
        restore_state(tmp_path / "backup", state, force=True)
    assert not [p for p in state.iterdir() if p.name.startswith(".before-restore")]
