"""The shared HTTP helpers against httpx.MockTransport: error mapping, reset headers, retries
that honour Retry-After, the client-side limiter and Link pagination."""

import itertools
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from plaudit.faces import (
    AuthFailed,
    Permanent,
    RateLimited,
    Rejected,
    RequestRate,
    SimulatedClock,
    Transient,
    WallClock,
    utc_datetime,
)
from plaudit.faces.http import (
    FaceHttp,
    RateLimiter,
    RetryPolicy,
    WaitLedger,
    error_for_exception,
    error_for_response,
    parse_reset,
    retry_after_seconds,
    retry_call,
)

NOW = datetime(2024, 11, 22, 1, 40, 0, tzinfo=UTC)


def test_parse_reset_forms() -> None:
    assert parse_reset("30", now=NOW) == 30.0
    assert parse_reset("0.25", now=NOW) == 0.25
    assert parse_reset(str(NOW.timestamp() + 12), now=NOW) == pytest.approx(12.0)
    assert parse_reset("2024-11-22T01:40:45.000Z", now=NOW) == pytest.approx(45.0)
    assert parse_reset("2024-11-22T02:40:45+01:00", now=NOW) == pytest.approx(45.0)
    assert parse_reset("Fri, 22 Nov 2024 01:41:00 GMT", now=NOW) == pytest.approx(60.0)
    assert parse_reset("2024-11-22T01:00:00Z", now=NOW) == 0.0  # in the past: no wait
    assert parse_reset("soon", now=NOW) is None
    assert parse_reset("nan", now=NOW) is None


def test_retry_after_prefers_standard_header() -> None:
    headers = {"Retry-After": "5", "X-RateLimit-Reset": "2024-11-22T01:41:00Z"}
    assert retry_after_seconds(headers, now=NOW) == 5.0
    assert retry_after_seconds({"X-RateLimit-Reset": "2024-11-22T01:41:00Z"}, now=NOW) == 60.0
    assert retry_after_seconds({"X-RateLimit-Reset-After": "1.5"}, now=NOW) == 1.5
    assert retry_after_seconds({}, now=NOW) is None


def _response(status: int, *, method: str = "GET", **kwargs: object) -> httpx.Response:
    request = httpx.Request(method, "https://example.test/api/v1/statuses?x=1")
    return httpx.Response(status, request=request, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "publishing", "cls"),
    [
        (401, False, AuthFailed),
        (403, True, AuthFailed),
        (429, False, RateLimited),
        (500, False, Transient),
        (503, True, Transient),
        (408, False, Transient),
        (422, True, Rejected),
        (400, True, Rejected),
        (422, False, Permanent),
        (404, False, Permanent),
        (410, True, Permanent),
    ],
)
def test_error_for_response(status: int, publishing: bool, cls: type[Exception]) -> None:
    error = error_for_response(
        _response(status, json={"error": "nope"}), face="main", publishing=publishing
    )
    assert type(error) is cls
    assert error is not None and error.face == "main"
    assert "nope" in str(error) and str(status) in str(error)
    assert "x=1" not in str(error), "query strings (tokens) must not leak into messages"


def test_error_for_response_ok_and_retry_after() -> None:
    assert error_for_response(_response(200), face="f") is None
    error = error_for_response(_response(429, headers={"Retry-After": "7"}), face="f")
    assert isinstance(error, RateLimited) and error.retry_after == 7.0
    rejected = error_for_response(_response(413, method="POST"), face="f", publishing=True)
    assert isinstance(rejected, Rejected) and rejected.reason == "too_long"


def test_error_for_exception() -> None:
    request = httpx.Request("GET", "https://example.test/")
    assert isinstance(
        error_for_exception(httpx.ConnectTimeout("slow", request=request), face="f"), Transient
    )
    assert isinstance(
        error_for_exception(httpx.ConnectError("refused", request=request), face="f"), Transient
    )
    assert isinstance(error_for_exception(httpx.UnsupportedProtocol("ftp"), face="f"), Permanent)


def _http(handler: httpx.MockTransport, **policy: float) -> FaceHttp:
    retry = RetryPolicy(wait_initial=0.01, wait_max=0.02, wait_jitter=0.0, **policy)  # type: ignore[arg-type]
    return FaceHttp(face="t", base_url="https://example.test", transport=handler, retry=retry)


