"""plaudit.faces: where posts live. The face interface, its errors and data models, the clock
faces read time from, and discovery of face plugins through the `plaudit.faces` entry-point
group (`discover()` -> `FaceRegistry`).

A face plugin subclasses `Face`; see faces/README.md for the guide and
`plaudit.faces.testing` for the contract test kit."""

from ._api import Face, FaceState, SimulatedAudience, score_reactions
from ._clock import Clock, SimulatedClock, WallClock, utc_datetime
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
from ._registry import (
    FaceRegistry,
    FaceSpec,
    FailedFace,
    InstalledFace,
    config_error,
    discover,
    face_specs,
    read_face_specs,
)

__all__: list[str] = [
    "AuthFailed",
    "Clock",
    "Draft",
    "Face",
    "FaceConfig",
    "FaceConfigError",
    "FaceError",
    "FaceInfo",
    "FaceLoadError",
    "FaceNotFound",
    "FaceRegistry",
    "FaceSpec",
    "FaceState",
    "FaceStateError",
    "FailedFace",
    "HistoricalPost",
    "InstalledFace",
    "Limits",
    "Permanent",
    "Published",
    "RateLimited",
    "ReactionSnapshot",
    "Reactions",
    "Rejected",
    "RequestRate",
    "ScoreWeights",
    "SimulatedAudience",
    "SimulatedClock",
    "Transient",
    "WallClock",
    "config_error",
    "discover",
    "face_specs",
    "read_face_specs",
    "score_reactions",
    "utc_datetime",
    "utc_now",
]
