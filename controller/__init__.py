"""plaudit.controller: the loop. What runs when, and how posts, reactions and rewards flow
between the faces, the learner and the store (see docs/architecture.md)."""

from ._approval import ApprovalRefused
from ._checkpoints import Resumed, SetAside, reference_checkpoint, resume_from_checkpoints
from ._config import (
    ApprovalConfig,
    ControllerConfig,
    LoopSettings,
    OfflineConfig,
    OnlineConfig,
    QuietHours,
    RewardModelConfig,
    SamplingConfig,
)
from ._context import FaceRuntime, Outcome, Progress
from ._controller import Controller
from ._durations import Duration, format_duration, parse_duration
from ._filters import REASONS as FILTER_REASONS
from ._filters import talks_like_assistant
from ._learning import TRAJECTORY_KINDS
from ._metrics import LoopMetrics, horizon_label
from ._offline import fit_examples
from ._prompts import SYSTEM, TOPICLESS, PostPrompt, echo_checked, post_prompts
from ._reward_model import (
    TALK_EXAMPLES,
    TALK_HISTORY_POSTS,
    TALK_THRESHOLD,
    fit_talk_head,
    talk_examples,
)
from ._worker import TorchWorker

__all__: list[str] = [
    "FILTER_REASONS",
    "SYSTEM",
    "TALK_EXAMPLES",
    "TALK_HISTORY_POSTS",
    "TALK_THRESHOLD",
    "TOPICLESS",
    "TRAJECTORY_KINDS",
    "ApprovalConfig",
    "ApprovalRefused",
    "Controller",
    "ControllerConfig",
    "Duration",
    "FaceRuntime",
    "LoopMetrics",
    "LoopSettings",
    "OfflineConfig",
    "OnlineConfig",
    "Outcome",
    "PostPrompt",
    "Progress",
    "QuietHours",
    "Resumed",
    "RewardModelConfig",
    "SamplingConfig",
    "SetAside",
    "TorchWorker",
    "echo_checked",
    "fit_examples",
    "fit_talk_head",
    "format_duration",
    "horizon_label",
    "parse_duration",
    "post_prompts",
    "reference_checkpoint",
    "resume_from_checkpoints",
    "talk_examples",
    "talks_like_assistant",
]
