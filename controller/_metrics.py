"""What the loop reports: the metrics interface the controller writes to.

The daemon's Prometheus `Metrics` satisfies it; a benchmark passes the same class on a registry
of its own. The controller never imports the daemon."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram

from plaudit.faces import AuthFailed, FaceError, Permanent, RateLimited, Rejected, Transient


def horizon_label(horizon: timedelta | float) -> str:
    """A horizon as the short duration the config uses: 3600 s -> "1h", 90 s -> "90s"."""
    seconds = horizon.total_seconds() if isinstance(horizon, timedelta) else float(horizon)
    if seconds <= 0 or not math.isfinite(seconds):
        raise ValueError(f"a reaction horizon must be a positive duration, got {seconds!r} s")
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def failure_reason(exc: FaceError) -> str:
    """The `reason` label of a face error: its class, as the loop acts on it."""
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, Transient):
        return "transient"
    if isinstance(exc, AuthFailed):
        return "auth"
    if isinstance(exc, Rejected):
        return "rejected"
    if isinstance(exc, Permanent):
        return "permanent"
    return "other"


class LoopMetrics(Protocol):
    """The series the controller writes (labels in brackets)."""

    posts_generated: Counter  # [face]
    posts_filtered: Counter  # [face, reason]
    posts_published: Counter  # [face]
    posts_failed: Counter  # [face, reason]
    rate_limit_waits: Counter  # [face]
    face_errors: Counter  # [face, call, reason]: every failed face call, retried or not
    rate_limit_wait_seconds: Counter  # [face]
    publish_duration: Histogram  # [face]
    generation_duration: Histogram
    last_post_timestamp: Gauge  # [face]
    reactions_collected: Counter  # [face, horizon]
    train_steps: Counter  # [mode]
    train_loss: Gauge  # [mode]
    train_kl: Gauge  # [mode]
    train_learning_rate: Gauge  # [mode]
    train_tokens_per_second: Gauge  # [mode]
    train_entropy: Gauge  # [mode]
    online_clip_fraction: Gauge  # [lag]: "0", "1", "2", "3+"
    online_importance_weight: Gauge
    online_move_scale: Gauge
    online_trajectories: Counter  # [kind]: controller TRAJECTORY_KINDS
    reward_model_spearman: Gauge  # [face]
    post_kinds: Gauge  # [face, posts]: "candidates" (the newest), "history"
    approval_waiting: Gauge  # [face]: posts held for a human's decision
    approval_decisions: Counter  # [face, decision]: approved, edited, rejected, expired
    approval_wait_seconds: Histogram  # held -> decided
    policy_version: Gauge
    state_bytes: Gauge  # [part]: plaudit.state.STATE_PARTS
    scheduler_job_runs: Counter  # [job, outcome]
    scheduler_misfires: Counter  # [job]

    def record_reward(self, face: str, reward: float) -> None: ...

    def set_training(self, *, running: bool, mode: str) -> None: ...
