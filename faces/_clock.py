"""The clock every part of the loop reads: now, and waiting.

The daemon passes a `WallClock`. A test or a benchmark passes a `SimulatedClock` and drives it:
a week of posting then takes as long as the work in it, not a week. Everything that asks the
time or waits (the controller's jobs, the store's timestamps, faces, their rate limiters and
retry waits) takes the clock it is given instead of calling `time.time()` or `asyncio.sleep()`.

Time is Unix seconds (float), like `time.time()`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What the loop needs of time."""

    def now(self) -> float:
        """Unix time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until `seconds` have passed on this clock."""
        ...


def utc_datetime(clock: Clock) -> datetime:
    """The clock's now as an aware UTC datetime."""
    return datetime.fromtimestamp(clock.now(), tz=UTC)


class WallClock:
    """The real time of the machine."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "WallClock()"


class SimulatedClock:
    """A clock that moves only when told to.

    `advance(seconds)` / `advance_to(t)` move it and wake every sleeper whose time has come,
    in time order. With `auto_advance=True` (the default), `sleep(s)` moves the clock forward
    by `s` itself, so code that waits (a retry backoff, a rate-limit wait) runs at once while
    the clock still shows the time it waited (sleepers that overlap add up: meant for one
    driver running jobs in turn, as `Controller.run_until` does); with `auto_advance=False`,
    sleepers wait until a test advances the clock past their deadline, and all of those woken
    by one `advance_to(t)` see the time `t` when they resume.
    """

    def __init__(self, start: float = 1_767_225_600.0, *, auto_advance: bool = True) -> None:
        # Default start: 2026-01-01T00:00:00Z, a fixed and readable origin for tests.
        self._now = float(start)
        self.auto_advance = auto_advance
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.slept = 0.0  # total seconds slept through this clock (a test can assert waits)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, f"a clock cannot go back (advance({seconds}))"
        self.advance_to(self._now + seconds)

    def advance_to(self, t: float) -> None:
        assert t >= self._now, f"a clock cannot go back (from {self._now} to {t})"
        while self._sleepers and self._sleepers[0][0] <= t:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not fut.done():
                fut.set_result(None)
        self._now = t

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.slept += seconds
        deadline = self._now + seconds
        if self.auto_advance or seconds == 0.0:
            self.advance_to(max(deadline, self._now))
            await asyncio.sleep(0)  # still a suspension point, as a real sleep is
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), fut))
        await fut

    @property
    def next_wakeup(self) -> float | None:
        """When the earliest sleeper wakes, or None when nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def __repr__(self) -> str:
        return f"SimulatedClock(now={self._now!r}, auto_advance={self.auto_advance})"
