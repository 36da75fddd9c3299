"""What every HTTP face needs, written once: the mapping from HTTP to the face error hierarchy,
rate-limit header parsing, a client-side rate limiter, retries with backoff and jitter that
honour Retry-After and reset headers, and Link-header pagination.

    http = FaceHttp(face=name, base_url="https://example.social", headers={...}, clock=clock,
                    limiter=RateLimiter(rate=RequestRate(requests=300, per=timedelta(minutes=5)),
                                        clock=clock))
    response = await http.request("POST", "/api/v1/statuses", json=..., publishing=True,
                                  headers={"Idempotency-Key": key})
    async for page in http.paginate("/api/v1/accounts/1/statuses", params={"limit": 40}):
        ...

Only send `retry=True` (the default) for a POST when the platform deduplicates it (an
idempotency key, a nonce): a timed-out POST may have been applied.

Every wait (the limiter's, a retry's backoff) and every "now" goes through the face's `Clock`,
so that a face on a `SimulatedClock` waits out a 429 without real time passing.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import structlog

from ._clock import Clock, WallClock, utc_datetime
from ._errors import AuthFailed, FaceError, Permanent, RateLimited, Rejected, Transient
from ._models import RequestRate

__all__ = [
    "FaceHttp",
    "RateLimiter",
    "RetryPolicy",
    "WaitLedger",
    "error_for_exception",
    "error_for_response",
    "parse_reset",
    "retry_after_seconds",
    "retry_call",
]

T = TypeVar("T")

log = structlog.get_logger("plaudit.faces.http")

# A reset value above this is an epoch timestamp, below it a delay in seconds (2001-09-09).
_EPOCH_THRESHOLD = 1e9


def parse_reset(value: str, *, now: datetime | None = None) -> float | None:
    """Seconds from `now` until the moment `value` names, or None if it cannot be read.

    Accepts delta seconds ("30", "0.25"), epoch seconds ("1732240000", "1732240000.5"),
    ISO-8601 ("2024-11-22T01:40:00.000Z", as Mastodon sends) and HTTP dates
    ("Fri, 22 Nov 2024 01:40:00 GMT", as Retry-After may be). Past moments give 0."""
    now = now or datetime.now(UTC)
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            return None
        if number >= _EPOCH_THRESHOLD:
            return max(0.0, number - now.timestamp())
        return max(0.0, number)
    moment: datetime | None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


# Checked in this order: the standard header first, then the per-platform reset headers.
_RESET_HEADERS = (
    "retry-after",
    "x-ratelimit-reset-after",  # Discord: seconds, float
    "ratelimit-reset",  # IETF draft: delta seconds
    "x-ratelimit-reset",  # Mastodon: ISO-8601 (mastodon-mock: epoch), GitHub-style: epoch
    "x-rate-limit-reset",
)


def retry_after_seconds(
    headers: Mapping[str, str] | httpx.Headers, *, now: datetime | None = None
) -> float | None:
    """How long the response's headers ask the client to wait, in seconds, or None."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in _RESET_HEADERS:
        if name in lowered:
            seconds = parse_reset(lowered[name], now=now)
            if seconds is not None:
                return seconds
    return None


def _body_retry_after(response: httpx.Response) -> float | None:
    """The wait a 429 body names, in seconds: Discord's `retry_after` (a float, more precise
    than its rounded-up Retry-After header) or Telegram's `parameters.retry_after`."""
    try:
        body: Any = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    params = body.get("parameters")
    for value in (
        body.get("retry_after"),
        params.get("retry_after") if isinstance(params, dict) else None,
    ):
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return max(0.0, float(value))
    return None


def _is_global_limit(response: httpx.Response) -> bool:
    """Whether a 429 says the whole account is limited, not one route (Discord's
    `X-RateLimit-Global: true` / `X-RateLimit-Scope: global` / body `global: true`)."""
    headers = response.headers
    if headers.get("x-ratelimit-global", "").strip().lower() == "true":
        return True
    if headers.get("x-ratelimit-scope", "").strip().lower() == "global":
        return True
    try:
        body: Any = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("global") is True