async def test_retries_transient_then_succeeds() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(502)
        return httpx.Response(200, json={"ok": True})

    http = _http(httpx.MockTransport(handle))
    response = await http.request("GET", "/x")
    assert response.json() == {"ok": True} and len(calls) == 3
    await http.aclose()


async def test_gives_up_after_attempts_with_transient() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    http = _http(httpx.MockTransport(handle))
    with pytest.raises(Transient, match="could not reach"):
        await http.request("GET", "/x")
    assert len(calls) == 4
    await http.aclose()


async def test_no_retry_on_auth_or_when_asked() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(401 if request.url.path == "/a" else 500)

    http = _http(httpx.MockTransport(handle))
    with pytest.raises(AuthFailed):
        await http.request("GET", "/a")
    with pytest.raises(Transient):
        await http.request("POST", "/b", retry=False)
    assert len(calls) == 2
    await http.aclose()


async def test_429_waits_out_the_reset_instead_of_hammering() -> None:
    times: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        if len(times) == 1:
            reset = datetime.now(UTC) + timedelta(seconds=0.4)
            return httpx.Response(429, headers={"X-RateLimit-Reset": reset.isoformat()})
        return httpx.Response(200)

    http = _http(httpx.MockTransport(handle))
    await http.request("GET", "/x")
    assert len(times) == 2
    assert times[1] - times[0] >= 0.35, "the retry must come after the announced reset"
    await http.aclose()


async def test_429_with_long_reset_surfaces_to_caller() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(429, headers={"Retry-After": "3600"})

    http = _http(httpx.MockTransport(handle), max_rate_limit_wait=5.0)
    with pytest.raises(RateLimited) as info:
        await http.request("GET", "/x")
    assert info.value.retry_after == 3600.0 and len(calls) == 1
    await http.aclose()


async def test_limiter_spaces_calls_on_a_simulated_clock() -> None:
    clock = SimulatedClock()
    started = time.monotonic()
    limiter = RateLimiter(rate=RequestRate(requests=2, per=timedelta(seconds=10)), clock=clock)
    for _ in range(4):
        await limiter.acquire()
    # Two calls from the full bucket, then one token every 5 s.
    assert clock.slept == pytest.approx(10.0)
    spaced = RateLimiter(min_interval=2.0, clock=clock)
    before = clock.slept
    await spaced.acquire()
    await spaced.acquire()
    assert clock.slept - before == pytest.approx(2.0)
    spaced.block_for(30.0)
    before = clock.slept
    await spaced.acquire()
    assert clock.slept - before == pytest.approx(30.0)
    # A limiter with a ledger counts its own waits there (as FaceHttp's limiters do).
    ledger = WaitLedger()
    counted = RateLimiter(min_interval=3.0, clock=clock, ledger=ledger)
    await counted.acquire()
    await counted.acquire()
    assert ledger.rate_limit_s == pytest.approx(3.0)
    assert time.monotonic() - started < 1.0, "simulated waits take no real time"


def test_limiter_and_client_default_to_the_wall_clock() -> None:
    assert isinstance(RateLimiter().clock, WallClock)
    http = FaceHttp(face="t", base_url="https://example.test")
    assert isinstance(http.clock, WallClock) and http.limiter.clock is http.clock
    clock = SimulatedClock()
    given = FaceHttp(face="t", base_url="https://example.test", limiter=RateLimiter(clock=clock))
    assert given.clock is clock, "without clock=, the client follows its limiter's clock"


async def test_remaining_zero_pauses_the_limiter() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.3"}
        )

    http = _http(httpx.MockTransport(handle))
    start = time.monotonic()
    await http.request("GET", "/x")
    await http.request("GET", "/x")
    assert time.monotonic() - start >= 0.25
    await http.aclose()


async def test_paginate_follows_link_headers() -> None:
    pages = {
        "/items": ('<https://example.test/items?max_id=3>; rel="next"', [5, 4]),
        "/items?max_id=3": ('</items?max_id=1>; rel="next", </items?min_id=9>; rel="prev"', [3, 2]),
        "/items?max_id=1": ("", [1]),
    }

    def handle(request: httpx.Request) -> httpx.Response:
        key = request.url.raw_path.decode()
        link, items = pages[key]
        headers = {"Link": link} if link else {}
        return httpx.Response(200, json=items, headers=headers)

    http = _http(httpx.MockTransport(handle))
    got = [item async for page in http.paginate("/items") for item in page.json()]
    assert got == [5, 4, 3, 2, 1]
    first = [page.json() async for page in http.paginate("/items", max_pages=1)]
    assert first == [[5, 4]]
    await http.aclose()


