"""The loop's configuration: the `[controller]`, `[sampling]`, `[online]`, `[offline]`,
`[reward_model]` and `[approval]` tables.

They live here, with the code that reads them; the daemon's `Settings` composes them with its
own tables (log, http, model, faces) and passes `LoopSettings` down."""

from __future__ import annotations

from datetime import time, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from plaudit.controller._durations import Duration, PositiveDuration
from plaudit.controller._rewards import selection_kl

if TYPE_CHECKING:
    from plaudit.learner import LoRAConfig, OfflineTrainConfig


class _Section(BaseModel):
    # Numbers must be finite: TOML has inf and nan, and `lr = inf` would pass a `gt=0` bound.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _greedy_if_tiny(value: float) -> float:
    # Logits divided by less than this overflow float32; so little above 0 is greedy anyway.
    return 0.0 if value < 1e-3 else value


class SamplingConfig(_Section):
    # 0 = greedy; values under 0.001 are taken as 0.
    temperature: Annotated[float, AfterValidator(_greedy_if_tiny)] = Field(
        default=0.9, ge=0.0, le=5.0
    )
    top_p: float | None = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    max_new_tokens: int = Field(default=60, ge=1, le=4096)


class QuietHours(_Section):
    start: time
    end: time


class ControllerConfig(_Section):
    post_interval: PositiveDuration = timedelta(hours=4)
    post_jitter: Duration = timedelta(minutes=20)
    daily_cap: int = Field(default=6, ge=0)  # posts per 24 h per face; 0: no cap
    quiet_hours: QuietHours | None = None
    candidates: int = Field(default=8, ge=1, le=256)
    # Snapshot reactions at each horizon after publishing; the last one gives the reward.
    horizons: tuple[PositiveDuration, ...] = (
        timedelta(hours=1),
        timedelta(hours=6),
        timedelta(hours=24),
    )
    collect_interval: PositiveDuration = timedelta(minutes=10)
    learn_interval: PositiveDuration = timedelta(minutes=30)
    learn_min_rewards: int = Field(default=4, ge=1)
    # Offline fit on face history: at first start, then again at this interval (None: never).
    offline_interval: PositiveDuration | None = timedelta(days=7)
    offline_max_posts: int | None = Field(default=None, ge=1)
    # Candidates containing any of these (case-insensitive) are never published.
    blocklist: tuple[str, ...] = ()
    min_chars: int = Field(default=12, ge=1)
    # The share of the example posts in each prompt drawn from the face's most-liked history
    # posts (the rest at random); 0: all at random. Needs a face that scores its history. (A
    # model with a chat template reads them in the posting instruction; one without, such as
    # the presets, writes the next post after them.)
    liked_examples: float = Field(default=0.0, ge=0.0, le=1.0)
    shutdown_timeout: Duration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _horizons_sorted(self) -> ControllerConfig:
        if not self.horizons:
            raise ValueError("horizons must list at least one duration, such as ['1h', '24h']")
        if list(self.horizons) != sorted(self.horizons):
            raise ValueError("horizons must be in increasing order, such as ['1h', '6h', '24h']")
        return self


class ApprovalConfig(_Section):
    """The `[approval]` table: a human in the loop (controller/_approval.py)."""

    # Hold every chosen post for a human's approve / edit / reject before it publishes.
    required: bool = False
    # A held post nobody decided on within this long is dropped ("drop": never published, no
    # reward, since silence says nothing about the post) or published as it is ("publish").
    expire_after: PositiveDuration = timedelta(hours=24)
    on_expiry: Literal["drop", "publish"] = "drop"
    # Posts held per face at once: the post job adds one at each interval until this many wait.
    max_waiting: int = Field(default=3, ge=1, le=100)
    # The reward of a rejected post, on the scale of the audience's (z-scores clipped to +-3):
    # -2 ranks it with the worst posts the audience saw. It trains the policy (the model
    # sampled the post) and the reward model.
    rejected_reward: float = Field(default=-2.0, ge=-3.0, le=3.0)


