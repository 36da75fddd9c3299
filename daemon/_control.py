"""The seam between the daemon and whatever steers it (HTTP API, status page, CLI).

The daemon's ``ControlService`` (daemon/_service.py) implements ``Control``; the HTTP layer only
translates requests into these calls and these models into JSON, so every way of steering
plaudit goes through the same code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal, Protocol, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from plaudit.state import Post, PostStory


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


class PostKindsStatus(_Model):
    history: float = Field(description="the face's history's effective number of kinds of post")
    candidates: float | None = Field(
        description="its newest candidates' (up to 200); null before 64 were scored"
    )


class RewardModelStatus(_Model):
    enabled: bool
    selection: Literal["thompson", "greedy", "uniform"]
    fitted: bool = Field(description="False until there is history or a reward to fit on")
    own_posts: int = Field(description="the bot's rewarded posts it was fitted on")
    history_posts: int = Field(description="face history posts it was warm-started on")
    loo_r2: float | None = Field(description="share of reward variance its fit explains (LOO)")
    talk_filter: bool = Field(
        description="its talk head is fitted and filters survivors that talk like an assistant"
    )
    spearman: dict[str, float] = Field(
        description="per face: rank correlation of predictions (stored at posting time) with "
        "the rewards that arrived; absent until 3 rewarded posts carry a prediction"
    )
    post_kinds: dict[str, PostKindsStatus] = Field(
        description="per face: how many kinds of post (16 clusters of the history on the "
        "reward model's features) its history and its newest candidates cover, as the "
        "effective number (exp of the entropy of their shares); absent before the history "
        "is clustered"
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
    approval_required: bool = Field(
        default=False, description="[approval] required: chosen posts wait for a human"
    )
    approvals_waiting: int = Field(
        default=0, description="posts held for a human's decision (all faces)"
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
    approval: Literal["approved", "edited", "rejected", "expired"] | None = Field(
        default=None,
        description="how the approval queue decided the post (edited: published in a human's "
        "words); null when it was never held",
    )

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
            approval=post.approval.value if post.approval else None,
        )


class PostsPage(_Model):
    posts: list[PostView]
    total: int
    limit: int
    offset: int


class HeldPost(_Model):
    """A post of the approval queue: held for a decision, or approved and not yet out."""

    id: int
    face: str
    status: Literal["awaiting", "approved"]
    text: str = Field(description="what publishes: the model's text, or the human's edit")
    original_text: str | None = Field(description="the model's text when a human edited it")
    approval: Literal["approved", "edited", "expired"] | None = Field(
        description="for an approved post: how (expired: approval.on_expiry = publish)"
    )
    predicted_reward: float | None = Field(description="the reward model's prediction")
    policy_version: int
    held_at: float | None = Field(description="Unix time the post was held")
    expires_at: float | None = Field(
        description="Unix time an awaiting post expires (then approval.on_expiry applies)"
    )

    @classmethod
    def from_post(cls, post: Post, *, expires_at: float | None) -> HeldPost:
        status = post.status.value
        if status not in ("awaiting", "approved"):
            raise ValueError(f"post {post.id} is {status}, not in the approval queue")
        approval = post.approval.value if post.approval else None
        return cls(
            id=post.id,
            face=post.face,
            status=status,  # type: ignore[arg-type]  # checked above
            text=post.text,
            original_text=post.original_text,
            approval=approval,  # type: ignore[arg-type]  # awaiting/approved: never rejected
            predicted_reward=post.predicted_reward,
            policy_version=post.policy_version,
            held_at=post.held_at,
            expires_at=expires_at if status == "awaiting" else None,
        )


class ApprovalQueue(_Model):
    required: bool = Field(description="[approval] required: every chosen post is held")
    expire_after_seconds: float
    on_expiry: Literal["drop", "publish"]
    rejected_reward: float = Field(description="the reward a rejected post trains with")
    posts: list[HeldPost] = Field(description="awaiting posts (oldest first), then approved")


class ApproveRequest(_Request):
    post_id: int = Field(ge=1)
    text: str | None = Field(
        default=None,
        max_length=10_000,
        description="publish this instead of the model's text (an edit: the post then trains "
        "the reward model only, never the policy)",
    )


class RejectRequest(_Request):
    post_id: int = Field(ge=1)


class Decision(_Model):
    """What became of a held post after a decision."""

    id: int
    face: str
    status: Literal["approved", "rejected"]
    approval: Literal["approved", "edited", "rejected"]
    text: str
    reward: float | None = Field(description="a rejection's reward (approval.rejected_reward)")


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

    def approvals(self, *, face: str | None) -> ApprovalQueue: ...

    def approve(self, request: ApproveRequest) -> Decision: ...

    def reject(self, request: RejectRequest) -> Decision: ...

    def metric_history(
        self, names: list[str], *, since: float
    ) -> dict[str, list[tuple[float, float]]]: ...
