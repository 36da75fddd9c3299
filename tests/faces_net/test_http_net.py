"""The shared HTTP helpers' parts that the network faces added: a 429 body's `retry_after`
(Discord, Telegram), statuses the caller handles itself (`expect`), per-route buckets."""

import time

import httpx
import pytest

from plaudit.faces import Permanent, RateLimited
from plaudit.faces._http import FaceHttp, RetryPolicy, error_for_response


def _response(status: int, **kwargs: object) -> httpx.Response:
    request = httpx.Request("POST", "https://example.test/x")
    return httpx.Response(status, request=request, **kwargs)  # type: ignore[arg-type]


def test_429_body_retry_after_wins_over_the_rounded_header() -> None:
    discord = _response(
        429,
        headers={"Retry-After": "65", "X-RateLimit-Reset-After": "64.57"},
        json={"message": "You are being rate limited.", "retry_after": 64.57, "global": False},
    )
    error = error_for_response(discord, face="d")
    assert isinstance(error, RateLimited) and error.retry_after == 64.57
    telegram = _response(
        429,
        json={
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 7",
            "parameters": {"retry_after": 7},
        },
    )
    error = error_for_response(telegram, face="t")
    assert isinstance(error, RateLimited) and error.retry_after == 7.0
    assert "retry after 7" in str(error)
    no_body = error_for_response(_response(429, headers={"Retry-After": "3"}), face="m")
    assert isinstance(no_body, RateLimited) and no_body.retry_after == 3.0


def _http(handler: httpx.MockTransport) -> FaceHttp:
    retry = RetryPolicy(wait_initial=0.01, wait_max=0.02, wait_jitter=0.0)
    return FaceHttp(face="t", base_url="https://example.test", transport=handler, retry=retry)


async def test_expect_returns_the_response_instead_of_raising() -> None:
    http = _http(httpx.MockTransport(lambda request: httpx.Response(404, json={"error": "no"})))
    response = await http.request("GET", "/missing", expect=(404,))
    assert response.status_code == 404
    with pytest.raises(Permanent):
        await http.request("GET", "/missing")
    await http.aclose()


async def test_spent_bucket_pauses_its_route_only() -> None:
    seen: list[tuple[str, float]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, time.monotonic()))
        if request.url.path == "/slow":
            headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.4"}
            return httpx.Response(200, headers=headers)
        return httpx.Response(200)

    http = _http(httpx.MockTransport(handle))
    start = time.monotonic()
    await http.request("GET", "/slow", bucket="slow")
    await http.request("GET", "/fast", bucket="fast")  # another bucket: not held back
    assert seen[-1][1] - start < 0.2
    await http.request("GET", "/slow", bucket="slow")  # its own bucket: waits for the reset
    assert seen[-1][1] - start >= 0.35
    await http.aclose()


async def test_global_429_pauses_every_bucket() -> None:
    calls: list[tuple[str, float]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append((request.url.path, time.monotonic()))
        if len(calls) == 1:
            body = {"message": "You are being rate limited.", "retry_after": 0.3, "global": True}
            return httpx.Response(429, json=body, headers={"X-RateLimit-Global": "true"})
        return httpx.Response(200)

    http = _http(httpx.MockTransport(handle))
    await http.request("GET", "/a", bucket="a")  # 429 (global), waited out, then 200
    await http.request("GET", "/b", bucket="b")
    assert [path for path, _ in calls] == ["/a", "/a", "/b"]
    assert calls[1][1] - calls[0][1] >= 0.28
    await http.aclose()
