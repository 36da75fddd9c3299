"""The state database at scale, and what retention keeps of it.

`scale`: a store holding --posts published posts (two faces, a reward each) and --snapshots
reaction snapshots (spread evenly over the posts, at the default horizons plus 3 d and 7 d as
needed), written with SQL's recursive CTEs (a minute for 1M posts and 5M snapshots), then the
median time of the store calls behind:
  - the collect sweep (controller/_collect.py): `due_snapshots`, `scores(face, 200)` and the
    reward model's correlation (`rewards(limit=200)` and `get_post` of each);
  - `/api/posts` (daemon/_service.py `posts`): `posts(status=published, limit=20)`, `story` of
    each, `count_posts(status=published)`; with and without a face;
  - `/api/status` (`status`): per face `count_posts` and `last_published_at`; `control()`,
    `rewards(limit=10)`.
The database is kept in --db (built once; a later run reuses it, migrating it if this plaudit's
schema is newer, and reports how long that took).

`month`: a month of posting at the controller's defaults (a post every 4 h, 8 candidates per
cycle, 60 new tokens, rewards at 24 h, an update every 30 min once rewards wait, the metric
points they record) into a fresh store, with and without `Store.prune`, and the size of each.

    .venv/bin/python bench/store_scale.py scale [--posts 1000000 --snapshots 5000000]
    .venv/bin/python bench/store_scale.py month [--days 30]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plaudit.state import NewCandidate, PostStatus, Snapshot, Store

HOUR = 3600.0
# The controller's default horizons, then longer ones for a store with more snapshots a post.
HORIZONS = (1 * HOUR, 6 * HOUR, 24 * HOUR, 72 * HOUR, 168 * HOUR)
FACES = ("main", "second")
START = 1_700_000_000.0


def build(folder: Path, *, posts: int, snapshots: int) -> None:
    """Published posts every 30 min (alternating faces), each with a reward, and snapshots at
    the first horizons; the newest 40 posts lack their last snapshots (the sweep's work)."""
    with Store.open(folder) as store:  # the schema, by the store's own migrations
        path = store.path
    per_post = max(1, round(snapshots / posts))
    horizons = HORIZONS[:per_post]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO posts (id, face, cycle_id, status, text, policy_version, "
        "predicted_reward, idempotency_key, face_ref, url, published_at, created_at, updated_at) "
        "SELECT i, CASE i % 2 WHEN 0 THEN ? ELSE ? END, 'c' || i, 'published', "
        "'a post about the weather, number ' || i, i / 50, "
        "(i % 97) / 97.0, 'k' || i, 'ref' || i, 'https://example.org/' || i, "
        "? + i * 1800.0, ? + i * 1800.0, ? + i * 1800.0 FROM n",
        (posts, FACES[0], FACES[1], START, START, START),
    )
    conn.execute(  # the newest posts' token lists: the older ones were pruned
        "INSERT INTO post_tokens (post_id, prompt_tokens, tokens, logprobs) "
        "SELECT id, '[1, 2]', '[3, 4, 5]', '[-0.5, -0.25, -1.0]' FROM posts WHERE id > ? - 2000",
        (posts,),
    )
    now = START + posts * 1800.0
    for h in horizons:
        conn.execute(
            "INSERT INTO reaction_snapshots (post_id, horizon_s, found, likes, reposts, replies, "
            "quotes, audience, read_at) "
            "SELECT id, ?, 1, id % 13, id % 5, id % 3, 0, 1000, published_at + ? FROM posts "
            "WHERE published_at + ? <= ? - 40 * 1800.0",
            (h, h, h, now),
        )
    conn.execute(
        "INSERT INTO rewards (post_id, face, score, reward, used_in_version, created_at) "
        "SELECT post_id, (SELECT face FROM posts WHERE id = post_id), likes / 1000.0, "
        "(likes - 6) / 4.0, CASE WHEN post_id < ? - 100 THEN post_id / 50 END, read_at "
        "FROM reaction_snapshots WHERE horizon_s = ?",
        (posts, horizons[-1]),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def median_ms(fn: Callable[[], Any], *, runs: int) -> float:
    fn()  # warm the page cache and SQLite's statement cache
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def scale(args: argparse.Namespace) -> None:
    folder = Path(args.db)
    if any(folder.glob("*.sqlite3")):  # a store kept from an earlier run: of this size?
        store = Store.open(folder)
        kept = store._query("SELECT COUNT(*) FROM posts")[0][0]
        store.close()
        if kept != args.posts:
            print(f"{folder} holds {kept:,} posts, not {args.posts:,}: built again")
            shutil.rmtree(folder)
    if not any(folder.glob("*.sqlite3")):
        t = time.perf_counter()
        build(folder, posts=args.posts, snapshots=args.snapshots)
        print(f"built {folder} in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    store = Store.open(folder)  # migrates an older schema
    print(f"opened (schema {store.schema_version}) in {time.perf_counter() - t:.2f} s")
    n_posts = store._query("SELECT COUNT(*) FROM posts")[0][0]
    n_snaps = store._query("SELECT COUNT(*) FROM reaction_snapshots")[0][0]
    last = store._query("SELECT MAX(published_at) FROM posts")[0][0]
    size = store.path.stat().st_size / 1e6
    print(f"{n_posts:,} posts, {n_snaps:,} snapshots, {size:,.0f} MB")
    per_post = max(1, round(n_snaps / n_posts))
    horizons = list(HORIZONS[:per_post])
    now = last + 1.0

    def sweep() -> None:
        store.due_snapshots(now=now, horizons_s=horizons)
        store.scores(FACES[0], limit=200)
        for reward in store.rewards(limit=200):  # the reward model's correlation
            store.get_post(reward.post_id)

    def api_posts(face: str | None) -> Callable[[], None]:
        def call() -> None:
            for post in store.posts(face=face, status=PostStatus.PUBLISHED, limit=20):
                store.story(post.id)
            store.count_posts(face=face, status=PostStatus.PUBLISHED)

        return call

    def api_status() -> None:
        for face in FACES:
            store.count_posts(face=face, status=PostStatus.PUBLISHED)
            store.last_published_at(face)
        store.control()
        store.rewards(limit=10)

    due = len(store.due_snapshots(now=now, horizons_s=horizons))
    cases: list[tuple[str, Callable[[], Any]]] = [
        (f"collect sweep ({due} due)", sweep),
        ("  due_snapshots", lambda: store.due_snapshots(now=now, horizons_s=horizons)),
        ("/api/posts", api_posts(None)),
        ("/api/posts?face=main", api_posts(FACES[0])),
        ("  count_posts(published)", lambda: store.count_posts(status=PostStatus.PUBLISHED)),
        ("/api/status", api_status),
    ]
    for name, fn in cases:
        print(f"{name:<32} {median_ms(fn, runs=args.runs):9.2f} ms (median of {args.runs})")
    store.close()


def month(args: argparse.Namespace) -> None:
    """A month of posting at the defaults, with and without pruning."""
    sizes = {}
    for prune in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            sizes[prune] = simulate(Path(tmp), days=args.days, prune=prune, seed=args.seed)
    for prune, (grown, vacuumed, rows) in sizes.items():
        print(
            f"{'with' if prune else 'without':<8} pruning: file {grown:6.2f} MB, "
            f"{vacuumed:6.2f} MB after VACUUM; rows {rows}"
        )


def simulate(
    folder: Path, *, days: int, prune: bool, seed: int
) -> tuple[float, float, dict[str, int]]:
    """The controller's writes for `days` at its defaults (controller/_config.py): a cycle every
    4 h of 8 candidates (60 new tokens and their logprobs, a prompt of about 120 tokens), 1 to
    3 filtered, one published; snapshots at 1, 6 and 24 h, a reward at 24 h; every 30 min an
    update when a reward waits (its loss and KL recorded), an offline fit weekly (300 loss
    points). With `prune`, `Store.prune` runs after each update."""
    rng = random.Random(seed)
    clock = [START]
    store = Store.open(folder, now=lambda: clock[0])
    horizons = (1 * HOUR, 6 * HOUR, 24 * HOUR)
    end = START + days * 24 * HOUR
    next_post, next_collect, next_learn, next_offline = START, START, START, START
    version = 0
    while clock[0] < end:
        t = min(next_post, next_collect, next_learn, next_offline)
        clock[0] = t
        if t == next_offline:
            for step in range(300):
                store.record_metrics({"offline_loss": 3.0 - step / 300}, ts=t + step)
            next_offline += 7 * 24 * HOUR
        if t == next_post:
            prompt = [rng.randrange(49152) for _ in range(rng.randint(90, 150))]
            ids = store.add_candidates(
                face="main",
                cycle_id=f"c{int(t)}",
                candidates=[
                    NewCandidate(
                        text=" ".join(f"word{rng.randrange(5000)}" for _ in range(40)),
                        prompt="Write a short post for the community.",
                        prompt_tokens=prompt,
                        tokens=[rng.randrange(49152) for _ in range(60)],
                        logprobs=[-rng.random() * 4 for _ in range(60)],
                        policy_version=version,
                        predicted_reward=rng.gauss(0, 1),
                        sampling={"temperature": 0.9, "top_p": 0.95, "top_k": None},
                    )
                    for _ in range(8)
                ],
            )
            for pid in ids[: rng.randint(1, 3)]:
                store.mark_filtered(pid, reason="novelty")
            chosen = ids[-1]
            store.choose(chosen)
            store.record_intent(chosen, idempotency_key=f"k{chosen}")
            store.mark_published(chosen, ref=f"ref{chosen}", url=None, published_at=t)
            next_post += 4 * HOUR
        if t == next_collect:
            for post, horizon in store.due_snapshots(now=t, horizons_s=horizons):
                store.add_snapshot(
                    Snapshot(
                        post_id=post.id,
                        horizon_s=horizon,
                        found=True,
                        likes=rng.randrange(30),
                        reposts=rng.randrange(5),
                        replies=rng.randrange(5),
                        quotes=0,
                        extra={},
                        audience=1000,
                        read_at=t,
                    )
                )
                if horizon == horizons[-1]:
                    reward = rng.gauss(0, 1)
                    store.add_reward(post_id=post.id, face="main", score=reward, reward=reward)
                    store.record_metrics({"reward": reward, "score": reward})
            next_collect += 600
        if t == next_learn:
            pending = store.rewards(unused_only=True)
            if pending:
                version += 1
                store.mark_rewards_used([r.post_id for r in pending], policy_version=version)
                store.record_metrics({"loss": rng.random(), "kl": rng.random() / 10})
                if prune:
                    store.prune()
            next_learn += 1800
    store.close()
    grown = store.path.stat().st_size / 1e6  # freed pages are reused, not returned
    conn = sqlite3.connect(store.path)
    conn.execute("VACUUM")  # the file's size is then what the rows need
    rows = {
        table: int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        for table in ("posts", "reaction_snapshots", "rewards", "metric_points")
    }
    conn.close()
    return grown, store.path.stat().st_size / 1e6, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("scale", help="time the hot queries on a big store")
    s.add_argument("--db", default=str(Path(tempfile.gettempdir()) / "plaudit-store-scale"))
    s.add_argument("--posts", type=int, default=1_000_000)
    s.add_argument("--snapshots", type=int, default=5_000_000)
    s.add_argument("--runs", type=int, default=7)
    m = sub.add_parser("month", help="database size after a month, with and without pruning")
    m.add_argument("--days", type=int, default=30)
    m.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scale(args) if args.command == "scale" else month(args)


if __name__ == "__main__":
    main()
