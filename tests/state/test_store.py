"""The state store: lifecycle, migrations, durability under kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from plaudit.state import (
    SCHEMA_VERSION,
    DiskFull,
    InvalidTransition,
    NewCandidate,
    PostStatus,
    SchemaTooNew,
    Snapshot,
    StateError,
    StateLock,
    Store,
    StoreLocked,
    TrainingMode,
    TrainingState,
    atomic_folder,
    atomic_write_text,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.open(tmp_path)
    yield s
    s.close()


def test_open_sets_wal_foreign_keys_and_schema(store: Store) -> None:
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"
    assert store._query("PRAGMA foreign_keys")[0][0] == 1
    assert store.schema_version == SCHEMA_VERSION


def test_post_lifecycle_tells_the_whole_story(store: Store) -> None:
    ids = store.add_candidates(
        face="sim",
        cycle_id="c1",
        candidates=[
            NewCandidate(
                text="hello world", tokens=[1, 2], logprobs=[-0.5, -1.25], policy_version=3
            ),
            NewCandidate(text="spam spam", tokens=[3], logprobs=[-0.1]),
        ],
    )
    store.mark_filtered(ids[1], reason="novelty")
    store.choose(ids[0])
    store.record_intent(ids[0], idempotency_key="k-1")
    assert [p.id for p in store.in_flight()] == [ids[0]]
    store.mark_published(ids[0], ref="r1", url="http://x/1", published_at=100.0)
    store.add_snapshot(
        Snapshot(
            post_id=ids[0],
            horizon_s=3600,
            found=True,
            likes=3,
            reposts=1,
            replies=0,
            quotes=0,
            extra={},
            audience=50,
            read_at=3700.0,
        )
    )
    store.add_reward(post_id=ids[0], face="sim", score=0.1, reward=0.7)
    story = store.story(ids[0])
    assert story.post.status is PostStatus.PUBLISHED
    assert story.post.tokens == [1, 2] and story.post.logprobs == [-0.5, -1.25]
    assert story.post.policy_version == 3 and story.post.face_ref == "r1"
    assert [s.likes for s in story.snapshots] == [3]
    assert story.reward is not None and story.reward.reward == 0.7
    assert store.get_post(ids[1]).filter_reason == "novelty"
    assert store.last_published_at("sim") == 100.0
    assert store.published_since("sim", 50.0) == 1 and store.published_since("sim", 150.0) == 0


def test_invalid_transition_names_allowed_moves(store: Store) -> None:
    (pid,) = store.add_candidates(face="sim", cycle_id="c", candidates=[NewCandidate(text="a")])
    with pytest.raises(InvalidTransition, match="candidate and cannot become published"):
        store.mark_published(pid, ref="r", url=None, published_at=1.0)


def test_idempotency_keys_are_unique(store: Store) -> None:
    a, b = store.add_candidates(
        face="sim", cycle_id="c", candidates=[NewCandidate(text="a"), NewCandidate(text="b")]
    )
    for pid in (a, b):
        store.choose(pid)
    store.record_intent(a, idempotency_key="same")
    with pytest.raises(StateError, match=r"UNIQUE constraint failed: posts\.idempotency_key"):
        store.record_intent(b, idempotency_key="same")
    assert store.get_post(b).status is PostStatus.CHOSEN  # rolled back


def test_due_snapshots_per_horizon(store: Store) -> None:
    (pid,) = store.add_candidates(face="sim", cycle_id="c", candidates=[NewCandidate(text="a")])
    store.choose(pid)
    store.record_intent(pid, idempotency_key="k")
    store.mark_published(pid, ref="r", url=None, published_at=1000.0)
    due = store.due_snapshots(now=1000.0 + 3600 * 2, horizons_s=[3600, 6 * 3600])
    assert [(p.id, h) for p, h in due] == [(pid, 3600)]
    store.add_snapshot(
        Snapshot(
            post_id=pid,
            horizon_s=3600,
            found=True,
            likes=1,
            reposts=0,
            replies=0,
            quotes=0,
            extra={},
            audience=None,
            read_at=1.0,
        )
    )
    assert store.due_snapshots(now=1000.0 + 3600 * 2, horizons_s=[3600, 6 * 3600]) == []


def test_rewards_used_and_scores(store: Store) -> None:
    pids = store.add_candidates(
        face="f", cycle_id="c", candidates=[NewCandidate(text=str(i)) for i in range(3)]
    )
    for i, pid in enumerate(pids):
        store.add_reward(post_id=pid, face="f", score=float(i), reward=float(i) - 1)
    assert len(store.rewards(unused_only=True)) == 3
    store.mark_rewards_used(pids[:2], policy_version=1)
    assert [r.post_id for r in store.rewards(unused_only=True)] == [pids[2]]
    assert sorted(store.scores("f")) == [0.0, 1.0, 2.0]


def test_control_state_persists(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        assert s.control().training is TrainingState.RUNNING
        s.set_control(training=TrainingState.PAUSED, mode=TrainingMode.OFFLINE)
        s.set_value("last_offline_fit", "123")
    with Store.open(tmp_path) as s:
        assert s.control().training is TrainingState.PAUSED
        assert s.control().mode is TrainingMode.OFFLINE
        assert s.get_value("last_offline_fit") == "123"


def test_runs_checkpoints_and_metric_history(store: Store, tmp_path: Path) -> None:
    run = store.start_run(kind="online", config={"lr": 1e-5})
    store.add_checkpoint(path=tmp_path / "v1", policy_version=1, kind="online", run_id=run)
    store.finish_run(run, status="completed", metrics={"loss": 1.5})
    assert store.policy_version() == 1
    assert store.runs(kind="online")[0].metrics == {"loss": 1.5}
    stale = store.start_run(kind="offline", config={})
    assert store.interrupt_stale_runs() == 1
    assert store.runs(kind="offline")[0].id == stale
    assert store.runs(kind="offline")[0].status == "interrupted"
    store.record_metrics({"loss": 2.0, "reward": 0.5}, ts=10.0)
    store.record_metrics({"loss": 1.0}, ts=20.0)
    assert store.metric_history(["loss", "kl"]) == {"loss": [(10.0, 2.0), (20.0, 1.0)], "kl": []}


def test_refuses_newer_schema(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "plaudit.sqlite3")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="upgrade plaudit"):
        Store.open(tmp_path)


def test_corrupt_database_is_reported_not_deleted(tmp_path: Path) -> None:
    db = tmp_path / "plaudit.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="plaudit never deletes it"):
        Store.open(tmp_path)
    assert db.read_bytes().startswith(b"this is not")


def test_disk_full_is_translated(store: Store) -> None:
    # A real SQLite "database or disk is full": cap the page count, then write past it.
    store._conn.execute("PRAGMA max_page_count = 1")
    with pytest.raises(DiskFull, match="no committed data was lost"):
        store.add_candidates(face="f", cycle_id="c", candidates=[NewCandidate(text="x" * 100_000)])


def test_atomic_write_and_dir(tmp_path: Path) -> None:
    target = tmp_path / "a" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]
    ckpt = tmp_path / "ckpt"
    with atomic_folder(ckpt) as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    assert (ckpt / "w.bin").read_bytes() == b"1"
    with pytest.raises(StateError, match="already exists"), atomic_folder(ckpt):
        pass
    with pytest.raises(RuntimeError), atomic_folder(ckpt, replace=True) as tmp:
        (tmp / "w.bin").write_bytes(b"2")
        raise RuntimeError("crash mid-write")
    assert (ckpt / "w.bin").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "ckpt"]


def test_atomic_folder_clears_what_a_killed_writer_left(tmp_path: Path) -> None:
    dead = int(subprocess.check_output([sys.executable, "-c", "import os; print(os.getpid())"]))
    # Killed mid-write of "m": its temporary folder. Killed between the two renames of "n":
    # its previous version renamed aside, the new one not yet in place.
    (tmp_path / f".tmp-m-{dead}-abc123").mkdir()
    old_n = tmp_path / f".old-n-{dead}-abc123"
    old_n.mkdir()
    (old_n / "w.bin").write_bytes(b"old")
    live = tmp_path / f".tmp-m-{os.getpid()}-abc123"  # a running writer's: left alone
    live.mkdir()
    (tmp_path / "m").mkdir()  # an empty folder holds nothing to lose: no error
    with atomic_folder(tmp_path / "m") as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, old_n.name, "m"])
    with pytest.raises(StateError, match="already exists"), atomic_folder(tmp_path / "n"):
        pass  # the previous version of "n" was put back first
    assert (tmp_path / "n" / "w.bin").read_bytes() == b"old" and not old_n.exists()
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "m" / "w.bin").stat().st_mode & 0o777 == 0o666 & ~mask
    (tmp_path / "f").write_text("x")
    with pytest.raises(StateError, match="is a file"), atomic_folder(tmp_path / "f"):
        pass


def test_state_lock_refuses_second_and_takes_over_stale(tmp_path: Path) -> None:
    (tmp_path / "plaudit.pid").write_text("999999\n")  # left by a crashed daemon
    first = StateLock(folder=tmp_path)
    assert first.acquire() is True
    assert StateLock.running_pid(tmp_path) == os.getpid()
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
        StateLock(folder=tmp_path).acquire()
    first.release()
    assert StateLock.running_pid(tmp_path) is None


_WRITER = textwrap.dedent(
    """
    import sys, pathlib
    from plaudit.state import Store, NewCandidate
    store = Store.open(pathlib.Path(sys.argv[1]))
    i = 0
    while True:
        store.add_candidates(face="f", cycle_id=str(i), candidates=[NewCandidate(text=f"post {i}")])
        print(i, flush=True)  # printed only after the commit returned
        i += 1
    """
)


def test_survives_kill_minus_9_during_writes(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    committed = -1
    deadline = time.monotonic() + 30
    while committed < 200 and time.monotonic() < deadline:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 200
    with Store.open(tmp_path) as s:
        assert s.integrity_check() == "ok"
        texts = {p.text for p in s.posts(limit=100_000)}
        # Every commit acknowledged before the kill is there (one more may have landed).
        assert all(f"post {i}" in texts for i in range(committed + 1))


def test_rewards_used_by_lost_updates_return_to_pending(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    ids = store.add_candidates(
        face="f", cycle_id="c", candidates=[NewCandidate(text=f"post {i}") for i in range(3)]
    )
    for i, pid in enumerate(ids):
        store.add_reward(post_id=pid, face="f", score=float(i), reward=float(i))
    store.mark_rewards_used(ids[:1], policy_version=3)
    store.mark_rewards_used(ids[1:], policy_version=4)
    # The weights on disk are version 3: the update to 4 is lost, its rewards train again.
    assert store.release_rewards_after(3) == 2
    assert sorted(r.post_id for r in store.rewards(unused_only=True)) == ids[1:]
    assert store.release_rewards_after(3) == 0


def test_candidates_keep_their_sampling_settings_and_old_databases_migrate(
    tmp_path: Path,
) -> None:
    from plaudit.state._store import MIGRATIONS

    # A database at schema 1 (before sampling settings were stored) with one post in it.
    old = tmp_path / "old"
    old.mkdir()
    conn = sqlite3.connect(old / "plaudit.sqlite3")
    conn.executescript(MIGRATIONS[0])
    conn.execute(
        "INSERT INTO posts (face, cycle_id, status, text, created_at, updated_at) "
        "VALUES ('f', 'c', 'candidate', 'an old post', 1.0, 1.0)"
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    store = Store.open(old)
    assert store.schema_version == SCHEMA_VERSION
    assert store.get_post(1).sampling == {}
    [pid] = store.add_candidates(
        face="f",
        cycle_id="c2",
        candidates=[
            NewCandidate(text="new", sampling={"temperature": 0.7, "top_p": 0.9, "top_k": None})
        ],
    )
    assert store.get_post(pid).sampling == {"temperature": 0.7, "top_p": 0.9, "top_k": None}