async def test_paginate_stops_on_a_loop() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[], headers={"Link": '</items>; rel="next"'})

    http = _http(httpx.MockTransport(handle))
    with pytest.raises(Permanent, match="loops back"):
        async for _ in http.paginate("/items"):
            pass
    await http.aclose()


# ---- waits on the face's clock ---------------------------------------------------------------


def _clocked(handler: httpx.MockTransport, clock: SimulatedClock, **policy: float) -> FaceHttp:
    retry = RetryPolicy(wait_jitter=0.0, **policy)  # type: ignore[arg-type]
    limiter = RateLimiter(min_interval=1.0, clock=clock)
    return FaceHttp(
        face="t",
        base_url="https://example.test",
        transport=handler,
        retry=retry,
        limiter=limiter,
        clock=clock,
    )


async def test_retry_backoff_and_429_reset_wait_on_the_clock() -> None:
    clock = SimulatedClock()
    seen: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(clock.now())
        if len(seen) <= 2:
            return httpx.Response(503)
        if len(seen) == 3:
            # A reset 45 s ahead of the clock's now (not the machine's).
            reset = utc_datetime(clock) + timedelta(seconds=45)
            return httpx.Response(429, headers={"X-RateLimit-Reset": reset.isoformat()})
        return httpx.Response(200)

    started = time.monotonic()
    http = _clocked(httpx.MockTransport(handle), clock, wait_initial=2.0, wait_max=60.0)
    await http.request("GET", "/x")
    assert time.monotonic() - started < 1.0, "no real time passes"
    gaps = [later - earlier for earlier, later in itertools.pairwise(seen)]
    # Backoff 2 s then 4 s (exponential, no jitter); then the announced 45 s reset.
    assert gaps == pytest.approx([2.0, 4.0, 45.0])
    assert clock.slept == pytest.approx(51.0)
    # Of those waits, the 45 s reset was a rate limit (the backoff after 503s was not).
    assert http.waits.rate_limit_s == pytest.approx(45.0)
    await http.aclose()


async def test_retries_give_up_after_the_policy_timeout_on_the_clock() -> None:
    clock = SimulatedClock()
    calls: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(clock.now())
        return httpx.Response(502)

    http = _clocked(
        httpx.MockTransport(handle),
        clock,
        attempts=10,
        timeout=25.0,
        wait_initial=10.0,
        wait_max=10.0,
    )
    with pytest.raises(Transient):
        await http.request("GET", "/x")
    # Attempts at 0, 10, 20, 30 s: the one at 30 s is past the 25 s budget, so no more.
    assert [t - calls[0] for t in calls] == pytest.approx([0.0, 10.0, 20.0, 30.0])
    await http.aclose()


async def test_limiter_waits_of_a_client_go_through_the_clock() -> None:
    clock = SimulatedClock()
    http = _clocked(httpx.MockTransport(lambda request: httpx.Response(200)), clock)
    for _ in range(3):
        await http.request("GET", "/x")
    assert clock.slept == pytest.approx(2.0), "min_interval 1 s between three calls"
    await http.aclose()


async def test_retry_call_semantics() -> None:
    clock = SimulatedClock()
    policy = RetryPolicy(attempts=3, wait_initial=1.0, wait_max=1.5, wait_jitter=0.0)
    outcomes: list[Exception | str] = [Transient("a"), Transient("b"), "done"]

    async def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert await retry_call(flaky, on=lambda exc: True, policy=policy, clock=clock) == "done"
    assert clock.slept == pytest.approx(1.0 + 1.5), "2 s of backoff clamped to wait_max"

    outcomes[:] = [Transient("a"), "done"]
    before = clock.slept
    await retry_call(flaky, on=lambda exc: 7.25, policy=policy, clock=clock)
    assert clock.slept - before == pytest.approx(7.25), "a float is the exact wait"

    outcomes[:] = [Permanent("no")]
    with pytest.raises(Permanent):
        await retry_call(flaky, on=lambda exc: False, policy=policy, clock=clock)

    outcomes[:] = [Transient("1"), Transient("2"), Transient("3"), "never"]
    with pytest.raises(Transient, match="3"):
        await retry_call(flaky, on=lambda exc: True, policy=policy, clock=clock)
    assert outcomes == ["never"], "three attempts in all"
