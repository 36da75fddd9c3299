"""The APScheduler shell on the wall clock (issue 17, item 7): normal operation logs no
"maximum number of running instances reached", and no job is lost to such a skip. A stub stands
in for the controller: the shell only reads `due()`, `is_running()` and `run_job()`."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from plaudit.controller._scheduler import JobScheduler
from plaudit.faces import WallClock


class _Counter:
    def labels(self, *_: str) -> _Counter:
        return self

    def inc(self) -> None:
        pass


class StubController:
    """Jobs that run for `runs_for` seconds and plan their next run `plan(name)` seconds after
    they end, as `Controller._after` does."""

    def __init__(self, jobs: dict[str, float], plan: Any, runs_for: Any) -> None:
        self.clock = WallClock()
        self.ctx = SimpleNamespace(metrics=SimpleNamespace(scheduler_misfires=_Counter()))
        self._next = dict.fromkeys(jobs, time.time())
        self._running: set[str] = set()
        self.runs = dict.fromkeys(jobs, 0)
        self.plan = plan
        self.runs_for = runs_for

    def due(self) -> dict[str, float]:
        return dict(self._next)

    def is_running(self, name: str) -> bool:
        return name in self._running

    async def run_job(self, name: str) -> str:
        self._running.add(name)
        try:
            await asyncio.sleep(self.runs_for(name))
        finally:
            self._running.discard(name)
        self.runs[name] += 1
        self._next[name] = time.time() + self.plan(name)
        return "success"


async def _drive(controller: StubController, seconds: float) -> None:
    scheduler = JobScheduler(cast(Any, controller))
    scheduler.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        scheduler.shutdown()


def _skips(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "maximum number" in r.getMessage()]


def test_a_job_due_again_as_it_ends_runs_again_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An offline fit asked for while one runs is due at once when the first ends. Its timer
    used to be set before APScheduler released the first run: skipped with a warning, and the
    job never ran again."""
    caplog.set_level(logging.WARNING, logger="apscheduler")
    controller = StubController(
        {"offline": 0.0, "collect": 0.0},
        plan=lambda name: 0.0 if name == "offline" else 0.05,
        runs_for=lambda name: 0.01,
    )
    asyncio.run(_drive(controller, 0.5))
    assert _skips(caplog) == []
    assert controller.runs["offline"] >= 5, controller.runs
    assert controller.runs["collect"] >= 3, controller.runs


def test_busy_jobs_on_short_intervals_log_no_skip(caplog: pytest.LogCaptureFixture) -> None:
    """The demo's rhythm squeezed: jobs of random lengths planned a random, often tiny, time
    after they end, so timers fire while others end and re-plan."""
    caplog.set_level(logging.WARNING, logger="apscheduler")
    rng = random.Random(0)
    controller = StubController(
        {"collect": 0.0, "learn": 0.0, "post:sim": 0.0, "offline": 0.0},
        plan=lambda name: rng.choice([0.0, 0.0005, 0.002, 0.02]),
        runs_for=lambda name: rng.choice([0.0, 0.001, 0.01]),
    )
    asyncio.run(_drive(controller, 1.0))
    assert _skips(caplog) == []
    assert min(controller.runs.values()) >= 5, controller.runs
