"""The one torch worker: every call that touches weights runs here, one at a time, so weights
are never used by two tasks at once and the event loop never blocks on torch.

Jobs run in the order they were submitted, with one exception: a job submitted with
`run_soon` (generation: a post cycle, the playground, the reward model's predictions) also
runs at the next *step boundary* of a long job (an online update calls `step_boundary` after
each optimizer step, an offline fit after each micro-batch), so it waits behind at most one
step of training instead of all of it. At a boundary nothing of the long job is in flight: no
autograd graph, the weights those of a kept step (an offline fit's, part-way through the fit:
a post sampled there records the logprobs of the weights that sampled it, as any does)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class _SoonJob:
    name: str
    call: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class TorchWorker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plaudit-torch")
        # Set to ask a long job (training) to stop at its next step boundary.
        self.stop_training = threading.Event()
        # Set at shutdown: generation stops at its next decoding step too.
        self.shutting_down = threading.Event()
        self._busy = 0
        self.current: str | None = None
        self._soon: deque[_SoonJob] = deque()
        self._lock = threading.Lock()
        self._thread: int | None = None  # the worker thread's ident, once it ran a job

    @property
    def busy(self) -> bool:
        return self._busy > 0

    async def run(self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn`` on the worker after every job submitted before it."""
        loop = asyncio.get_running_loop()
        self._busy += 1

        def call() -> R:
            self._thread = threading.get_ident()
            self.current = name
            try:
                return fn(*args, **kwargs)
            finally:
                self.current = None

        try:
            return await loop.run_in_executor(self._executor, functools.partial(call))
        finally:
            self._busy -= 1

    async def run_soon(
        self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run ``fn`` on the worker at its next step boundary or after the jobs before it,
        whichever comes first. For short jobs that use the weights as they are (generation):
        run inside a long job, they see the weights of its last kept step."""
        loop = asyncio.get_running_loop()
        job = _SoonJob(name, functools.partial(fn, *args, **kwargs), loop.create_future(), loop)
        with self._lock:
            self._soon.append(job)
        self._busy += 1
        try:
            # Drains the queue when the worker gets here, should no boundary come first.
            self._executor.submit(self._run_waiting)
            return await job.future  # type: ignore[no-any-return]
        finally:
            self._busy -= 1

    def step_boundary(self) -> None:
        """Called by a long job on the worker thread between its steps: runs the `run_soon`
        jobs waiting. The long job must expect the model in eval mode afterwards."""
        assert threading.get_ident() == self._thread, "step_boundary belongs on the worker"
        if self._soon:
            self._run_waiting()

    def _run_waiting(self) -> None:
        self._thread = threading.get_ident()
        outer = self.current
        while True:
            with self._lock:
                if not self._soon:
                    break
                job = self._soon.popleft()
            if job.future.cancelled():  # its caller gave up waiting
                continue
            self.current = job.name
            try:
                result = job.call()
            except BaseException as exc:  # handed to the caller, as run_in_executor does
                job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
            else:
                job.loop.call_soon_threadsafe(_settle, job.future, result, None)
            finally:
                self.current = outer

    def shutdown(self, *, wait: bool) -> None:
        self.stop_training.set()
        self.shutting_down.set()
        self._executor.shutdown(wait=wait, cancel_futures=True)
        with self._lock:
            waiting = list(self._soon)
            self._soon.clear()
        for job in waiting:  # their drain was cancelled with the executor's queue
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                job.loop.call_soon_threadsafe(
                    _settle, job.future, None, RuntimeError("the torch worker shut down")
                )


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
