"""The persistent store: SQLite in WAL mode, foreign keys on, versioned migrations.

The database is the source of truth for everything the daemon has done: every post from
candidate to reward, reaction snapshots per horizon, training runs, checkpoints, the persisted
control state and the metric history behind the status page's charts. Every write is one
transaction; one lock serialises the event loop and the torch worker on the connection.

Retention (`Store.prune`, run after each recorded checkpoint): rows are kept, but what only some
readers need goes once none can ask for it.
- Unpublished candidates (filtered, not chosen, failed) keep text, prompt, prediction and
  sampling; their token lists (prompt tokens, tokens, behaviour logprobs) go after
  `CANDIDATE_TOKENS_S` (7 days), never from the newest `PROBE_KEEP` posts (the online update's
  probe reads the newest 32 candidates of the newest policy version).
- Published posts keep their token lists until an update has used their reward, then for
  `PUBLISHED_TOKENS_S` (30 days from the reward); the reward model reads text and rewards only.
- Metric points: all of the last `METRIC_FULL_S` (7 days); older ones thinned to the last point
  of each hour per series; deleted after `METRIC_KEEP_S` (400 days).
- Snapshots, rewards, early scores, runs and checkpoints are kept.
Token lists live apart (`post_tokens`), so the pages pruning frees serve the next posts. A month
at the controller's defaults (a post every 4 h, 8 candidates of 60 tokens) takes 2.2 MB of file,
4.5 MB unpruned; two months 3.4 MB against 8.8 (bench/store_scale.py month).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from plaudit.state._errors import (
    DatabaseDamaged,
    DiskFull,
    InvalidTransition,
    SchemaTooNew,
    StateError,
)

DB_NAME = "plaudit.sqlite3"


def _v3_checkpoints(conn: sqlite3.Connection, folder: Path) -> None:
    """3: a checkpoint can be marked damaged (a start-up found it so and fell back past it), and
    paths inside the state folder are stored relative to it, so the folder can be moved or
    restored elsewhere. Absolute paths outside it stay as they are."""
    conn.execute("ALTER TABLE checkpoints ADD COLUMN damaged TEXT")
    for row in conn.execute("SELECT id, path FROM checkpoints").fetchall():
        relative = _relative(Path(row[1]), folder)
        if relative != row[1]:
            conn.execute("UPDATE checkpoints SET path = ? WHERE id = ?", (relative, row[0]))


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when it lies inside it (as given or with symlinks
    resolved), else as given."""
    for inner, outer in ((path, folder), (path.resolve(), folder.resolve())):
        if inner.is_absolute() and inner.is_relative_to(outer):
            return inner.relative_to(outer).as_posix()
    return str(path)


def _v4_scale(conn: sqlite3.Connection, folder: Path) -> None:
    """4: the store at scale (1M posts and 5M snapshots: each store call behind the collect
    sweep, /api/posts and /api/status under 50 ms; bench/store_scale.py).

    - ``posts.collected``: 1 once a post needs no more snapshots (it has one at every horizon
      the sweep asks for, or a reward), so the sweep reads the few posts still collecting from
      a partial index instead of testing every published post for a missing snapshot;
    - ``post_counts``: posts per (face, status), kept by triggers, so counting the published
      posts reads a row instead of a million index entries;
    - posts newest first per status and per (face, status): the listing's order;
    - rewards newest first, per face, and the unused ones: ``scores``, ``rewards``."""
    for statement in (
        "ALTER TABLE posts ADD COLUMN collected INTEGER NOT NULL DEFAULT 0",
        "UPDATE posts SET collected = 1 WHERE id IN (SELECT post_id FROM rewards)",
        "CREATE INDEX posts_collecting ON posts (published_at) "
        "WHERE status = 'published' AND collected = 0",
        "CREATE INDEX posts_status_id ON posts (status, id)",
        "CREATE INDEX posts_face_status_id ON posts (face, status, id)",
        "CREATE INDEX rewards_created ON rewards (created_at)",
        "CREATE INDEX rewards_face_created ON rewards (face, created_at)",
        "CREATE INDEX rewards_unused ON rewards (created_at) WHERE used_in_version IS NULL",
        "CREATE TABLE post_counts (face TEXT NOT NULL, status TEXT NOT NULL, "
        "n INTEGER NOT NULL, PRIMARY KEY (face, status)) WITHOUT ROWID",
        "INSERT INTO post_counts (face, status, n) "
        "SELECT face, status, COUNT(*) FROM posts GROUP BY face, status",
        f"CREATE TRIGGER post_counts_insert AFTER INSERT ON posts BEGIN {_COUNT_NEW} END",
        f"CREATE TRIGGER post_counts_delete AFTER DELETE ON posts BEGIN {_COUNT_OLD} END",
        "CREATE TRIGGER post_counts_update AFTER UPDATE OF face, status ON posts "
        "WHEN new.face IS NOT old.face OR new.status IS NOT old.status "
        f"BEGIN {_COUNT_OLD} {_COUNT_NEW} END",
        # The planner's statistics: without them it may walk the (status, id) index for a
        # filter on face and status.
        "ANALYZE",
    ):
        conn.execute(statement)


def _v5_tokens_apart(conn: sqlite3.Connection, folder: Path) -> None:
    """5: token lists (prompt tokens, tokens, behaviour logprobs: most of a post's bytes) move
    to ``post_tokens``, one row per post, so retention deletes rows there and SQLite reuses
    the pages they free; emptied in place inside ``posts``, they left every page partly used
    and the file kept growing. The old columns stay, always '[]' (dropping a column rewrites
    the table)."""
    has_tokens = "prompt_tokens != '[]' OR tokens != '[]' OR logprobs != '[]'"
    for statement in (
        "CREATE TABLE post_tokens (post_id INTEGER PRIMARY KEY REFERENCES posts (id) "
        "ON DELETE CASCADE, prompt_tokens TEXT NOT NULL, tokens TEXT NOT NULL, "
        "logprobs TEXT NOT NULL)",
        "INSERT INTO post_tokens (post_id, prompt_tokens, tokens, logprobs) "
        f"SELECT id, prompt_tokens, tokens, logprobs FROM posts WHERE {has_tokens}",
        f"UPDATE posts SET prompt_tokens = '[]', tokens = '[]', logprobs = '[]' WHERE {has_tokens}",
    ):
        conn.execute(statement)


