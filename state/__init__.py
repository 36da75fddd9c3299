"""plaudit.state: the persistent store (SQLite) and atomic files on disk."""

from plaudit.state._errors import (
    DiskFull,
    InvalidTransition,
    SchemaTooNew,
    StateError,
    StoreLocked,
)
from plaudit.state._files import (
    atomic_folder,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
)
from plaudit.state._lock import StateLock
from plaudit.state._store import (
    SCHEMA_VERSION,
    Checkpoint,
    ControlState,
    NewCandidate,
    Post,
    PostStatus,
    PostStory,
    Reward,
    Snapshot,
    Store,
    TrainingMode,
    TrainingRun,
    TrainingState,
)

__all__ = [
    "SCHEMA_VERSION",
    "Checkpoint",
    "ControlState",
    "DiskFull",
    "InvalidTransition",
    "NewCandidate",
    "Post",
    "PostStatus",
    "PostStory",
    "Reward",
    "SchemaTooNew",
    "Snapshot",
    "StateError",
    "StateLock",
    "Store",
    "StoreLocked",
    "TrainingMode",
    "TrainingRun",
    "TrainingState",
    "atomic_folder",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
]
