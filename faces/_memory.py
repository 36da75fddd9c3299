"""`memory`: the in-memory reference face.

It implements the face interface the simplest correct way, for tests and as an example to read:
history from posts you `seed()`, paged like a platform would; idempotent publish; reactions you
set with `set_reactions()`; errors you queue with `fail_next()`. Nothing persists: a new
instance starts empty (it is the one face that does not keep idempotency across restarts).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import Field, NonNegativeInt, PositiveInt

from ._api import Face
from ._clock import Clock, utc_datetime
from ._errors import FaceError
from ._models import (
    Draft,
    FaceConfig,
    FaceInfo,
    HistoricalPost,
    Limits,
    Published,
    Reactions,
    ReactionSnapshot,
)

__all__ = ["MemoryConfig", "MemoryFace"]


class MemoryConfig(FaceConfig):
    """Settings of the in-memory face."""

    account: str = "memory"
    audience: NonNegativeInt = 100
    max_length: PositiveInt = 500
    min_interval_seconds: float = Field(default=0.0, ge=0)
    page_size: PositiveInt = 50  # history is served in pages of this many posts


@dataclass
class _Post:
    post: HistoricalPost
    key: str | None  # idempotency key, for posts published through this face


class MemoryFace(Face[MemoryConfig]):
    """The in-memory reference face (type "memory"). Test seams: `seed()`, `set_reactions()`,
    `fail_next()`, `posts()`."""

    type_name = "memory"
    Config = MemoryConfig

    def __init__(
        self, *, name: str, config: MemoryConfig, state_dir: Path, clock: Clock | None = None
    ) -> None:
        super().__init__(name=name, config=config, state_dir=state_dir, clock=clock)
        self._posts: dict[str, _Post] = {}
        self._by_key: dict[str, str] = {}
        self._failures: list[FaceError] = []
        self._next_id = 1
        self.pages_served = 0  # how many history pages were served (tests check paging)

    # ---- test seams --------------------------------------------------------------------------

    def seed(self, posts: Iterable[HistoricalPost]) -> None:
        """Add past posts to the history (as if they had been posted before)."""
        for post in posts:
            self._posts[post.id] = _Post(post, None)

    def set_reactions(self, ref: str, reactions: Reactions) -> None:
        """Set the reaction counts of a post (published or seeded)."""
        entry = self._posts[ref]
        entry.post = entry.post.model_copy(update={"reactions": reactions})

    def fail_next(self, error: FaceError) -> None:
        """Make the next call (history page, publish, reactions, check) raise `error`."""
        self._failures.append(error)

    def posts(self) -> list[HistoricalPost]:
        """Every post, newest first."""
        return sorted(
            (e.post for e in self._posts.values()), key=lambda p: p.created_at, reverse=True
        )

    def _maybe_fail(self) -> None:
        if self._failures:
            raise self._failures.pop(0)

    # ---- the face ----------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return Limits(
            max_length=self.config.max_length,
            min_interval=timedelta(seconds=self.config.min_interval_seconds),
        )

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        posts = [p for p in self.posts() if until is None or p.created_at < until]
        size = self.config.page_size
        for start in range(0, len(posts), size):
            self._maybe_fail()
            self.pages_served += 1
            for post in posts[start : start + size]:
                if since is not None and post.created_at < since:
                    return
                yield post.model_copy(update={"audience": self.config.audience})

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        self._maybe_fail()
        if idempotency_key in self._by_key:
            post = self._posts[self._by_key[idempotency_key]].post
            return Published(ref=post.id, url=post.url, published_at=post.created_at)
        ref = f"m{self._next_id}"
        self._next_id += 1
        now = utc_datetime(self.clock)
        url = f"memory://{self.name}/{ref}"
        post = HistoricalPost(id=ref, text=draft.text, created_at=now, url=url)
        self._posts[ref] = _Post(post, idempotency_key)
        self._by_key[idempotency_key] = ref
        return Published(ref=ref, url=url, published_at=now)

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        self._maybe_fail()
        now = utc_datetime(self.clock)
        return [
            ReactionSnapshot(
                ref=ref,
                found=True,
                reactions=self._posts[ref].post.reactions,
                audience=self.config.audience,
                read_at=now,
            )
            for ref in refs
            if ref in self._posts
        ]

    async def _check(self) -> FaceInfo:
        self._maybe_fail()
        return FaceInfo(
            face=self.name,
            type_name=self.type_name,
            account=self.config.account,
            audience=self.config.audience,
            limits=self.limits,
            details={"posts": len(self._posts)},
        )
