"""Helpers for the HTTP tests: a real Control backed by a real Store, tool lookup.

``StoreControl`` implements the daemon's Control seam the way the daemon does (through the
state store), minus the model: training "steps" are simulated on a timer and generation
recombines words of the stored posts with a seeded generator. It is a test double of the
seam, not of the HTTP layer, which runs for real in every test."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from plaudit.daemon._control import (
    ControlConflict,
    ControlError,
    FaceStatus,
    GeneratedSample,
    GenerateRequest,
    PostsPage,
    PostView,
    StatusView,
    TrainingProgress,
    TrainingStartRequest,
)
from plaudit.daemon._metrics import Metrics
from plaudit.state import NewCandidate, PostStatus, Snapshot, Store, TrainingMode, TrainingState

TOKEN = "test-token-0123456789abcdef"
FACES = {"sim": "simulated", "journal": "file"}

POSTS = [
    ("sim", "Sunny morning, fresh coffee and a good book. Perfect start!", 12, 3, 0.8),
    ("sim", "Traffic again. Why is every road closed on the same day?", 2, 0, -0.9),
    ("journal", "Shipped a small fix today; the tests are green and so am I.", 7, 1, 0.3),
    ("sim", "Rain all week. The cat refuses to go outside and so do I.", 5, 2, 0.1),
]


def require_tool(name: str) -> str:
    """The tool's path; skip when it is missing on a developer machine, fail in CI."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path:
        return path
    message = f"{name} is not installed (Debian package: apt-get install -y {name})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must have it (.ci/run installs it)")
    pytest.skip(message)


def seed_store(store: Store) -> None:
    """A few published posts with reaction snapshots and rewards, and metric history."""
    now = time.time()
    for i, (face, text, likes, reposts, reward) in enumerate(POSTS):
        (pid,) = store.add_candidates(
            face=face,
            cycle_id=f"c{i}",
            candidates=[NewCandidate(text=text, tokens=[1, 2, 3], logprobs=[-1.0, -0.5, -0.2])],
        )
        store.choose(pid)
        store.record_intent(pid, idempotency_key=f"k{i}")
        published = now - 3600 * (len(POSTS) - i)
        store.mark_published(
            pid, ref=f"ref{i}", url=f"https://example.test/{i}", published_at=published
        )
        store.add_snapshot(
            Snapshot(
                post_id=pid,
                horizon_s=3600,
                found=True,
                likes=likes,
                reposts=reposts,
                replies=1,
                quotes=0,
                extra={},
                audience=100,
                read_at=published + 3600,
            )
        )
        store.add_reward(post_id=pid, face=face, score=likes / 100, reward=reward)
    for k in range(30):
        values = {"loss": 3.0 * 0.95**k, "reward": 0.1 * k - 1.0, "kl": 0.002 * k}
        if k < 10:  # an offline run came first
            values["offline_loss"] = 4.0 - 0.1 * k
        store.record_metrics(values, ts=now - 60 * (30 - k))


