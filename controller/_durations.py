"""Durations written the way people write them in a config file: "90s", "30m", "6h", "1d12h"."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
# Ten years: longer than any interval the loop needs, far below what timedelta overflows at.
MAX_DURATION: Final = timedelta(days=3650)


def _bounded(seconds: float, value: Any) -> timedelta:
    if not math.isfinite(seconds):
        raise ValueError(f'a duration must be finite, not {value!r}; write one such as "6h"')
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative (got {value!r})")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(
            f"{value!r} is too long: a duration is at most {MAX_DURATION.days}d (ten years)"
        )
    return timedelta(seconds=seconds)


def parse_duration(value: Any) -> timedelta:
    """Parse "1h30m" / "45s" / a number of seconds into a timedelta, from 0 up to
    MAX_DURATION; anything else is a ValueError that says what to write."""
    if isinstance(value, timedelta):
        return _bounded(value.total_seconds(), value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return _bounded(float(value), value)
        except OverflowError:  # an int beyond float range
            return _bounded(math.inf, value)
    if not isinstance(value, str):
        raise ValueError(f'a duration is a string such as "30m" or "6h", not {value!r}')
    text = value.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f'cannot read {value!r} as a duration: write a number with a unit, such as "90s", '
            f'"30m", "6h", "1d" or "1h30m" (units: ms, s, m, h, d, w)'
        )
    return _bounded(total, value)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(
            "must be longer than 0s: a zero interval would run the job back to back; write "
            'a duration such as "30m"'
        )
    return value


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling: 5400 s -> "1h30m"."""
    seconds = value.total_seconds()
    if seconds == 0:
        return "0s"
    if seconds != int(seconds):
        return f"{seconds:g}s"
    out, rest = [], int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
# An interval between runs of a job: more than zero.
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
