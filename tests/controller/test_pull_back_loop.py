"""The loop with a policy over its drift budget (as when a new probe of recent candidates sees
drift the last one missed): the next update pulls it back inside, and that is a new policy
version with its checkpoint and its run's figures."""

from __future__ import annotations

import time
from typing import Any

import torch
from loop_helpers import DAY, settings

from plaudit.controller import OnlineConfig


async def test_an_update_that_finds_the_policy_over_the_budget_pulls_it_back(
    make_loop: Any,
) -> None:
    base = settings(learn_min_rewards=2)
    online = OnlineConfig(lr=1e-4, epochs=1, max_kl=2.0, kl_coef=0.0)
    loop = make_loop(base.model_copy(update={"online": online}))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # far from the reference, which stays where it was
        for p in loop.policy.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.07)
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    await ctl.stop(deadline=time.monotonic() + 30)
    runs = [r for r in loop.store.runs(kind="online", limit=1000) if r.status == "completed"]
    first = min(runs, key=lambda r: r.id)
    budget = online.max_kl - base.selection_kl()  # type: ignore[operator]
    assert first.metrics["kl_per_post_before"] > budget >= first.metrics["kl_per_post"]
    assert first.metrics["pulled_back"] < 1.0
    assert all(r.metrics["kl_per_post"] <= budget for r in runs)
    ckpt = loop.store.latest_checkpoint()
    assert ckpt is not None and ckpt.policy_version == loop.policy.version
