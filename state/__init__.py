"""plaudit.state: the persistent store (SQLite) and atomic files on disk."""

from plaudit.state._backup import BackupReport, RestoreReport, backup_state, restore_state
from plaudit.state._errors import (
    DatabaseDamaged,
    DiskFull,
    InvalidTransition,
    SchemaTooNew,
    StateError,
    StoreLocked,
)
from plaudit.state._files import (
    Leftovers,
    atomic_folder,
    atomic_write_bytes,
    atomic_write_text,
    clear_stale_temporaries,
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
    "BackupReport",
    "Checkpoint",
    "ControlState",
    "DatabaseDamaged",
    "DiskFull",
    "InvalidTransition",
    "Leftovers",
    "NewCandidate",
    "Post",
    "PostStatus",
    "PostStory",
    "RestoreReport",
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
    "backup_state",
    "clear_stale_temporaries",
    "fsync_dir",
    "restore_state",
]