def _describe_body(response: httpx.Response) -> str:
    """A short, human-readable summary of an error body (JSON `error`/`message` if present)."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        for key in ("error_description", "error", "message", "description", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value[:200]
    return str(body)[:200]


def error_for_response(
    response: httpx.Response,
    *,
    face: str | None,
    ref: str | None = None,
    publishing: bool = False,
    now: datetime | None = None,
) -> FaceError | None:
    """The one mapping from an HTTP response to the face error hierarchy; None for 2xx/3xx.
    `now` (default: the real time) is the moment reset headers are read against.

    401, 403            -> AuthFailed
    429                 -> RateLimited(retry_after from the body's `retry_after`, else from
                           Retry-After / reset headers)
    408, 425, 5xx       -> Transient
    400, 422 (publish)  -> Rejected(reason="invalid")   (the platform refused the post)
    413 (publish)       -> Rejected(reason="too_long")
    other 4xx           -> Permanent
    """
    status = response.status_code
    if status < 400:
        return None
    request = response.request
    what = f"{request.method} {request.url.copy_with(query=None)}"
    detail = _describe_body(response)
    said = f": {detail}" if detail else ""
    if status in (401, 403):
        return AuthFailed(
            f"The platform refused the credentials of face '{face}' ({what} -> {status}{said}); "
            "check the token or password in its config and that it has the needed permission.",
            face=face,
            ref=ref,
        )
    if status == 429:
        wait = _body_retry_after(response)
        if wait is None:
            wait = retry_after_seconds(response.headers, now=now)
        when = f"retry in {wait:.1f} s" if wait is not None else "the platform gave no reset time"
        return RateLimited(
            f"The platform rate-limited face '{face}' ({what} -> 429{said}); {when}.",
            retry_after=wait,
            face=face,
            ref=ref,
        )
    if status in (408, 425) or status >= 500:
        return Transient(
            f"The platform failed for face '{face}' ({what} -> {status}{said}); "
            "this usually passes, try again later.",
            face=face,
            ref=ref,
        )
    if publishing and status == 413:
        return Rejected(
            f"The platform refused the post of face '{face}' as too large ({what} -> 413{said}).",
            reason="too_long",
            face=face,
            ref=ref,
        )
    if publishing and status in (400, 422):
        return Rejected(
            f"The platform refused the post of face '{face}' ({what} -> {status}{said}).",
            reason="invalid",
            face=face,
            ref=ref,
        )
    return Permanent(
        f"The platform answered {status} to face '{face}' ({what}{said}); retrying will not "
        "help: check the face's config (URL, account, channel) and the platform's status.",
        face=face,
        ref=ref,
    )


def error_for_exception(
    exc: httpx.HTTPError, *, face: str | None, ref: str | None = None
) -> FaceError:
    """Map an httpx transport exception: timeouts and network failures are Transient, anything
    else (bad URL, unsupported protocol) is Permanent."""
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return Transient(
            f"Face '{face}' could not reach the platform ({type(exc).__name__}: {exc}); "
            "check the network and the server URL, or try again later.",
            face=face,
            ref=ref,
        )
    return Permanent(
        f"Face '{face}' could not send its request ({type(exc).__name__}: {exc}); check the "
        "server URL in its config.",
        face=face,
        ref=ref,
    )


class WaitLedger:
    """Seconds a face waited inside its calls because of rate limits (its own limiter, and
    servers' 429 resets it waited out), cumulative: what `Face.rate_limit_waited_seconds`
    reports, for the `plaudit_rate_limit_wait_seconds_total` metric."""

    def __init__(self) -> None:
        self.rate_limit_s = 0.0


@dataclass
class RateLimiter:
    """Client-side limiter: a token bucket of `rate.requests` per `rate.per`, at least
    `min_interval` seconds between two calls, and a pause until a reset the server announced.
    It reads the time and waits on `clock` (give it the face's, so simulated time applies)."""

    rate: RequestRate | None = None
    min_interval: float = 0.0
    clock: Clock = field(default_factory=WallClock)
    _tokens: float = field(init=False, default=0.0)
    _refilled_at: float = field(init=False, default=0.0)
    _last_call: float | None = field(init=False, default=None)
    _blocked_until: float = field(init=False, default=0.0)
    _lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    ledger: WaitLedger | None = None  # where its waits are counted (FaceHttp sets its own)

    def __post_init__(self) -> None:
        if self.min_interval < 0:
            raise ValueError(f"min_interval must be zero or positive, got {self.min_interval}.")
        self._tokens = float(self.rate.requests) if self.rate else 0.0
        self._refilled_at = self.clock.now()

    def block_for(self, seconds: float) -> None:
        """Hold every call back for `seconds` from now (a 429 or Remaining: 0 with a reset)."""
        self._blocked_until = max(self._blocked_until, self.clock.now() + max(0.0, seconds))

    def _delay(self) -> float:
        now = self.clock.now()
        delay = max(0.0, self._blocked_until - now)
        if self._last_call is not None:
            delay = max(delay, self._last_call + self.min_interval - now)
        if self.rate is not None:
            per_token = self.rate.per.total_seconds() / self.rate.requests
            # A wall clock may step back (NTP): never take tokens away for it.
            elapsed = max(0.0, now - self._refilled_at)
            self._tokens = min(float(self.rate.requests), self._tokens + elapsed / per_token)
            self._refilled_at = now
            if self._tokens < 1.0:
                delay = max(delay, (1.0 - self._tokens) * per_token)
        return delay

    async def acquire(self) -> None:
        """Wait until a call is allowed, then take it."""
        async with self._lock:
            while (delay := self._delay()) > 0:
                if self.ledger is not None:
                    self.ledger.rate_limit_s += delay
                await self.clock.sleep(delay)
            if self.rate is not None:
                self._tokens -= 1.0
            self._last_call = self.clock.now()


@dataclass(frozen=True)
class RetryPolicy:
    """How `FaceHttp` retries Transient and RateLimited failures: exponential backoff with
    jitter for Transient (and RateLimited without a reset time), the server's own wait for
    RateLimited when it is at most `max_rate_limit_wait` (longer waits surface to the caller)."""

    attempts: int = 4
    timeout: float = 120.0
    wait_initial: float = 0.5
    wait_max: float = 10.0
    wait_jitter: float = 1.0
    max_rate_limit_wait: float = 60.0

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1-based) when the failure names no
        wait of its own: wait_initial·2^(attempt-1) plus up to `wait_jitter`, at most
        `wait_max` (stamina's formula, which this replaces)."""
        jitter = random.uniform(0, self.wait_jitter) if self.wait_jitter else 0.0
        try:
            return min(self.wait_max, self.wait_initial * 2.0 ** (attempt - 1) + jitter)
        except OverflowError:
            return self.wait_max


async def retry_call(
    call: Callable[[], Awaitable[T]],
    *,
    on: Callable[[Exception], bool | float],
    policy: RetryPolicy,
    clock: Clock,
    ledger: WaitLedger | None = None,
) -> T:
    """Await `call()` until it succeeds, retrying per `policy` and waiting on `clock`.

    `on(exc)` decides each failure: False re-raises it, True retries after the policy's backoff,
    a float retries after exactly that many seconds (a server-announced reset). The last failure
    is re-raised after `policy.attempts` attempts, or once `policy.timeout` seconds have passed
    on `clock` since the first one. (stamina's retry_context did this, but it always sleeps with
    asyncio, so its waits could not follow a simulated clock.)"""
    started = clock.now()
    attempt = 1
    while True:
        try:
            return await call()
        except Exception as exc:
            decision = on(exc)
            out_of_time = clock.now() - started >= policy.timeout
            if decision is False or attempt >= policy.attempts or out_of_time:
                raise
            wait = policy.backoff(attempt) if isinstance(decision, bool) else float(decision)
            if ledger is not None and isinstance(exc, RateLimited):
                ledger.rate_limit_s += wait
            # stamina logged every scheduled retry at warning level; keep that visible.
            log.warning(
                "retry_scheduled",
                attempt=attempt,
                wait_seconds=round(wait, 2),
                caused_by=f"{type(exc).__name__}: {exc}",
            )
        await clock.sleep(wait)
        attempt += 1


class FaceHttp:
    """An httpx.AsyncClient that speaks the face error hierarchy: every failure leaves it as a
    `FaceError` (after retries), every call passes the rate limiter, and rate-limit headers feed
    back into the limiter."""

    def __init__(
        self,
        *,
        face: str,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        redact: Collection[str] = (),
        clock: Clock | None = None,
    ) -> None:
        self.face = face
        # One clock for the limiters and the retry waits: the one given, else the limiter's.
        if clock is None:
            clock = limiter.clock if limiter is not None else WallClock()
        self.clock: Clock = clock
        self.limiter = limiter or RateLimiter(clock=self.clock)
        self.waits = WaitLedger()
        self.limiter.ledger = self.waits
        self.retry_policy = retry or RetryPolicy()
        self._buckets: dict[str, RateLimiter] = {}
        # Secrets that may appear in URLs (Telegram puts the bot token in the path): they are
        # replaced in every error message this client raises.
        self._redact = [secret for secret in redact if secret]
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers=dict(headers or {}),
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def _scrub(self, error: FaceError) -> FaceError:
        for secret in self._redact:
            error.message = error.message.replace(secret, "<redacted>")
        error.args = (error.message,)
        return error

    def bucket_limiter(self, bucket: str) -> RateLimiter:
        """The limiter of one rate-limit bucket (created on first use): platforms with
        per-route budgets (Discord) pause only the route that ran out, not every call."""
        limiter = self._buckets.get(bucket)
        if limiter is None:
            limiter = self._buckets[bucket] = RateLimiter(clock=self.clock, ledger=self.waits)
        return limiter

    def _observe(self, response: httpx.Response, bucket: str | None) -> None:
        """Pause the limiter (the bucket's, if any) when the server says the budget is spent
        (Remaining: 0)."""
        remaining = response.headers.get("x-ratelimit-remaining") or response.headers.get(
            "ratelimit-remaining"
        )
        if remaining is not None and remaining.strip() in ("0", "0.0"):
            wait = retry_after_seconds(response.headers, now=utc_datetime(self.clock))
            if wait is not None:
                target = self.bucket_limiter(bucket) if bucket is not None else self.limiter
                target.block_for(min(wait, self.retry_policy.max_rate_limit_wait))

    def _backoff(self, exc: Exception) -> bool | float:
        if isinstance(exc, RateLimited):
            if exc.retry_after is None:
                return True
            if exc.retry_after > self.retry_policy.max_rate_limit_wait:
                return False
            # A little jitter so that several clients do not return in lockstep.
            return exc.retry_after + random.uniform(0, 0.1 * self.retry_policy.wait_jitter)
        return isinstance(exc, Transient)

    async def _send_once(
        self,
        method: str,
        url: str,
        *,
        ref: str | None,
        publishing: bool,
        bucket: str | None,
        expect: Collection[int],
        kwargs: dict[str, Any],
    ) -> httpx.Response:
        if bucket is not None:
            await self.bucket_limiter(bucket).acquire()
        await self.limiter.acquire()
        try:
            response = await self.client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self._scrub(error_for_exception(exc, face=self.face, ref=ref)) from exc
        self._observe(response, bucket)
        if response.status_code in expect:
            return response
        error = error_for_response(
            response,
            face=self.face,
            ref=ref,
            publishing=publishing,
            now=utc_datetime(self.clock),
        )
        if error is not None:
            if isinstance(error, RateLimited) and error.retry_after is not None:
                scoped = bucket is not None and not _is_global_limit(response)
                target = self.bucket_limiter(bucket) if scoped and bucket else self.limiter
                target.block_for(min(error.retry_after, self.retry_policy.max_rate_limit_wait))
            raise self._scrub(error)
        return response

    async def request(
        self,
        method: str,
        url: str,
        *,
        ref: str | None = None,
        publishing: bool = False,
        retry: bool = True,
        bucket: str | None = None,
        expect: Collection[int] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one request through the limiter; retry Transient and RateLimited failures per
        the policy when `retry` is True; raise the mapped `FaceError` otherwise. `kwargs` go to
        `httpx.AsyncClient.request` (json=, params=, headers=, ...).

        `bucket` names the platform's rate-limit bucket of this route (for example
        "POST /channels/123/messages"): a spent budget or a 429 then pauses that bucket only
        (a global 429 still pauses everything). `expect` lists error statuses the caller
        handles itself (404 for a lookup that may miss): those responses are returned, not
        raised."""

        def send() -> Awaitable[httpx.Response]:
            return self._send_once(
                method,
                url,
                ref=ref,
                publishing=publishing,
                bucket=bucket,
                expect=expect,
                kwargs=kwargs,
            )

        if not retry:
            return await send()
        return await retry_call(
            send, on=self._backoff, policy=self.retry_policy, clock=self.clock, ledger=self.waits
        )

    async def paginate(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        max_pages: int | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[httpx.Response]:
        """GET `url`, then follow `Link: <...>; rel="next"` until there is none (or after
        `max_pages`). A next link that repeats a URL already fetched ends with `Permanent`."""
        seen: set[str] = set()
        next_url: str | None = url
        next_params: Mapping[str, Any] | None = params
        pages = 0
        while next_url is not None:
            response = await self.request("GET", next_url, params=next_params, **kwargs)
            seen.add(str(response.request.url))
            yield response
            pages += 1
            if max_pages is not None and pages >= max_pages:
                return
            link = response.links.get("next", {}).get("url")
            if link is None:
                return
            absolute = str(response.request.url.join(link))
            if absolute in seen:
                raise Permanent(
                    f"The platform's pagination for face '{self.face}' loops back to {absolute}; "
                    "stopping instead of fetching the same page again.",
                    face=self.face,
                )
            next_url, next_params = absolute, None
