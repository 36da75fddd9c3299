"""Online learning: rewarded posts -> trajectories with advantages -> one policy update on the
torch worker -> checkpoint -> the rewards marked used."""

from __future__ import annotations

import time

from plaudit.controller._checkpoints import Checkpoints
from plaudit.controller._context import LoopContext, Outcome, Progress
from plaudit.controller._rewards import Baseline
from plaudit.state import TrainingMode, TrainingState

# At most this many waiting rewards go into one update (oldest first).
MAX_BATCH = 256


class Learning:
    def __init__(self, ctx: LoopContext, checkpoints: Checkpoints) -> None:
        self.ctx = ctx
        self.checkpoints = checkpoints

    async def learn(self) -> Outcome:
        from plaudit.learner import OnlineUpdateConfig, Trajectory

        ctx = self.ctx
        store = ctx.store
        control = store.control()
        if control.training is not TrainingState.RUNNING or control.mode is not TrainingMode.ONLINE:
            return "skipped"
        pending = store.rewards(unused_only=True, limit=MAX_BATCH)
        if len(pending) < ctx.settings.controller.learn_min_rewards:
            return "skipped"
        o = ctx.settings.online
        baseline = Baseline(
            value=float(store.get_value("reward_baseline") or 0.0), decay=o.baseline_decay
        )
        batch: list[Trajectory] = []
        used: list[int] = []
        for reward in reversed(pending):  # oldest first, so the baseline moves in time order
            post = store.get_post(reward.post_id)
            if not post.tokens or len(post.logprobs) != len(post.tokens):
                continue
            batch.append(
                Trajectory(
                    prompt=post.prompt_tokens,
                    completion=post.tokens,
                    behaviour_logprobs=post.logprobs,
                    advantage=baseline.advantage(reward.reward),
                )
            )
            used.append(reward.post_id)
        if not batch:
            store.mark_rewards_used([r.post_id for r in pending], policy_version=ctx.policy.version)
            return "skipped"
        config = OnlineUpdateConfig(
            method=o.method,
            epochs=o.epochs,
            clip=o.clip,
            kl_coef=o.kl_coef,
            max_kl=o.max_kl,
            grad_clip=o.grad_clip,
            temperature=ctx.settings.sampling.temperature or 1.0,
        )
        ctx.policy.lr = o.lr
        ctx.worker.stop_training.clear()
        run_id = store.start_run(
            kind="online", config={"rewards": len(batch), **o.model_dump(mode="json")}
        )
        ctx.progress = Progress(mode="online", started_at=ctx.clock.now())
        t0 = time.monotonic()
        try:
            stats = await ctx.worker.run(
                "learn",
                ctx.policy.update,
                batch,
                config=config,
                should_stop=ctx.worker.stop_training,
            )
        except Exception as exc:
            store.finish_run(run_id, status="failed", metrics={}, error=str(exc))
            raise
        finally:
            ctx.progress = None
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
            store.finish_run(run_id, status="interrupted", metrics=metrics)
            return "skipped"
        await self.checkpoints.save(kind="online", run_id=run_id, metrics=metrics)
        store.mark_rewards_used(used, policy_version=ctx.policy.version)
        store.set_value("reward_baseline", repr(baseline.value))
        store.finish_run(run_id, status="completed", metrics=metrics)
        m = ctx.metrics
        m.train_steps.labels("online").inc(stats.steps)
        m.train_loss.labels("online").set(stats.loss)
        m.train_kl.labels("online").set(stats.kl)
        m.train_learning_rate.labels("online").set(o.lr)
        m.train_tokens_per_second.labels("online").set(
            stats.tokens * max(stats.steps, 1) / max(duration, 1e-9)
        )
        store.record_metrics({"loss": stats.loss, "kl": stats.kl})
        ctx.log.info(
            "policy update",
            rewards=len(batch),
            steps=stats.steps,
            loss=round(stats.loss, 4),
            kl=round(stats.kl, 5),
            clip_fraction=round(stats.clip_fraction, 3),
            policy_version=ctx.policy.version,
            duration_s=round(duration, 2),
        )
        return "success"