class OnlineConfig(_Section):
    # clipped: importance-weighted clipped update with a KL anchor; reinforce: the baseline.
    method: Literal["clipped", "reinforce"] = "clipped"
    lr: float = Field(default=1e-5, gt=0)
    # The drift budget: KL(policy || reference) in nats per post (summed over a post's
    # tokens). A step that crosses it, or an update that starts over it (a new probe of
    # recent samples sees drift the last one missed), scales the policy's whole move from the
    # reference back inside it, and the steps to come by the same factor (clipped only).
    max_kl: float | None = Field(default=5.0, gt=0)
    # Weight of the exact per-token KL(policy || reference) in the clipped update's loss.
    kl_coef: float = Field(default=0.05, ge=0)
    epochs: int = Field(default=2, ge=1)
    clip: float = Field(default=0.2, gt=0)
    grad_clip: float = Field(default=1.0, gt=0)
    baseline_decay: float = Field(default=0.9, ge=0, lt=1)
    # Every candidate teaches: the unpublished survivors of a rewarded post's cycle enter its
    # update with the reward model's predictions as rewards, relative to their cycle's mean
    # prediction, together weighing this much against the published post's real reward (1).
    # 0: only rewarded posts train the policy. Needs the reward model; scaled by its measured
    # trust (`reward_model.trust`).
    candidates_weight: float = Field(default=0.5, ge=0, le=1)
    # What must never be published teaches: a candidate filtered for what it says (assistant
    # talk, a copy of a known post, a blocklisted word) is a sample of the policy the
    # audience never sees, so it earns no reward and, without this, nothing pushes the policy
    # away from writing it. Each joins the next update with this reward (the audience's
    # scale: z-scores, +-3), as a rejected approval does. None: filtered candidates teach
    # nothing.
    filtered_reward: float | None = Field(default=-2.0, ge=-3.0, le=3.0)
    # A published post chosen by the reward model is not a sample of the policy: weigh it by
    # 1 / (survivors x its chance of being chosen), truncated (controller/_learning.py
    # `choice_weight`), so that in expectation the update learns from the policy's own
    # samples. Off: chosen posts count as samples (the update drifts toward the choice).
    choice_correction: bool = True
    # Early rewards: at the horizon before the final one, the final score is estimated from
    # the score so far (fitted on the face's completed posts) and trains the policy then; the
    # final reward, when it comes, trains only the difference. Needs two horizons or more.
    early_rewards: bool = True
    # Replay: each update also takes this many of the newest rewarded posts it already trained
    # on, each at replay_weight, their advantage against the current baseline; the update's
    # truncated importance weights correct for how stale they are. 0: each reward trains once.
    replay_posts: int = Field(default=0, ge=0, le=256)
    replay_weight: float = Field(default=0.25, gt=0, le=1)
    # LoRA: online updates train low-rank adapters of this rank on the attention and MLP
    # layers instead of every weight; the KL reference is then the base weights themselves
    # (no second copy) and the optimizer's moments are the adapters'. 0: full fine-tuning.
    # Changing it needs a restart. The adapters' term is scaled by lora_alpha / lora_rank.
    lora_rank: int = Field(default=0, ge=0, le=256)
    lora_alpha: float = Field(default=16.0, gt=0)

    def lora(self) -> LoRAConfig | None:
        """The adapters to train, or None for full fine-tuning (imports torch)."""
        from plaudit.learner import LoRAConfig

        return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha) if self.lora_rank else None


class RewardModelConfig(_Section):
    """The reward model (controller/_reward_model.py) and how it chooses the post to publish."""

    enabled: bool = True
    # Which survivor of the filters is published: "thompson" (the best under one draw from the
    # head's posterior: exploits where it is sure, explores where not), "greedy" (the best
    # predicted), "uniform" (at random; the head still predicts, for the correlation).
    selection: Literal["thompson", "greedy", "uniform"] = "thompson"
    # History posts per face the head is warm-started on (the newest; the controller reads at
    # most 5000), and the weight of one of them against one of the bot's own rewarded posts.
    # All of the simulated face's 4,200 rather than 1,000: the head's best-of-8 pick at the
    # start gains 0.040 instead of 0.030, and the published posts reach REINFORCE's final
    # score from the first 50 (docs/online-learning.md, "The whole history"); for SmolLM2 the
    # features of 1,000 posts take 18.4 s on a 2-core Intel Xeon, once per reference.
    history_posts: int = Field(default=5000, ge=0)
    history_weight: float = Field(default=0.3, gt=0, le=1)
    # The Spearman correlation of predictions with the rewards that arrive, over this many of
    # each face's newest rewarded posts.
    correlation_window: int = Field(default=50, ge=3)
    # Give the head a say in proportion to that correlation, once measured: candidates teach
    # with their share times it (none below 0), and a head whose correlation is not positive
    # does not choose the post (uniform among the survivors, as without a head). Off: measured
    # on bench/online.py it did not help (docs/online-learning.md).
    trust: bool = False
    # A second head on the same features filters the survivors that talk like a chat
    # assistant ("assistant"), fitted on labelled candidates and the faces' history
    # (controller/_reward_model.py `TALK_THRESHOLD`: what it catches and what it costs).
    talk_filter: bool = True


class OfflineConfig(BaseModel):
    """The `[offline]` table: the knobs of offline training, shared by the daemon's fits on
    face history and `plaudit train offline`. The keys typed here get the daemon's defaults;
    any other key of the learner's `OfflineTrainConfig` (warmup_steps, lr_schedule, precision,
    patience, ...) is allowed too and validated by `offline_train_config` (config check and
    start-up do that)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
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

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    sampling: SamplingConfig = SamplingConfig()
    controller: ControllerConfig = ControllerConfig()
    online: OnlineConfig = OnlineConfig()
    offline: OfflineConfig = OfflineConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    approval: ApprovalConfig = ApprovalConfig()

    def selection_kl(self) -> float:
        """The drift choosing among the candidates adds, in nats per post (0 when uniform)."""
        rm = self.reward_model
        if not rm.enabled or rm.selection == "uniform":
            return 0.0
        return selection_kl(self.controller.candidates)

    @model_validator(mode="after")
    def _budget_holds_selection(self) -> LoopSettings:
        budget, spent = self.online.max_kl, self.selection_kl()
        if budget is not None and spent >= budget:
            raise ValueError(
                f"online.max_kl = {budget} nats per post is spent by choosing among "
                f"{self.controller.candidates} candidates alone ({spent:.2f} nats per post, "
                "log n - (n-1)/n): raise online.max_kl, lower controller.candidates, or set "
                'reward_model.selection = "uniform"'
            )
        return self
