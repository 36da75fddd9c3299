"""The loop's configuration: the `[controller]`, `[sampling]`, `[online]` and `[offline]` tables.

They live here, with the code that reads them; the daemon's `Settings` composes them with its
own tables (log, http, model, faces) and passes `LoopSettings` down."""

from __future__ import annotations

from datetime import time, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plaudit.controller._durations import Duration

if TYPE_CHECKING:
    from plaudit.learner import OfflineTrainConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingConfig(_Section):
    temperature: float = Field(default=0.9, ge=0.0, le=5.0)
    top_p: float | None = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    max_new_tokens: int = Field(default=60, ge=1, le=4096)


class QuietHours(_Section):
    start: time
    end: time


class ControllerConfig(_Section):
    post_interval: Duration = timedelta(hours=4)
    post_jitter: Duration = timedelta(minutes=20)
    daily_cap: int = Field(default=6, ge=0)  # posts per 24 h per face; 0: no cap
    quiet_hours: QuietHours | None = None
    candidates: int = Field(default=8, ge=1, le=256)
    # Snapshot reactions at each horizon after publishing; the last one gives the reward.
    horizons: tuple[Duration, ...] = (timedelta(hours=1), timedelta(hours=6), timedelta(hours=24))
    collect_interval: Duration = timedelta(minutes=10)
    learn_interval: Duration = timedelta(minutes=30)
    learn_min_rewards: int = Field(default=4, ge=1)
    # Offline fit on face history: at first start, then again at this interval (None: never).
    offline_interval: Duration | None = timedelta(days=7)
    offline_max_posts: int | None = Field(default=None, ge=1)
    # Candidates containing any of these (case-insensitive) are never published.
    blocklist: tuple[str, ...] = ()
    min_chars: int = Field(default=12, ge=1)
    shutdown_timeout: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _horizons_sorted(self) -> ControllerConfig:
        if not self.horizons:
            raise ValueError("horizons must list at least one duration, such as ['1h', '24h']")
        if list(self.horizons) != sorted(self.horizons):
            raise ValueError("horizons must be in increasing order, such as ['1h', '6h', '24h']")
        return self


class OnlineConfig(_Section):
    # clipped: importance-weighted clipped update with a KL anchor; reinforce: the baseline.
    method: Literal["clipped", "reinforce"] = "clipped"
    lr: float = Field(default=1e-5, gt=0)
    # The drift budget: KL(policy || reference) in nats per post (summed over a post's
    # tokens). A step that would cross it is undone (clipped only).
    max_kl: float | None = Field(default=5.0, gt=0)
    # Weight of the exact per-token KL(policy || reference) in the clipped update's loss.
    kl_coef: float = Field(default=0.05, ge=0)
    epochs: int = Field(default=2, ge=1)
    clip: float = Field(default=0.2, gt=0)
    grad_clip: float = Field(default=1.0, gt=0)
    baseline_decay: float = Field(default=0.9, ge=0, lt=1)


class OfflineConfig(BaseModel):
    """The `[offline]` table: the knobs of offline training, shared by the daemon's fits on
    face history and `plaudit train offline`. The keys typed here get the daemon's defaults;
    any other key of the learner's `OfflineTrainConfig` (warmup_steps, lr_schedule, precision,
    patience, ...) is allowed too and validated by `offline_train_config` (config check and
    start-up do that)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    epochs: int = Field(default=1, ge=1)
    max_steps: int | None = Field(default=200, ge=1)
    lr: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=8, ge=1)
    max_seq_len: int = Field(default=128, ge=8)

    def knobs(self) -> dict[str, Any]:
        return {**self.model_dump(exclude=set(self.model_extra or {})), **(self.model_extra or {})}

    def train_config(self, **overrides: Any) -> OfflineTrainConfig:
        """The learner's `OfflineTrainConfig` for these knobs and overrides (None: not
        overridden). Imports torch; raises pydantic's ValidationError for a bad knob (the
        daemon turns it into a message naming the `offline.` key)."""
        from plaudit.learner import OfflineTrainConfig

        knobs = {**self.knobs(), **{k: v for k, v in overrides.items() if v is not None}}
        return OfflineTrainConfig(**knobs)


class LoopSettings(BaseModel):
    """What the controller reads of the configuration. The daemon's `Settings` extends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sampling: SamplingConfig = SamplingConfig()
    controller: ControllerConfig = ControllerConfig()
    online: OnlineConfig = OnlineConfig()
    offline: OfflineConfig = OfflineConfig()
