"""Durations written the way people write them in a config file: "90s", "30m", "6h", "1d12h"."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: Any) -> timedelta:
    """Parse "1h30m" / "45s" / a number of seconds into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a duration cannot be negative (got {value})")
        return timedelta(seconds=value)
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
    return timedelta(seconds=total)


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