_COUNT_NEW = (
    "INSERT INTO post_counts (face, status, n) VALUES (new.face, new.status, 1) "
    "ON CONFLICT (face, status) DO UPDATE SET n = n + 1;"
)
_COUNT_OLD = "UPDATE post_counts SET n = n - 1 WHERE face = old.face AND status = old.status;"


# Each entry moves the schema one version up; never edit a released entry, append a new one.
# An entry is SQL, or a function of the connection and the state folder for what SQL alone
# cannot do.
MIGRATIONS: tuple[str | Callable[[sqlite3.Connection, Path], None], ...] = (
    """
    CREATE TABLE posts (
        id INTEGER PRIMARY KEY,
        face TEXT NOT NULL,
        cycle_id TEXT NOT NULL,
        status TEXT NOT NULL,
        text TEXT NOT NULL,
        prompt TEXT NOT NULL DEFAULT '',
        prompt_tokens TEXT NOT NULL DEFAULT '[]',
        tokens TEXT NOT NULL DEFAULT '[]',
        logprobs TEXT NOT NULL DEFAULT '[]',
        policy_version INTEGER NOT NULL DEFAULT 0,
        predicted_reward REAL,
        filter_reason TEXT,
        idempotency_key TEXT UNIQUE,
        face_ref TEXT,
        url TEXT,
        published_at REAL,
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX posts_face_status ON posts (face, status, published_at);
    CREATE TABLE reaction_snapshots (
        id INTEGER PRIMARY KEY,
        post_id INTEGER NOT NULL REFERENCES posts (id) ON DELETE CASCADE,
        horizon_s REAL NOT NULL,
        found INTEGER NOT NULL,
        likes INTEGER NOT NULL DEFAULT 0,
        reposts INTEGER NOT NULL DEFAULT 0,
        replies INTEGER NOT NULL DEFAULT 0,
        quotes INTEGER NOT NULL DEFAULT 0,
        extra TEXT NOT NULL DEFAULT '{}',
        audience INTEGER,
        read_at REAL NOT NULL,
        UNIQUE (post_id, horizon_s)
    );
    CREATE TABLE rewards (
        post_id INTEGER PRIMARY KEY REFERENCES posts (id) ON DELETE CASCADE,
        face TEXT NOT NULL,
        score REAL NOT NULL,
        reward REAL NOT NULL,
        used_in_version INTEGER,
        created_at REAL NOT NULL
    );
    CREATE TABLE training_runs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('offline', 'online')),
        status TEXT NOT NULL,
        config TEXT NOT NULL DEFAULT '{}',
        metrics TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        started_at REAL NOT NULL,
        ended_at REAL
    );
    CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        policy_version INTEGER NOT NULL,
        kind TEXT NOT NULL,
        run_id INTEGER REFERENCES training_runs (id),
        metrics TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    CREATE TABLE control (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE metric_points (
        ts REAL NOT NULL,
        name TEXT NOT NULL,
        value REAL NOT NULL
    );
    CREATE INDEX metric_points_name_ts ON metric_points (name, ts);
    """,
    # 2: the sampling settings each candidate was drawn with (temperature, top_p, top_k), so an
    # update computes its importance ratios at the post's own settings, whatever the config
    # says by then.
    """
    ALTER TABLE posts ADD COLUMN sampling TEXT NOT NULL DEFAULT '{}';
    """,
    _v3_checkpoints,
    _v4_scale,
    _v5_tokens_apart,
    # 6: the approval queue (controller/_approval.py). A post held for a human: when it was
    # held, how it was decided (approved, edited, rejected, expired) and, when edited, the
    # text the model sampled (``text`` is what was published). A reward says where it came
    # from: the audience's reactions or a rejection (which has no score to normalise by).
    """
    ALTER TABLE posts ADD COLUMN held_at REAL;
    ALTER TABLE posts ADD COLUMN approval TEXT;
    ALTER TABLE posts ADD COLUMN original_text TEXT;
    ALTER TABLE rewards ADD COLUMN source TEXT NOT NULL DEFAULT 'reactions';
    """,
    # 7: a cycle's candidates by its id: the learn job reads a rewarded post's unpublished
    # candidates (every candidate teaches), among millions of candidate rows. Early scores: a
    # post's score at the early horizon, the final score estimated from it and that estimate
    # as a reward, which trains the policy hours before the final reward (then corrected).
    """
    CREATE INDEX posts_cycle ON posts (cycle_id);
    CREATE TABLE early_scores (
        post_id INTEGER PRIMARY KEY REFERENCES posts (id) ON DELETE CASCADE,
        face TEXT NOT NULL,
        horizon_s REAL NOT NULL,
        observed REAL NOT NULL,
        estimate REAL,
        reward REAL,
        used_in_version INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX early_scores_face_created ON early_scores (face, created_at);
    CREATE INDEX early_scores_unused ON early_scores (created_at)
        WHERE used_in_version IS NULL AND reward IS NOT NULL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


# Retention (Store.prune): how long what only some readers need is kept.
# Token lists (prompt_tokens, tokens, logprobs) of candidates that were not published: the
# online update's probe reads the newest few; kept a week, and the newest PROBE_KEEP always.
CANDIDATE_TOKENS_S = 7 * 86400.0
PROBE_KEEP = 128  # 4 x the 32 candidates the probe uses (controller/_learning.py)
# Token lists of published posts, from their reward's arrival, once an update has used it.
PUBLISHED_TOKENS_S = 30 * 86400.0
# Metric points: all of the last week; older ones thinned to the last of each hour per series,
# and deleted after 400 days.
METRIC_FULL_S = 7 * 86400.0
METRIC_KEEP_S = 400 * 86400.0
_PRUNE_KEYS = ("candidates", "published", "metrics")
# A post as `_post` reads it: its row and its token lists (none left: empty lists).
_POSTS = "posts p LEFT JOIN post_tokens t ON t.post_id = p.id"
_POST_COLUMNS = (
    "p.*, COALESCE(t.prompt_tokens, '[]') AS t_prompt_tokens, "
    "COALESCE(t.tokens, '[]') AS t_tokens, COALESCE(t.logprobs, '[]') AS t_logprobs"
)


@dataclass(frozen=True)
class PruneReport:
    tokens_dropped: int  # posts whose token lists went
    metric_points_deleted: int


class PostStatus(StrEnum):
    CANDIDATE = "candidate"  # generated, not (yet) chosen
    FILTERED = "filtered"  # dropped by a filter; filter_reason says which
    CHOSEN = "chosen"  # picked for publishing
    INTENT = "intent"  # idempotency key recorded; publishing may or may not have happened
    PUBLISHED = "published"
    FAILED = "failed"
    # The approval queue: chosen, held for a human, then one of the three below.
    AWAITING = "awaiting"
    APPROVED = "approved"  # as sampled or edited; publishes at the face's next chance
    REJECTED = "rejected"  # never published; its reward is the rejection's
    EXPIRED = "expired"  # nobody decided in time; never published


# Where each status may go next; anything else is a bug in the caller.
_TRANSITIONS: dict[PostStatus, frozenset[PostStatus]] = {
    PostStatus.CANDIDATE: frozenset({PostStatus.FILTERED, PostStatus.CHOSEN}),
    PostStatus.CHOSEN: frozenset({PostStatus.INTENT, PostStatus.FAILED, PostStatus.AWAITING}),
    PostStatus.AWAITING: frozenset({PostStatus.APPROVED, PostStatus.REJECTED, PostStatus.EXPIRED}),
    PostStatus.APPROVED: frozenset({PostStatus.INTENT}),
    PostStatus.REJECTED: frozenset(),
    PostStatus.EXPIRED: frozenset(),
    PostStatus.INTENT: frozenset({PostStatus.PUBLISHED, PostStatus.FAILED}),
    PostStatus.FILTERED: frozenset(),
    PostStatus.PUBLISHED: frozenset(),
    PostStatus.FAILED: frozenset(),
}


class Approval(StrEnum):
    """How a held post was decided."""

    APPROVED = "approved"
    EDITED = "edited"  # approved with a human's text
    REJECTED = "rejected"
    EXPIRED = "expired"  # nobody decided in time (then dropped or published, as configured)


class RewardSource(StrEnum):
    REACTIONS = "reactions"  # the audience: a face's score, normalised
    REJECTED = "rejected"  # a human refused the post in the approval queue


@dataclass(frozen=True)
class EarlyScore:
    """A published post's score at the early horizon and what it says of the final one."""

    post_id: int
    face: str
    horizon_s: float
    observed: float  # the face's score of the snapshot at horizon_s
    estimate: float | None  # the final score estimated from it (None: no estimator yet)
    reward: float | None  # that estimate as a reward, normalised as a final score is
    used_in_version: int | None
    created_at: float


class TrainingState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"


class TrainingMode(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True)
class NewCandidate:
    text: str
    prompt: str = ""
    prompt_tokens: Sequence[int] = ()
    tokens: Sequence[int] = ()
    logprobs: Sequence[float] = ()
    policy_version: int = 0
    predicted_reward: float | None = None
    # How it was sampled: {"temperature": 0.9, "top_p": 0.95, "top_k": None}.
    sampling: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Post:
    id: int
    face: str
    cycle_id: str
    status: PostStatus
    text: str
    prompt: str
    prompt_tokens: list[int]
    tokens: list[int]
    logprobs: list[float]
    policy_version: int
    predicted_reward: float | None
    filter_reason: str | None
    idempotency_key: str | None
    face_ref: str | None
    url: str | None
    published_at: float | None
    error: str | None
    created_at: float
    updated_at: float
    sampling: dict[str, Any] = field(default_factory=dict)
    # The approval queue: when the post was held, how it was decided, and the model's own
    # text when a human edited it (then ``text`` is the edit: not sampled by the policy).
    held_at: float | None = None
    approval: Approval | None = None
    original_text: str | None = None

    @property
    def edited(self) -> bool:
        return self.original_text is not None


@dataclass(frozen=True)
class Snapshot:
    post_id: int
    horizon_s: float
    found: bool
    likes: int
    reposts: int
    replies: int
    quotes: int
    extra: dict[str, int]
    audience: int | None
    read_at: float


@dataclass(frozen=True)
class Reward:
    post_id: int
    face: str
    score: float
    reward: float
    used_in_version: int | None
    created_at: float
    source: RewardSource = RewardSource.REACTIONS


@dataclass(frozen=True)
class TrainingRun:
    id: int
    kind: str
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    started_at: float
    ended_at: float | None


@dataclass(frozen=True)
class Checkpoint:
    id: int
    path: str  # absolute: stored relative to the state folder, resolved against where it is now
    policy_version: int
    kind: str
    run_id: int | None
    metrics: dict[str, Any]
    created_at: float
    damaged: str | None = None  # why a start-up refused it; None while it is intact


@dataclass(frozen=True)
class ControlState:
    training: TrainingState = TrainingState.RUNNING
    mode: TrainingMode = TrainingMode.ONLINE

    @property
    def learning_online(self) -> bool:
        """Online updates run (training on, in online mode)."""
        return self.training is TrainingState.RUNNING and self.mode is TrainingMode.ONLINE


@dataclass(frozen=True)
class PostStory:
    """Everything the store knows about one post, for tests, the API and debugging."""

    post: Post
    snapshots: list[Snapshot] = field(default_factory=list)
    reward: Reward | None = None


def _where(**equal: object) -> tuple[str, list[object]]:
    """A WHERE clause for the given column = value filters (None: no filter on that column)."""
    used = {k: v for k, v in equal.items() if v is not None}
    if not used:
        return "", []
    return "WHERE " + " AND ".join(f"{k} = ?" for k in used), list(used.values())


# Published posts still collecting snapshots, in the words of the partial index
# posts_collecting (SQLite uses it only for a query that repeats its condition literally).
_COLLECTING = "status = 'published' AND collected = 0"


def _at_most(bound: float) -> float:
    """An upper bound on published_at for `published_at + horizon <= now`, a little above
    ``now - horizon`` so float rounding never drops a post the exact test admits."""
    return bound + 1e-9 * max(1.0, abs(bound))


def _post(row: sqlite3.Row) -> Post:
    return Post(
        id=row["id"],
        face=row["face"],
        cycle_id=row["cycle_id"],
        status=PostStatus(row["status"]),
        text=row["text"],
        prompt=row["prompt"],
        prompt_tokens=json.loads(row["t_prompt_tokens"]),
        tokens=json.loads(row["t_tokens"]),
        logprobs=json.loads(row["t_logprobs"]),
        policy_version=row["policy_version"],
        predicted_reward=row["predicted_reward"],
        filter_reason=row["filter_reason"],
        idempotency_key=row["idempotency_key"],
        face_ref=row["face_ref"],
        url=row["url"],
        published_at=row["published_at"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        sampling=json.loads(row["sampling"]),
        held_at=row["held_at"],
        approval=Approval(row["approval"]) if row["approval"] is not None else None,
        original_text=row["original_text"],
    )


def _snapshot(row: sqlite3.Row) -> Snapshot:
    return Snapshot(
        post_id=row["post_id"],
        horizon_s=row["horizon_s"],
        found=bool(row["found"]),
        likes=row["likes"],
        reposts=row["reposts"],
        replies=row["replies"],
        quotes=row["quotes"],
        extra=json.loads(row["extra"]),
        audience=row["audience"],
        read_at=row["read_at"],
    )


def _reward(row: sqlite3.Row) -> Reward:
    return Reward(
        post_id=row["post_id"],
        face=row["face"],
        score=row["score"],
        reward=row["reward"],
        used_in_version=row["used_in_version"],
        created_at=row["created_at"],
        source=RewardSource(row["source"]),
    )


def _early(row: sqlite3.Row) -> EarlyScore:
    return EarlyScore(
        post_id=row["post_id"],
        face=row["face"],
        horizon_s=row["horizon_s"],
        observed=row["observed"],
        estimate=row["estimate"],
        reward=row["reward"],
        used_in_version=row["used_in_version"],
        created_at=row["created_at"],
    )


def _run(row: sqlite3.Row) -> TrainingRun:
    return TrainingRun(
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        config=json.loads(row["config"]),
        metrics=json.loads(row["metrics"]),
        error=row["error"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
    )


def _checkpoint(row: sqlite3.Row, folder: Path) -> Checkpoint:
    return Checkpoint(
        id=row["id"],
        path=str(folder / row["path"]),  # an absolute stored path stays itself
        policy_version=row["policy_version"],
        kind=row["kind"],
        run_id=row["run_id"],
        metrics=json.loads(row["metrics"]),
        created_at=row["created_at"],
        damaged=row["damaged"],
    )


class Store:
    """Typed access to the state database. Open with ``Store.open(folder)``; close when done."""

    def __init__(
        self, *, conn: sqlite3.Connection, path: Path, now: Callable[[], float] = time.time
    ) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path
        # Every timestamp the store writes comes from here: the daemon passes the wall clock,
        # a test or benchmark the `now` of its simulated clock.
        self.now = now

    # -- life ------------------------------------------------------------------------------

    @property
    def folder(self) -> Path:
        """The state folder the database lies in."""
        return self.path.parent

    @classmethod
    def open(
        cls, folder: Path, *, now: Callable[[], float] = time.time, check: bool = False
    ) -> Store:
        """Open (creating if needed) the database in ``folder`` and bring its schema up to date.
        With ``check``, run SQLite's ``quick_check`` first (`quick_check`): the daemon's
        start-up refuses a damaged database instead of failing every job later."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state folder {folder}: {exc.strerror}") from None
        path = folder / DB_NAME
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"cannot open state database {path}: {exc}. If the file is corrupt, move it "
                f"aside and restore a backup; plaudit never deletes it"
            ) from None
        store = cls(conn=conn, path=path, now=now)
        try:
            if check:
                store.quick_check()
            store._migrate()
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        try:
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"state database {self.path} has schema version {version}, but this plaudit "
                f"knows versions up to {SCHEMA_VERSION}: upgrade plaudit, or use another "
                f"--state-dir"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            step = MIGRATIONS[target - 1]
            with self._tx() as conn:
                if isinstance(step, str):
                    for statement in step.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                else:
                    step(conn, self.folder)
                conn.execute(f"PRAGMA user_version={target}")

    def quick_check(self) -> None:
        """SQLite's ``PRAGMA quick_check`` (every page of every b-tree, one pass over the file;
        unlike integrity_check it skips matching indexes to rows); raise `DatabaseDamaged`
        naming the file, what SQLite found, and the fix."""
        try:
            found = [str(r[0]) for r in self._conn.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None
        if found != ["ok"]:
            raise self._damaged("; ".join(found))

    def _damaged(self, found: str) -> DatabaseDamaged:
        return DatabaseDamaged(
            f"state database {self.path} is damaged ({found}). Restore a backup with "
            f"`plaudit state restore BACKUP --force` (it keeps the damaged files aside), or "
            f"move the file away to start afresh; plaudit never deletes it"
        )

    def backup(self, dest: Path) -> None:
        """A consistent copy of the database at ``dest`` (SQLite's online backup API: safe
        while the daemon writes), as one self-contained file (rollback journal, no WAL)."""
        try:
            target = sqlite3.connect(dest, isolation_level=None)
            try:
                with self._lock:
                    self._conn.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
            finally:
                target.close()
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"cannot back up state database {self.path} to {dest}: {exc}"
            ) from None

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; SQLite errors leave as StateError, nothing half-written."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    # SQLite already rolled back on some errors (SQLITE_FULL).
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                raise StateError(f"state database {self.path}: {exc}; nothing was written") from exc
            except sqlite3.OperationalError as exc:
                if "full" in str(exc).lower():
                    raise DiskFull(
                        f"state database {self.path}: disk full; the write was rolled back and "
                        f"no committed data was lost. Free space and plaudit continues"
                    ) from exc
                raise StateError(f"state database {self.path}: {exc}") from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, args).fetchall())
            except sqlite3.DatabaseError as exc:
                raise StateError(f"state database {self.path}: {exc}") from exc

    def integrity_check(self) -> str:
        return str(self._query("PRAGMA integrity_check")[0][0])

    # -- posts -----------------------------------------------------------------------------

    def add_candidates(
        self, *, face: str, cycle_id: str, candidates: Sequence[NewCandidate]
    ) -> list[int]:
        now = self.now()
        ids: list[int] = []
        with self._tx() as conn:
            for c in candidates:
                cur = conn.execute(
                    "INSERT INTO posts (face, cycle_id, status, text, prompt, policy_version, "
                    "predicted_reward, sampling, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        face,
                        cycle_id,
                        PostStatus.CANDIDATE.value,
                        c.text,
                        c.prompt,
                        c.policy_version,
                        c.predicted_reward,
                        json.dumps(dict(c.sampling)),
                        now,
                        now,
                    ),
                )
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
                if c.prompt_tokens or c.tokens or c.logprobs:
                    conn.execute(
                        "INSERT INTO post_tokens (post_id, prompt_tokens, tokens, logprobs) "
                        "VALUES (?, ?, ?, ?)",
                        (
                            cur.lastrowid,
                            json.dumps(list(c.prompt_tokens)),
                            json.dumps(list(c.tokens)),
                            json.dumps([round(float(x), 6) for x in c.logprobs]),
                        ),
                    )
        return ids

    def _move(self, conn: sqlite3.Connection, post_id: int, to: PostStatus, **cols: Any) -> None:
        row = conn.execute("SELECT status FROM posts WHERE id = ?", (post_id,)).fetchone()
        if row is None:
            raise StateError(f"post {post_id} does not exist")
        current = PostStatus(row["status"])
        if to not in _TRANSITIONS[current]:
            raise InvalidTransition(
                f"post {post_id} is {current.value} and cannot become {to.value}; allowed next: "
                f"{', '.join(sorted(s.value for s in _TRANSITIONS[current])) or 'none'}"
            )
        sets = ", ".join(f"{k} = ?" for k in cols)
        sql = (
            f"UPDATE posts SET status = ?, updated_at = ?{', ' + sets if sets else ''} WHERE id = ?"
        )
        conn.execute(sql, (to.value, self.now(), *cols.values(), post_id))

    def mark_filtered(self, post_id: int, *, reason: str) -> None:
        with self._tx() as conn:
            self._move(conn, post_id, PostStatus.FILTERED, filter_reason=reason)

    def choose(self, post_id: int) -> None:
        with self._tx() as conn:
            self._move(conn, post_id, PostStatus.CHOSEN)

    def record_intent(self, post_id: int, *, idempotency_key: str) -> None:
        """Called BEFORE publishing: a crash after this point is resolved by re-publishing with
        the same key, which the face turns into the same post."""
        with self._tx() as conn:
            self._move(conn, post_id, PostStatus.INTENT, idempotency_key=idempotency_key)

    def mark_published(
        self, post_id: int, *, ref: str, url: str | None, published_at: float
    ) -> None:
        with self._tx() as conn:
            self._move(
                conn,
                post_id,
                PostStatus.PUBLISHED,
                face_ref=ref,
                url=url,
                published_at=published_at,
            )

    def mark_failed(self, post_id: int, *, error: str) -> None:
        with self._tx() as conn:
            self._move(conn, post_id, PostStatus.FAILED, error=error)

    # -- the approval queue ----------------------------------------------------------------

    def hold(self, post_id: int) -> None:
        """A chosen post waits for a human's decision instead of publishing."""
        with self._tx() as conn:
            self._move(conn, post_id, PostStatus.AWAITING, held_at=self.now())

    def approve(self, post_id: int, *, text: str | None = None) -> Post:
        """Approve a held post, as sampled or (``text``) edited: it publishes at the face's
        next chance. An edit keeps the model's text in ``original_text``."""
        with self._tx() as conn:
            row = conn.execute("SELECT text FROM posts WHERE id = ?", (post_id,)).fetchone()
            if row is None:
                raise StateError(f"post {post_id} does not exist")
            if text is None or text == row["text"]:
                self._move(conn, post_id, PostStatus.APPROVED, approval=Approval.APPROVED.value)
            else:
                self._move(
                    conn,
                    post_id,
                    PostStatus.APPROVED,
                    approval=Approval.EDITED.value,
                    original_text=row["text"],
                    text=text,
                )
        return self.get_post(post_id)

    def reject(self, post_id: int, *, reward: float) -> Post:
        """Reject a held post: never published, and ``reward`` (the rejection's, from the
        config) is its reward, in the same transaction."""
        with self._tx() as conn:
            self._move(conn, post_id, PostStatus.REJECTED, approval=Approval.REJECTED.value)
            face = conn.execute("SELECT face FROM posts WHERE id = ?", (post_id,)).fetchone()[0]
            conn.execute(
                "INSERT INTO rewards (post_id, face, score, reward, source, created_at) "
                "VALUES (?, ?, 0.0, ?, ?, ?)",
                (post_id, face, reward, RewardSource.REJECTED.value, self.now()),
            )
        return self.get_post(post_id)

    def expire(self, post_id: int, *, publish: bool) -> Post:
        """Nobody decided in time: drop the post (``publish`` False) or approve it."""
        to = PostStatus.APPROVED if publish else PostStatus.EXPIRED
        with self._tx() as conn:
            self._move(conn, post_id, to, approval=Approval.EXPIRED.value)
        return self.get_post(post_id)

    def queue(self, *, face: str | None = None, status: PostStatus) -> list[Post]:
        """Held (``AWAITING``) or approved (``APPROVED``) posts, oldest first."""
        if status not in (PostStatus.AWAITING, PostStatus.APPROVED):
            raise ValueError(f"the queue holds awaiting and approved posts, not {status.value}")
        return self.posts(face=face, status=status, limit=10_000, newest_first=False)

    def get_post(self, post_id: int) -> Post:
        rows = self._query(f"SELECT {_POST_COLUMNS} FROM {_POSTS} WHERE p.id = ?", (post_id,))
        if not rows:
            raise StateError(f"post {post_id} does not exist")
        return _post(rows[0])

    def posts(
        self,
        *,
        face: str | None = None,
        status: PostStatus | None = None,
        cycle_id: str | None = None,
        filter_reason: str | None = None,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
    ) -> list[Post]:
        clause, args = _where(
            face=face,
            status=status.value if status else None,
            cycle_id=cycle_id,
            filter_reason=filter_reason,
        )
        order = "DESC" if newest_first else "ASC"
        rows = self._query(
            f"SELECT {_POST_COLUMNS} FROM {_POSTS} {clause} ORDER BY p.id {order} LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [_post(r) for r in rows]

    def count_posts(self, *, face: str | None = None, status: PostStatus | None = None) -> int:
        # post_counts, kept by triggers: one row read, not an index walk over every post.
        clause, args = _where(face=face, status=status.value if status else None)
        return int(self._query(f"SELECT COALESCE(SUM(n), 0) FROM post_counts {clause}", args)[0][0])

    def in_flight(self, *, face: str | None = None) -> list[Post]:
        """Posts with an intent but no outcome: a crash happened around their publish."""
        args: tuple[Any, ...] = (PostStatus.INTENT.value,)
        sql = f"SELECT {_POST_COLUMNS} FROM {_POSTS} WHERE status = ?"
        if face is not None:
            sql += " AND face = ?"
            args += (face,)
        return [_post(r) for r in self._query(sql + " ORDER BY p.id", args)]

    def last_published_at(self, face: str) -> float | None:
        rows = self._query(
            "SELECT MAX(published_at) FROM posts WHERE face = ? AND status = ?",
            (face, PostStatus.PUBLISHED.value),
        )
        value = rows[0][0]
        return float(value) if value is not None else None

    def published_since(self, face: str, since: float) -> int:
        rows = self._query(
            "SELECT COUNT(*) FROM posts WHERE face = ? AND status = ? AND published_at >= ?",
            (face, PostStatus.PUBLISHED.value, since),
        )
        return int(rows[0][0])

    def published_texts(self, *, face: str | None = None, limit: int = 500) -> list[str]:
        sql = "SELECT text FROM posts WHERE status = ?"
        args: tuple[Any, ...] = (PostStatus.PUBLISHED.value,)
        if face is not None:
            sql += " AND face = ?"
            args += (face,)
        rows = self._query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [r[0] for r in rows]

    # -- reactions and rewards -------------------------------------------------------------

    def due_snapshots(self, *, now: float, horizons_s: Sequence[float]) -> list[tuple[Post, float]]:
        """(post, horizon) pairs whose horizon has passed and that have no snapshot yet.

        Posts that have a snapshot at every one of ``horizons_s`` are first marked collected
        and never looked at again (not even when a later configuration adds a horizon), so the
        sweep reads only the posts still collecting, whatever the size of the history."""
        horizons = sorted(set(horizons_s))
        if not horizons:
            return []
        marks = ", ".join("?" * len(horizons))
        with self._tx() as conn:
            conn.execute(
                f"UPDATE posts SET collected = 1 WHERE {_COLLECTING} AND published_at <= ? "
                f"AND (SELECT COUNT(*) FROM reaction_snapshots s WHERE s.post_id = posts.id "
                f"AND s.horizon_s IN ({marks})) = ?",
                (_at_most(now - horizons[-1]), *horizons, len(horizons)),
            )
        due: list[tuple[Post, float]] = []
        for horizon in horizons_s:
            # The literal status and the range on published_at let SQLite read the partial
            # index posts_collecting; the exact test stays as it always was.
            rows = self._query(
                f"SELECT {_POST_COLUMNS} FROM {_POSTS} WHERE {_COLLECTING} AND p.published_at <= ? "
                "AND p.published_at + ? <= ? AND NOT EXISTS (SELECT 1 FROM reaction_snapshots s "
                "WHERE s.post_id = p.id AND s.horizon_s = ?) ORDER BY p.published_at",
                (_at_most(now - horizon), horizon, now, horizon),
            )
            due.extend((_post(r), horizon) for r in rows)
        return due

    def add_snapshot(self, snapshot: Snapshot) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO reaction_snapshots (post_id, horizon_s, found, likes, "
                "reposts, replies, quotes, extra, audience, read_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    snapshot.post_id,
                    snapshot.horizon_s,
                    int(snapshot.found),
                    snapshot.likes,
                    snapshot.reposts,
                    snapshot.replies,
                    snapshot.quotes,
                    json.dumps(snapshot.extra),
                    snapshot.audience,
                    snapshot.read_at,
                ),
            )

    def snapshots(self, post_id: int) -> list[Snapshot]:
        rows = self._query(
            "SELECT * FROM reaction_snapshots WHERE post_id = ? ORDER BY horizon_s", (post_id,)
        )
        return [_snapshot(r) for r in rows]

    def add_reward(self, *, post_id: int, face: str, score: float, reward: float) -> None:
        """The audience's reward of a published post (a rejection's: `reject`)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO rewards (post_id, face, score, reward, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (post_id, face, score, reward, self.now()),
            )

    def scores(self, face: str, *, limit: int = 1000) -> list[float]:
        """The face's most recent raw scores of the bot's own published posts (for
        normalising; a rejection has no score)."""
        rows = self._query(
            "SELECT score FROM rewards WHERE face = ? AND source = 'reactions' "
            "ORDER BY created_at DESC LIMIT ?",
            (face, limit),
        )
        return [float(r[0]) for r in rows]

    def rewards(
        self,
        *,
        face: str | None = None,
        unused_only: bool = False,
        source: RewardSource | None = None,
        limit: int = 1000,
    ) -> list[Reward]:
        clause, args = _where(face=face, source=source.value if source else None)
        if unused_only:
            clause += (" AND" if clause else "WHERE") + " used_in_version IS NULL"
        rows = self._query(
            f"SELECT * FROM rewards {clause} ORDER BY created_at DESC LIMIT ?", (*args, limit)
        )
        return [_reward(r) for r in rows]

    def mark_rewards_used(self, post_ids: Sequence[int], *, policy_version: int) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE rewards SET used_in_version = ? WHERE post_id = ?",
                [(policy_version, pid) for pid in post_ids],
            )

    def release_rewards_after(self, policy_version: int) -> int:
        """Return to pending the rewards (and early rewards) used by updates newer than
        ``policy_version`` (the version the weights were restored from): those updates are lost
        with their weights, so their rewards train again. Returns how many."""
        with self._tx() as conn:
            n = 0
            for table in ("rewards", "early_scores"):
                cur = conn.execute(
                    f"UPDATE {table} SET used_in_version = NULL WHERE used_in_version > ?",
                    (policy_version,),
                )
                n += int(cur.rowcount)
            return n

    # -- early scores ----------------------------------------------------------------------

    def add_early_score(
        self,
        *,
        post_id: int,
        face: str,
        horizon_s: float,
        observed: float,
        estimate: float | None,
        reward: float | None,
    ) -> None:
        """A post's score at the early horizon and, once an estimator exists, the final score
        it predicts and that as a reward. One per post: a second one is ignored."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO early_scores (post_id, face, horizon_s, observed, "
                "estimate, reward, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (post_id, face, horizon_s, observed, estimate, reward, self.now()),
            )

    def early_score(self, post_id: int) -> EarlyScore | None:
        rows = self._query("SELECT * FROM early_scores WHERE post_id = ?", (post_id,))
        return _early(rows[0]) if rows else None

    def early_pairs(
        self, face: str, *, horizon_s: float, limit: int = 100
    ) -> list[tuple[float, float]]:
        """(score at ``horizon_s``, final score) of the face's newest posts that have both:
        what an estimator of the final score from the early one is fitted on."""
        rows = self._query(
            "SELECT e.observed, r.score FROM early_scores e JOIN rewards r ON r.post_id = "
            "e.post_id WHERE e.face = ? AND e.horizon_s = ? AND r.source = 'reactions' "
            "ORDER BY e.created_at DESC LIMIT ?",
            (face, horizon_s, limit),
        )
        return [(float(r[0]), float(r[1])) for r in rows]

    def early_rewards(self, *, limit: int = 1000) -> list[EarlyScore]:
        """Early rewards no update used yet, of posts whose final reward has not arrived."""
        rows = self._query(
            "SELECT e.* FROM early_scores e WHERE e.used_in_version IS NULL AND e.reward IS NOT "
            "NULL AND NOT EXISTS (SELECT 1 FROM rewards r WHERE r.post_id = e.post_id) "
            "ORDER BY e.created_at DESC LIMIT ?",
            (limit,),
        )
        return [_early(r) for r in rows]

    def mark_early_used(self, post_ids: Sequence[int], *, policy_version: int) -> None:
        with self._tx() as conn:
            conn.executemany(
                "UPDATE early_scores SET used_in_version = ? WHERE post_id = ?",
                [(policy_version, pid) for pid in post_ids],
            )

    def story(self, post_id: int) -> PostStory:
        rewards = self._query("SELECT * FROM rewards WHERE post_id = ?", (post_id,))
        return PostStory(
            post=self.get_post(post_id),
            snapshots=self.snapshots(post_id),
            reward=_reward(rewards[0]) if rewards else None,
        )

    # -- training runs and checkpoints -----------------------------------------------------

    def start_run(self, *, kind: str, config: dict[str, Any]) -> int:
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO training_runs (kind, status, config, started_at) VALUES (?, ?, ?, ?)",
                (kind, "running", json.dumps(config, default=str), self.now()),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def finish_run(
        self, run_id: int, *, status: str, metrics: dict[str, Any], error: str | None = None
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE training_runs SET status = ?, metrics = ?, error = ?, ended_at = ? "
                "WHERE id = ?",
                (status, json.dumps(metrics, default=str), error, self.now(), run_id),
            )

    def runs(self, *, kind: str | None = None, limit: int = 50) -> list[TrainingRun]:
        sql, args = "SELECT * FROM training_runs", tuple[str, ...]()
        if kind is not None:
            sql, args = sql + " WHERE kind = ?", (kind,)
        rows = self._query(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [_run(r) for r in rows]

    def interrupt_stale_runs(self) -> int:
        """At start: runs left 'running' by a crash are marked interrupted."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE training_runs SET status = 'interrupted', ended_at = ? "
                "WHERE status = 'running'",
                (self.now(),),
            )
            return cur.rowcount

    def add_checkpoint(
        self,
        *,
        path: Path,
        policy_version: int,
        kind: str,
        run_id: int | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> int:
        """Record a checkpoint folder (stored relative to the state folder when inside it),
        then `prune`: every update and offline fit ends here, so retention runs as often as
        the rewards that decide it are used."""
        stored = _relative(Path(path), self.folder)
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO checkpoints (path, policy_version, kind, run_id, metrics, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (stored, policy_version, kind, run_id, json.dumps(metrics or {}), self.now()),
            )
            assert cur.lastrowid is not None
            checkpoint_id = cur.lastrowid
        self.prune()
        return checkpoint_id

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint not marked damaged."""
        rows = self._query(
            "SELECT * FROM checkpoints WHERE damaged IS NULL "
            "ORDER BY policy_version DESC, id DESC LIMIT 1"
        )
        return _checkpoint(rows[0], self.folder) if rows else None

    def checkpoints(self, *, limit: int = 100, intact_only: bool = False) -> list[Checkpoint]:
        """Newest first: by policy version with ``intact_only`` (the order a start-up tries
        them in), else as recorded."""
        if intact_only:
            sql = "WHERE damaged IS NULL ORDER BY policy_version DESC, id DESC"
        else:
            sql = "ORDER BY id DESC"
        rows = self._query(f"SELECT * FROM checkpoints {sql} LIMIT ?", (limit,))
        return [_checkpoint(r, self.folder) for r in rows]

    def mark_checkpoint_damaged(self, checkpoint_id: int, *, reason: str, path: Path) -> None:
        """Never restore this checkpoint again; ``path`` is where its folder lies now (moved
        aside for inspection)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE checkpoints SET damaged = ?, path = ? WHERE id = ?",
                (reason, _relative(Path(path), self.folder), checkpoint_id),
            )

    def policy_version(self) -> int:
        latest = self.latest_checkpoint()
        return latest.policy_version if latest else 0

    # -- control state ---------------------------------------------------------------------

    def control(self) -> ControlState:
        values = {r["key"]: r["value"] for r in self._query("SELECT key, value FROM control")}
        default = ControlState()
        return ControlState(
            training=TrainingState(values.get("training", default.training.value)),
            mode=TrainingMode(values.get("mode", default.mode.value)),
        )

    def set_control(
        self, *, training: TrainingState | None = None, mode: TrainingMode | None = None
    ) -> ControlState:
        now = self.now()
        with self._tx() as conn:
            for key, value in (("training", training), ("mode", mode)):
                if value is not None:
                    conn.execute(
                        "INSERT INTO control (key, value, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                        "updated_at = excluded.updated_at",
                        (key, value.value, now),
                    )
        return self.control()

    def get_value(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM control WHERE key = ?", (f"x:{key}",))
        return rows[0][0] if rows else None

    def set_value(self, key: str, value: str) -> None:
        """Small named values the controller persists (last offline fit, ...)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO control (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (f"x:{key}", value, self.now()),
            )

    # -- retention -------------------------------------------------------------------------

    def prune(self, now: float | None = None) -> PruneReport:
        """Drop what no reader needs any more (the retention in the module docstring): token
        lists of old unpublished candidates and of published posts whose reward an update used
        long ago, and old metric points thinned to one an hour, then deleted. Each run looks
        only at what became old since the last one (watermarks in the control table), so it is
        cheap at any size; `add_checkpoint` runs it. Freed pages are reused, not returned to
        the file system (the file stops growing; VACUUM shrinks it)."""
        now = self.now() if now is None else now
        candidates_until = now - CANDIDATE_TOKENS_S
        published_until = now - PUBLISHED_TOKENS_S
        # Hour-aligned, so a thinned hour is never thinned again with half its points gone.
        thin_until = (now - METRIC_FULL_S) // 3600 * 3600
        with self._tx() as conn:
            marks = dict(conn.execute("SELECT key, value FROM control WHERE key LIKE 'prune:%'"))
            since = {k: float(marks.get(f"prune:{k}", "-inf")) for k in _PRUNE_KEYS}
            newest = conn.execute("SELECT COALESCE(MAX(id), 0) FROM posts").fetchone()[0]
            # Unpublished: the online update's probe reads the newest PROBE_KEEP posts
            # whatever their status; nothing else reads an unpublished post's tokens.
            cur = conn.execute(
                "DELETE FROM post_tokens WHERE post_id IN (SELECT id FROM posts WHERE id > ? "
                "AND id <= ? AND created_at < ? "
                "AND status IN ('candidate', 'filtered', 'failed', 'expired'))",
                (since["candidates"], newest - PROBE_KEEP, candidates_until),
            )
            tokens = cur.rowcount
            last = conn.execute(
                "SELECT MAX(id) FROM posts WHERE id > ? AND id <= ? AND created_at < ?",
                (since["candidates"], newest - PROBE_KEEP, candidates_until),
            ).fetchone()[0]
            # Published: once an update used the reward (a restore that falls back past that
            # update returns it to pending: the learner then skips a post without tokens).
            cur = conn.execute(
                "DELETE FROM post_tokens WHERE post_id IN (SELECT post_id FROM rewards "
                "WHERE created_at >= ? AND created_at < ? AND used_in_version IS NOT NULL)",
                (since["published"], published_until),
            )
            tokens += cur.rowcount
            cur = conn.execute(
                "DELETE FROM metric_points WHERE ts >= ? AND ts < ? AND rowid NOT IN "
                "(SELECT MAX(rowid) FROM metric_points WHERE ts >= ? AND ts < ? "
                "GROUP BY name, CAST(ts / 3600 AS INTEGER))",
                (since["metrics"], thin_until, since["metrics"], thin_until),
            )
            points = cur.rowcount
            cur = conn.execute("DELETE FROM metric_points WHERE ts < ?", (now - METRIC_KEEP_S,))
            points += cur.rowcount
            for key, value in (
                ("candidates", last if last is not None else since["candidates"]),
                ("published", max(published_until, since["published"])),
                ("metrics", max(thin_until, since["metrics"])),
            ):
                conn.execute(
                    "INSERT INTO control (key, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at",
                    (f"prune:{key}", repr(float(value)), now),
                )
        return PruneReport(tokens_dropped=tokens, metric_points_deleted=points)

    # -- metric history (the status page's charts) -----------------------------------------

    def record_metrics(self, values: dict[str, float], *, ts: float | None = None) -> None:
        stamp = self.now() if ts is None else ts
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO metric_points (ts, name, value) VALUES (?, ?, ?)",
                [(stamp, k, float(v)) for k, v in values.items()],
            )

    def metric_history(
        self, names: Sequence[str], *, since: float = 0.0, limit: int = 2000
    ) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {}
        for name in names:
            rows = self._query(
                "SELECT ts, value FROM (SELECT ts, value FROM metric_points WHERE name = ? "
                "AND ts >= ? ORDER BY ts DESC LIMIT ?) ORDER BY ts",
                (name, since, limit),
            )
            out[name] = [(float(r[0]), float(r[1])) for r in rows]
        return out
