"""Online learning: rewarded posts -> trajectories with advantages -> one policy update on the
torch worker -> checkpoint -> the rewards marked used.

A post can train twice: on its early reward (an estimate from the score at the early horizon,
controller/_early.py), then on its final reward minus that estimate (the correction).

Replay (``online.replay_posts``): an update also takes the newest rewarded posts it trained on
before, lighter (``online.replay_weight``); the decoupled importance weights of the update
(π_prox / π_behaviour, truncated) correct for their staleness.

Every candidate teaches (``online.candidates_weight``): a rewarded post's cycle drew several
candidates and published one; the unpublished survivors of the filters join the update with
the reward model's predictions stored at posting time as their rewards, relative to the mean
prediction of the cycle's survivors (group-relative, as GRPO; not divided by the group's
spread, so where the reward model cannot tell them apart they barely move the policy). They
share ``candidates_weight`` among them, against the published post's real reward at weight 1,
so real rewards dominate. With ``reward_model.trust`` (off by default: it did not help on the
benchmark) that share is scaled by how right the reward model has been on the face's posts
(its Spearman correlation with the rewards that came, none below 0). Filtered candidates stay
out of that share: a filter says "not publishable", not how the audience would react.

What must never be published teaches (``online.filtered_reward``): candidates filtered for
what they say (assistant talk, a copy of a known post, a blocklisted word: `TAUGHT_REASONS`)
since the last update join it with that fixed low reward against the baseline, so the policy is
pushed away from them (a filtered sample earns no reward otherwise, and nothing else would).
Each weighs 1 / (its cycle's survivors, at least 1) against the published post's 1: a cycle's
filtered candidates together weigh against its published post as the cycle's filtered
samples against its survivors, which the published post stands for. Length and finish
(too short, too long, unfinished) and a sibling's duplicate do not teach: they say nothing
about what a post says, or the same text survived."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from plaudit.controller._checkpoints import Checkpoints
from plaudit.controller._context import LoopContext, Outcome, Progress
from plaudit.controller._reward_model import RewardModel
from plaudit.controller._rewards import Baseline
from plaudit.state import EarlyScore, Post, PostStatus, Reward, Store

if TYPE_CHECKING:
    from plaudit.learner import Trajectory, UpdateStats

# A published post's weight for having been chosen against the odds (`choice_weight`) is
# truncated at this: one explored post must not outweigh several of the policy's own.
CHOICE_WEIGHT_MAX = 4.0
# At most this many waiting rewards go into one update (oldest first).
MAX_BATCH = 256
# The update measures (and bounds) its drift on this many of the newest candidates: samples
# of the policy as it is, a few post cycles' worth.
PROBE_POSTS = 32
# The filter reasons (controller/_filters.py) of candidates that teach with
# `online.filtered_reward`, and the stored key of the newest one an update took
# (`Learning.filtered`).
TAUGHT_REASONS = ("assistant", "novelty", "blocklist")
FILTERED_TAUGHT = "filtered_taught_through"
# What an update's trajectories are (the `kind` of the trajectories counter): a final reward
# trained for the first time, a final reward's correction of its early estimate, an early
# estimate, an unpublished candidate scored by the reward model, a replayed reward, a
# candidate filtered for what it says.
TRAJECTORY_KINDS = ("reward", "correction", "early", "candidate", "replayed", "filtered")


def lag_label(lag: int) -> str:
    """A version lag as a metric label: "0", "1", "2" or "3+" (few series, whatever the lag)."""
    return str(lag) if lag < 3 else "3+"


def _sampled(post: Post) -> bool:
    """Whether the post carries what the update needs: its tokens and their logprobs."""
    return bool(post.tokens) and len(post.logprobs) == len(post.tokens)


def choice_weight(post: Post) -> float:
    """The weight that makes a published post count as a sample of the policy again: 1 / (n
    p), truncated at `CHOICE_WEIGHT_MAX`, for a post chosen with chance p among n survivors
    of the filters (stored with it at posting time); 1 where the chance is unknown (a
    greedy choice, posts stored before chances were).

    Each of the n survivors is a sample of the policy (given the filters); the one published
    is picked with chance p, so its reward times 1 / (n p) is, in expectation over the
    picks, the mean over all n of what their rewards would have been: an unbiased sample of
    the policy's reward again (importance sampling over the choice). Unweighted, the update
    learns from the reward model's picks as if the policy wrote them that often, and pushes
    the policy toward whatever the reward model likes, right or wrong. A uniform choice has
    weight 1."""
    chance, n = post.sampling.get("choice_chance"), post.sampling.get("survivors")
    if not chance or not n:
        return 1.0
    return min(CHOICE_WEIGHT_MAX, 1.0 / (float(n) * float(chance)))


def _trajectory(post: Post, *, advantage: float, weight: float = 1.0) -> Trajectory:
    from plaudit.learner import Trajectory  # torch: imported when learning runs

    sampled = post.sampling  # {} for posts stored before settings were recorded
    return Trajectory(
        prompt=post.prompt_tokens,
        completion=post.tokens,
        behaviour_logprobs=post.logprobs,
        advantage=advantage,
        temperature=sampled.get("temperature"),
        top_p=sampled.get("top_p"),
        top_k=sampled.get("top_k"),
        policy_version=post.policy_version,
        weight=weight,
    )


@dataclass
class _Spent:
    """Post ids whose final rewards and whose early rewards an update spent."""

    final: list[int] = field(default_factory=list)
    early: list[int] = field(default_factory=list)

    def add(self, post_id: int, *, final: bool) -> None:
        (self.final if final else self.early).append(post_id)

    def mark(self, store: Store, version: int, *also: _Spent) -> None:
        for spent in (self, *also):
            store.mark_rewards_used(spent.final, policy_version=version)
            store.mark_early_used(spent.early, policy_version=version)


class Learning:
    def __init__(
        self, ctx: LoopContext, checkpoints: Checkpoints, reward_model: RewardModel
    ) -> None:
        self.ctx = ctx
        self.checkpoints = checkpoints
        self.reward_model = reward_model

    def candidates_share(self, face: str) -> float:
        """The weight a rewarded post's candidates share: `online.candidates_weight` times
        the reward model's trust on the face (`RewardModel.trust`)."""
        return self.ctx.settings.online.candidates_weight * self.reward_model.trust(face)

    def chosen_weight(self, post: Post) -> float:
        """`choice_weight`, where `online.choice_correction` is on; else 1."""
        return choice_weight(post) if self.ctx.settings.online.choice_correction else 1.0

    def candidates(self, post: Post, weight: float) -> list[Trajectory]:
        """The unpublished survivors of ``post``'s cycle, each with its predicted reward minus
        the mean prediction of the cycle's survivors (``post`` among them) as advantage,
        sharing ``weight``; none without predictions (no reward model at that post's time)."""
        if weight <= 0 or post.predicted_reward is None:
            return []
        others = [
            (p, p.predicted_reward)
            for p in self.ctx.store.posts(cycle_id=post.cycle_id, limit=1000)
            if p.status is PostStatus.CANDIDATE and p.predicted_reward is not None and _sampled(p)
        ]
        if not others:
            return []
        group = [post.predicted_reward, *(predicted for _, predicted in others)]
        mean = sum(group) / len(group)
        share = weight / len(others)
        return [_trajectory(p, advantage=predicted - mean, weight=share) for p, predicted in others]

    def replay(
        self, n: int, weight: float, baseline: float, *, fresh: set[int]
    ) -> list[Trajectory]:
        """The newest ``n`` rewarded posts an update already trained on (not in ``fresh``),
        each at ``weight``, their final reward against the current baseline as advantage."""
        if n <= 0:
            return []
        out: list[Trajectory] = []
        for reward in self.ctx.store.rewards(limit=4 * n):
            if reward.used_in_version is None or reward.post_id in fresh:
                continue
            post = self.ctx.store.get_post(reward.post_id)
            if not _sampled(post) or post.edited:
                continue
            advantage, chosen = reward.reward - baseline, self.chosen_weight(post)
            out.append(_trajectory(post, advantage=advantage, weight=weight * chosen))
            if len(out) == n:
                break
        return out

    def filtered(
        self, reward: float | None, baseline: float, *, limit: int
    ) -> tuple[list[Trajectory], int | None]:
        """The newest ``limit`` candidates filtered for a reason in `TAUGHT_REASONS` since the
        last update that took any (older ones are passed over: the update's size stays
        bounded), each with ``reward`` against ``baseline`` as advantage, weighing 1 / (its
        cycle's survivors, at least 1); and the newest one's id, which the update stores once
        it has trained."""
        store = self.ctx.store
        if reward is None or limit <= 0:
            return [], None
        through = int(store.get_value(FILTERED_TAUGHT) or 0)
        found = [
            p
            for reason in TAUGHT_REASONS
            for p in store.posts(status=PostStatus.FILTERED, filter_reason=reason, limit=limit)
            if p.id > through
        ]
        newest = sorted(found, key=lambda p: p.id, reverse=True)[:limit]
        if not newest:
            return [], None
        survivors: dict[str | None, int] = {}
        out: list[Trajectory] = []
        for post in newest:
            if not _sampled(post):
                continue
            if post.cycle_id not in survivors:
                cycle = store.posts(cycle_id=post.cycle_id, limit=1000) if post.cycle_id else []
                survivors[post.cycle_id] = sum(p.status is not PostStatus.FILTERED for p in cycle)
            weight = 1.0 / max(1, survivors[post.cycle_id])
            out.append(_trajectory(post, advantage=reward - baseline, weight=weight))
        return out, newest[0].id

    def probe(self) -> list[Trajectory]:
        """The newest candidates (of every face, whatever became of them: published, filtered
        or not chosen) sampled by the policy's current version, or by the newest version that
        sampled any: where the update measures its drift."""
        recent = [p for p in self.ctx.store.posts(limit=4 * PROBE_POSTS) if _sampled(p)]
        if not recent:
            return []
        version = max(p.policy_version or 0 for p in recent)
        newest = [p for p in recent if (p.policy_version or 0) == version]
        return [_trajectory(p, advantage=0.0) for p in newest[:PROBE_POSTS]]

    async def learn(self) -> Outcome:
        from plaudit.learner import OnlineUpdateConfig

        ctx = self.ctx
        store = ctx.store
        control = store.control()
        if not control.learning_online:
            return "skipped"
        o = ctx.settings.online
        pending = store.rewards(unused_only=True, limit=MAX_BATCH)
        # Estimates before their final reward (turned off: those left wait for their final).
        early = store.early_rewards(limit=MAX_BATCH) if o.early_rewards else []
        if len(pending) + len(early) < ctx.settings.controller.learn_min_rewards:
            return "skipped"
        baseline = Baseline(
            value=float(store.get_value("reward_baseline") or 0.0), decay=o.baseline_decay
        )
        batch: list[Trajectory] = []
        taught: list[Trajectory] = []  # unpublished candidates of the rewarded posts' cycles
        used, spent = _Spent(), _Spent()  # spent: nothing to train on, marked used with the batch
        corrections = 0
        chosen: list[float] = []  # the rewarded posts' weights for their choice
        # Oldest first, so the baseline moves in time order.
        arrivals: list[Reward | EarlyScore] = sorted(
            [*pending, *early], key=lambda r: (r.created_at, isinstance(r, EarlyScore))
        )
        for item in arrivals:
            post = store.get_post(item.post_id)
            final = isinstance(item, Reward)
            # An edited post (approval queue) went out in a human's words, which the policy
            # did not sample: its reward trains the reward model only.
            if not _sampled(post) or post.edited:
                spent.add(item.post_id, final=final)
                continue
            assert item.reward is not None  # early_rewards() returns estimated ones only
            head = store.early_score(post.id) if final else None
            weight = self.chosen_weight(post)
            chosen.append(weight)
            if head is not None and head.used_in_version is not None and head.reward is not None:
                # Its early reward trained already: the final one trains the difference.
                batch.append(_trajectory(post, advantage=item.reward - head.reward, weight=weight))
                corrections += 1
            else:
                advantage = baseline.advantage(item.reward)
                batch.append(_trajectory(post, advantage=advantage, weight=weight))
                taught.extend(self.candidates(post, self.candidates_share(post.face)))
            used.add(item.post_id, final=final)
        if not batch:
            spent.mark(store, ctx.policy.version)
            return "skipped"
        replayed = self.replay(
            o.replay_posts, o.replay_weight, baseline.value, fresh={*used.final, *used.early}
        )
        filtered, filtered_through = self.filtered(
            o.filtered_reward, baseline.value, limit=len(batch)
        )
        budget = o.max_kl - ctx.settings.selection_kl() if o.max_kl is not None else None
        config = OnlineUpdateConfig(
            method=o.method,
            epochs=o.epochs,
            clip=o.clip,
            kl_coef=o.kl_coef,
            # Choosing among candidates drifts too (at most log n - (n-1)/n nats per post):
            # the policy gets the budget that leaves.
            max_kl=budget,
            grad_clip=o.grad_clip,
            temperature=ctx.settings.sampling.temperature or 1.0,
        )
        ctx.policy.lr = o.lr
        ctx.worker.stop_training.clear()
        batch.extend(taught)
        batch.extend(replayed)
        batch.extend(filtered)
        counts = {
            "rewards": len(used.final),  # final rewards (corrections among them)
            "early": len(used.early),
            "corrections": corrections,
            "candidates": len(taught),
            "replayed": len(replayed),
            "filtered": len(filtered),
            "choice_weight_mean": round(sum(chosen) / len(chosen), 3),
        }
        run_id = store.start_run(kind="online", config={**counts, **o.model_dump(mode="json")})
        progress = Progress(mode="online", started_at=ctx.clock.now())
        probe = self.probe()

        def update() -> UpdateStats:
            # Shown once it runs: queued behind an offline fit, it must not hide the fit's.
            ctx.progress = progress
            return ctx.policy.update(
                batch,
                config=config,
                should_stop=ctx.worker.stop_training,
                probe=probe,
                # posting and the playground run between the update's steps
                between_steps=ctx.worker.step_boundary,
            )

        t0 = time.monotonic()
        try:
            stats = await ctx.worker.run("learn", update)
        except Exception as exc:
            store.finish_run(run_id, status="failed", metrics={}, error=str(exc))
            raise
        finally:
            if ctx.progress is progress:
                ctx.progress = None
        duration = time.monotonic() - t0
        metrics = {
            "loss": stats.loss,
            "kl_per_post": stats.kl_per_post,
            "kl_per_token": stats.kl_per_token,
            "kl_per_post_before": stats.kl_per_post_before,
            "kl_se": stats.kl_se,
            "kl_measured_on": stats.measured_on,
            "entropy": stats.entropy,
            "clip_fraction": stats.clip_fraction,
            "clip_fraction_by_lag": {str(k): v for k, v in stats.clip_fraction_by_lag.items()},
            "ratio_mean": stats.ratio_mean,
            "ratio_max": stats.ratio_max,
            "is_weight_mean": stats.is_weight_mean,
            "steps": stats.steps,
            "tokens": stats.tokens,
            "stop_reason": stats.stop_reason,
            "pulled_back": stats.pulled_back,
        }
        if stats.steps == 0 and stats.stop_reason == "interrupted":
            # A shutdown before the first step: the rewards stay pending. (A pull-back it made
            # is a new version in memory; the next checkpoint writes it, or the next update
            # makes it again.)
            store.finish_run(run_id, status="interrupted", metrics=metrics)
            return "skipped"
        # The rewards are spent on the weights in memory now. Should the checkpoint below fail
        # (a full disk), they are not trained on again by the next update; should the process
        # die before any later checkpoint, start-up returns them to pending
        # (`Store.release_rewards_after`), since the weights they trained are lost with it.
        used.mark(store, ctx.policy.version, spent)
        store.set_value("reward_baseline", repr(baseline.value))
        if filtered_through is not None:
            store.set_value(FILTERED_TAUGHT, str(filtered_through))
        store.finish_run(run_id, status="completed", metrics=metrics)
        kinds = {
            "reward": len(used.final) - corrections,
            "correction": corrections,
            "early": len(used.early),
            "candidate": len(taught),
            "replayed": len(replayed),
            "filtered": len(filtered),
        }
        for kind, n in kinds.items():
            ctx.metrics.online_trajectories.labels(kind).inc(n)
        try:
            await self.checkpoints.save(kind="online", run_id=run_id, metrics=metrics)
        except Exception as exc:
            ctx.log.error(
                "checkpoint after the update failed; the next checkpoint writes these weights",
                policy_version=ctx.policy.version,
                error=str(exc),
            )
            return "error"
        m = ctx.metrics
        m.train_steps.labels("online").inc(stats.steps)
        m.train_loss.labels("online").set(stats.loss)
        m.train_kl.labels("online").set(stats.kl_per_post)
        m.train_entropy.labels("online").set(stats.entropy)
        m.online_importance_weight.set(stats.is_weight_mean)
        by_label: dict[str, list[float]] = {}
        for lag, fraction in stats.clip_fraction_by_lag.items():
            by_label.setdefault(lag_label(lag), []).append(fraction)
        for label, fractions in by_label.items():
            m.online_clip_fraction.labels(label).set(sum(fractions) / len(fractions))
        m.online_move_scale.set(ctx.policy.move_scale)
        m.train_learning_rate.labels("online").set(o.lr * ctx.policy.move_scale)
        m.train_tokens_per_second.labels("online").set(
            stats.tokens * max(stats.steps, 1) / max(duration, 1e-9)
        )
        store.record_metrics({"loss": stats.loss, "kl": stats.kl_per_post})
        ctx.log.info(
            "policy update",
            **counts,
            steps=stats.steps,
            loss=round(stats.loss, 4),
            kl_per_post=round(stats.kl_per_post, 4),
            kl_per_token=round(stats.kl_per_token, 5),
            kl_se=round(stats.kl_se, 4),
            entropy=round(stats.entropy, 3),
            clip_fraction=round(stats.clip_fraction, 3),
            clip_fraction_by_lag={k: round(v, 3) for k, v in stats.clip_fraction_by_lag.items()},
            ratio_max=round(stats.ratio_max, 3),
            is_weight_mean=round(stats.is_weight_mean, 3),
            stop_reason=stats.stop_reason,
            pulled_back=round(stats.pulled_back, 4),
            move_scale=round(ctx.policy.move_scale, 4),
            policy_version=ctx.policy.version,
            duration_s=round(duration, 2),
        )
        return "success"
