"""Every error a face raises, in one place.

    FaceError                    base: catch this to handle any face failure
     ├── RateLimited             the platform (or the face's own limiter) refused for now;
     │                           `retry_after` seconds says when to try again, if known
     ├── AuthFailed              credentials missing, wrong, expired or lacking a permission
     ├── Transient               a failure that may pass: timeout, connection error, HTTP 5xx
     ├── Permanent               a failure that retrying will not fix: unexpected response,
     │    │                      a bug on either side, a deleted account
     │    └── Rejected           the platform (or the face, before sending) refused this post:
     │                           too long, duplicate, forbidden content; `reason` says which
     ├── FaceStateError          a face was used in a lifecycle state that forbids the call
     │                           (for example `publish()` after `aclose()`)
     ├── FaceConfigError         an instance's configuration is invalid (names instance, key,
     │                           bad value and what is allowed)
     ├── FaceNotFound            a configured face type is not installed (lists what is)
     └── FaceLoadError           an installed face plugin failed to import or is malformed

Callers decide to retry, skip or stop by class, never by message text:

- `RateLimited`, `Transient`: retry later (honour `retry_after`).
- `AuthFailed`: stop using this instance and tell the operator.
- `Rejected`: drop this draft; the next one may pass.
- `Permanent`: log it with its context; do not retry the same call.

Lower-level exceptions (httpx, sqlite3, JSON) are translated into these at each face's boundary,
in one mapping (`plaudit.faces._http.error_for_response` for HTTP faces), with the face instance
name and the post ref attached where known. Messages are full sentences naming the problem and
the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AuthFailed",
    "FaceConfigError",
    "FaceError",
    "FaceLoadError",
    "FaceNotFound",
    "FaceStateError",
    "Permanent",
    "RateLimited",
    "Rejected",
    "Transient",
]


class FaceError(Exception):
    """Base class of every error raised by `plaudit.faces` and by face plugins.

    `face` is the face instance name (for example "mastodon-main"), `ref` the post ref the call
    was about; both are None when they do not apply. `Face` fills `face` in on the way out when a
    plugin left it empty."""

    def __init__(self, message: str, *, face: str | None = None, ref: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.face = face
        self.ref = ref

    def __str__(self) -> str:
        where = []
        if self.face is not None and f"'{self.face}'" not in self.message:
            where.append(f"face '{self.face}'")
        if self.ref is not None and self.ref not in self.message:
            where.append(f"ref {self.ref}")
        return f"{self.message} ({', '.join(where)})" if where else self.message


class RateLimited(FaceError):
    """Raised when the platform answers "too many requests" (HTTP 429, a rate-limit body) or a
    face's own client-side limiter would exceed the platform's published limit. `retry_after` is
    the number of seconds to wait, from Retry-After or the platform's reset header; None when the
    platform did not say."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        face: str | None = None,
        ref: str | None = None,
    ) -> None:
        super().__init__(message, face=face, ref=ref)
        self.retry_after = retry_after


class AuthFailed(FaceError):
    """Raised when the platform refuses the credentials (HTTP 401/403, an invalid or expired
    token, a missing permission). Retrying with the same credentials will not help."""


class Transient(FaceError):
    """Raised when a call failed in a way that may pass on its own: timeouts, connection
    errors, HTTP 5xx, a platform that says it is overloaded. Faces retry these internally with
    backoff first; callers see it once retries are exhausted."""


class Permanent(FaceError):
    """Raised when a call failed in a way that retrying will not fix: an unexpected response
    shape, HTTP 4xx other than auth and rate limits, a resource that no longer exists."""


class Rejected(Permanent):
    """Raised when a post is refused: longer than `Limits.max_length` (the face checks before
    sending and never truncates), a duplicate the platform will not accept, content the platform
    or channel forbids. `reason` is a short machine-readable word ("too_long", "duplicate",
    "forbidden", "invalid", ...)."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        face: str | None = None,
        ref: str | None = None,
    ) -> None:
        super().__init__(message, face=face, ref=ref)
        self.reason = reason


class FaceStateError(FaceError):
    """Raised when a face is used in a lifecycle state that does not allow the call, such as
    `publish()` after `aclose()`. This is a bug in the caller, not a platform failure."""


class FaceConfigError(FaceError):
    """Raised when an instance's configuration does not validate against its face's `Config`
    model. `problems` holds one `(key, value, allowed)` triple per bad key; the message names the
    instance, each key, its bad value and what is allowed."""

    def __init__(
        self,
        message: str,
        *,
        face: str | None = None,
        problems: Sequence[tuple[str, object, str]] = (),
    ) -> None:
        super().__init__(message, face=face)
        self.problems = list(problems)


class FaceNotFound(FaceError):
    """Raised when a configured face type has no installed plugin. `installed` lists the types
    that are installed; `suggestion` is the nearest name, if any is close."""

    def __init__(
        self,
        message: str,
        *,
        type_name: str,
        installed: Sequence[str],
        suggestion: str | None,
        face: str | None = None,
    ) -> None:
        super().__init__(message, face=face)
        self.type_name = type_name
        self.installed = list(installed)
        self.suggestion = suggestion


class FaceLoadError(FaceError):
    """Raised when a face plugin that was asked for could not be loaded: its module failed to
    import, or the entry point does not name a `Face` subclass. `package` is the distribution
    (name and version) that declared the entry point; `error` the underlying exception text."""

    def __init__(
        self,
        message: str,
        *,
        type_name: str,
        package: str,
        error: str,
        face: str | None = None,
    ) -> None:
        super().__init__(message, face=face)
        self.type_name = type_name
        self.package = package
        self.error = error
