"""``ControlService``: the ``Control`` seam over the running loop.

The HTTP API, the status page, the CLI (through the API) and the daemon's SIGUSR1/SIGUSR2
handling all steer plaudit through this one object. It owns no process life: the daemon builds
it once the controller has started and tells it its state through a callable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from plaudit.daemon._control import (
    ApprovalQueue,
    ApproveRequest,
    ControlConflict,
    ControlError,
    ControlUnavailable,
    DaemonState,
    Decision,
    FaceStatus,
    GeneratedSample,
    GenerateRequest,
    HeldPost,
    PostsPage,
    PostView,
    RejectRequest,
    RewardModelStatus,
    StatusView,
    TrainingModeName,
    TrainingProgress,
    TrainingStartRequest,
)
from plaudit.state import PostStatus, TrainingMode, TrainingState

if TYPE_CHECKING:
    from plaudit.controller import Controller, TorchWorker
    from plaudit.daemon._config import Settings
    from plaudit.daemon._metrics import Metrics
    from plaudit.learner import Policy
    from plaudit.state import Post, Store

# The status shows this many of the latest rewards.
LAST_REWARDS = 10


class ControlService:
    """What the daemon offers to anything that steers it (implements ``Control``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        controller: Controller,
        policy: Policy,
        worker: TorchWorker,
        metrics: Metrics,
        state: Callable[[], DaemonState],
        started_at: float,
    ) -> None:
        # Replaced by the daemon on reload (sampling defaults of the playground may change).
        self.settings = settings
        self.store = store
        self.controller = controller
        self.policy = policy
        self.worker = worker
        self.metrics = metrics
        self._state = state
        self.started_at = started_at
        self.log = structlog.stdlib.get_logger("plaudit.daemon")
        # plaudit_training_mode reads the mode that trains now at each scrape, as the status does.
        metrics.follow_training_mode(self.mode)

    def status(self) -> StatusView:
        faces = [
            FaceStatus(
                name=name,
                type=rt.face.type_name,
                posts_published=self.store.count_posts(face=name, status=PostStatus.PUBLISHED),
                last_post_at=self.store.last_published_at(name),
                next_post_at=rt.next_post_at,
                last_error=rt.last_error,
            )
            for name, rt in self.controller.faces.items()
        ]
        control = self.store.control()
        p = self.controller.progress
        progress = (
            TrainingProgress(
                mode=p.mode,
                step=p.step,
                total_steps=p.total_steps,
                loss=p.loss,
                tokens_per_second=p.tokens_per_second,
                started_at=p.started_at,
                # Stop takes effect at the run's next step boundary (seconds for SmolLM2):
                # until then the run is still there, ending.
                stopping=control.training is TrainingState.PAUSED,
            )
            if p is not None
            else None
        )
        return StatusView(
            state=self._state(),
            training=control.training.value,
            mode=self.mode(),
            policy_version=self.policy.version,
            model=self.settings.model.name,
            faces=faces,
            last_rewards=[r.reward for r in self.store.rewards(limit=LAST_REWARDS)],
            progress=progress,
            reward_model=RewardModelStatus(**self.controller.reward_model.status()),
            uptime_seconds=time.time() - self.started_at,
            posting_waits_for_first_fit=self.controller.first_fit_pending,
            # Measured afresh (os.scandir sums, about a millisecond), the gauge with it.
            state_bytes=self.controller.checkpoints.measure(),
            approval_required=self.settings.approval.required,
            approvals_waiting=self.store.count_posts(status=PostStatus.AWAITING),
        )

    async def start_training(self, request: TrainingStartRequest) -> StatusView:
        if self._state() == "stopping":
            raise ControlUnavailable("the daemon is stopping; start training after it restarts")
        if request.mode == "offline":
            faces = list(self.controller.faces)
            if request.data not in (None, *faces):
                raise ControlError(
                    f"offline data {request.data!r} is not a configured face; use one of "
                    f"{', '.join(faces)}"
                )
            fitted = [
                rt for name, rt in self.controller.faces.items() if request.data in (None, name)
            ]
            if not any(rt.history for rt in fitted):
                which = f"face {request.data!r} has no" if request.data else "no face has any"
                raise ControlConflict(
                    f"{which} history to fit on (none was read at start-up); give it history "
                    "(a file face: its `history` files) and restart plaudit, or train online"
                )
            if self._offline_running():
                raise ControlConflict(
                    "an offline run is already running or waiting to run; start the next one "
                    "when it has finished"
                )
        self.worker.stop_training.clear()
        self.store.set_control(training=TrainingState.RUNNING, mode=TrainingMode(request.mode))
        self.metrics.set_training(running=True, mode=request.mode)
        if request.mode == "offline":
            self.controller.request_offline(request.model_dump())
        else:
            self.controller.resume()
        self.log.info("training started", mode=request.mode)
        return self.status()

    async def stop_training(self) -> StatusView:
        control = self.store.set_control(training=TrainingState.PAUSED)
        self.worker.stop_training.set()  # the running update stops at its next step
        self.metrics.set_training(running=False, mode=control.mode.value)
        self.log.info("training paused")
        return self.status()

    def posts(self, *, limit: int, offset: int, face: str | None) -> PostsPage:
        posts = self.store.posts(face=face, status=PostStatus.PUBLISHED, limit=limit, offset=offset)
        views = [PostView.from_story(self.store.story(post.id)) for post in posts]
        total = self.store.count_posts(face=face, status=PostStatus.PUBLISHED)
        return PostsPage(posts=views, total=total, limit=limit, offset=offset)

    async def generate(self, request: GenerateRequest) -> list[GeneratedSample]:
        from plaudit.controller import SYSTEM, TOPICLESS
        from plaudit.learner import ContextLengthError, GenerationInterrupted, SamplingConfig

        if self._state() == "stopping":
            raise ControlUnavailable("the daemon is stopping; generate after it restarts")
        s = self.settings.sampling
        instruction = request.prompt or TOPICLESS.format(max_chars=280)
        prompt = self.policy.render_prompt(instruction, system=SYSTEM)
        sampling = SamplingConfig(
            temperature=request.temperature if request.temperature is not None else s.temperature,
            top_p=request.top_p if request.top_p is not None else s.top_p,
            top_k=s.top_k,
            max_new_tokens=request.max_new_tokens or s.max_new_tokens,
            seed=request.seed,
        )
        try:
            cands = await self.worker.run_soon(
                "playground",
                self.policy.generate,
                [prompt],
                n=request.n,
                sampling=sampling,
                should_stop=self.worker.shutting_down.is_set,
            )
        except ContextLengthError as exc:
            raise ControlError(f"the prompt is too long for the model: {exc}") from None
        except GenerationInterrupted:
            raise ControlUnavailable("the daemon began stopping during generation") from None
        return [
            GeneratedSample(
                text=c.text,
                tokens=len(c.tokens),
                mean_logprob=sum(c.logprobs) / max(len(c.logprobs), 1),
            )
            for c in cands
        ]

    def approvals(self, *, face: str | None) -> ApprovalQueue:
        if face is not None and face not in self.controller.faces:
            raise ControlError(
                f"no face named {face!r}; faces: {', '.join(self.controller.faces) or 'none'}"
            )
        queue = self.controller.approvals
        a = self.settings.approval
        posts = [
            HeldPost.from_post(p, expires_at=queue.deadline(p)) for p in queue.waiting(face)
        ] + [HeldPost.from_post(p, expires_at=None) for p in queue.approved(face)]
        return ApprovalQueue(
            required=a.required,
            expire_after_seconds=a.expire_after.total_seconds(),
            on_expiry=a.on_expiry,
            rejected_reward=a.rejected_reward,
            posts=posts,
        )

    def approve(self, request: ApproveRequest) -> Decision:
        from plaudit.controller import ApprovalRefused

        try:
            post = self.controller.approve(request.post_id, text=request.text)
        except ApprovalRefused as exc:
            raise (ControlConflict if exc.conflict else ControlError)(str(exc)) from None
        return self._decision(post, reward=None)

    def reject(self, request: RejectRequest) -> Decision:
        from plaudit.controller import ApprovalRefused

        try:
            post = self.controller.reject(request.post_id)
        except ApprovalRefused as exc:
            raise (ControlConflict if exc.conflict else ControlError)(str(exc)) from None
        return self._decision(post, reward=self.settings.approval.rejected_reward)

    @staticmethod
    def _decision(post: Post, *, reward: float | None) -> Decision:
        return Decision(
            id=post.id,
            face=post.face,
            status=post.status.value,  # type: ignore[arg-type]  # approved or rejected
            approval=post.approval.value if post.approval else "approved",  # type: ignore[arg-type]
            text=post.text,
            reward=reward,
        )

    def metric_history(
        self, names: list[str], *, since: float
    ) -> dict[str, list[tuple[float, float]]]:
        return self.store.metric_history(names, since=since)

    def mode(self) -> TrainingModeName:
        """The mode that trains now: offline while any offline fit runs (the first fit and
        the periodic ones run in online mode as the store has it), else the stored mode."""
        if self.controller.is_running("offline"):
            return "offline"
        return "offline" if self.store.control().mode is TrainingMode.OFFLINE else "online"

    def _offline_running(self) -> bool:
        """An offline fit runs now, or one asked for waits for its turn."""
        return (
            self.controller.is_running("offline")
            or self.controller.offline_fits.request is not None
        )
