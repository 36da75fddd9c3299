"""The one torch worker: every call that touches weights runs here, one at a time, so weights
are never used by two tasks at once and the event loop never blocks on torch."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class TorchWorker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plaudit-torch")
        # Set to ask a long job (training) to stop at its next step boundary.
        self.stop_training = threading.Event()
        # Set at shutdown: generation stops at its next decoding step too.
        self.shutting_down = threading.Event()
        self._busy = 0
        self.current: str | None = None

    @property
    def busy(self) -> bool:
        return self._busy > 0

    async def run(self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        self._busy += 1

        def call() -> R:
            self.current = name
            try:
                return fn(*args, **kwargs)
            finally:
                self.current = None

        try:
            return await loop.run_in_executor(self._executor, functools.partial(call))
        finally:
            self._busy -= 1

    def shutdown(self, *, wait: bool) -> None:
        self.stop_training.set()
        self.shutting_down.set()
        self._executor.shutdown(wait=wait, cancel_futures=True)
