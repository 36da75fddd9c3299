"""The store at scale and its retention.

The calls behind the collect sweep, /api/posts and /api/status read indexes (their query plans
scan no big table), so they stay fast at a million posts (bench/store_scale.py times them);
`Store.prune` drops what no reader needs any more."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plaudit.state import NewCandidate, PostStatus, Snapshot, Store
from plaudit.state._store import (
    CANDIDATE_TOKENS_S,
    METRIC_FULL_S,
    MIGRATIONS,
    PROBE_KEEP,
    PUBLISHED_TOKENS_S,
)

DAY = 86400.0
BIG_TABLES = ("posts", "reaction_snapshots", "rewards")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """20k published posts on two faces, 3 snapshots and a reward each, written in SQL."""
    folder = tmp_path_factory.mktemp("big")
    with Store.open(folder) as store:
        path = store.path
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
        "INSERT INTO posts (id, face, cycle_id, status, text, face_ref, published_at, "
        "created_at, updated_at) SELECT i, CASE i % 2 WHEN 0 THEN 'a' ELSE 'b' END, 'c' || i, "
        "'published', 'post ' || i, 'r' || i, i * 1800.0, i * 1800.0, i * 1800.0 FROM n"
    )
    for h in (3600.0, 6 * 3600.0, 24 * 3600.0):
        conn.execute(
            "INSERT INTO reaction_snapshots (post_id, horizon_s, found, read_at) "
            "SELECT id, ?, 1, published_at + ? FROM posts WHERE id < 19900",
            (h, h),
        )
    conn.execute(
        "INSERT INTO rewards (post_id, face, score, reward, used_in_version, created_at) "
        "SELECT id, face, 1.0, 0.5, CASE WHEN id < 19800 THEN 1 END, published_at + 86400 "
        "FROM posts WHERE id < 19900"
    )
    conn.execute("COMMIT")
    conn.close()
    store = Store.open(folder)
    yield store
    store.close()


def plans(store: Store, call: Callable[[], object]) -> list[str]:
    """The query plan lines of every statement `call` runs, each followed by its SQL."""
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        store._conn.set_trace_callback(None)
    reader = sqlite3.connect(store.path)
    lines = []
    for sql in statements:
        if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
            # The traced SQL spells an infinite bound -Inf, which SQL does not parse.
            sql = sql.replace("-Inf", "-9e999")
            for row in reader.execute(f"EXPLAIN QUERY PLAN {sql}"):
                lines.append(f"{row[3]}    [{sql[:90]}]")
    reader.close()
    return lines


def full_scans(lines: list[str]) -> list[str]:
    """Plan lines that scan a big table (or its alias). An index walked in the ORDER BY's order
    under a LIMIT is no full scan: it stops after LIMIT rows."""
    aliases = {"p": "posts", "s": "reaction_snapshots"}
    sorted_by_temp = {line.partition("[")[2] for line in lines if "TEMP B-TREE" in line}
    bad = []
    for line in lines:
        words = line.split()
        if words[0] != "SCAN" or aliases.get(words[1], words[1]) not in BIG_TABLES:
            continue
        sql = line.partition("[")[2]
        ordered_walk = "USING" in words and "LIMIT" in sql and sql not in sorted_by_temp
        if not ordered_walk:
            bad.append(line)
    return bad


def store_calls(store: Store) -> dict[str, Callable[[], object]]:
    horizons = [3600.0, 6 * 3600.0, 24 * 3600.0]
    now = 20001 * 1800.0

    def api_posts(face: str | None) -> Callable[[], object]:
        def call() -> None:
            for post in store.posts(face=face, status=PostStatus.PUBLISHED, limit=20):
                store.story(post.id)
            store.count_posts(face=face, status=PostStatus.PUBLISHED)

        return call

    def api_status() -> None:
        for face in ("a", "b"):
            store.count_posts(face=face, status=PostStatus.PUBLISHED)
            store.last_published_at(face)
        store.control()
        store.rewards(limit=10)

    return {
        "due_snapshots": lambda: store.due_snapshots(now=now, horizons_s=horizons),
        "scores": lambda: store.scores("a", limit=200),
        "rewards": lambda: store.rewards(limit=200),
        "unused rewards": lambda: store.rewards(unused_only=True, limit=256),
        "/api/posts": api_posts(None),
        "/api/posts?face": api_posts("a"),
        "/api/status": api_status,
        "published_since": lambda: store.published_since("a", now - DAY),
        "in_flight": lambda: store.in_flight(face="a"),
        "prune": lambda: store.prune(now),
        # the learn job: a rewarded post's unpublished candidates
        "cycle": lambda: store.posts(cycle_id="c19000"),
    }


@pytest.mark.parametrize(
    "name",
    [
        "due_snapshots",
        "scores",
        "rewards",
        "unused rewards",
        "/api/posts",
        "/api/posts?face",
        "/api/status",
        "published_since",
        "cycle",
        "in_flight",
        "prune",
    ],
)
def test_hot_calls_scan_no_big_table(big: Store, name: str) -> None:
    lines = plans(big, store_calls(big)[name])
    assert lines, "no statement traced"
    assert not full_scans(lines), "\n".join(lines)


def test_due_snapshots_reads_only_posts_still_collecting(big: Store) -> None:
    now = 20001 * 1800.0
    due = big.due_snapshots(now=now, horizons_s=[3600.0, 6 * 3600.0, 24 * 3600.0])
    # Posts 19900.. lack all three snapshots; the newest is not an hour old.
    assert {p.id for p, _ in due} == set(range(19900, 20000))
    assert all(p.published_at + h <= now for p, h in due)
    collecting = big._query("SELECT COUNT(*) FROM posts WHERE collected = 0")[0][0]
    assert collecting == 101  # every post with all its snapshots was marked collected


def test_post_counts_follow_inserts_and_moves(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        ids = store.add_candidates(
            face="f", cycle_id="c", candidates=[NewCandidate(text=str(i)) for i in range(5)]
        )
        store.add_candidates(face="g", cycle_id="d", candidates=[NewCandidate(text="x")])
        store.mark_filtered(ids[0], reason="length")
        store.choose(ids[1])
        store.record_intent(ids[1], idempotency_key="k")
        store.mark_published(ids[1], ref="r", url=None, published_at=1.0)
        for face in ("f", "g", None):
            for status in (*PostStatus, None):
                where = " AND ".join(
                    c
                    for c in (
                        f"face = '{face}'" if face else "",
                        f"status = '{status.value}'" if status else "",
                    )
                    if c
                )
                sql = "SELECT COUNT(*) FROM posts" + (f" WHERE {where}" if where else "")
                expected = store._query(sql)[0][0]
                assert store.count_posts(face=face, status=status) == expected, (face, status)
        assert store.count_posts(face="f", status=PostStatus.PUBLISHED) == 1
        assert store.count_posts(face="f", status=PostStatus.CANDIDATE) == 3


def test_a_collected_post_is_not_due_again_at_a_horizon_added_later(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        [pid] = store.add_candidates(face="f", cycle_id="c", candidates=[NewCandidate("x")])
        store.choose(pid)
        store.record_intent(pid, idempotency_key="k")
        store.mark_published(pid, ref="r", url=None, published_at=0.0)
        for h in (10.0, 20.0):
            assert store.due_snapshots(now=h, horizons_s=[10.0, 20.0])[-1][1] == h
            store.add_snapshot(snapshot(pid, h))
        assert store.due_snapshots(now=100.0, horizons_s=[10.0, 20.0]) == []
        assert store.due_snapshots(now=100.0, horizons_s=[10.0, 20.0, 50.0]) == []


def test_migration_marks_rewarded_posts_collected_and_counts_posts(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "plaudit.sqlite3")
    conn.executescript(MIGRATIONS[0])
    conn.executescript(str(MIGRATIONS[1]))
    for i, status in enumerate(("published", "published", "filtered"), start=1):
        conn.execute(
            "INSERT INTO posts (id, face, cycle_id, status, text, tokens, logprobs, "
            "published_at, created_at, updated_at) VALUES (?, 'f', 'c', ?, 't', ?, ?, 0, 0, 0)",
            (i, status, "[5, 6]" if i == 2 else "[]", "[-1.0, -2.0]" if i == 2 else "[]"),
        )
    conn.execute("INSERT INTO rewards VALUES (1, 'f', 1.0, 1.0, NULL, 0)")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    with Store.open(tmp_path) as store:
        collected = store._query("SELECT id FROM posts WHERE collected = 1")
        assert [r[0] for r in collected] == [1]
        assert store.count_posts(status=PostStatus.PUBLISHED) == 2
        assert store.count_posts(face="f") == 3
        assert [p.id for p, _ in store.due_snapshots(now=1e6, horizons_s=[60.0])] == [2]
        # Token lists moved to post_tokens (5); the old columns are left empty.
        assert (store.get_post(2).tokens, store.get_post(2).logprobs) == ([5, 6], [-1.0, -2.0])
        assert store.get_post(1).tokens == [] and store.get_post(3).logprobs == []
        assert store._query("SELECT COUNT(*) FROM posts WHERE tokens != '[]'")[0][0] == 0


def snapshot(post_id: int, horizon: float) -> Snapshot:
    return Snapshot(
        post_id=post_id,
        horizon_s=horizon,
        found=True,
        likes=1,
        reposts=0,
        replies=0,
        quotes=0,
        extra={},
        audience=None,
        read_at=horizon,
    )


def cycle(store: Store, clock: list[float], *, publish: bool) -> list[int]:
    ids = store.add_candidates(
        face="f",
        cycle_id=f"c{clock[0]}",
        candidates=[
            NewCandidate(text=f"t{i}", prompt_tokens=[1, 2], tokens=[3, 4], logprobs=[-1.0, -2.0])
            for i in range(4)
        ],
    )
    store.mark_filtered(ids[0], reason="length")
    if publish:
        store.choose(ids[-1])
        store.record_intent(ids[-1], idempotency_key=f"k{ids[-1]}")
        store.mark_published(ids[-1], ref=f"r{ids[-1]}", url=None, published_at=clock[0])
    return ids


def has_tokens(store: Store, post_id: int) -> bool:
    post = store.get_post(post_id)
    return bool(post.tokens) and bool(post.logprobs) and bool(post.prompt_tokens)


def test_prune_drops_old_candidate_tokens_but_keeps_the_probes(tmp_path: Path) -> None:
    clock = [0.0]
    with Store.open(tmp_path, now=lambda: clock[0]) as store:
        old = cycle(store, clock, publish=True)
        clock[0] = CANDIDATE_TOKENS_S + 1
        young = cycle(store, clock, publish=False)
        report = store.prune()
        # Old unpublished candidates lose their tokens but keep the rest; the published one and
        # the young ones keep theirs; the store is small, so the probe's window keeps all...
        assert report.tokens_dropped == 0 and all(has_tokens(store, i) for i in old + young)
        for _ in range(PROBE_KEEP // 4):  # ... until PROBE_KEEP newer posts exist
            cycle(store, clock, publish=False)
        report = store.prune()
        assert report.tokens_dropped == 3
        assert [has_tokens(store, i) for i in old] == [False, False, False, True]
        assert store.get_post(old[0]).text == "t0"  # text, prompt and prediction stay
        assert store.get_post(old[0]).filter_reason == "length"
        assert all(has_tokens(store, i) for i in young)
        assert store.prune().tokens_dropped == 0  # watermarks: nothing is looked at twice


def test_prune_drops_published_tokens_after_their_reward_was_used(tmp_path: Path) -> None:
    clock = [0.0]
    with Store.open(tmp_path, now=lambda: clock[0]) as store:
        used = cycle(store, clock, publish=True)[-1]
        unused = cycle(store, clock, publish=True)[-1]
        clock[0] = DAY
        store.add_reward(post_id=used, face="f", score=1.0, reward=1.0)
        store.add_reward(post_id=unused, face="f", score=1.0, reward=1.0)
        store.mark_rewards_used([used], policy_version=1)
        clock[0] = DAY + PUBLISHED_TOKENS_S - 1
        store.prune()
        assert has_tokens(store, used) and has_tokens(store, unused)
        clock[0] = DAY + PUBLISHED_TOKENS_S + 1
        # add_checkpoint prunes: every update and fit ends with one.
        store.add_checkpoint(path=tmp_path / "checkpoints" / "v1", policy_version=1, kind="a")
        assert not has_tokens(store, used)
        assert has_tokens(store, unused)  # its reward still waits for an update
        assert store.story(used).reward is not None


def test_prune_thins_old_metric_points_to_one_an_hour(tmp_path: Path) -> None:
    with Store.open(tmp_path, now=lambda: 0.0) as store:
        for minute in range(120):  # two hours of a point a minute, then a recent hour
            store.record_metrics({"loss": float(minute), "kl": 0.1}, ts=minute * 60.0)
            store.record_metrics({"loss": float(minute)}, ts=METRIC_FULL_S + minute * 60.0)
        now = METRIC_FULL_S + 2 * 3600.0
        report = store.prune(now)
        history = store.metric_history(["loss", "kl"], limit=1000)
        assert [v for _, v in history["loss"][:2]] == [59.0, 119.0]  # the last of each hour
        assert len(history["loss"]) == 2 + 120 and len(history["kl"]) == 2
        assert report.metric_points_deleted == 2 * 118
        assert store.prune(now).metric_points_deleted == 0


def test_pruned_token_lists_free_pages_for_new_posts(tmp_path: Path) -> None:
    # Token lists are most of a post's bytes: pruned, their pages go back to SQLite's free
    # list, so the next posts fill those instead of growing the file.
    clock = [0.0]
    big = NewCandidate(text="t", prompt_tokens=list(range(300)), tokens=list(range(300)))
    with Store.open(tmp_path, now=lambda: clock[0]) as store:
        for cycle_no in range(40):
            store.add_candidates(face="f", cycle_id=str(cycle_no), candidates=[big] * 8)
        clock[0] = CANDIDATE_TOKENS_S + 1
        assert store.prune().tokens_dropped == 40 * 8 - PROBE_KEEP
        assert store._query("PRAGMA freelist_count")[0][0] > 100
        pages = store._query("PRAGMA page_count")[0][0]
        for cycle_no in range(20):
            store.add_candidates(face="f", cycle_id=f"n{cycle_no}", candidates=[big] * 8)
        assert store._query("PRAGMA page_count")[0][0] == pages  # the freed pages served
