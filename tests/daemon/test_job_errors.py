"""A full state disk fails every job until space is freed (issue 16, problem 8: 50 tracebacks in
30 s). Each such failure is one log line with the error's class, its message and the fix; any
other failure still logs its traceback, which is how bugs are found."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from plaudit.controller import Controller, LoopSettings, TorchWorker
from plaudit.daemon._metrics import Metrics
from plaudit.faces import SimulatedClock
from plaudit.faces._memory import MemoryConfig, MemoryFace
from plaudit.learner import Policy
from plaudit.state import DiskFull, StateError, Store


@pytest.fixture
async def controller(tmp_path: Path, tiny_model_dir: Path) -> AsyncIterator[Controller]:
    clock = SimulatedClock()
    store = Store.open(tmp_path / "state", now=clock.now)
    face = MemoryFace(name="mem", config=MemoryConfig(), state_dir=tmp_path / "f", clock=clock)
    worker = TorchWorker()
    yield Controller(
        settings=LoopSettings(),
        store=store,
        faces={"mem": face},
        policy=Policy.load(tiny_model_dir, lr=1e-3),
        worker=worker,
        metrics=Metrics(faces=["mem"], version="test", model="tiny", process=False),
        state_dir=tmp_path / "state",
        clock=clock,
    )
    worker.shutdown(wait=True)
    store.close()


@pytest.mark.parametrize(
    "error",
    [
        DiskFull("state database x: disk full; the write was rolled back"),
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/state/checkpoints/7"),
        StateError("cannot write /state/x"),  # raised from an ENOSPC below it
    ],
)
async def test_a_full_disk_is_one_line_per_job(
    controller: Controller, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    async def sweep() -> str:
        if isinstance(error, StateError) and not isinstance(error, DiskFull):
            raise error from OSError(errno.ENOSPC, "No space left on device")
        raise error

    monkeypatch.setattr(controller.collection, "sweep", sweep)
    with structlog.testing.capture_logs() as logs:
        assert await controller.run_job("collect") == "error"
    (entry,) = [e for e in logs if e["log_level"] == "error"]
    assert "exc_info" not in entry, "no traceback for a full disk"
    assert entry["job"] == "collect"
    assert entry["error"].startswith(type(error).__name__ + ": ")
    assert "free" in entry["fix"] and "space" in entry["fix"]


async def test_any_other_failure_keeps_its_traceback(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def sweep() -> str:
        raise KeyError("a bug")

    monkeypatch.setattr(controller.collection, "sweep", sweep)
    with structlog.testing.capture_logs() as logs:
        assert await controller.run_job("collect") == "error"
    (entry,) = [e for e in logs if e["log_level"] == "error"]
    assert entry["exc_info"] is True
