"""The loop: what runs when, and how posts, reactions and rewards flow.

Jobs, each in a room of its own:

- ``post:<face>`` (controller/_posting.py): a kept intent first, else an approved post, else
  candidates -> filter -> choose -> record intent -> publish -> record (or -> held for a
  human's approval: controller/_approval.py);
- ``collect`` (controller/_collect.py): snapshot reactions of posts that reached a horizon; at the
  last one, score -> reward (controller/_rewards.py);
- ``learn`` (controller/_learning.py): when enough new rewards wait, one online policy update ->
  checkpoint;
- ``offline`` (controller/_offline.py): fit on face history when never fitted, then again at an
  interval, or now on request.

The controller works out when each job is next due from its clock; the state store (not a job
store) is the source of truth, so the plan is re-made at every start. Two ways to drive it:
the daemon's `JobScheduler` (controller/_scheduler.py) wakes it on the wall clock, and a test
or benchmark calls `run_until()` on a `SimulatedClock`, a week of posting in seconds. Every torch
call goes through the one `TorchWorker`. Pausing training stops learn and offline; posting and
collecting go on, and collected rewards wait for the next update.
"""

from __future__ import annotations

import asyncio
import errno
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from plaudit.controller._approval import Approvals
from plaudit.controller._checkpoints import Checkpoints
from plaudit.controller._collect import Collection
from plaudit.controller._context import FaceRuntime, LoopContext, Outcome, Progress
from plaudit.controller._learning import Learning
from plaudit.controller._metrics import failure_reason
from plaudit.controller._offline import OfflineFits
from plaudit.controller._posting import Posting
from plaudit.controller._reward_model import RewardModel
from plaudit.controller._scheduler import JobScheduler
from plaudit.faces import Clock, FaceError, SimulatedClock, WallClock
from plaudit.state import DiskFull, TrainingState

if TYPE_CHECKING:
    from plaudit.controller._config import LoopSettings
    from plaudit.controller._metrics import LoopMetrics
    from plaudit.controller._worker import TorchWorker
    from plaudit.faces import Face
    from plaudit.learner import Policy
    from plaudit.state import Post, Store

HISTORY_LIMIT = 5000
# Offline fits are checked at least this often (a paused or failed fit is retried then).
OFFLINE_CHECK = 3600.0
# Jobs due at the same moment run in this order: a first fit before the first post.
_ORDER = {"offline": 0, "collect": 1, "learn": 2}


