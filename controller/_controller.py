"""The loop: what runs when, and how posts, reactions and rewards flow.

Four jobs on an APScheduler ``AsyncIOScheduler``, re-created at every start from the state
store (the database, not a job store, is the source of truth):

- post (per face): generate candidates -> filter -> choose -> record intent -> publish -> record
- collect: snapshot reactions of posts that reached a horizon; at the last one, score -> reward
- learn: when enough new rewards wait, one online policy update -> checkpoint
- offline: fit on face history when never fitted, then again at an interval

Every arrow is one call into learner/, faces/ or state/; every torch call goes through the one
``TorchWorker``. Pausing training stops learn and offline; posting and collecting go on, and
collected rewards wait for the next update.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
from apscheduler.events import EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from plaudit.controller._filters import FilterConfig, NoveltyIndex, reject_reason
from plaudit.controller._prompts import SYSTEM, instructions
from plaudit.controller._rewards import normalise
from plaudit.controller._worker import TorchWorker
from plaudit.faces import (
    AuthFailed,
    Draft,
    Face,
    FaceError,
    Permanent,
    RateLimited,
    Rejected,
    Transient,
)
from plaudit.learner._errors import GenerationInterrupted
from plaudit.state import (
    NewCandidate,
    Snapshot,
    Store,
    TrainingMode,
    TrainingState,
)

if TYPE_CHECKING:
    from plaudit.daemon._config import Settings
    from plaudit.daemon._metrics import Metrics
    from plaudit.learner._policy import Policy
    from plaudit.learner._train import StepRecord

Outcome = Literal["success", "error", "skipped"]
KEEP_CHECKPOINTS = 3
# A rate limit longer than this is not waited out inside a job: the intent stays recorded and
# the post is retried (with the same idempotency key) by the next cycle.
MAX_INLINE_WAIT = 900.0
PUBLISH_ATTEMPTS = 4
HISTORY_LIMIT = 5000


@dataclass
class FaceRuntime:
    name: str
    face: Face[Any]
    history: list[str] = field(default_factory=list)
    next_post_at: float | None = None
    last_error: str | None = None


@dataclass
class Progress:
    mode: Literal["offline", "online"]
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_second: float | None = None
    started_at: float = field(default_factory=time.time)


class Controller:
    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        faces: dict[str, Face[Any]],
        policy: Policy,
        worker: TorchWorker,
        metrics: Metrics,
        state_dir: Path,
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.faces = {name: FaceRuntime(name=name, face=f) for name, f in faces.items()}
        self.policy = policy
        self.worker = worker
        self.metrics = metrics
        self.state_dir = state_dir
        self.rng = random.Random(seed)
        self.scheduler = AsyncIOScheduler()
        self.scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self.own_posts = NoveltyIndex(n=6)
        self.training_posts = NoveltyIndex(n=6)
        self.progress: Progress | None = None
        self.log = structlog.stdlib.get_logger("plaudit.controller")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._offline_request: dict[str, Any] | None = None
        # The first posts wait for the first offline fit (the community's style) when one is due.
        self._first_fit_done = asyncio.Event()

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read history, recover in-flight posts, and schedule the jobs from the store."""
        for rt in self.faces.values():
            await self._load_history(rt)
        self.own_posts.extend(self.store.published_texts(limit=5000))
        await self._recover_in_flight()
        never_fitted = any(self.store.get_value(f"offline_fit:{n}") is None for n in self.faces)
        if not (
            never_fitted and self.training_running() and self.settings.controller.offline_interval
        ):
            self._first_fit_done.set()
        self._schedule_all()
        self.scheduler.start()
        self.log.info(
            "controller started", faces=list(self.faces), jobs=len(self.scheduler.get_jobs())
        )

    def _schedule_all(self) -> None:
        c = self.settings.controller
        for rt in self.faces.values():
            self._schedule_post(rt, self._first_post_time(rt))
        self.scheduler.add_job(
            self._job("collect", self.collect),
            IntervalTrigger(seconds=c.collect_interval.total_seconds()),
            id="collect",
            next_run_time=datetime.now().astimezone(),
            coalesce=True,
            max_instances=1,
            replace_existing=True,
        )
        self.scheduler.add_job(
            self._job("learn", self.learn),
            IntervalTrigger(seconds=c.learn_interval.total_seconds()),
            id="learn",
            coalesce=True,
            max_instances=1,
            replace_existing=True,
        )
        if c.offline_interval is not None:
            self.scheduler.add_job(
                self._job("offline", self.offline),
                IntervalTrigger(seconds=min(c.offline_interval.total_seconds(), 3600.0)),
                id="offline",
                next_run_time=datetime.now().astimezone(),
                coalesce=True,
                max_instances=1,
                replace_existing=True,
            )

    def reschedule(self, settings: Settings) -> None:
        """Apply a reloaded config: intervals, sampling, limits take effect from now."""
        self.settings = settings
        for job in self.scheduler.get_jobs():
            job.remove()
        self._schedule_all()
        self.log.info("controller rescheduled", jobs=len(self.scheduler.get_jobs()))

    async def stop(self, *, deadline: float) -> int:
        """Stop scheduling, let running jobs finish until ``deadline`` (training stops at its
        next step boundary and checkpoints); return how many had to be cancelled."""
        if self.scheduler.running:
            # Pause, not shut down: shutting the executor down would cancel running jobs.
            self.scheduler.pause()
        self.worker.stop_training.set()
        self.worker.shutting_down.set()
        cancelled = 0
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            timeout = max(0.0, deadline - time.monotonic())
            _done, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            cancelled = len(still)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        return cancelled

    def _job(
        self, name: str, fn: Callable[..., Awaitable[Outcome]]
    ) -> Callable[..., Awaitable[None]]:
        """Wrap a job: count its outcome, log its errors, track it for shutdown."""

        async def run(*args: Any) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                outcome = await fn(*args)
            except asyncio.CancelledError:
                # Only shutdown cancels jobs (past its deadline); this is the job's top level.
                self.log.warning("job cancelled at shutdown", job=name)
                outcome = "error"
            except Exception as exc:
                outcome = "error"
                self.log.exception("job failed", job=name, error=str(exc))
            finally:
                if task is not None:
                    self._tasks.discard(task)
            self.metrics.scheduler_job_runs.labels(name, outcome).inc()

        return run

    def _on_missed(self, event: JobEvent) -> None:
        job = str(event.job_id).split(":")[0]
        self.metrics.scheduler_misfires.labels(job).inc()

    # -- posting -----------------------------------------------------------------------------

    def _first_post_time(self, rt: FaceRuntime) -> float:
        """After a restart the first post respects the last post's time: no burst."""
        now = time.time()
        last = self.store.last_published_at(rt.name)
        if last is None:
            return now
        return max(now, last + self._interval(rt))

    def _interval(self, rt: FaceRuntime) -> float:
        c = self.settings.controller
        jitter = c.post_jitter.total_seconds()
        base = max(c.post_interval.total_seconds(), rt.face.limits.min_interval.total_seconds())
        return max(0.0, base + self.rng.uniform(-jitter, jitter))

    def _schedule_post(self, rt: FaceRuntime, at: float) -> None:
        rt.next_post_at = at
        self.scheduler.add_job(
            self._job("post", self.post),
            DateTrigger(run_date=datetime.fromtimestamp(at).astimezone()),
            args=[rt.name],
            id=f"post:{rt.name}",
            replace_existing=True,
            misfire_grace_time=None,
        )

    def _blocked_until(self, rt: FaceRuntime, now: float) -> tuple[str, float] | None:
        """Why a post cannot go out now and when to try again, or None when it may."""
        c = self.settings.controller
        last = self.store.last_published_at(rt.name)
        min_gap = rt.face.limits.min_interval.total_seconds()
        if last is not None and now - last < min_gap:
            return "min_interval", last + min_gap
        if c.daily_cap and self.store.published_since(rt.name, now - 86400) >= c.daily_cap:
            return "daily_cap", now + 3600
        if c.quiet_hours is not None:
            local = datetime.fromtimestamp(now).astimezone()
            start, end = c.quiet_hours.start, c.quiet_hours.end
            t = local.time()
            quiet = (start <= t < end) if start <= end else (t >= start or t < end)
            if quiet:
                resume = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
                if resume <= local:
                    resume += timedelta(days=1)
                return "quiet_hours", resume.timestamp()
        return None

    async def post(self, face_name: str) -> Outcome:
        rt = self.faces[face_name]
        now = time.time()
        if not self._first_fit_done.is_set():
            self._schedule_post(rt, now + 2.0)
            return "skipped"
        blocked = self._blocked_until(rt, now)
        if blocked is not None:
            reason, retry_at = blocked
            self.log.info(
                "post deferred", face=face_name, reason=reason, retry_in_s=round(retry_at - now)
            )
            self._schedule_post(rt, retry_at)
            return "skipped"
        try:
            return await self._post_cycle(rt)
        finally:
            if rt.next_post_at is None or rt.next_post_at <= time.time():
                self._schedule_post(rt, time.time() + self._interval(rt))

    async def _post_cycle(self, rt: FaceRuntime) -> Outcome:
        cycle = uuid.uuid4().hex[:12]
        log = self.log.bind(cycle=cycle, face=rt.name)
        c, s = self.settings.controller, self.settings.sampling
        limits = rt.face.limits
        t0 = time.monotonic()
        texts = instructions(
            history=rt.history, n=c.candidates, max_chars=limits.max_length, rng=self.rng
        )
        prompts = [self.policy.render_prompt(t, system=SYSTEM) for t in texts]
        from plaudit.learner import SamplingConfig

        sampling = SamplingConfig(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_new_tokens=s.max_new_tokens,
            seed=self.rng.randrange(2**31),
        )
        try:
            candidates = await self.worker.run(
                "generate",
                self.policy.generate,
                prompts,
                n=1,
                sampling=sampling,
                should_stop=self.worker.shutting_down.is_set,
            )
        except GenerationInterrupted:
            log.info("post cycle abandoned: shutting down during generation")
            return "skipped"
        gen_s = time.monotonic() - t0
        self.metrics.generation_duration.observe(gen_s)
        self.metrics.posts_generated.labels(rt.name).inc(len(candidates))
        version = self.policy.version
        ids = self.store.add_candidates(
            face=rt.name,
            cycle_id=cycle,
            candidates=[
                NewCandidate(
                    text=cand.text,
                    prompt=cand.prompt,
                    prompt_tokens=cand.prompt_tokens,
                    tokens=cand.tokens,
                    logprobs=cand.logprobs,
                    policy_version=version,
                )
                for cand in candidates
            ],
        )
        survivors: list[tuple[int, str]] = []
        filtered: dict[str, int] = {}
        for post_id, cand in zip(ids, candidates, strict=True):
            reason = reject_reason(
                cand.text,
                config=FilterConfig(blocklist=c.blocklist, min_chars=c.min_chars),
                max_length=limits.max_length,
                measure=rt.face.measure,
                own_posts=self.own_posts,
                training_posts=self.training_posts,
                batch_seen=[t for _, t in survivors],
            )
            if reason is None:
                survivors.append((post_id, cand.text))
            else:
                self.store.mark_filtered(post_id, reason=reason)
                self.metrics.posts_filtered.labels(rt.name, reason).inc()
                filtered[reason] = filtered.get(reason, 0) + 1
        if not survivors:
            log.warning("no candidate survived the filters", generated=len(ids), filtered=filtered)
            return "skipped"
        # Exploration: uniform among survivors (a reward model would rank them here).
        post_id, text = self.rng.choice(survivors)
        self.store.choose(post_id)
        key = f"plaudit-{rt.name}-{post_id}-{uuid.uuid4().hex[:8]}"
        self.store.record_intent(post_id, idempotency_key=key)
        ok = await self._publish(rt, post_id, text, key, log)
        log.info(
            "post cycle",
            generated=len(ids),
            filtered=filtered,
            chosen=post_id,
            published=ok,
            generation_s=round(gen_s, 2),
            total_s=round(time.monotonic() - t0, 2),
            policy_version=version,
        )
        return "success" if ok else "error"

    async def _publish(self, rt: FaceRuntime, post_id: int, text: str, key: str, log: Any) -> bool:
        """Publish with retries; the same idempotency key makes every retry the same post."""
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            t0 = time.monotonic()
            try:
                published = await rt.face.publish(Draft(text=text), idempotency_key=key)
            except RateLimited as exc:
                wait = exc.retry_after if exc.retry_after is not None else 60.0
                self.metrics.rate_limit_waits.labels(rt.name).inc()
                if wait > MAX_INLINE_WAIT or attempt == PUBLISH_ATTEMPTS:
                    rt.last_error = f"rate limited for {wait:.0f}s"
                    log.warning("publish rate limited; intent kept for the next cycle", wait_s=wait)
                    self.metrics.posts_failed.labels(rt.name, "rate_limited").inc()
                    return False
                self.metrics.rate_limit_wait_seconds.labels(rt.name).inc(wait)
                await asyncio.sleep(wait)
                continue
            except Transient as exc:
                if attempt == PUBLISH_ATTEMPTS:
                    rt.last_error = str(exc)
                    log.warning(
                        "publish failed for now; intent kept for the next cycle", error=str(exc)
                    )
                    self.metrics.posts_failed.labels(rt.name, "transient").inc()
                    return False
                await asyncio.sleep(min(60.0, 2.0**attempt) * (0.5 + self.rng.random()))
                continue
            except (AuthFailed, Rejected, Permanent, FaceError) as exc:
                reason = (
                    "auth"
                    if isinstance(exc, AuthFailed)
                    else "rejected"
                    if isinstance(exc, Rejected)
                    else "permanent"
                    if isinstance(exc, Permanent)
                    else "other"
                )
                rt.last_error = str(exc)
                self.store.mark_failed(post_id, error=f"{type(exc).__name__}: {exc}")
                self.metrics.posts_failed.labels(rt.name, reason).inc()
                log.error("publish failed", post_id=post_id, reason=reason, error=str(exc))
                return False
            self.metrics.publish_duration.labels(rt.name).observe(time.monotonic() - t0)
            self.store.mark_published(
                post_id,
                ref=published.ref,
                url=published.url,
                published_at=published.published_at.timestamp(),
            )
            self.own_posts.add(text)
            rt.last_error = None
            self.metrics.posts_published.labels(rt.name).inc()
            self.metrics.last_post_timestamp.labels(rt.name).set(published.published_at.timestamp())
            return True
        return False

    async def _recover_in_flight(self) -> None:
        """Posts with an intent and no outcome (a crash around publish): publish again with the
        same key; the face turns that into the post that may already exist."""
        for post in self.store.in_flight():
            rt = self.faces.get(post.face)
            if rt is None or post.idempotency_key is None:
                continue
            log = self.log.bind(face=post.face, post_id=post.id)
            log.info("recovering an in-flight post")
            await self._publish(rt, post.id, post.text, post.idempotency_key, log)

    async def _load_history(self, rt: FaceRuntime) -> None:
        try:
            texts = [p.text async for p in rt.face.history(limit=HISTORY_LIMIT)]
        except FaceError as exc:
            self.log.warning("face history unavailable", face=rt.name, error=str(exc))
            return
        rt.history = texts
        self.training_posts.extend(texts)
        self.log.info("face history read", face=rt.name, posts=len(texts))

    # -- collecting --------------------------------------------------------------------------

    async def collect(self) -> Outcome:
        horizons = [h.total_seconds() for h in self.settings.controller.horizons]
        final = horizons[-1]
        due = self.store.due_snapshots(now=time.time(), horizons_s=horizons)
        if not due:
            return "skipped"
        from plaudit.daemon._metrics import horizon_label

        by_face: dict[str, list[tuple[Any, float]]] = {}
        for post, horizon in due:
            if post.face in self.faces and post.face_ref:
                by_face.setdefault(post.face, []).append((post, horizon))
        rewards = 0
        for name, items in by_face.items():
            rt = self.faces[name]
            try:
                snaps = await rt.face.reactions([p.face_ref for p, _ in items])
            except FaceError as exc:
                self.log.warning(
                    "reactions unavailable; retried next sweep", face=name, error=str(exc)
                )
                continue
            for (post, horizon), snap in zip(items, snaps, strict=True):
                r = snap.reactions
                self.store.add_snapshot(
                    Snapshot(
                        post_id=post.id,
                        horizon_s=horizon,
                        found=snap.found,
                        likes=r.likes,
                        reposts=r.reposts,
                        replies=r.replies,
                        quotes=r.quotes,
                        extra=dict(r.extra),
                        audience=snap.audience,
                        read_at=snap.read_at.timestamp(),
                    )
                )
                self.metrics.reactions_collected.labels(name, horizon_label(horizon)).inc()
                if horizon == final and snap.found:
                    score = rt.face.score(snap)
                    reward = normalise(score, self.store.scores(name, limit=200))
                    self.store.add_reward(post_id=post.id, face=name, score=score, reward=reward)
                    self.metrics.record_reward(name, reward)
                    self.store.record_metrics({"reward": reward, "score": score})
                    rewards += 1
                    self.log.info(
                        "reward",
                        face=name,
                        post_id=post.id,
                        score=round(score, 4),
                        reward=round(reward, 3),
                    )
        self.log.info("collect sweep", snapshots=len(due), rewards=rewards)
        return "success"

    # -- learning ----------------------------------------------------------------------------

    def training_running(self) -> bool:
        return self.store.control().training is TrainingState.RUNNING

    async def learn(self) -> Outcome:
        control = self.store.control()
        if control.training is not TrainingState.RUNNING or control.mode is not TrainingMode.ONLINE:
            return "skipped"
        pending = self.store.rewards(unused_only=True, limit=256)
        if len(pending) < self.settings.controller.learn_min_rewards:
            return "skipped"
        from plaudit.learner._online import OnlineUpdateConfig, Trajectory

        o = self.settings.online
        baseline = float(self.store.get_value("reward_baseline") or 0.0)
        batch, used = [], []
        for reward in reversed(pending):  # oldest first, so the baseline moves in time order
            post = self.store.get_post(reward.post_id)
            if not post.tokens or len(post.logprobs) != len(post.tokens):
                continue
            batch.append(
                Trajectory(
                    prompt=post.prompt_tokens,
                    completion=post.tokens,
                    behaviour_logprobs=post.logprobs,
                    advantage=reward.reward - baseline,
                )
            )
            used.append(reward.post_id)
            baseline = o.baseline_decay * baseline + (1 - o.baseline_decay) * reward.reward
        if not batch:
            self.store.mark_rewards_used(
                [r.post_id for r in pending], policy_version=self.policy.version
            )
            return "skipped"
        config = OnlineUpdateConfig(
            method=o.method,
            epochs=o.epochs,
            clip=o.clip,
            kl_coef=o.kl_coef,
            max_kl=o.max_kl,
            grad_clip=o.grad_clip,
            temperature=self.settings.sampling.temperature or 1.0,
        )
        self.policy.lr = o.lr
        self.worker.stop_training.clear()
        run_id = self.store.start_run(
            kind="online", config={"rewards": len(batch), **o.model_dump(mode="json")}
        )
        self.progress = Progress(mode="online", total_steps=None)
        t0 = time.monotonic()
        try:
            stats = await self.worker.run(
                "learn",
                self.policy.update,
                batch,
                config=config,
                should_stop=self.worker.stop_training,
            )
        except Exception as exc:
            self.store.finish_run(run_id, status="failed", metrics={}, error=str(exc))
            raise
        finally:
            self.progress = None
        duration = time.monotonic() - t0
        metrics = {
            "loss": stats.loss,
            "kl": stats.kl,
            "clip_fraction": stats.clip_fraction,
            "steps": stats.steps,
            "tokens": stats.tokens,
            "early_stopped": stats.early_stopped,
        }
        if stats.steps == 0:
            self.store.finish_run(run_id, status="interrupted", metrics=metrics)
            return "skipped"
        await self.checkpoint(kind="online", run_id=run_id, metrics=metrics)
        self.store.mark_rewards_used(used, policy_version=self.policy.version)
        self.store.set_value("reward_baseline", repr(baseline))
        self.store.finish_run(run_id, status="completed", metrics=metrics)
        m = self.metrics
        m.train_steps.labels("online").inc(stats.steps)
        m.train_loss.labels("online").set(stats.loss)
        m.train_kl.labels("online").set(stats.kl)
        m.train_learning_rate.labels("online").set(o.lr)
        m.train_tokens_per_second.labels("online").set(
            stats.tokens * max(stats.steps, 1) / max(duration, 1e-9)
        )
        self.store.record_metrics({"loss": stats.loss, "kl": stats.kl})
        self.log.info(
            "policy update",
            rewards=len(batch),
            steps=stats.steps,
            loss=round(stats.loss, 4),
            kl=round(stats.kl, 5),
            clip_fraction=round(stats.clip_fraction, 3),
            policy_version=self.policy.version,
            duration_s=round(duration, 2),
        )
        return "success"

    async def checkpoint(self, *, kind: str, run_id: int | None, metrics: dict[str, Any]) -> Path:
        """Write the current policy atomically and record it; keep the last few."""
        version = self.policy.version
        folder = self.state_dir / "checkpoints" / f"v{version:06d}"
        await self.worker.run("checkpoint", self.policy.save, folder)
        self.store.add_checkpoint(
            path=folder, policy_version=version, kind=kind, run_id=run_id, metrics=metrics
        )
        self.metrics.policy_version.set(version)
        keep = {Path(c.path) for c in self.store.checkpoints(limit=KEEP_CHECKPOINTS)}
        for old in sorted((self.state_dir / "checkpoints").glob("v*")):
            if old not in keep and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return folder

    # -- offline -----------------------------------------------------------------------------

    def resume(self) -> None:
        """Training was (re)started: pick up what waits now instead of at the next tick."""
        if not self.scheduler.running:
            return
        for name, fn in (("offline", self.offline), ("learn", self.learn)):
            if self.scheduler.get_job(name) is not None:
                self.scheduler.add_job(self._job(name, fn), id=f"{name}-now", replace_existing=True)

    def request_offline(self, overrides: dict[str, Any]) -> None:
        """Run an offline fit now (from the API/CLI), with these knob overrides."""
        self._offline_request = overrides
        if self.scheduler.running:
            self.scheduler.add_job(
                self._job("offline", self.offline),
                id="offline-now",
                replace_existing=True,
            )

    async def offline(self) -> Outcome:
        try:
            return await self._offline()
        finally:
            self._first_fit_done.set()

    async def _offline(self) -> Outcome:
        control = self.store.control()
        if control.training is not TrainingState.RUNNING:
            return "skipped"
        request, self._offline_request = self._offline_request, None
        c = self.settings.controller
        due = []
        for rt in self.faces.values():
            last = self.store.get_value(f"offline_fit:{rt.name}")
            interval = c.offline_interval.total_seconds() if c.offline_interval else None
            if request is not None and request.get("data") not in (None, rt.name):
                continue
            if (
                request is not None
                or last is None
                or (interval is not None and time.time() - float(last) >= interval)
            ):
                due.append(rt)
        texts = [t for rt in due for t in rt.history[: c.offline_max_posts or None]]
        if not texts:
            if request is not None:
                self.store.set_control(mode=TrainingMode.ONLINE)
            return "skipped"
        ok = await self._fit_offline(texts, request or {})
        now = repr(time.time())
        if ok:
            for rt in due:
                self.store.set_value(f"offline_fit:{rt.name}", now)
        if request is not None:
            self.store.set_control(mode=TrainingMode.ONLINE)
            self.metrics.set_training(running=self.training_running(), mode="online")
        return "success" if ok else "skipped"

    async def _fit_offline(self, texts: list[str], overrides: dict[str, Any]) -> bool:
        from plaudit.daemon._config import offline_train_config
        from plaudit.learner._data import examples_from_texts
        from plaudit.learner._load import load_model
        from plaudit.learner._train import train_offline

        base = self.state_dir / "offline" / "base"
        await self.worker.run("checkpoint", self.policy.save, base)
        requested = {k: v for k, v in overrides.items() if k in ("max_steps", "lr", "batch_size")}
        if overrides.get("epochs") is not None:
            requested["epochs"] = max(1, round(float(overrides["epochs"])))
        knobs = {**self.settings.offline.knobs(), **{k: v for k, v in requested.items() if v}}
        cfg = offline_train_config(
            self.settings,
            **requested,
            model=str(base),  # the current policy, saved just above
            eval_every=knobs.get("eval_every") or max(1, (knobs.get("max_steps") or 100) // 2),
            save_every=knobs.get("save_every") or 10**9,
            samples=knobs.get("samples") or 0,
            device=knobs.get("device")
            or ("cpu" if self.settings.model.device == "auto" else self.settings.model.device),
        )
        run_dir = self.state_dir / "offline" / "run"
        run_id = self.store.start_run(kind="offline", config=cfg.model_dump(mode="json"))
        self.worker.stop_training.clear()
        self.progress = Progress(mode="offline", total_steps=cfg.max_steps)

        def on_step(rec: StepRecord) -> None:
            # Runs in the worker thread: metrics are thread-safe; the store has its own lock.
            if self.progress is not None:
                self.progress.step = rec.step
                self.progress.loss = rec.loss
                self.progress.tokens_per_second = rec.tokens_per_s
            m = self.metrics
            m.train_steps.labels("offline").inc()
            m.train_loss.labels("offline").set(rec.loss)
            m.train_learning_rate.labels("offline").set(rec.lr)
            m.train_tokens_per_second.labels("offline").set(rec.tokens_per_s)
            self.store.record_metrics({"offline_loss": rec.loss})

        def fit() -> Any:
            result = train_offline(
                cfg,
                out=run_dir,
                force=True,
                extra_examples=examples_from_texts(texts, source="face-history"),
                on_step=on_step,
                stop=self.worker.stop_training,
            )
            best = result.best_dir or result.last_checkpoint
            if result.steps > 0 and best is not None:
                loaded = load_model(best)
                self.policy.model.load_state_dict(loaded.model.state_dict())
                self.policy.reset_reference()
                self.policy.version += 1
            return result

        try:
            result = await self.worker.run("offline", fit)
        except Exception as exc:
            self.store.finish_run(run_id, status="failed", metrics={}, error=str(exc))
            self.log.error("offline fit failed", error=str(exc))
            return False
        finally:
            self.progress = None
        metrics = {
            "steps": result.steps,
            "last_loss": result.last_loss,
            "best_val_loss": result.best_val_loss,
            "reason": result.reason,
        }
        if result.steps == 0:
            self.store.finish_run(run_id, status="interrupted", metrics=metrics)
            return False
        await self.checkpoint(kind="offline", run_id=run_id, metrics=metrics)
        status = "interrupted" if result.reason == "interrupted" else "completed"
        self.store.finish_run(run_id, status=status, metrics=metrics)
        self.log.info(
            "offline fit", posts=len(texts), policy_version=self.policy.version, **metrics
        )
        return status == "completed"
