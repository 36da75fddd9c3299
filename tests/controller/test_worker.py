"""The torch worker: one job at a time, generation at the step boundaries of training."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from plaudit.controller import TorchWorker


def _training(worker: TorchWorker, steps: int, log: list[str], started: threading.Event) -> int:
    started.set()
    for i in range(steps):
        time.sleep(0.05)  # one step
        log.append(f"step {i}")
        worker.step_boundary()
    return steps


async def test_generation_waits_one_step_not_the_whole_update() -> None:
    worker = TorchWorker()
    log: list[str] = []
    started = threading.Event()
    try:
        training = asyncio.create_task(worker.run("learn", _training, worker, 40, log, started))
        while not started.is_set():
            await asyncio.sleep(0.005)
        t0 = time.monotonic()
        out = await worker.run_soon("generate", lambda: log.append("generate") or "text")
        waited = time.monotonic() - t0
        assert out == "text"
        assert waited < 0.5, f"generation waited {waited:.2f} s behind a 2 s update"
        assert not training.done()
        assert await training == 40
    finally:
        worker.shutdown(wait=True)
    i = log.index("generate")
    assert 0 < i < len(log) - 1, "ran between two steps"


async def test_plain_jobs_keep_their_order_behind_a_long_job() -> None:
    worker = TorchWorker()
    log: list[str] = []
    started = threading.Event()
    try:
        training = asyncio.create_task(worker.run("learn", _training, worker, 5, log, started))
        while not started.is_set():
            await asyncio.sleep(0.005)
        await worker.run("checkpoint", lambda: log.append("checkpoint"))
        await training
    finally:
        worker.shutdown(wait=True)
    assert log[-1] == "checkpoint"


async def test_run_soon_on_an_idle_worker_and_its_errors() -> None:
    worker = TorchWorker()
    try:
        assert await worker.run_soon("generate", lambda x: x + 1, 1) == 2

        def fails() -> None:
            raise ValueError("bad prompt")

        with pytest.raises(ValueError, match="bad prompt"):
            await worker.run_soon("generate", fails)
        assert not worker.busy
    finally:
        worker.shutdown(wait=True)


async def test_a_cancelled_wait_does_not_run() -> None:
    worker = TorchWorker()
    ran: list[str] = []
    gate = threading.Event()
    try:
        blocker = asyncio.create_task(worker.run("learn", gate.wait, 5))
        waiting = asyncio.create_task(worker.run_soon("generate", lambda: ran.append("x")))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.set()
        await blocker
        await worker.run("noop", lambda: None)
    finally:
        worker.shutdown(wait=True)
    assert ran == []


def test_step_boundary_belongs_on_the_worker_thread() -> None:
    worker = TorchWorker()
    try:
        asyncio.run(worker.run("noop", lambda: None))
        with pytest.raises(AssertionError, match="worker"):
            worker.step_boundary()
    finally:
        worker.shutdown(wait=True)