class Controller:
    def __init__(
        self,
        *,
        settings: LoopSettings,
        store: Store,
        faces: Mapping[str, Face[Any]],
        policy: Policy,
        worker: TorchWorker,
        metrics: LoopMetrics,
        state_dir: Path,
        clock: Clock | None = None,
        seed: int | None = None,
    ) -> None:
        self.ctx = LoopContext(
            settings=settings,
            store=store,
            policy=policy,
            worker=worker,
            metrics=metrics,
            clock=clock or WallClock(),
            state_dir=state_dir,
            rng=random.Random(seed),
            faces={name: FaceRuntime(name=name, face=f) for name, f in faces.items()},
        )
        self.reward_model = RewardModel(self.ctx)
        self.checkpoints = Checkpoints(self.ctx, keep_with=self.reward_model.save)
        self.approvals = Approvals(self.ctx)
        self.posting = Posting(self.ctx, self.reward_model, self.approvals)
        self.collection = Collection(self.ctx, self.reward_model)
        self.learning = Learning(self.ctx, self.checkpoints, self.reward_model)
        self.offline_fits = OfflineFits(self.ctx, self.checkpoints)
        self.log = structlog.stdlib.get_logger("plaudit.controller")
        # When each interval job is next due (clock time); posts keep theirs on FaceRuntime.
        self._next: dict[str, float | None] = {}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        # The first posts wait for the first offline fit (the community's style) when one is due.
        self._first_fit_pending = False
        self.scheduler: JobScheduler | None = None

    # -- what the daemon and the control API read ------------------------------------------

    @property
    def settings(self) -> LoopSettings:
        return self.ctx.settings

    @property
    def clock(self) -> Clock:
        return self.ctx.clock

    @property
    def faces(self) -> Mapping[str, FaceRuntime]:
        return self.ctx.faces

    @property
    def progress(self) -> Progress | None:
        return self.ctx.progress

    def training_running(self) -> bool:
        return self.ctx.store.control().training is TrainingState.RUNNING

    @property
    def first_fit_pending(self) -> bool:
        """Posting waits for the first offline fit."""
        return self._first_fit_pending

    # -- life ------------------------------------------------------------------------------

    async def start(self, *, schedule: bool = True) -> None:
        """Read history and plan every job from the store. With ``schedule`` the jobs run on
        the wall clock through APScheduler; without, the caller drives them (`run_until`)."""
        ctx = self.ctx
        await asyncio.to_thread(self.offline_fits.clear_scratch)
        self.checkpoints.measure()
        for rt in ctx.faces.values():
            await self._load_history(rt)
            # An intent left by the previous process may have been published before it died.
            rt.maybe_made.update(p.id for p in ctx.store.in_flight(face=rt.name))
        self.posting.own_posts.extend(ctx.store.published_texts(limit=5000))
        if self.reward_model.enabled:
            kept = await ctx.worker.run("reward_model", self.reward_model.resume)
            if kept:
                self.log.info("reward model features kept from the last run", posts=kept)
        for name in ctx.faces:
            self.approvals.update_gauge(name)
        # Updates newer than the weights we run (lost with a crash or a damaged checkpoint):
        # their rewards train again.
        released = ctx.store.release_rewards_after(ctx.policy.version)
        if released:
            self.log.warning(
                "rewards of updates lost since the last checkpoint return to pending",
                rewards=released,
                policy_version=ctx.policy.version,
            )
        c = ctx.settings.controller
        self._first_fit_pending = bool(
            self.offline_fits.never_fitted() and self.training_running() and c.offline_interval
        )
        self._plan()
        if schedule:
            self.scheduler = JobScheduler(self)
            self.scheduler.start()
        self.log.info("controller started", faces=list(ctx.faces), jobs=sorted(self.due()))

    def _plan(self) -> None:
        """When each job is first due, from now and the store."""
        now = self.ctx.clock.now()
        c = self.ctx.settings.controller
        self._next = {
            "collect": now,
            "learn": now + c.learn_interval.total_seconds(),
            "offline": now if c.offline_interval is not None else None,
        }
        for rt in self.ctx.faces.values():
            rt.next_post_at = self.posting.first_post_time(rt)

    def reschedule(self, settings: LoopSettings) -> None:
        """Apply a reloaded config: intervals, sampling, limits take effect from now."""
        self.ctx.settings = settings
        self._plan()
        if self.scheduler is not None:
            self.scheduler.sync()
        self.log.info("controller rescheduled", jobs=sorted(self.due()))

    async def stop(self, *, deadline: float) -> int:
        """Stop scheduling, let running jobs finish until ``deadline`` (a monotonic time;
        training stops at its next step boundary and checkpoints); return how many had to be
        cancelled."""
        if self.scheduler is not None:
            self.scheduler.pause()
        self.ctx.worker.stop_training.set()
        self.ctx.worker.shutting_down.set()
        cancelled = 0
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            timeout = max(0.0, deadline - time.monotonic())
            _done, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            cancelled = len(still)
        if self.scheduler is not None:
            self.scheduler.shutdown()
        return cancelled

    def replace_face(self, name: str, face: Face[Any]) -> None:
        """Use a new instance for face ``name`` (a reloaded config); the caller closes the old."""
        if name not in self.ctx.faces:
            raise KeyError(f"no face named {name!r}; faces: {', '.join(self.ctx.faces)}")
        self.ctx.faces[name].face = face

    async def checkpoint(self, *, kind: str, run_id: int | None, metrics: dict[str, Any]) -> Path:
        """Write the current policy atomically and record it; keep the last few."""
        return await self.checkpoints.save(kind=kind, run_id=run_id, metrics=metrics)

    # -- the plan ---------------------------------------------------------------------------

    def due(self) -> dict[str, float]:
        """Every job and when it is next due (clock time); a job that waits on something else
        (posting before the first fit, offline when never due) is absent."""
        out = {name: at for name, at in self._next.items() if at is not None}
        if not self._first_fit_pending:
            for rt in self.ctx.faces.values():
                if rt.next_post_at is not None:
                    out[f"post:{rt.name}"] = rt.next_post_at
        return out

    def next_job(self) -> tuple[str, float] | None:
        """The job due first (ties: offline, collect, learn, then posts), or None."""
        due = self.due()
        if not due:
            return None
        name = min(due, key=lambda n: (due[n], _ORDER.get(n, 3), n))
        return name, due[name]

    async def run_until(self, until: float) -> dict[str, dict[Outcome, int]]:
        """Run every job that falls due up to ``until`` in time order, advancing the simulated
        clock to each; return the outcomes counted per job kind."""
        clock = self.ctx.clock
        if not isinstance(clock, SimulatedClock):
            raise TypeError(
                "run_until() drives a SimulatedClock; on the wall clock start() schedules the jobs"
            )
        counts: dict[str, dict[Outcome, int]] = {}
        while (job := self.next_job()) is not None and job[1] <= until:
            name, at = job
            if at > clock.now():
                clock.advance_to(at)
            outcome = await self.run_job(name)
            kind = name.split(":")[0]
            counts.setdefault(kind, {}).setdefault(outcome, 0)
            counts[kind][outcome] += 1
        if until > clock.now():
            clock.advance_to(until)
        return counts

    # -- running a job ----------------------------------------------------------------------

    async def run_job(self, name: str) -> Outcome:
        """Run one job now: count its outcome, log its errors, and plan its next run."""
        kind, _, face = name.partition(":")
        fn = self._job_fn(kind, face)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._running.add(name)
        try:
            outcome = await fn()
        except asyncio.CancelledError:
            # Only shutdown cancels jobs (past its deadline); this is the job's top level.
            self.log.warning("job cancelled at shutdown", job=name)
            outcome = "error"
        except Exception as exc:
            outcome = "error"
            if _disk_full(exc):
                # Not a bug, and every job fails alike until space is freed: one line each.
                self.log.error(
                    "job failed: disk full",
                    job=name,
                    error=f"{type(exc).__name__}: {exc}",
                    fix="free space on the disk that holds the state folder; the jobs resume "
                    "by themselves",
                )
            else:
                self.log.exception("job failed", job=name, error=str(exc))
        finally:
            self._running.discard(name)
            if task is not None:
                self._tasks.discard(task)
        self._after(kind, face)
        self.ctx.metrics.scheduler_job_runs.labels(kind, outcome).inc()
        return outcome

    def is_running(self, name: str) -> bool:
        return name in self._running

    def _job_fn(self, kind: str, face: str) -> Callable[[], Awaitable[Outcome]]:
        if kind == "post":
            rt = self.ctx.faces[face]
            return lambda: self.posting.post(rt)
        if kind == "collect":
            return self.collection.sweep
        if kind == "learn":
            return self.learning.learn
        if kind == "offline":
            return self.offline_fits.run
        raise ValueError(f"unknown job {kind!r}: post:<face>, collect, learn or offline")

    def _after(self, kind: str, face: str) -> None:
        """Plan a job's next run once it has run (whatever its outcome)."""
        now = self.ctx.clock.now()
        c = self.ctx.settings.controller
        if kind == "collect":
            self._next["collect"] = now + c.collect_interval.total_seconds()
        elif kind == "learn":
            self._next["learn"] = now + c.learn_interval.total_seconds()
        elif kind == "offline":
            self._first_fit_pending = False
            if self.offline_fits.request is not None:  # asked for while a fit ran
                self._next["offline"] = now
            elif c.offline_interval is None:
                self._next["offline"] = None
            else:
                self._next["offline"] = now + min(c.offline_interval.total_seconds(), OFFLINE_CHECK)
        elif kind == "post":
            rt = self.ctx.faces[face]
            if rt.next_post_at is None or rt.next_post_at <= now:
                rt.next_post_at = now + self.posting.interval(rt)
            slot = self.posting.approved_slot(rt) if rt.poked else None
            rt.poked = False
            if slot is not None:  # approved while the job ran: due at its slot
                rt.next_post_at = min(rt.next_post_at, max(now, slot))

    # -- requests ---------------------------------------------------------------------------

    def resume(self) -> None:
        """Training was (re)started: pick up what waits now instead of at the next tick."""
        now = self.ctx.clock.now()
        self._next["learn"] = now
        if self._next.get("offline") is not None:  # None: offline fits are off
            self._next["offline"] = now
        # A Stop before the first fit took a step: posting waits for it again.
        c = self.ctx.settings.controller
        self._first_fit_pending = bool(self.offline_fits.never_fitted() and c.offline_interval)
        if self.scheduler is not None:
            self.scheduler.sync()

    def request_offline(self, overrides: dict[str, Any]) -> None:
        """Run an offline fit now (from the API/CLI), with these knob overrides."""
        self.offline_fits.request = overrides
        self._next["offline"] = self.ctx.clock.now()
        if self.scheduler is not None:
            self.scheduler.sync()

    # -- the approval queue (controller/_approval.py) -----------------------------------------

    def approve(self, post_id: int, *, text: str | None = None) -> Post:
        """Approve a held post (``text``: edited). It publishes at its face's next slot: now
        when the face's last post is a post interval old, else when it is. Raises
        ApprovalRefused."""
        post = self.approvals.approve(post_id, text=text)
        rt = self.ctx.faces.get(post.face)
        if rt is None:  # a face no longer configured: its approved post waits for it
            return post
        if self.is_running(f"post:{post.face}"):
            rt.poked = True  # planned when the job ends (`_after`)
            return post
        slot = self.posting.approved_slot(rt)
        if slot is not None and (rt.next_post_at is None or slot < rt.next_post_at):
            rt.next_post_at = slot
            if self.scheduler is not None:
                self.scheduler.sync()
        return post

    def reject(self, post_id: int) -> Post:
        """Reject a held post: never published, rewarded `approval.rejected_reward`. Raises
        ApprovalRefused."""
        post = self.approvals.reject(post_id)
        self.reward_model.rewards_arrived()  # a new reward: refit before the next choice
        return post

    # -- start-up ---------------------------------------------------------------------------

    async def _load_history(self, rt: FaceRuntime) -> None:
        try:
            posts = [p async for p in rt.face.history(limit=HISTORY_LIMIT)]
        except FaceError as exc:
            reason = failure_reason(exc)
            self.ctx.metrics.face_errors.labels(rt.name, "history", reason).inc()
            self.log.warning("face history unavailable", face=rt.name, error=str(exc))
            return
        texts = [p.text for p in posts]
        rt.history = texts
        try:
            scores = [rt.face.score(p) for p in posts]
        except Exception as exc:  # a third-party face's score(): the history still serves
            self.log.warning("face history not scored", face=rt.name, error=str(exc))
            scores = []
        rt.history_scores = scores if all(math.isfinite(s) for s in scores) else []
        self.posting.training_posts.extend(texts)
        self.log.info("face history read", face=rt.name, posts=len(texts))


def _disk_full(exc: BaseException) -> bool:
    """Whether `exc` or an error it was raised from is a full disk (or quota)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, DiskFull) or (
            isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
