"""Offline fits: the live policy fine-tuned on the faces' history (supervised), at first start
and then at an interval, or now on request; the fitted weights are adopted as the new policy and
the new KL reference. The fit runs in memory on the live weights (`Policy.fine_tune`): the only
write is the checkpoint of the result. An instruct model fits in the format it posts in (the
posting instruction -> a history post, `OfflineFits.examples`)."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from plaudit.controller._checkpoints import Checkpoints
from plaudit.controller._context import FaceRuntime, LoopContext, Outcome, Progress
from plaudit.controller._prompts import SYSTEM, fit_pairs
from plaudit.state import TrainingMode, TrainingState

if TYPE_CHECKING:
    from plaudit.learner import Example, FitResult, StepRecord

# Knobs an offline request (API, CLI) may override.
REQUEST_KNOBS = ("max_steps", "lr", "batch_size")
# Where fits of earlier plaudit versions trained (a copy of the policy and a run folder,
# gigabytes for SmolLM2); nothing writes there now, and start-up removes what is left.
SCRATCH = "offline"
# Steps a scheduled fit took before it was stopped: the next one runs only the rest.
STEPS_DONE = "offline_steps_done"


class OfflineFits:
    def __init__(self, ctx: LoopContext, checkpoints: Checkpoints) -> None:
        self.ctx = ctx
        self.checkpoints = checkpoints
        self.request: dict[str, Any] | None = None

    def clear_scratch(self) -> int:
        """Remove the run folder an earlier plaudit's offline fits left in the state folder;
        the bytes freed (0: there was none)."""
        from plaudit.state import state_size

        scratch = self.ctx.state_dir / SCRATCH
        if not scratch.is_dir():
            return 0
        freed = sum(state_size(scratch).values())
        shutil.rmtree(scratch, ignore_errors=True)
        self.ctx.log.info("old offline fit files removed", folder=str(scratch), bytes=freed)
        return freed

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
            histories = [(rt, rt.history[: max_posts or None]) for rt in due]
            if not any(texts for _, texts in histories):
                return "skipped"
            ok = await self._fit(histories, request or {}, on_request=request is not None)
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

    def examples(self, histories: list[tuple[FaceRuntime, list[str]]]) -> list[Example]:
        """The fit's examples for the live policy (`fit_examples`)."""
        return fit_examples(
            [(history, rt.face.limits.max_length) for rt, history in histories],
            chat=self.ctx.policy.tokenizer.chat_template is not None,
        )

    async def _fit(
        self,
        histories: list[tuple[FaceRuntime, list[str]]],
        overrides: dict[str, Any],
        *,
        on_request: bool,
    ) -> bool:
        ctx = self.ctx
        examples = self.examples(histories)
        if not examples:
            ctx.log.warning("offline fit skipped: the history has too few posts to fit on")
            return False
        requested = {k: v for k, v in overrides.items() if k in REQUEST_KNOBS and v}
        if overrides.get("epochs") is not None:
            requested["epochs"] = max(1, round(float(overrides["epochs"])))
        knobs = {**ctx.settings.offline.knobs(), **requested}
        if knobs.get("device") not in (None, "auto", ctx.policy.device):
            ctx.log.warning(
                "offline.device is not used: the fit trains the live policy where it lives",
                device=knobs["device"],
                policy_device=ctx.policy.device,
            )
        # A scheduled fit stopped part-way (Stop, a pause) is picked up where it stopped: the
        # weights it trained stay, and the next fit runs the steps that were left, on the same
        # data order and learning-rate schedule (`start_step`). A requested fit is a whole one.
        done = 0 if on_request else int(ctx.store.get_value(STEPS_DONE) or 0)
        if done:
            ctx.log.info("offline fit resumes", steps_done=done)
        cfg = ctx.settings.offline.train_config(
            **requested,
            model=ctx.policy.source,  # for the run's record: the fit starts from the live policy
            eval_every=knobs.get("eval_every") or max(1, (knobs.get("max_steps") or 100) // 2),
            samples=knobs.get("samples") or 0,
            device=ctx.policy.device,
        )
        run_id = ctx.store.start_run(kind="offline", config=cfg.model_dump(mode="json"))
        ctx.worker.stop_training.clear()
        progress = Progress(mode="offline", started_at=ctx.clock.now(), total_steps=cfg.max_steps)

        def on_step(rec: StepRecord) -> None:
            # Runs in the worker thread: metrics are thread-safe; the store has its own lock.
            progress.step = rec.step
            progress.loss = rec.loss
            progress.tokens_per_second = rec.tokens_per_s
            m = ctx.metrics
            m.train_steps.labels("offline").inc()
            m.train_loss.labels("offline").set(rec.loss)
            m.train_learning_rate.labels("offline").set(rec.lr)
            m.train_tokens_per_second.labels("offline").set(rec.tokens_per_s)
            ctx.store.record_metrics({"offline_loss": rec.loss})

        def fit() -> FitResult:
            # Shown once it runs: queued behind an update, it must not hide the update's.
            ctx.progress = progress
            # In memory on the live weights; they are put back should the fit fail.
            return ctx.policy.fine_tune(
                cfg,
                examples=examples,
                on_step=on_step,
                stop=ctx.worker.stop_training,
                # posting and the playground run between its micro-batches
                between_steps=ctx.worker.step_boundary,
                start_step=done,
            )

        t0 = time.monotonic()
        try:
            result = await ctx.worker.run("offline", fit)
        except Exception as exc:
            ctx.store.finish_run(run_id, status="failed", metrics={}, error=str(exc))
            ctx.log.error("offline fit failed", error=str(exc))
            return False
        finally:
            if ctx.progress is progress:
                ctx.progress = None
        metrics = {
            "steps": result.steps - done,
            "steps_before": done,
            "last_loss": result.last_loss,
            "best_val_loss": result.best_val_loss,
            "reason": result.reason,
        }
        if result.steps == done:  # no step taken: stopped at once, or nothing was left
            if result.reason == "interrupted":
                ctx.store.finish_run(run_id, status="interrupted", metrics=metrics)
                return False
            ctx.store.finish_run(run_id, status="completed", metrics=metrics)
            ctx.store.set_value(STEPS_DONE, "0")
            return done > 0  # the stopped fit's weights were the last steps it had
        try:
            folder = await self.checkpoints.save(kind="offline", run_id=run_id, metrics=metrics)
            # The fitted weights are the new KL reference; a restart loads it from here.
            self.checkpoints.mark_reference(folder)
        except Exception as exc:
            ctx.store.finish_run(run_id, status="failed", metrics=metrics, error=str(exc))
            raise
        status = "interrupted" if result.reason == "interrupted" else "completed"
        ctx.store.finish_run(run_id, status=status, metrics=metrics)
        ctx.log.info(
            "offline fit",
            posts=len(examples),
            format="text" if examples[0].fmt == "text" else "posting instruction",
            policy_version=ctx.policy.version,
            duration_s=round(time.monotonic() - t0, 2),
            **metrics,
        )
        if status == "interrupted" and not on_request:
            # Its weights are the policy and the reference now; the next fit (at Start, or
            # when next due) runs only the steps left, not a second whole fit.
            ctx.store.set_value(STEPS_DONE, str(result.steps))
            ctx.log.info("offline fit stopped part-way; the next one runs the steps left",
                         steps_done=result.steps)  # fmt: skip
            return False
        ctx.store.set_value(STEPS_DONE, "0")
        return status == "completed"


def fit_examples(histories: Sequence[tuple[Sequence[str], int]], *, chat: bool) -> list[Example]:
    """What an offline fit on ``histories`` (each a face's posts and its character limit)
    trains on. An instruct model (``chat``: one with a chat template) is prompted to post with
    the posting instruction, so it fits on that instruction -> a history post (the loss on the
    post only); a model without one posts after example posts as plain documents, so it fits
    on the posts as plain text (as `Policy.render_prompt` renders). The pairs are drawn with a
    fixed seed: a fit resumed after a stop sees the same data in the same order."""
    from plaudit.learner import examples_from_pairs, examples_from_texts

    if not chat:
        texts = [t for history, _ in histories for t in history]
        return examples_from_texts(texts, source="face-history")
    rng = random.Random(0)
    pairs = [
        pair
        for history, max_chars in histories
        for pair in fit_pairs(history, max_chars=max_chars, rng=rng)
    ]
    return examples_from_pairs(pairs, source="face-history", system=SYSTEM)
