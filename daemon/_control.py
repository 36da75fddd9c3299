"""The seam between the daemon and whatever steers it (HTTP API, status page, CLI).

The daemon's ``ControlService`` (daemon/_service.py) implements ``Control``; the HTTP layer only
translates requests into these calls and these models into JSON, so every way of steering
plaudit goes through the same code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Protocol, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from plaudit.state import PostStory


DaemonState: TypeAlias = Literal["starting", "running", "reloading", "stopping"]
TrainingStateName: TypeAlias = Literal["running", "paused"]
TrainingModeName: TypeAlias = Literal["online", "offline"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(_Model):
    """What a client sends: numbers must be finite (JSON bodies may carry Infinity and NaN,
    which Python's parser accepts) and within the ranges each field declares."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Seeds go to torch.manual_seed, which takes a signed 64-bit integer.
MAX_SEED = 2**63 - 1
# Logits divided by a temperature below this overflow float32 (1e-279 made the sampler index
# past the vocabulary); so little above 0 samples as greedily as 0 does, so it is taken as 0.
MIN_TEMPERATURE = 1e-3


def _greedy_if_tiny(value: float | None) -> float | None:
    return 0.0 if value is not None and value < MIN_TEMPERATURE else value


Temperature = Annotated[
    float | None,
    Field(ge=0.0, le=5.0, description="0 = greedy; values under 0.001 are taken as 0"),
    AfterValidator(_greedy_if_tiny),
]


class FaceStatus(_Model):
    name: str
    type: str
    posts_published: int
    last_post_at: float | None = Field(description="Unix time of the last published post")
    next_post_at: float | None = Field(description="Unix time the next post is scheduled")
    last_error: str | None = None


class TrainingProgress(_Model):
    mode: Literal["offline", "online"]
    step: int
    total_steps: int | None
    loss: float | None
    tokens_per_second: float | None
    started_at: float
    stopping: bool = Field(
        default=False,
        description="training was stopped and the run ends at its next step boundary",
    )


class RewardModelStatus(_Model):
    enabled: bool
    selection: Literal["thompson", "greedy", "uniform"]
    fitted: bool = Field(description="False until there is history or a reward to fit on")
    own_posts: int = Field(description="the bot's rewarded posts it was fitted on")
    history_posts: int = Field(description="face history posts it was warm-started on")
    loo_r2: float | None = Field(description="share of reward variance its fit explains (LOO)")
    spearman: dict[str, float] = Field(
        description="per face: rank correlation of predictions (stored at posting time) with "
        "the rewards that arrived; absent until 3 rewarded posts carry a prediction"
    )


class StatusView(_Model):
    state: DaemonState
    training: TrainingStateName
    mode: TrainingModeName = Field(
        description="what trains now: offline while an offline fit runs (the first fit, a "
        "periodic one or one asked for), else the mode training was started in"
    )
    policy_version: int
    model: str
    faces: list[FaceStatus]
    last_rewards: list[float]
    progress: TrainingProgress | None = None
    reward_model: RewardModelStatus
    uptime_seconds: float
    posting_waits_for_first_fit: bool = Field(
        default=False,
        description="no post goes out before the first offline fit on the faces' history ends",
    )
    state_bytes: dict[str, int] = Field(
        default_factory=dict,
        description="bytes in the state folder by part: checkpoints, database, cache, other",
    )


class TrainingStartRequest(_Request):
    mode: TrainingModeName = "online"
    # Offline only: where the posts come from (a face instance name or a data file path).
    data: str | None = None
    epochs: float | None = Field(default=None, gt=0, le=1000)
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    lr: float | None = Field(default=None, gt=0, le=1.0)
    batch_size: int | None = Field(default=None, ge=1, le=4096)


class PostView(_Model):
    id: int
    face: str
    status: str
    text: str
    url: str | None
    published_at: float | None
    reactions: dict[str, int] | None
    deleted: bool = Field(
        default=False,
        description="the face no longer finds the post (its last reaction snapshot: not found)",
    )
    reward: float | None
    policy_version: int

    @classmethod
    def from_story(cls, story: PostStory) -> PostView:
        """A post as the feed shows it: its latest reaction snapshot and its reward."""
        post, last = story.post, (story.snapshots[-1] if story.snapshots else None)
        reactions = None
        if last is not None:
            reactions = {
                "likes": last.likes,
                "reposts": last.reposts,
                "replies": last.replies,
                "quotes": last.quotes,
            }
        return cls(
            id=post.id,
            face=post.face,
            status=post.status.value,
            text=post.text,
            url=post.url,
            published_at=post.published_at,
            reactions=reactions,
            deleted=last is not None and not last.found,
            reward=story.reward.reward if story.reward else None,
            policy_version=post.policy_version,
        )


class PostsPage(_Model):
    posts: list[PostView]
    total: int
    limit: int
    offset: int


class GenerateRequest(_Request):
    prompt: str | None = Field(default=None, max_length=4000)
    n: int = Field(default=1, ge=1, le=8)
    max_new_tokens: int | None = Field(default=None, ge=1, le=512)
    temperature: Temperature = None
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class GeneratedSample(_Model):
    text: str
    tokens: int
    mean_logprob: float
    predicted_reward: float | None = None


class ControlError(Exception):
    """A control call the daemon cannot carry out as asked; the message says why and what to
    do. The HTTP API answers 400 unless a subclass says otherwise.

    ControlError            the request names something unknown or unusable (400)
    ├── ControlConflict     it conflicts with what is running now, e.g. a second offline run (409)
    └── ControlUnavailable  not possible at the moment: starting, stopping, no model loaded (503)
    """


class ControlConflict(ControlError):
    """The request conflicts with the daemon's current state; retry after it changes."""


class ControlUnavailable(ControlError):
    """The daemon cannot serve the request right now (starting up, shutting down)."""


class Control(Protocol):
    """What the daemon offers to anything that steers it. Methods raise ControlError (or a
    subclass) for requests they refuse; any other exception is a bug and answers 500."""

    def status(self) -> StatusView: ...

    async def start_training(self, request: TrainingStartRequest) -> StatusView: ...

    async def stop_training(self) -> StatusView: ...

    def posts(self, *, limit: int, offset: int, face: str | None) -> PostsPage: ...

    async def generate(self, request: GenerateRequest) -> list[GeneratedSample]: ...

    def metric_history(
        self, names: list[str], *, since: float
    ) -> dict[str, list[tuple[float, float]]]: ...
