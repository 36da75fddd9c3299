"""The post cycle runs the KL reference over its candidates once, while online learning runs,
so the updates that measure their drift on them and train on them later skip its forward."""

from __future__ import annotations

import time
from typing import Any

from loop_helpers import DAY, settings

from plaudit.learner._reference_cache import post_key
from plaudit.state import TrainingMode, TrainingState


async def test_post_cycles_remember_the_reference_and_updates_use_it(make_loop: Any) -> None:
    loop = make_loop(settings(learn_min_rewards=2))
    control = loop.store.control()
    assert control.training is TrainingState.RUNNING and control.mode is TrainingMode.ONLINE
    cache = loop.policy.reference_cache
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    await ctl.stop(deadline=time.monotonic() + 30)
    sampled = [p for p in loop.store.posts(limit=10_000) if p.tokens]
    updates = [r for r in loop.store.runs(kind="online", limit=1000) if r.status == "completed"]
    assert sampled and updates
    assert all(cache.get(post_key(p.prompt_tokens, p.tokens)) is not None for p in sampled)
    # Each post missed the cache once, when its cycle remembered it: the updates that measured
    # or trained on posts found every one there.
    assert cache.misses == len(sampled) and cache.hits > 0


async def test_without_online_learning_the_post_cycle_leaves_the_reference_alone(
    make_loop: Any,
) -> None:
    loop = make_loop(settings())
    loop.store.set_control(training=TrainingState.PAUSED)
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + DAY)
    await ctl.stop(deadline=time.monotonic() + 30)
    assert any(p.tokens for p in loop.store.posts(limit=10_000))
    assert len(loop.policy.reference_cache) == 0
