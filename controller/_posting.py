"""Posting: the rules for when a face may post, the post cycle (candidates -> filters ->
choice -> intent -> publish, or -> held for approval: controller/_approval.py) and publishing
with retries under one idempotency key.

A publish that fails for now (rate limited, a 5xx, a timeout) keeps its intent: the face's next
cycles retry that post, with the same key and a growing backoff, before generating new ones, so
a post never goes out days late beside newer ones."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from plaudit.controller._approval import Approvals
from plaudit.controller._context import FaceRuntime, LoopContext, Outcome
from plaudit.controller._filters import FilterConfig, NoveltyIndex, reject_reason
from plaudit.controller._metrics import failure_reason
from plaudit.controller._prompts import echo_checked, post_prompts
from plaudit.controller._reward_model import RewardModel
from plaudit.faces import AuthFailed, Draft, FaceError, RateLimited, Rejected, Transient
from plaudit.state import NewCandidate, Post

# A rate limit longer than this is not waited out inside a cycle: the intent stays recorded and
# a later cycle retries the post (with the same idempotency key).
MAX_INLINE_WAIT = 900.0
PUBLISH_ATTEMPTS = 4
# Backoff between cycles that retry a kept intent: 1 min, 2, 4, ... at most an hour.
KEPT_RETRY_FIRST = 60.0
KEPT_RETRY_MAX = 3600.0
# A kept intent whose post may exist (an earlier answer was lost) but whose retries only get
# answers that cannot be read is asked again this many times (about a day), then failed.
KEPT_UNCERTAIN_TRIES = 30

PublishStatus = Literal["published", "kept", "failed"]


@dataclass(frozen=True)
class PublishResult:
    status: PublishStatus
    # For "kept": the earliest time a retry makes sense (a rate limit's Retry-After).
    retry_at: float | None = None


class Posting:
    def __init__(self, ctx: LoopContext, reward_model: RewardModel, approvals: Approvals) -> None:
        self.reward_model = reward_model
        self.approvals = approvals
        self.ctx = ctx
        self.own_posts = NoveltyIndex(n=6)
        self.training_posts = NoveltyIndex(n=6)
        # Per face, the (prompt, completion) tokens its running cycle sampled.
        self._sampled: dict[str, list[tuple[list[int], list[int]]]] = {}

    # -- when ------------------------------------------------------------------------------

    def interval(self, rt: FaceRuntime) -> float:
        """The gap to the next post: the configured interval (at least the face's own minimum)
        plus jitter."""
        c = self.ctx.settings.controller
        jitter = c.post_jitter.total_seconds()
        base = max(c.post_interval.total_seconds(), rt.face.limits.min_interval.total_seconds())
        return max(0.0, base + self.ctx.rng.uniform(-jitter, jitter))

    def first_post_time(self, rt: FaceRuntime) -> float:
        """After a restart the first post respects the last post's time (no burst); a kept
        intent is due at once, an approved post at its slot, a held post's expiry at its
        deadline."""
        now = self.ctx.clock.now()
        if self.ctx.store.in_flight(face=rt.name):
            return now
        first = self._first_new_post(rt, now)
        for at in (self.approvals.next_deadline(rt.name), self.approved_slot(rt)):
            if at is not None:
                first = min(first, max(now, at))
        return first

    def _first_new_post(self, rt: FaceRuntime, now: float) -> float:
        last = self.ctx.store.last_published_at(rt.name)
        if last is None:
            return now
        return max(now, last + self.interval(rt))

    def blocked_until(self, rt: FaceRuntime, now: float) -> tuple[str, float] | None:
        """Why a post cannot go out now and when to try again, or None when it may."""
        c = self.ctx.settings.controller
        store = self.ctx.store
        last = store.last_published_at(rt.name)
        min_gap = rt.face.limits.min_interval.total_seconds()
        if last is not None and now - last < min_gap:
            return "min_interval", last + min_gap
        if c.daily_cap and store.published_since(rt.name, now - 86400) >= c.daily_cap:
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

    # -- the cycle -------------------------------------------------------------------------

    async def post(self, rt: FaceRuntime) -> Outcome:
        """One post job for a face: a kept intent first, else an approved post, else a new
        post (published, or held for approval). Sets `rt.next_post_at` to when the face's next
        post job is due."""
        try:
            return await self._post(rt)
        finally:
            # A held post's expiry and an approved post's slot are reasons to run again
            # before the next interval.
            # (A slot already past was blocked this time: the block set when to try again.)
            now = self.ctx.clock.now()
            if rt.next_post_at is not None:
                for at in (self.approvals.next_deadline(rt.name), self.approved_slot(rt)):
                    if at is not None and at > now:
                        rt.next_post_at = min(rt.next_post_at, at)

    def approved_slot(self, rt: FaceRuntime) -> float | None:
        """When the face's oldest approved post may publish: a post interval (without jitter)
        after the face's last post, or now; None when no approved post waits."""
        if not self.approvals.approved(rt.name):
            return None
        now = self.ctx.clock.now()
        last = self.ctx.store.last_published_at(rt.name)
        if last is None:
            return now
        c = self.ctx.settings.controller
        base = max(c.post_interval.total_seconds(), rt.face.limits.min_interval.total_seconds())
        return max(now, last + base)

    async def _post(self, rt: FaceRuntime) -> Outcome:
        self.approvals.expire(rt.name)
        now = self.ctx.clock.now()
        blocked = self.blocked_until(rt, now)
        if blocked is not None:
            reason, retry_at = blocked
            self.ctx.log.info(
                "post deferred", face=rt.name, reason=reason, retry_in_s=round(retry_at - now)
            )
            rt.next_post_at = retry_at
            return "skipped"
        kept = self.ctx.store.in_flight(face=rt.name)
        if kept:
            return await self._retry_kept(rt, kept[0])
        approved = self.approvals.approved(rt.name)
        slot = self.approved_slot(rt)
        if approved and slot is not None and slot <= now:
            return await self._publish_approved(rt, approved[0])
        if self.approvals.required and self.approvals.full(rt.name):
            self.ctx.log.info(
                "post deferred",
                face=rt.name,
                reason="approval_queue_full",
                waiting=len(self.approvals.waiting(rt.name)),
            )
            rt.next_post_at = now + self.interval(rt)
            return "skipped"
        rt.next_post_at = None
        try:
            outcome = await self._cycle(rt)
        finally:
            if rt.next_post_at is None:
                rt.next_post_at = self.ctx.clock.now() + self.interval(rt)
        await self._remember_reference(rt)
        return outcome

    async def _remember_reference(self, rt: FaceRuntime) -> None:
        """The reference's work on the cycle's candidates, done once, after the cycle published
        (so posting never waits for it): the updates that measure their drift on them (the
        probe), and train on them once rewarded, skip its forward (about a second for
        SmolLM2's eight). Only while online learning runs; a step boundary of a running update
        is soon enough (the reference is frozen)."""
        sampled = self._sampled.pop(rt.name, [])
        ctx = self.ctx
        if (
            not sampled
            or ctx.worker.shutting_down.is_set()
            or not ctx.store.control().learning_online
        ):
            return
        try:
            await ctx.worker.run_soon(
                "reference",
                ctx.policy.remember_reference,
                [prompt for prompt, _ in sampled],
                [tokens for _, tokens in sampled],
            )
        except Exception as exc:  # a saving only: an update runs the reference where needed
            ctx.log.warning("reference not remembered", face=rt.name, error=repr(exc))

    async def _retry_kept(self, rt: FaceRuntime, post: Post) -> Outcome:
        log = self.ctx.log.bind(face=rt.name, post_id=post.id)
        assert post.idempotency_key is not None, "in_flight() lists posts with an intent only"
        tries = rt.retries.get(post.id, 0)
        log.info("publishing a kept intent", earlier_tries=tries)
        result = await self.publish(rt, post.id, post.text, post.idempotency_key, log)
        if result.status == "kept":
            self._keep(rt, post.id, result)
            return "error"
        rt.retries.pop(post.id, None)
        # Published (or failed for good): the next post is due a full interval from now.
        rt.next_post_at = self.ctx.clock.now() + self.interval(rt)
        return "success" if result.status == "published" else "error"

    async def _publish_approved(self, rt: FaceRuntime, post: Post) -> Outcome:
        """Publish a post a human approved (as sampled or edited) under a new intent."""
        log = self.ctx.log.bind(face=rt.name, post_id=post.id)
        key = f"plaudit-{rt.name}-{post.id}-{uuid.uuid4().hex[:8]}"
        self.ctx.store.record_intent(post.id, idempotency_key=key)
        result = await self.publish(rt, post.id, post.text, key, log)
        if result.status == "kept":
            self._keep(rt, post.id, result)
            return "error"
        log.info("approved post", published=result.status == "published", approval=post.approval)
        rt.next_post_at = self.ctx.clock.now() + self.interval(rt)
        return "success" if result.status == "published" else "error"

    def _keep(self, rt: FaceRuntime, post_id: int, result: PublishResult) -> None:
        """A publish failed for now: count the try and plan the retry of the kept intent, after
        a backoff that doubles with each try (and at least a rate limit's Retry-After)."""
        tries = rt.retries.get(post_id, 0)
        rt.retries[post_id] = tries + 1
        backoff = min(KEPT_RETRY_MAX, KEPT_RETRY_FIRST * 2.0**tries)
        rt.next_post_at = max(self.ctx.clock.now() + backoff, result.retry_at or 0.0)

    async def _cycle(self, rt: FaceRuntime) -> Outcome:
        # The learner (torch) is imported when first needed: reading the config stays light.
        from plaudit.learner import GenerationInterrupted, SamplingConfig

        ctx = self.ctx
        cycle = uuid.uuid4().hex[:12]
        log = ctx.log.bind(cycle=cycle, face=rt.name)
        c, s = ctx.settings.controller, ctx.settings.sampling
        limits = rt.face.limits
        t0 = time.monotonic()  # durations of real work are measured in real time
        asked = post_prompts(
            history=rt.history,
            n=c.candidates,
            max_chars=limits.max_length,
            rng=ctx.rng,
            scores=rt.history_scores,
            liked_share=c.liked_examples,
        )
        prompts = [p.render(ctx.policy, room=s.max_new_tokens) for p in asked]
        sampling = SamplingConfig(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_new_tokens=s.max_new_tokens,
            seed=ctx.rng.randrange(2**31),
        )
        try:
            candidates = await ctx.worker.run_soon(
                "generate",
                ctx.policy.generate,
                prompts,
                n=1,
                sampling=sampling,
                should_stop=ctx.worker.shutting_down.is_set,
            )
        except GenerationInterrupted:
            log.info("post cycle abandoned: shutting down during generation")
            return "skipped"
        gen_s = time.monotonic() - t0
        self._sampled[rt.name] = [(cand.prompt_tokens, cand.tokens) for cand in candidates]
        ctx.metrics.generation_duration.observe(gen_s)
        ctx.metrics.posts_generated.labels(rt.name).inc(len(candidates))
        version = ctx.policy.version
        # Filters first, then the reward model's predictions of every candidate (stored with
        # it, before any reward can exist) and its choice among the survivors.
        filters = FilterConfig(blocklist=c.blocklist, min_chars=c.min_chars)
        reasons: list[str | None] = []
        kept_texts: list[str] = []
        for cand in candidates:
            reason = reject_reason(
                cand.text,
                finished=cand.finished or cand.cut,
                config=filters,
                max_length=limits.max_length,
                measure=rt.face.measure,
                own_posts=self.own_posts,
                training_posts=self.training_posts,
                batch_seen=kept_texts,
                prompt=echo_checked(ctx.policy, cand.prompt),
            )
            reasons.append(reason)
            if reason is None:
                kept_texts.append(cand.text)
        survivors = [i for i, r in enumerate(reasons) if r is None]
        choice = await self.reward_model.choose(
            [cand.text for cand in candidates], survivors, face=rt.name
        )
        if choice and choice.talk:  # survivors the reward model's talk head caught
            for i in choice.talk:
                reasons[i] = "assistant"
            survivors = [i for i in survivors if reasons[i] is None]
        # The reward model's choice; uniform among survivors without one.
        if choice:
            index, chance = choice.index, choice.chance
        elif survivors:
            index, chance = ctx.rng.choice(survivors), 1.0 / len(survivors)
        else:
            index, chance = -1, None
        ids = ctx.store.add_candidates(
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
                    predicted_reward=choice.predicted[i] if choice else None,
                    sampling={
                        "temperature": sampling.temperature,
                        "top_p": sampling.top_p,
                        "top_k": sampling.top_k,
                        # How the published one was chosen among the survivors: what the
                        # update corrects for (`choice_weight`).
                        **(
                            {"choice_chance": chance, "survivors": len(survivors)}
                            if i == index and chance is not None
                            else {}
                        ),
                    },
                )
                for i, cand in enumerate(candidates)
            ],
        )
        filtered: dict[str, int] = {}
        for post_id, reason in zip(ids, reasons, strict=True):
            if reason is not None:
                ctx.store.mark_filtered(post_id, reason=reason)
                ctx.metrics.posts_filtered.labels(rt.name, reason).inc()
                filtered[reason] = filtered.get(reason, 0) + 1
        if not survivors:
            log.warning("no candidate survived the filters", generated=len(ids), filtered=filtered)
            return "skipped"
        post_id, text = ids[index], candidates[index].text
        ctx.store.choose(post_id)
        if self.approvals.required:
            self.approvals.hold(rt, post_id)
            log.info(
                "post held for approval",
                generated=len(ids),
                filtered=filtered,
                chosen=post_id,
                waiting=len(self.approvals.waiting(rt.name)),
                generation_s=round(gen_s, 2),
                policy_version=version,
            )
            return "success"
        key = f"plaudit-{rt.name}-{post_id}-{uuid.uuid4().hex[:8]}"
        ctx.store.record_intent(post_id, idempotency_key=key)
        result = await self.publish(rt, post_id, text, key, log)
        if result.status == "kept":
            self._keep(rt, post_id, result)
        log.info(
            "post cycle",
            generated=len(ids),
            filtered=filtered,
            chosen=post_id,
            published=result.status == "published",
            selection=ctx.settings.reward_model.selection if choice else "uniform",
            **(
                {
                    "predicted": round(choice.predicted[index], 3),
                    "predicted_best": round(max(choice.predicted[i] for i in survivors), 3),
                    **({"chance": round(chance, 3)} if chance is not None else {}),
                }
                if choice
                else {}
            ),
            generation_s=round(gen_s, 2),
            total_s=round(time.monotonic() - t0, 2),
            policy_version=version,
        )
        return "success" if result.status == "published" else "error"

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self, rt: FaceRuntime, post_id: int, text: str, key: str, log: Any
    ) -> PublishResult:
        """Publish with retries; the same idempotency key makes every retry the same post."""
        ctx = self.ctx
        m = ctx.metrics
        # Whether the post may already exist: an earlier try (this cycle's or a kept intent's)
        # failed without an answer that says it was not made.
        uncertain = post_id in rt.maybe_made
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            t0 = time.monotonic()
            try:
                try:
                    published = await rt.face.publish(Draft(text=text), idempotency_key=key)
                finally:
                    m.rate_limit_wait_seconds.labels(rt.name).inc(rt.waited_since_last())
            except RateLimited as exc:
                wait = exc.retry_after if exc.retry_after is not None else 60.0
                m.face_errors.labels(rt.name, "publish", "rate_limited").inc()
                m.rate_limit_waits.labels(rt.name).inc()
                if wait > MAX_INLINE_WAIT or attempt == PUBLISH_ATTEMPTS:
                    rt.last_error = f"rate limited for {wait:.0f}s"
                    log.warning("publish rate limited; intent kept for a later cycle", wait_s=wait)
                    m.posts_failed.labels(rt.name, "rate_limited").inc()
                    return PublishResult("kept", retry_at=ctx.clock.now() + wait)
                m.rate_limit_wait_seconds.labels(rt.name).inc(wait)
                await ctx.clock.sleep(wait)
                continue
            except Transient as exc:
                uncertain = True
                rt.maybe_made.add(post_id)
                m.face_errors.labels(rt.name, "publish", "transient").inc()
                if attempt == PUBLISH_ATTEMPTS:
                    rt.last_error = str(exc)
                    log.warning(
                        "publish failed for now; intent kept for a later cycle", error=str(exc)
                    )
                    m.posts_failed.labels(rt.name, "transient").inc()
                    return PublishResult("kept")
                await ctx.clock.sleep(min(60.0, 2.0**attempt) * (0.5 + ctx.rng.random()))
                continue
            except FaceError as exc:
                reason = failure_reason(exc)
                m.face_errors.labels(rt.name, "publish", reason).inc()
                rt.last_error = str(exc)
                refused = isinstance(exc, (AuthFailed, Rejected))  # the post was not made
                if uncertain and not refused and rt.retries.get(post_id, 0) < KEPT_UNCERTAIN_TRIES:
                    # An unreadable answer after a try that may have made the post: failing it
                    # here would orphan a post the platform has. Ask again under the same key.
                    log.warning(
                        "publish answer unreadable after an unknown outcome; intent kept",
                        post_id=post_id,
                        error=str(exc),
                    )
                    m.posts_failed.labels(rt.name, reason).inc()
                    return PublishResult("kept")
                rt.maybe_made.discard(post_id)
                ctx.store.mark_failed(post_id, error=f"{type(exc).__name__}: {exc}")
                m.posts_failed.labels(rt.name, reason).inc()
                log.error("publish failed", post_id=post_id, reason=reason, error=str(exc))
                return PublishResult("failed")
            m.publish_duration.labels(rt.name).observe(time.monotonic() - t0)
            ctx.store.mark_published(
                post_id,
                ref=published.ref,
                url=published.url,
                published_at=published.published_at.timestamp(),
            )
            self.own_posts.add(text)
            rt.last_error = None
            rt.maybe_made.discard(post_id)
            m.posts_published.labels(rt.name).inc()
            m.last_post_timestamp.labels(rt.name).set(published.published_at.timestamp())
            return PublishResult("published")
        raise AssertionError("unreachable: the last attempt returns")
