"""What every job of the loop works with, passed once to each room of the controller."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

if TYPE_CHECKING:
    from plaudit.controller._config import LoopSettings
    from plaudit.controller._metrics import LoopMetrics
    from plaudit.controller._worker import TorchWorker
    from plaudit.faces import Clock, Face
    from plaudit.learner import Policy
    from plaudit.state import Store

Outcome = Literal["success", "error", "skipped"]


@dataclass
class FaceRuntime:
    """One face instance as the loop sees it."""

    name: str
    face: Face[Any]
    history: list[str] = field(default_factory=list)
    # The face's score of each history post (as `history`), for the reward model; empty when
    # the history could not be scored.
    history_scores: list[float] = field(default_factory=list)
    next_post_at: float | None = None
    last_error: str | None = None
    # Kept intents (a publish that failed for now): post id -> failed tries so far.
    retries: dict[int, int] = field(default_factory=dict)
    # Intents whose post may exist: a try failed without an answer saying it was not made (a
    # timeout, a 5xx, a crash mid-publish).
    maybe_made: set[int] = field(default_factory=set)
    # A post was approved while this face's post job ran: plan its slot when the job ends.
    poked: bool = False
    # The face's `rate_limit_waited_seconds()` when the metric last took it.
    waited_s: float = 0.0

    def waited_since_last(self) -> float:
        """Seconds the face waited on rate limits inside its calls since the last call of
        this (for plaudit_rate_limit_wait_seconds_total)."""
        try:
            total = float(self.face.rate_limit_waited_seconds())
        except Exception:  # a third-party face's report: the metric is not worth a failure
            return 0.0
        if total < self.waited_s:  # a new face instance (a reload): it counts from 0
            self.waited_s = 0.0
        grown, self.waited_s = total - self.waited_s, total
        return grown


@dataclass
class Progress:
    """The training run in progress, for the status page."""

    mode: Literal["offline", "online"]
    started_at: float
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None


@dataclass
class LoopContext:
    settings: LoopSettings  # replaced on reload
    store: Store
    policy: Policy
    worker: TorchWorker
    metrics: LoopMetrics
    clock: Clock
    state_dir: Path
    rng: random.Random
    faces: dict[str, FaceRuntime]
    progress: Progress | None = None
    log: Any = field(default_factory=lambda: structlog.stdlib.get_logger("plaudit.controller"))
