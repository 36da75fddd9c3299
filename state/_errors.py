"""Errors of the persistent store. SQLite and OS errors are translated here, at the boundary.

StateError                 the store cannot do what was asked
├── DiskFull               no space left: nothing committed was lost; free space and retry
├── SchemaTooNew           the database was written by a newer plaudit
├── DatabaseDamaged        SQLite's quick_check found the database file damaged
├── StoreLocked            another process holds the state folder
└── InvalidTransition      a post was moved to a status its lifecycle does not allow
"""

from __future__ import annotations


class StateError(Exception):
    """The store cannot do what was asked; the message says why and what to do."""


class DiskFull(StateError):
    """A write failed for lack of space; the previous committed state is intact."""


class SchemaTooNew(StateError):
    """The database was written by a newer version of plaudit than this one."""


class DatabaseDamaged(StateError):
    """The database file is damaged (a zeroed or torn page): restore a backup."""


class StoreLocked(StateError):
    """Another plaudit process uses the same state folder."""


class InvalidTransition(StateError):
    """A post was asked to move to a status its lifecycle does not allow from where it is."""
