"""The face interface: one small abstract class that every face, built-in or plugin, subclasses.

A face author implements five hooks (`_history`, `_publish`, `_reactions`, `_check`, `limits`)
and optionally `_aclose` and `measure`. The public methods (`history`, `publish`, `reactions`,
`check`, `aclose`) are defined here once, so every face gets the same guarantees without having
to remember them:

- calls after `aclose()` raise `FaceStateError` with a full sentence;
- an over-long draft is rejected with `Rejected(reason="too_long")` before the hook sees it;
- `history()` honours `since` (inclusive), `until` (exclusive) and `limit` even if a hook pages
  past them;
- `reactions()` returns exactly one snapshot per requested ref, in order, with `found=False` for
  refs the hook did not return;
- every `FaceError` leaving the face carries the instance name.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Generic, Protocol, Self, TypeVar, runtime_checkable

from ._clock import Clock, WallClock, utc_datetime
from ._errors import FaceError, FaceStateError, Rejected
from ._models import (
    Draft,
    FaceConfig,
    FaceInfo,
    HistoricalPost,
    Limits,
    Published,
    ReactionSnapshot,
    ScoreWeights,
)

__all__ = ["Face", "FaceState", "SimulatedAudience", "score_reactions"]

ConfigT = TypeVar("ConfigT", bound=FaceConfig)


class FaceState(enum.Enum):
    """Lifecycle of a face instance: OPEN from construction until `aclose()`, then CLOSED for
    good (a closed face is never reopened; create a new instance)."""

    OPEN = "open"
    CLOSED = "closed"


def score_reactions(post: ReactionSnapshot | HistoricalPost, weights: ScoreWeights) -> float:
    """The default score: the weighted reaction count divided by the audience size.

        score = (w_likes·likes + w_reposts·reposts + w_replies·replies + w_quotes·quotes
                 + Σ_k w_extra[k]·extra[k]) / max(audience, 1)

    With an unknown audience (None) the divisor is 1, so the score is the weighted count.
    Extra reactions without a weight count zero."""
    r = post.reactions
    total = (
        weights.likes * r.likes
        + weights.reposts * r.reposts
        + weights.replies * r.replies
        + weights.quotes * r.quotes
        + sum(weights.extra.get(k, 0.0) * v for k, v in r.extra.items())
    )
    return float(total) / max(post.audience or 1, 1)


@runtime_checkable
class SimulatedAudience(Protocol):
    """An optional capability: a face whose audience is simulated can say how much it would
    like a text that was never published. A benchmark needs it to score fresh samples of a
    policy, apart from what the filters and the choice among candidates select; a real platform
    cannot offer it. Check with ``isinstance(face, SimulatedAudience)``."""

    async def appeal(self, texts: Sequence[str]) -> list[float]:
        """The expected `score()` of each text if it were published now (the mean over the
        audience's random draws, once every reaction has arrived), judged against the face's
        own recent posts as publishing it would be. Nothing is published or stored."""
        ...


class Face(abc.ABC, Generic[ConfigT]):
    """One connection to one place where posts live (one configured instance).

    Subclass contract:
      - `type_name`: the entry-point name the face is registered under ("mastodon").
      - `Config`: the face's `FaceConfig` subclass; the registry validates raw config with it.
      - `__init__(*, name, config, state_dir, clock=None)`: keyword-only; do no I/O here (open
        clients lazily, on first use), so that constructing a face never fails for network
        reasons. A subclass that overrides it passes `clock` on to `super().__init__`.
      - `clock`: the host's `Clock` (the real time unless a test or benchmark simulates it);
        read the time and wait through it, never `time.time()`/`asyncio.sleep()` directly.
      - `state_dir`: a folder owned by this instance for whatever must survive a restart
        (sessions, idempotency records); create it when first writing.
    """

    type_name: ClassVar[str]
    Config: ClassVar[type[FaceConfig]]

    def __init__(
        self, *, name: str, config: ConfigT, state_dir: Path, clock: Clock | None = None
    ) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(
                f"Face '{name}' of type {self.type_name!r} needs a {self.Config.__name__} config, "
                f"got {type(config).__name__}; build it with {type(self).__name__}.Config(...) "
                "or create the face through FaceRegistry.create()."
            )
        self.name = name
        self.config: ConfigT = config
        self.state_dir = Path(state_dir)
        self.clock: Clock = clock if clock is not None else WallClock()
        self.state = FaceState.OPEN

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} ({self.state.value})>"

    # ---- hooks a face implements -------------------------------------------------------------

    @property
    @abc.abstractmethod
    def limits(self) -> Limits:
        """The face's limits (max length in `measure()` units, minimum interval, ...)."""

    @abc.abstractmethod
    def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        """Yield past posts newest first, paging through the platform as needed. Stop once
        posts are older than `since` and after `limit` posts; both are hints for efficiency,
        `history()` enforces them anyway. Write it as `async def ...: yield post`."""

    @abc.abstractmethod
    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        """Publish `draft` (already checked against `limits.max_length`). Publishing twice with
        the same key must create one post and return the same ref both times, also across
        restarts of the process."""

    @abc.abstractmethod
    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        """Read the reactions of `refs` (unique, non-empty). Return snapshots for the refs the
        face found, in any order; omitted refs are reported as found=False."""

    @abc.abstractmethod
    async def _check(self) -> FaceInfo:
        """Check credentials and connectivity; return who the face posts as and its audience."""

    async def _aclose(self) -> None:
        """Release clients, files and sessions. Called once."""

    def rate_limit_waited_seconds(self) -> float:
        """Seconds this face has waited inside its calls because of rate limits (its own
        limiter, a server's reset it waited out), cumulative since it was built. The loop adds
        what it grew by to `plaudit_rate_limit_wait_seconds_total`. A face whose calls never
        wait keeps this default; one built on `FaceHttp` returns `http.waits.rate_limit_s`."""
        return 0.0

    def measure(self, text: str) -> int:
        """The length of `text` as the platform counts it against `limits.max_length`. The
        default counts Unicode code points; override for graphemes, UTF-16 units or URL rules."""
        return len(text)

    # ---- the public surface ------------------------------------------------------------------

    def score(self, post: ReactionSnapshot | HistoricalPost) -> float:
        """How much the audience liked a post, comparable across posts of this face.

        Default: (likes·1 + reposts·2 + replies·1 + quotes·2) / max(audience, 1), weights from
        `config.score_weights` (see `score_reactions`). A face may override it with its own
        documented formula. Scoring a snapshot whose ref was not found is a caller error."""
        if isinstance(post, ReactionSnapshot) and not post.found:
            raise ValueError(
                f"Cannot score ref {post.ref!r}: face '{self.name}' did not find it. Skip "
                "snapshots with found=False instead of scoring them."
            )
        return score_reactions(post, self.config.score_weights)

    async def history(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[HistoricalPost]:
        """Past posts with their reactions, newest first: created_at >= since (inclusive) and
        created_at < until (exclusive), at most `limit` posts."""
        self._require_open("history")
        for label, moment in (("since", since), ("until", until)):
            if moment is not None and moment.tzinfo is None:
                raise ValueError(
                    f"history({label}=...) needs a timezone-aware datetime, got {moment!r}; "
                    "use datetime(..., tzinfo=UTC)."
                )
        if since is not None and until is not None and since > until:
            raise ValueError(f"history(): since ({since}) is after until ({until}).")
        if limit is not None and limit < 0:
            raise ValueError(f"history(limit={limit}): limit must be zero or positive.")
        if limit == 0:
            return
        count = 0
        try:
            async for post in self._history(since=since, until=until, limit=limit):
                if until is not None and post.created_at >= until:
                    continue
                if since is not None and post.created_at < since:
                    continue
                yield post
                count += 1
                if limit is not None and count >= limit:
                    return
        except FaceError as exc:
            self._tag(exc)
            raise

    async def publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        """Publish `draft` once. Calling again with the same `idempotency_key` (after a timeout,
        a crash, a retry) returns the same ref and creates no second post. A draft longer than
        `limits.max_length` raises `Rejected(reason="too_long")`; it is never truncated."""
        self._require_open("publish")
        if not idempotency_key or not idempotency_key.strip():
            raise ValueError(
                "publish() needs a non-empty idempotency_key; record the intent in the store "
                "first and pass its key, so that a retry cannot post twice."
            )
        limits = self.limits
        length = self.measure(draft.text)
        if length > limits.max_length:
            raise Rejected(
                f"The draft is {length} {limits.length_unit} long and face '{self.name}' allows "
                f"at most {limits.max_length}; shorten it before publishing (faces never "
                "truncate).",
                reason="too_long",
                face=self.name,
            )
        try:
            return await self._publish(draft, idempotency_key=idempotency_key)
        except FaceError as exc:
            self._tag(exc)
            raise

    async def reactions(self, refs: Sequence[str]) -> list[ReactionSnapshot]:
        """One snapshot per ref, in the order given (duplicates answered once, repeated).
        An unknown ref gives found=False, not an error."""
        self._require_open("reactions")
        if isinstance(refs, str):
            raise TypeError("reactions() takes a sequence of refs, not a single string.")
        unique = list(dict.fromkeys(refs))
        if not unique:
            return []
        try:
            got = await self._reactions(unique)
        except FaceError as exc:
            self._tag(exc)
            raise
        by_ref = {snap.ref: snap for snap in got}
        now = utc_datetime(self.clock)
        return [
            by_ref.get(ref) or ReactionSnapshot(ref=ref, found=False, read_at=now) for ref in refs
        ]

    async def check(self) -> FaceInfo:
        """Check credentials and connectivity and say what was found (account, audience,
        limits). Raises `AuthFailed`, `Transient`, ... like any other call."""
        self._require_open("check")
        try:
            info = await self._check()
        except FaceError as exc:
            self._tag(exc)
            raise
        if "checked_at" not in info.model_fields_set:
            # The model's default is the real time; stamp it on the face's clock instead.
            info = info.model_copy(update={"checked_at": utc_datetime(self.clock)})
        return info

    async def aclose(self) -> None:
        """Release the face's resources. Safe to call more than once."""
        if self.state is FaceState.CLOSED:
            return
        self.state = FaceState.CLOSED
        await self._aclose()

    async def __aenter__(self) -> Self:
        self._require_open("__aenter__")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---- helpers -----------------------------------------------------------------------------

    def _require_open(self, method: str) -> None:
        if self.state is not FaceState.OPEN:
            raise FaceStateError(
                f"Face '{self.name}' ({self.type_name}) is {self.state.value}, so {method}() "
                "cannot be called; aclose() was called on it already. Create a new instance "
                "through the registry to use this face again.",
                face=self.name,
            )

    def _tag(self, exc: FaceError) -> None:
        if exc.face is None:
            exc.face = self.name
