"""plaudit.faces: where posts live. The face interface, its errors and data models, and
discovery of face plugins through the `plaudit.faces` entry-point group.

A face plugin subclasses `Face`; see faces/README.md for the guide and
`plaudit.faces.testing` for the contract test kit."""

from ._api import Face, FaceState, score_reactions
from ._errors import (
    AuthFailed,
    FaceConfigError,
    FaceError,
    FaceLoadError,
    FaceNotFound,
    FaceStateError,
    Permanent,
    RateLimited,
    Rejected,
    Transient,
)
from ._models import (
    Draft,
    FaceConfig,
    FaceInfo,
    HistoricalPost,
    Limits,
    Published,
    Reactions,
    ReactionSnapshot,
    RequestRate,
    ScoreWeights,
    utc_now,
)

__all__: list[str] = [
    "AuthFailed",
    "Draft",
    "Face",
    "FaceConfig",
    "FaceConfigError",
    "FaceError",
    "FaceInfo",
    "FaceLoadError",
    "FaceNotFound",
    "FaceState",
    "FaceStateError",
    "HistoricalPost",
    "Limits",
    "Permanent",
    "Published",
    "RateLimited",
    "ReactionSnapshot",
    "Reactions",
    "Rejected",
    "RequestRate",
    "ScoreWeights",
    "Transient",
    "score_reactions",
    "utc_now",
]
