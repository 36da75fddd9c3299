"""XRPC calls for one Bluesky account: the app-password session and the error mapping.

createSession is rate limited hard (30 per 5 minutes, 300 per day per account), so a session
is created once and then kept: it is written to `session.json` in the face's state_dir, reused
by the next process, refreshed with com.atproto.server.refreshSession when the access token
expires (a few minutes before, from the token's `exp`, or when the server says ExpiredToken),
and created anew only when the refresh token is refused too.

The one mapping from XRPC failures to the face errors (`error_for_xrpc`):

    401 (AuthenticationRequired, AuthMissing, ...)    -> new token, once; then AuthFailed
    400 ExpiredToken / InvalidToken                   -> new token, once; then AuthFailed
    401 AccountDeactivated / AccountTakedown          -> AuthFailed (no token helps)
    429 (ratelimit-reset: epoch seconds, Retry-After) -> RateLimited(retry_after)
    5xx, timeouts, connection errors                  -> Transient
    400 InvalidRequest when publishing                -> Rejected(reason="invalid")
    any other 4xx                                     -> Permanent
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from .._clock import utc_datetime
from .._errors import AuthFailed, FaceError, Permanent, Rejected
from .._http import FaceHttp, error_for_response

__all__ = ["Session", "SessionStore", "Xrpc", "error_for_xrpc", "xrpc_error_name"]

# Renew the access token this long before it expires, rather than sending a request that will
# be refused (the PDS issues tokens valid for 2 hours).
REFRESH_MARGIN_SECONDS = 60.0

_TOKEN_ERRORS = frozenset({"ExpiredToken", "InvalidToken"})
# 401s that a new token cannot fix: the account itself is unusable.
_ACCOUNT_ERRORS = frozenset({"AccountDeactivated", "AccountTakedown"})


@dataclass(frozen=True)
class Session:
    """An atproto session as com.atproto.server.createSession returns it, plus the service
    and identifier it was created for (a session for another account is never reused)."""

    did: str
    handle: str
    access_jwt: str
    refresh_jwt: str
    service: str
    identifier: str

    def access_expires_at(self) -> float | None:
        """The access token's `exp` (epoch seconds), or None if the token does not say.
        The payload is read, not verified: the server verifies, this only avoids a request
        that is sure to fail."""
        return jwt_expiry(self.access_jwt)


def jwt_expiry(token: str) -> float | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class SessionStore:
    """`session.json` in a face's state_dir, written atomically with mode 0600 (it holds
    tokens). A missing, unreadable or foreign file reads as no session."""

    def __init__(self, *, path: Path, face: str) -> None:
        self.path = path
        self.face = face

    def load(self, *, service: str, identifier: str) -> Session | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            session = Session(**data)
        except (OSError, ValueError, TypeError):
            return None
        if session.service != service or session.identifier != identifier:
            return None  # the config now names another account or server
        return session

    def save(self, session: Session) -> None:
        text = json.dumps(asdict(session), indent=1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".session-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise Permanent(
                f"Face '{self.face}' cannot save its Bluesky session to {self.path} "
                f"({exc.strerror or exc}); make its state folder writable.",
                face=self.face,
            ) from exc

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def xrpc_error_name(response: httpx.Response) -> str | None:
    """The XRPC error name of a failed response (`{"error": "ExpiredToken", ...}`)."""
    try:
        body: Any = response.json()
    except ValueError:
        return None
    name = body.get("error") if isinstance(body, dict) else None
    return name if isinstance(name, str) else None


def _xrpc_message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        name, message = body.get("error"), body.get("message")
        return ": ".join(str(part) for part in (name, message) if part)[:300]
    return str(body)[:200]


def error_for_xrpc(
    response: httpx.Response,
    *,
    face: str,
    ref: str | None = None,
    publishing: bool = False,
    now: datetime | None = None,
) -> FaceError | None:
    """The face error for a failed XRPC response (see the module docstring); None for 2xx.
    `now` (default: the real time) is the moment rate-limit reset headers are read against."""
    status = response.status_code
    if status < 400:
        return None
    name = xrpc_error_name(response)
    what = f"{response.request.method} {response.request.url.path}"
    said = _xrpc_message(response)
    if status == 401 or (status == 400 and name in _TOKEN_ERRORS):
        fix = (
            "the account is deactivated or taken down; reactivate it on its server"
            if name in _ACCOUNT_ERRORS
            else "check `identifier` and `app_password` in its config (create a new app "
            "password in the Bluesky settings if this one was revoked)"
        )
        return AuthFailed(
            f"Bluesky refused the credentials of face '{face}' ({what} -> {status} {said}); {fix}.",
            face=face,
            ref=ref,
        )
    if status == 400 and publishing and name in (None, "InvalidRequest"):
        return Rejected(
            f"Bluesky refused the post of face '{face}' ({what} -> 400 {said}).",
            reason="invalid",
            face=face,
            ref=ref,
        )
    if status == 400:
        return Permanent(
            f"Bluesky answered 400 to face '{face}' ({what}: {said}); retrying will not help.",
            face=face,
            ref=ref,
        )
    return error_for_response(response, face=face, ref=ref, publishing=publishing, now=now)


class Xrpc:
    """Authenticated XRPC calls (`query` = GET, `procedure` = POST) through a `FaceHttp`,
    which brings the rate limiter and the retries of Transient and RateLimited failures."""

    def __init__(
        self,
        *,
        face: str,
        http: FaceHttp,
        store: SessionStore,
        service: str,
        identifier: str,
        password: SecretStr,
        clock: Callable[[], float] | None = None,  # Unix seconds; default: the http's clock
    ) -> None:
        self.face = face
        self.http = http
        self.store = store
        self.service = service
        self.identifier = identifier
        self._password = password
        self._clock = clock if clock is not None else http.clock.now
        self._session: Session | None = None
        self._loaded = False
        self._lock = asyncio.Lock()

    # ---- the session -------------------------------------------------------------------------

    async def session(self) -> Session:
        """The current session: from memory, else from `session.json`, else a new one; renewed
        first when its access token expires within `REFRESH_MARGIN_SECONDS`."""
        if not self._loaded:
            self._loaded = True
            self._session = self.store.load(service=self.service, identifier=self.identifier)
        session = self._session
        if session is None:
            return await self._renew(None)
        expires = session.access_expires_at()
        if expires is not None and expires - self._clock() < REFRESH_MARGIN_SECONDS:
            return await self._renew(session)
        return session

    async def _renew(self, stale: Session | None) -> Session:
        """Replace `stale` (None: there is none) with a working session: refresh it, or create
        one when it cannot be refreshed. Concurrent callers renew once."""
        async with self._lock:
            if self._session is not None and self._session != stale:
                return self._session  # another call renewed it meanwhile
            session = await self._refresh(stale) if stale is not None else None
            if session is None:
                session = await self._create()
            self._session = session
            self.store.save(session)
            return session

    async def _refresh(self, stale: Session) -> Session | None:
        response = await self.http.request(
            "POST",
            "/xrpc/com.atproto.server.refreshSession",
            headers={"Authorization": f"Bearer {stale.refresh_jwt}"},
            expect=(400, 401),
        )
        if response.status_code in (400, 401):
            name = xrpc_error_name(response)
            if response.status_code == 401 or name in _TOKEN_ERRORS:
                return None  # the refresh token expired or was revoked: log in again
            error = error_for_xrpc(response, face=self.face, now=utc_datetime(self.http.clock))
            assert error is not None
            raise error
        return self._session_from(self._json(response), "refreshSession")

    async def _create(self) -> Session:
        response = await self.http.request(
            "POST",
            "/xrpc/com.atproto.server.createSession",
            json={"identifier": self.identifier, "password": self._password.get_secret_value()},
            expect=(400, 401),
        )
        if response.status_code in (400, 401):
            name = xrpc_error_name(response)
            if name == "AuthFactorTokenRequired":
                raise AuthFailed(
                    f"The Bluesky account of face '{self.face}' asks for an email 2FA code; "
                    "set `app_password` to an app password (Settings -> Privacy and security "
                    "-> App passwords), which skips 2FA.",
                    face=self.face,
                )
            raise AuthFailed(
                f"Bluesky refused to log face '{self.face}' in as {self.identifier!r} at "
                f"{self.service} ({response.status_code} {_xrpc_message(response)}); check "
                "`identifier` (handle or DID) and `app_password` in its config.",
                face=self.face,
            )
        return self._session_from(self._json(response), "createSession")

    def _session_from(self, data: Any, what: str) -> Session:
        try:
            return Session(
                did=str(data["did"]),
                handle=str(data["handle"]),
                access_jwt=str(data["accessJwt"]),
                refresh_jwt=str(data["refreshJwt"]),
                service=self.service,
                identifier=self.identifier,
            )
        except (KeyError, TypeError):
            raise Permanent(
                f"Face '{self.face}' got a {what} answer without did/handle/tokens from "
                f"{self.service}; is `service` an atproto PDS?",
                face=self.face,
            ) from None

    # ---- calls -------------------------------------------------------------------------------

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise Permanent(
                f"Face '{self.face}' got a response that is not JSON from "
                f"{response.request.method} {response.request.url.path} "
                f"({response.text[:80]!r}); is `service` an atproto PDS?",
                face=self.face,
            ) from None

    async def call(
        self,
        method: str,
        nsid: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        auth: bool = True,
        ref: str | None = None,
        publishing: bool = False,
        retry: bool = True,
        missing: Collection[str] = (),
    ) -> Any:
        """One XRPC call; the decoded JSON answer (None for an empty body). An error whose
        name is in `missing` (for example "RecordNotFound") returns None instead of raising.
        An auth failure renews the token once and sends again; other failures raise the
        mapped `FaceError` (after `FaceHttp`'s retries, when `retry`)."""
        for attempt in range(2):
            session = await self.session() if auth else None
            headers = {"Authorization": f"Bearer {session.access_jwt}"} if session else {}
            kwargs: dict[str, Any] = {"headers": headers}
            if params is not None:
                kwargs["params"] = params
            if body is not None:
                kwargs["json"] = body
            response = await self.http.request(
                method,
                f"/xrpc/{nsid}",
                ref=ref,
                publishing=publishing,
                retry=retry,
                expect=(400, 401),
                **kwargs,
            )
            if response.status_code < 400:
                return self._json(response) if response.content else None
            name = xrpc_error_name(response)
            if name is not None and name in missing:
                return None
            renewable = response.status_code == 401 and name not in _ACCOUNT_ERRORS
            renewable = renewable or (response.status_code == 400 and name in _TOKEN_ERRORS)
            if session is not None and attempt == 0 and renewable:
                await self._renew(session)
                continue
            error = error_for_xrpc(
                response,
                face=self.face,
                ref=ref,
                publishing=publishing,
                now=utc_datetime(self.http.clock),
            )
            assert error is not None
            raise error
        raise AssertionError("unreachable: the second attempt returns or raises")
