"""The approval queue on the simulated clock: held posts wait for a human, approved ones
publish at once (one per interval), edits publish the human's words and never train the
policy, rejections get their documented reward and train it, and nobody's decision expires."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from loop_helpers import DAY, HOUR, settings

from plaudit.controller import ApprovalConfig, ApprovalRefused, LoopSettings
from plaudit.state import Approval, PostStatus, RewardSource


def approval_settings(**approval: Any) -> LoopSettings:
    base = settings(learn_min_rewards=1)
    return base.model_copy(update={"approval": ApprovalConfig(required=True, **approval)})


async def started(make_loop: Any, **approval: Any) -> Any:
    loop = make_loop(approval_settings(**approval))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    return loop, ctl


def waiting(loop: Any) -> list[Any]:
    return loop.store.queue(face="mem", status=PostStatus.AWAITING)


async def test_posts_wait_for_a_decision_and_the_queue_is_bounded(make_loop: Any) -> None:
    loop, ctl = await started(make_loop, max_waiting=2, expire_after=timedelta(days=3))
    start = loop.clock.now()
    counts = await ctl.run_until(start + DAY)
    # Nothing publishes without a human; the queue holds max_waiting posts, then the post job
    # defers (it still runs at each interval, for expiries).
    assert loop.published() == [] and loop.face.publish_calls == []
    held = waiting(loop)
    assert len(held) == 2
    assert all(p.held_at is not None and p.approval is None for p in held)
    assert counts["post"]["skipped"] >= 3
    assert loop.metrics.approval_waiting.labels("mem")._value.get() == 2


async def test_approve_publishes_now_and_an_edit_publishes_the_human_words(
    make_loop: Any,
) -> None:
    loop, ctl = await started(make_loop, max_waiting=3)
    start = loop.clock.now()
    await ctl.run_until(start + 9 * HOUR)  # three post jobs: three held posts
    first, second, _third = waiting(loop)
    decided_at = loop.clock.now()
    ctl.approve(first.id)
    ctl.approve(second.id, text="  A human wrote this one instead.  ")
    # The approval made the face's post job due now: the first approved post goes out at once,
    # the second one post interval later (never two at once).
    await ctl.run_until(decided_at + 60)
    out = loop.published()
    assert [p.id for p in out] == [first.id]
    assert out[0].approval is Approval.APPROVED and out[0].text == first.text
    assert loop.face.publish_calls[0][1] == pytest.approx(decided_at)
    await ctl.run_until(decided_at + 5 * HOUR)
    edited = loop.store.get_post(second.id)
    assert edited.status is PostStatus.PUBLISHED and edited.approval is Approval.EDITED
    assert edited.text == "A human wrote this one instead."
    assert edited.original_text == second.text and edited.edited
    gap = loop.face.publish_calls[1][1] - loop.face.publish_calls[0][1]
    assert gap >= 4 * HOUR - 20 * 60 - 1
    assert "A human wrote this one instead." in {p.text for p in loop.face.posts()}
    decisions = loop.metrics.approval_decisions
    assert decisions.labels("mem", "approved")._value.get() == 1
    assert decisions.labels("mem", "edited")._value.get() == 1


async def test_rejections_train_the_policy_and_edits_only_the_reward_model(
    make_loop: Any,
) -> None:
    loop, ctl = await started(make_loop, max_waiting=3, rejected_reward=-2.5)
    start = loop.clock.now()
    await ctl.run_until(start + 9 * HOUR)
    a, b, c = waiting(loop)
    ctl.reward_model.stale = False
    ctl.reject(a.id)
    assert ctl.reward_model.stale  # the rejection is a reward: the head is refit first
    ctl.approve(b.id, text="An edited post the policy never sampled.")
    ctl.approve(c.id)
    version = loop.policy.version
    # Both approved posts publish, get their reactions (24 h) and are learned from.
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    rejected = loop.store.get_post(a.id)
    assert rejected.status is PostStatus.REJECTED and rejected.published_at is None
    (reward,) = loop.store.rewards(source=RewardSource.REJECTED)
    assert (reward.post_id, reward.reward) == (a.id, -2.5)
    # A rejection has no score: the face's score history (what rewards are z-scored against)
    # holds the audience's scores only.
    audience = loop.store.rewards(source=RewardSource.REACTIONS, limit=100)
    assert len(loop.store.scores("mem")) == len(audience) >= 2
    # Every reward was spent by an update; the policy trained on the rejection and the
    # sampled post, never on the edit.
    assert loop.store.rewards(unused_only=True) == []
    assert loop.policy.version > version
    runs = [r for r in loop.store.runs(kind="online") if r.status == "completed"]
    trained = sum(r.config["rewards"] for r in runs)
    all_rewards = loop.store.rewards(limit=100)
    assert b.id in {r.post_id for r in all_rewards}
    assert trained == len(all_rewards) - 1  # the edited post's reward: reward model only
    # The reward model fits on all three: the rejection with its reward, the edit's text.
    ctl.reward_model.stale = True
    texts, targets, _weights, n_own = ctl.reward_model._examples()
    own = dict(zip(texts[:n_own], targets[:n_own], strict=True))
    assert own[loop.store.get_post(a.id).text] == -2.5
    assert "An edited post the policy never sampled." in own
    assert loop.metrics.approval_decisions.labels("mem", "rejected")._value.get() == 1


async def test_undecided_posts_expire_or_publish_as_configured(make_loop: Any) -> None:
    loop, ctl = await started(make_loop, max_waiting=1, expire_after=timedelta(hours=6))
    start = loop.clock.now()
    await ctl.run_until(start + 1)
    (held,) = waiting(loop)
    # The post job wakes at the deadline (before its next interval would let it).
    await ctl.run_until(held.held_at + 6 * HOUR + 1)
    dropped = loop.store.get_post(held.id)
    assert dropped.status is PostStatus.EXPIRED and dropped.approval is Approval.EXPIRED
    assert loop.store.rewards(limit=10) == []  # silence is no judgement: no reward
    assert loop.metrics.approval_decisions.labels("mem", "expired")._value.get() == 1
    # Deciding on it now is refused with what became of it.
    with pytest.raises(ApprovalRefused, match="expired") as refused:
        ctl.approve(dropped.id)
    assert refused.value.conflict

    loop2 = make_loop(approval_settings(max_waiting=1, expire_after="6h", on_expiry="publish"))
    ctl2 = loop2.controller()
    await ctl2.start(schedule=False)
    await ctl2.run_until(loop2.clock.now() + 6 * HOUR + 1)
    (out,) = loop2.published()
    assert out.approval is Approval.EXPIRED and out.original_text is None


async def test_decisions_that_cannot_be_taken_are_refused_clearly(make_loop: Any) -> None:
    loop, ctl = await started(make_loop, max_waiting=1)
    await ctl.run_until(loop.clock.now() + 1)
    (held,) = waiting(loop)
    with pytest.raises(ApprovalRefused, match="there is no post 9999") as e:
        ctl.approve(9999)
    assert not e.value.conflict
    with pytest.raises(ApprovalRefused, match="empty; reject the post instead"):
        ctl.approve(held.id, text="   ")
    limit = loop.face.limits.max_length
    with pytest.raises(ApprovalRefused, match=f"takes at most {limit}; shorten it"):
        ctl.approve(held.id, text="x" * (limit + 1))
    assert waiting(loop) == [held]  # a refused decision changes nothing
    ctl.reject(held.id)
    with pytest.raises(ApprovalRefused, match="rejected") as e:
        ctl.reject(held.id)
    assert e.value.conflict


async def test_the_queue_survives_a_restart(make_loop: Any) -> None:
    loop, ctl = await started(make_loop, max_waiting=2)
    await ctl.run_until(loop.clock.now() + 5 * HOUR)
    first, second = waiting(loop)
    ctl.approve(first.id)
    # A restart before the approved post went out: the new controller publishes it at once and
    # keeps the other one waiting.
    ctl2 = loop.controller(seed=1)
    await ctl2.start(schedule=False)
    assert ctl2.due()["post:mem"] == pytest.approx(loop.clock.now())
    await ctl2.run_until(loop.clock.now() + 60)
    assert [p.id for p in loop.published()] == [first.id]
    assert [p.id for p in waiting(loop)] == [second.id]


async def test_without_approval_nothing_is_held_and_no_gauge_is_exported(make_loop: Any) -> None:
    loop = make_loop()
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 9 * HOUR)
    assert len(loop.published()) >= 2 and waiting(loop) == []
    assert "plaudit_approval_waiting{" not in loop.metrics.render().decode()
