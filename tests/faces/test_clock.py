"""The clock faces (and the rest of the loop) read: a simulated clock moves only when driven and
wakes its sleepers in time order; the wall clock is the machine's time."""

import asyncio
import time
from datetime import UTC, datetime

import pytest

from plaudit.faces import Clock, SimulatedClock, WallClock, utc_datetime

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, SimulatedClock's default origin


def test_both_clocks_are_clocks() -> None:
    assert isinstance(WallClock(), Clock)
    assert isinstance(SimulatedClock(), Clock)


def test_simulated_clock_starts_where_told_and_never_goes_back() -> None:
    clock = SimulatedClock()
    assert clock.now() == START
    assert utc_datetime(clock) == datetime(2026, 1, 1, tzinfo=UTC)
    clock.advance(90.5)
    assert clock.now() == START + 90.5
    clock.advance_to(START + 100)
    assert clock.now() == START + 100
    with pytest.raises(AssertionError, match="cannot go back"):
        clock.advance(-1)
    with pytest.raises(AssertionError, match="cannot go back"):
        clock.advance_to(START)
    assert SimulatedClock(start=10.0).now() == 10.0


async def test_auto_advance_sleep_moves_time_at_once() -> None:
    clock = SimulatedClock()
    started = time.monotonic()
    await clock.sleep(3600)
    await clock.sleep(-5)  # a negative wait is no wait
    await clock.sleep(0.5)
    assert clock.now() == START + 3600.5
    assert clock.slept == 3600.5
    assert time.monotonic() - started < 1.0, "an hour on a simulated clock takes no real time"


async def test_sleeper_without_auto_advance_waits_for_advance() -> None:
    clock = SimulatedClock(auto_advance=False)
    task = asyncio.create_task(clock.sleep(10))
    await asyncio.sleep(0)
    assert clock.next_wakeup == START + 10
    clock.advance(9.9)
    await asyncio.sleep(0)
    assert not task.done(), "the deadline has not come yet"
    clock.advance(0.1)
    await asyncio.sleep(0)
    assert task.done()
    assert clock.now() == START + 10 and clock.next_wakeup is None


async def test_advance_wakes_sleepers_in_time_order() -> None:
    clock = SimulatedClock(auto_advance=False)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [
        asyncio.create_task(sleeper(name, seconds))
        for name, seconds in (("c", 30), ("a", 10), ("b", 20), ("late", 99))
    ]
    await asyncio.sleep(0)
    clock.advance(50)  # past three deadlines at once
    await asyncio.gather(*tasks[:3])
    # Each woke in deadline order; all ran after the advance, when the clock shows its target.
    assert [name for name, _ in woke] == ["a", "b", "c"]
    assert all(now == START + 50 for _, now in woke)
    assert not tasks[3].done() and clock.next_wakeup == START + 99
    clock.advance_to(START + 99)
    await tasks[3]
    assert woke[-1] == ("late", START + 99)


async def test_a_cancelled_sleeper_is_forgotten() -> None:
    clock = SimulatedClock(auto_advance=False)
    task = asyncio.create_task(clock.sleep(5))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.next_wakeup is None
    clock.advance(10)  # waking a cancelled sleeper must not fail


async def test_wall_clock_is_the_machine_time() -> None:
    clock = WallClock()
    assert abs(clock.now() - time.time()) < 1.0
    assert abs(utc_datetime(clock) - datetime.now(UTC)).total_seconds() < 1.0
    started = time.monotonic()
    await clock.sleep(0.05)
    await clock.sleep(-1)  # a negative wait returns at once
    assert 0.04 <= time.monotonic() - started < 1.0
