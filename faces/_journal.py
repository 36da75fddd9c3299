"""A durable record of publish intents, for faces whose platform forgets idempotency keys.

Mastodon keeps an `Idempotency-Key` for about an hour, Discord checks a `nonce` for a few
minutes, Telegram has no key at all; `Face.publish()` must return the same ref for the same key
for ever, across restarts. So a network face writes the intent here BEFORE sending and the
result AFTER:

    entry = journal.get(key)
    if entry is not None and entry.published is not None:
        return entry.published                      # done before: no request at all
    journal.begin(key, text=draft.text)             # durable before the request leaves
    ... send ...
    journal.published(key, published)               # durable once the platform answered

A key that is still PENDING when a later call comes (the process crashed, a request timed out)
is the dangerous case: the platform may or may not have applied it. Each face decides, with the
platform's tools, whether it can find out (a server-side key still in its window, a search of its
own recent posts) or must refuse to send again (`UNKNOWN`, at-most-once).

One SQLite file per face instance (in its `state_dir`), written with synchronous=FULL so that a
recorded intent survives a power cut. Calls are short and synchronous; faces call them from the
event loop directly.
"""

from __future__ import annotations

import enum
import hashlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ._clock import Clock, WallClock, utc_datetime
from ._models import Published

__all__ = ["JournalEntry", "JournalState", "PublishJournal"]


class JournalState(enum.Enum):
    """Where a publish intent stands."""

    PENDING = "pending"  # recorded, request sent or about to be; outcome not known yet
    PUBLISHED = "published"  # the platform confirmed; `published` holds the result
    UNKNOWN = "unknown"  # the outcome cannot be found out; the face will not send again


@dataclass(frozen=True)
class JournalEntry:
    """One idempotency key's record."""

    key: str
    state: JournalState
    text_sha256: str
    started_at: datetime
    attempts: int
    published: Published | None
    note: str


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS publish_journal (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    started_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    ref TEXT,
    url TEXT,
    published_at TEXT,
    note TEXT NOT NULL DEFAULT ''
)
"""


class PublishJournal:
    """The publish intents of one face instance, in `path` (an SQLite file, created with its
    folder on first use). Intents are stamped with `clock` (the face's)."""

    def __init__(self, path: Path, *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.clock: Clock = clock if clock is not None else WallClock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, key: str) -> JournalEntry | None:
        row = (
            self._conn()
            .execute(
                "SELECT key, state, text_sha256, started_at, attempts, ref, url, published_at, "
                "note FROM publish_journal WHERE key = ?",
                (key,),
            )
            .fetchone()
        )
        if row is None:
            return None
        key, state, digest, started, attempts, ref, url, published_at, note = row
        published = None
        if ref is not None and published_at is not None:
            published = Published(
                ref=ref, url=url, published_at=datetime.fromisoformat(published_at)
            )
        return JournalEntry(
            key=key,
            state=JournalState(state),
            text_sha256=digest,
            started_at=datetime.fromisoformat(started),
            attempts=attempts,
            published=published,
            note=note,
        )

    def begin(self, key: str, *, text: str) -> JournalEntry:
        """Record the intent to publish `text` under `key` (PENDING), or count one more
        attempt of an intent already recorded. A key reused for a different text is a caller
        bug and raises ValueError."""
        digest = text_digest(text)
        existing = self.get(key)
        db = self._conn()
        if existing is None:
            db.execute(
                "INSERT INTO publish_journal (key, state, text_sha256, started_at) "
                "VALUES (?, ?, ?, ?)",
                (key, JournalState.PENDING.value, digest, utc_datetime(self.clock).isoformat()),
            )
        else:
            if existing.text_sha256 != digest:
                raise ValueError(
                    f"Idempotency key {key!r} was first used for a different text; a key names "
                    "one post. Use a new key for a new draft."
                )
            db.execute("UPDATE publish_journal SET attempts = attempts + 1 WHERE key = ?", (key,))
        entry = self.get(key)
        assert entry is not None
        return entry

    def published(self, key: str, result: Published) -> None:
        """Record the platform's confirmation of `key`."""
        self._conn().execute(
            "UPDATE publish_journal SET state = ?, ref = ?, url = ?, published_at = ?, note = '' "
            "WHERE key = ?",
            (
                JournalState.PUBLISHED.value,
                result.ref,
                result.url,
                result.published_at.isoformat(),
                key,
            ),
        )

    def unknown(self, key: str, *, note: str) -> None:
        """Record that `key`'s outcome cannot be found out (the face will not send it again)."""
        self._conn().execute(
            "UPDATE publish_journal SET state = ?, note = ? WHERE key = ?",
            (JournalState.UNKNOWN.value, note, key),
        )

    def discard(self, key: str) -> None:
        """Forget a PENDING intent that certainly did not reach the platform (a refused
        connection, a 4xx answer), so that a later call may send it again."""
        self._conn().execute(
            "DELETE FROM publish_journal WHERE key = ? AND state = ?",
            (key, JournalState.PENDING.value),
        )

    def count(self, state: JournalState) -> int:
        """How many keys are in `state` (shown by `check()`: unconfirmed publishes)."""
        (n,) = (
            self._conn()
            .execute("SELECT COUNT(*) FROM publish_journal WHERE state = ?", (state.value,))
            .fetchone()
        )
        return int(n)

    def published_refs(self) -> set[str]:
        """The refs of every confirmed post (to tell own posts apart when reconciling)."""
        rows = self._conn().execute(
            "SELECT ref FROM publish_journal WHERE state = ? AND ref IS NOT NULL",
            (JournalState.PUBLISHED.value,),
        )
        return {ref for (ref,) in rows}
