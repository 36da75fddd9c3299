"""Collection: snapshot the reactions of posts that reached a horizon; at the horizon before
the last one the score so far gives an early reward (controller/_early.py); at the last horizon
the face's score becomes the post's reward (controller/_rewards.py), recorded exactly once."""

from __future__ import annotations

from typing import Any

from plaudit.controller._context import LoopContext, Outcome
from plaudit.controller._early import EarlyRewards
from plaudit.controller._metrics import failure_reason, horizon_label
from plaudit.controller._reward_model import RewardModel
from plaudit.controller._rewards import SCORE_WINDOW, normalise
from plaudit.faces import FaceError
from plaudit.state import Snapshot


class Collection:
    def __init__(self, ctx: LoopContext, reward_model: RewardModel) -> None:
        self.ctx = ctx
        self.reward_model = reward_model
        self.early = EarlyRewards(ctx)

    async def sweep(self) -> Outcome:
        ctx = self.ctx
        horizons = [h.total_seconds() for h in ctx.settings.controller.horizons]
        final = horizons[-1]
        early = self.early.horizon
        due = ctx.store.due_snapshots(now=ctx.clock.now(), horizons_s=horizons)
        if not due:
            return "skipped"
        by_face: dict[str, list[tuple[Any, float]]] = {}
        for post, horizon in due:
            if post.face in ctx.faces and post.face_ref:
                by_face.setdefault(post.face, []).append((post, horizon))
        rewards = 0
        rewarded: set[str] = set()
        for name, items in by_face.items():
            rt = ctx.faces[name]
            try:
                try:
                    snaps = await rt.face.reactions([p.face_ref for p, _ in items])
                finally:
                    ctx.metrics.rate_limit_wait_seconds.labels(name).inc(rt.waited_since_last())
            except FaceError as exc:
                ctx.metrics.face_errors.labels(name, "reactions", failure_reason(exc)).inc()
                ctx.log.warning(
                    "reactions unavailable; retried next sweep", face=name, error=str(exc)
                )
                continue
            for (post, horizon), snap in zip(items, snaps, strict=True):
                r = snap.reactions
                ctx.store.add_snapshot(
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
                ctx.metrics.reactions_collected.labels(name, horizon_label(horizon)).inc()
                if horizon == early and snap.found:
                    self.early.record(
                        post_id=post.id, face=name, horizon_s=horizon, observed=rt.face.score(snap)
                    )
                if horizon == final and snap.found:
                    score = rt.face.score(snap)
                    reward = normalise(score, ctx.store.scores(name, limit=SCORE_WINDOW))
                    ctx.store.add_reward(post_id=post.id, face=name, score=score, reward=reward)
                    ctx.metrics.record_reward(name, reward)
                    ctx.store.record_metrics({"reward": reward, "score": score})
                    rewards += 1
                    rewarded.add(name)
                    ctx.log.info(
                        "reward",
                        face=name,
                        post_id=post.id,
                        score=round(score, 4),
                        reward=round(reward, 3),
                    )
        correlation = {}
        for name in rewarded:
            rho = self.reward_model.measure(name)
            if rho is not None:
                correlation[name] = round(rho, 3)
        if rewarded:
            self.reward_model.rewards_arrived()
        ctx.log.info(
            "collect sweep",
            snapshots=len(due),
            rewards=rewards,
            **({"reward_model_spearman": correlation} if correlation else {}),
        )
        return "success"
