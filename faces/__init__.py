"""plaudit.faces: where posts live. The face interface, its errors and data models, the clock
faces read time from, and discovery of face plugins through the `plaudit.faces` entry-point
group (`discover()` -> `FaceRegistry`).

A face plugin subclasses `Face` and needs nothing beyond this package's `__all__`,
`plaudit.faces.http` (for network faces) and `plaudit.faces.testing` (the contract test kit,
installed with `pip install 'plaudit[facekit]'`); see faces/README.md for the guide."""

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
from ._journal import JournalEntry, JournalState, PublishJournal
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
    "JournalEntry",
    "JournalState",
    "Limits",
    "Permanent",
    "PublishJournal",
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
