"""Public helpers for faces that talk HTTP (see faces/README.md, "Faces that talk HTTP"):
the mapping from HTTP to the face errors, rate-limit header parsing, a client-side rate
limiter, retries that honour Retry-After (`retry_call`, which waits on the face's clock), and
Link-header pagination."""

from ._http import (
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

__all__: list[str] = [
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
