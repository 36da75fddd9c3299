"""Offline fits: the live policy fine-tuned on the faces' history (supervised), at first start
and then at an interval, or now on request; the fitted weights are adopted as the new policy and
the new KL reference."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from plaudit.controller._checkpoints import Checkpoints
from plaudit.controller._context import FaceRuntime, LoopContext, Outcome, Progress
from plaudit.state import TrainingMode, TrainingState

if TYPE_CHECKING:
    from plaudit.learner import FitResult, StepRecord

# Knobs an offline request (API, CLI) may override.
REQUEST_KNOBS = ("max_steps", "lr", "batch_size")


class OfflineFits:
    def __init__(self, ctx: LoopContext, checkpoints: Checkpoints) -> None:
        self.ctx = ctx
        self.checkpoints = checkpoints
        self.request: dict[str, Any] | None = None

    def never_fitted(self) -> bool:
        return any(self.ctx.store.get_value(f"offline_fit:{n}") is None for n in self.ctx.faces)

    def _due_faces(self, request: dict[str, Any] | None) -> list[FaceRuntime]:
        ctx = self.ctx
        c = ctx.settings.controller
        interval = c.offline_interval.total_seconds() if c.offline_interval else None
        due = []
        for rt in ctx.faces.values():
            if request is not None:
                if request.get("data") in (None, rt.name):
                    due.append(rt)
                continue
            last = ctx.store.get_value(f"offline_fit:{rt.name}")
            if last is None or (interval is not None and ctx.clock.now() - float(last) >= interval):
                due.append(rt)
        return due

    async def run(self) -> Outcome:
        """Fit the faces whose fit is due (or the requested ones). A request switches the mode
        back to online afterwards, whatever happened to the fit."""
        ctx = self.ctx
        if ctx.store.control().training is not TrainingState.RUNNING:
            return "skipped"
        request, self.request = self.request, None
        try:
            due = self._due_faces(request)
            max_posts = ctx.settings.controller.offline_max_posts
            texts = [t for rt in due for t in rt.history[: max_posts or None]]
            if not texts:
                return "skipped"
            ok = await self._fit(texts, request or {})
            if ok:
                now = repr(ctx.clock.now())
                for rt in due:
                    ctx.store.set_value(f"offline_fit:{rt.name}", now)
            return "success" if ok else "skipped"
        finally:
            if request is not None:
                control = ctx.store.set_control(mode=TrainingMode.ONLINE)
                ctx.metrics.set_training(
                    running=control.training is TrainingState.RUNNING, mode="online"
                )

    async def _fit(self, texts: list[str], overrides: dict[str, Any]) -> bool:
        from plaudit.learner import examples_from_texts, train_offline

        ctx = self.ctx
        base = ctx.state_dir / "offline" / "base"
        await ctx.worker.run("checkpoint", ctx.policy.save, base)
        requested = {k: v for k, v in overrides.items() if k in REQUEST_KNOBS and v}
        if overrides.get("epochs") is not None:
            requested["epochs"] = max(1, round(float(overrides["epochs"])))
        knobs = {**ctx.settings.offline.knobs(), **requested}
        cfg = ctx.settings.offline.train_config(
            **requested,
            model=str(base),  # the current policy, saved just above
            eval_every=knobs.get("eval_every") or max(1, (knobs.get("max_steps") or 100) // 2),
            save_every=knobs.get("save_every") or 10**9,
            samples=knobs.get("samples") or 0,
            device=knobs.get("device") or ctx.policy.device,
        )
        run_dir = ctx.state_dir / "offline" / "run"
        run_id = ctx.store.start_run(kind="offline", config=cfg.model_dump(mode="json"))
        ctx.worker.stop_training.clear()
        ctx.progress = Progress(
            mode="offline", started_at=ctx.clock.now(), total_steps=cfg.max_steps
        )

        def on_step(rec: StepRecord) -> None:
            # Runs in the worker thread: metrics are thread-safe; the store has its own lock.
            if ctx.progress is not None:
                ctx.progress.step = rec.step
                ctx.progress.loss = rec.loss
                ctx.progress.tokens_per_second = rec.tokens_per_s
            m = ctx.metrics
            m.train_steps.labels("offline").inc()
            m.train_loss.labels("offline").set(rec.loss)
            m.train_learning_rate.labels("offline").set(rec.lr)
            m.train_tokens_per_second.labels("offline").set(rec.tokens_per_s)
            ctx.store.record_metrics({"offline_loss": rec.loss})

        def fit() -> FitResult:
            result = train_offline(
                cfg,
                out=run_dir,
                force=True,
                extra_examples=examples_from_texts(texts, source="face-history"),
                on_step=on_step,
                stop=ctx.worker.stop_training,
            )
            best = result.best_dir or result.last_checkpoint
            if result.steps > 0 and best is not None:
                ctx.policy.adopt(best)
            return result

        t0 = time.monotonic()
        try:
            result = await ctx.worker.run("offline", fit)
        except Exception as exc:
            ctx.store.finish_run(run_id, status="failed", metrics={}, error=str(exc))
            ctx.log.error("offline fit failed", error=str(exc))
            return False
        finally:
            ctx.progress = None
        metrics = {
            "steps": result.steps,
            "last_loss": result.last_loss,
            "best_val_loss": result.best_val_loss,
            "reason": result.reason,
        }
        if result.steps == 0:
            ctx.store.finish_run(run_id, status="interrupted", metrics=metrics)
            return False
        folder = await self.checkpoints.save(kind="offline", run_id=run_id, metrics=metrics)
        # The fitted weights are the new KL reference; a restart loads it from this checkpoint.
        self.checkpoints.mark_reference(folder)
        status = "interrupted" if result.reason == "interrupted" else "completed"
        ctx.store.finish_run(run_id, status=status, metrics=metrics)
        ctx.log.info(
            "offline fit",
            posts=len(texts),
            policy_version=ctx.policy.version,
            duration_s=round(time.monotonic() - t0, 2),
            **metrics,
        )
        return status == "completed"