def _runs_here(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class StoreControl:
    """The Control seam over a real Store; training and generation are simulated."""

    def __init__(self, *, store: Store, metrics: Metrics, step_seconds: float = 0.05) -> None:
        self.store = store
        self.metrics = metrics
        self.step_seconds = step_seconds
        self.started = time.time()
        self._run: asyncio.Task[None] | None = None
        self._progress: TrainingProgress | None = None
        metrics.set_training(
            running=store.control().training is TrainingState.RUNNING,
            mode=store.control().mode.value,
        )

    def close(self) -> None:
        """Cancel a simulated run before its store closes. The run lives on the loop that
        served the request: schemathesis serves every in-process app from one event-loop
        thread for the whole session, so a run left there would go on writing to a closed
        store (and log its traceback in that thread) during later tests."""
        run = self._run
        if run is None or run.done():
            return
        loop = run.get_loop()
        if loop.is_running() and not _runs_here(loop):

            async def cancel() -> None:
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(cancel(), loop).result(timeout=10)
        else:
            run.cancel()  # delivered when this test's loop runs its pending tasks down

    def status(self) -> StatusView:
        control = self.store.control()
        faces = [
            FaceStatus(
                name=name,
                type=kind,
                posts_published=self.store.count_posts(face=name, status=PostStatus.PUBLISHED),
                last_post_at=self.store.last_published_at(name),
                next_post_at=time.time() + 1800,
            )
            for name, kind in FACES.items()
        ]
        return StatusView(
            state="running",
            training=control.training.value,
            mode=control.mode.value,
            policy_version=self.store.policy_version(),
            model="tiny-test",
            faces=faces,
            last_rewards=[r.reward for r in self.store.rewards(limit=10)],
            progress=self._progress,
            uptime_seconds=time.time() - self.started,
        )

    async def start_training(self, request: TrainingStartRequest) -> StatusView:
        if request.mode == "offline":
            if self._run is not None and not self._run.done():
                raise ControlConflict("an offline run is already in progress; wait for it")
            if request.data is not None and request.data not in FACES:
                raise ControlError(
                    f"data source {request.data!r} is neither a face ({', '.join(FACES)}) "
                    f"nor a file"
                )
            steps = request.max_steps or 20
            self._progress = TrainingProgress(
                mode="offline",
                step=0,
                total_steps=steps,
                loss=None,
                tokens_per_second=None,
                started_at=time.time(),
            )
            self._run = asyncio.create_task(self._offline(steps, request.lr or 5e-5))
        self.store.set_control(training=TrainingState.RUNNING, mode=TrainingMode(request.mode))
        self.metrics.set_training(running=True, mode=request.mode)
        return self.status()

    async def _offline(self, steps: int, lr: float) -> None:
        run = self.store.start_run(kind="offline", config={"steps": steps, "lr": lr})
        loss = 3.0
        for step in range(1, steps + 1):
            await asyncio.sleep(self.step_seconds)
            loss *= 0.97
            assert self._progress is not None
            self._progress = self._progress.model_copy(
                update={"step": step, "loss": loss, "tokens_per_second": 1000.0}
            )
            self.metrics.train_steps.labels("offline").inc()
            self.metrics.train_loss.labels("offline").set(loss)
            self.store.record_metrics({"offline_loss": loss})
        self.store.finish_run(run, status="done", metrics={"loss": loss})
        self._progress = None
        self.store.set_control(mode=TrainingMode.ONLINE)
        self.metrics.set_training(
            running=self.store.control().training is TrainingState.RUNNING, mode="online"
        )

    async def stop_training(self) -> StatusView:
        self.store.set_control(training=TrainingState.PAUSED)
        self.metrics.set_training(running=False, mode=self.store.control().mode.value)
        return self.status()

    def posts(self, *, limit: int, offset: int, face: str | None) -> PostsPage:
        rows = self.store.posts(face=face, status=PostStatus.PUBLISHED, limit=limit, offset=offset)
        views = [PostView.from_story(self.store.story(post.id)) for post in rows]
        total = self.store.count_posts(face=face, status=PostStatus.PUBLISHED)
        return PostsPage(posts=views, total=total, limit=limit, offset=offset)

    async def generate(self, request: GenerateRequest) -> list[GeneratedSample]:
        rng = random.Random(request.seed)
        words = " ".join(self.store.published_texts()).split() or ["hello"]
        prefix = (request.prompt or "").split()[-3:]
        length = min(request.max_new_tokens or 12, 40)
        samples = []
        for _ in range(request.n):
            text = " ".join(prefix + [rng.choice(words) for _ in range(length)])
            samples.append(
                GeneratedSample(
                    text=text,
                    tokens=length,
                    mean_logprob=-rng.uniform(0.5, 3.0),
                    predicted_reward=rng.uniform(-1, 1),
                )
            )
        return samples

    def metric_history(
        self, names: list[str], *, since: float
    ) -> dict[str, list[tuple[float, float]]]:
        return self.store.metric_history(names, since=since)
