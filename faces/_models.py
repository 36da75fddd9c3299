"""The data that crosses a face's boundary, as frozen pydantic models.

Every datetime is timezone-aware and normalised to UTC on the way in; counts are non-negative
integers. Faces build these from platform responses; the controller and the store consume them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
)

__all__ = [
    "Draft",
    "FaceConfig",
    "FaceInfo",
    "HistoricalPost",
    "Limits",
    "Published",
    "ReactionSnapshot",
    "Reactions",
    "RequestRate",
    "ScoreWeights",
    "utc_now",
]


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime (the only kind faces deal in)."""
    return datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# A timezone-aware datetime, stored in UTC; a naive datetime is a validation error.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Reactions(_Frozen):
    """Reaction counts of one post. `extra` holds platform-specific counts that have no common
    name (emoji reactions by emoji, bookmarks, ...); they score only when `ScoreWeights.extra`
    gives them a weight."""

    likes: NonNegativeInt = 0
    reposts: NonNegativeInt = 0
    replies: NonNegativeInt = 0
    quotes: NonNegativeInt = 0
    extra: dict[str, NonNegativeInt] = Field(default_factory=dict)


class HistoricalPost(_Frozen):
    """A past post with the reactions it collected, as `Face.history()` yields it.
    `audience` is the audience size (followers, members) when the post was read, if known."""

    id: str = Field(min_length=1)
    text: str
    created_at: UtcDatetime
    reactions: Reactions = Field(default_factory=Reactions)
    audience: NonNegativeInt | None = None
    url: str | None = None


class Draft(_Frozen):
    """A post to publish. The text is sent exactly as given: faces never truncate or rewrite it,
    and reject it with `Rejected` when it does not fit `Limits.max_length`."""

    text: str

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a draft's text must contain at least one non-space character")
        return value


class Published(_Frozen):
    """What `Face.publish()` returns: the face's ref for the post (what `reactions()` takes),
    its public URL if it has one, and when the platform says it was published."""

    ref: str = Field(min_length=1)
    url: str | None = None
    published_at: UtcDatetime


class ReactionSnapshot(_Frozen):
    """The reactions of one ref at one moment. `found` is False when the face does not know the
    ref (deleted, never published, another account's); the counts are then zero."""

    ref: str = Field(min_length=1)
    found: bool
    reactions: Reactions = Field(default_factory=Reactions)
    audience: NonNegativeInt | None = None
    read_at: UtcDatetime


class RequestRate(_Frozen):
    """A platform's request budget: `requests` calls per `per`."""

    requests: PositiveInt
    per: timedelta


class Limits(_Frozen):
    """What a face allows. The controller keeps drafts within `max_length` (as measured by
    `Face.measure()`, in `length_unit`) and spaces posts by at least `min_interval`."""

    max_length: PositiveInt
    length_unit: str = "characters"  # "characters", "graphemes", ... as the platform counts
    min_interval: timedelta = timedelta(0)
    max_posts_per_day: PositiveInt | None = None
    request_rate: RequestRate | None = None  # the API budget the face's own limiter keeps to

    @field_validator("min_interval")
    @classmethod
    def _non_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("min_interval must be zero or positive")
        return value


class FaceInfo(_Frozen):
    """What `Face.check()` found: who the face posts as, how big the audience is, its limits,
    and anything else worth showing the operator (`details`: server version, channel title...)."""

    face: str
    type_name: str
    account: str
    audience: NonNegativeInt | None = None
    limits: Limits
    details: dict[str, Any] = Field(default_factory=dict)
    checked_at: UtcDatetime = Field(default_factory=utc_now)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("a score weight must be a finite number")
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]


class ScoreWeights(_Frozen):
    """Weights of the default score: (likes·w + reposts·w + replies·w + quotes·w + Σ extra·w)
    divided by the audience size. Reposts and quotes weigh double by default: they put the post
    in front of people who do not follow the account yet."""

    likes: FiniteFloat = 1.0
    reposts: FiniteFloat = 2.0
    replies: FiniteFloat = 1.0
    quotes: FiniteFloat = 2.0
    extra: dict[str, FiniteFloat] = Field(default_factory=dict)


class FaceConfig(BaseModel):
    """Base of every face's config model. Subclass it, add the face's keys (secrets as
    `SecretStr`), and set it as the face's `Config`. Unknown keys are errors (a typo must not be
    ignored silently); instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score_weights: ScoreWeights = Field(default_factory=ScoreWeights)
