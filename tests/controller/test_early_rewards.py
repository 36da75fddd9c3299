"""Early rewards: the final score estimated from the early horizon's trains the policy hours
sooner, and the final reward corrects it."""

from __future__ import annotations

from typing import Any

import pytest
from loop_helpers import DAY, settings

from plaudit.controller import OnlineConfig
from plaudit.controller._early import AFFINE_MIN, MIN_PAIRS, fit_line
from plaudit.state import NewCandidate, Store


def test_the_line_waits_for_pairs_then_scales_then_gets_an_intercept() -> None:
    proportional = [(float(x), 3.0 * x) for x in range(1, MIN_PAIRS + 1)]
    assert fit_line(proportional[:-1]) is None
    assert fit_line(proportional) == pytest.approx((0.0, 3.0))
    assert fit_line([(0.0, 1.0)] * MIN_PAIRS) is None  # nothing to scale
    affine = [(float(x), 2.0 + 0.5 * x) for x in range(AFFINE_MIN)]
    assert fit_line(affine) == pytest.approx((2.0, 0.5))
    # below AFFINE_MIN the same data is fitted through the origin
    intercept, slope = fit_line(affine[: AFFINE_MIN - 1]) or (None, None)
    assert intercept == 0.0 and slope is not None and slope > 0.5


def test_the_store_keeps_one_early_score_and_returns_only_the_unanswered(tmp_path: Any) -> None:
    with Store.open(tmp_path) as store:
        a, b = store.add_candidates(
            face="f", cycle_id="c", candidates=[NewCandidate(text="a"), NewCandidate(text="b")]
        )
        for pid in (a, b):
            store.add_early_score(
                post_id=pid, face="f", horizon_s=6.0, observed=0.1, estimate=0.3, reward=1.0
            )
        store.add_early_score(
            post_id=a, face="f", horizon_s=6.0, observed=9.0, estimate=9.0, reward=3.0
        )
        assert store.early_score(a).observed == 0.1  # type: ignore[union-attr]
        assert {e.post_id for e in store.early_rewards()} == {a, b}
        store.add_reward(post_id=b, face="f", score=0.5, reward=1.5)
        assert [e.post_id for e in store.early_rewards()] == [a]  # b's final came first
        assert store.early_pairs("f", horizon_s=6.0) == [(0.1, 0.5)]
        store.mark_early_used([a], policy_version=3)
        assert store.early_rewards() == []
        assert store.release_rewards_after(2) == 1  # a restore past version 3 returns it
        assert [e.post_id for e in store.early_rewards()] == [a]


async def test_posts_train_on_their_early_reward_then_on_the_correction(make_loop: Any) -> None:
    loop = make_loop(settings(learn_min_rewards=1))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 5 * DAY)
    store = loop.store
    published = loop.published()
    early = [store.early_score(p.id) for p in published]
    observed = [e for e in early if e is not None]
    # Every published post 6 h old has its early score; the first ones wait for an estimator.
    assert len(observed) >= len(published) - 2
    estimated = [e for e in observed if e.reward is not None]
    assert estimated and len(observed) - len(estimated) >= MIN_PAIRS
    updates = [r for r in store.runs(kind="online") if r.status == "completed"]
    assert sum(r.config["early"] for r in updates) == sum(
        1 for e in estimated if e.used_in_version is not None
    )
    # A post whose early reward trained, then got its final reward, trained on the difference.
    corrected = [
        e for e in estimated if e.used_in_version is not None and store_final(store, e.post_id)
    ]
    assert corrected and sum(r.config["corrections"] for r in updates) == len(corrected)
    # The learn job runs every 30 minutes: each early reward trained before its final came.
    assert all(e.used_in_version is not None for e in estimated if store_final(store, e.post_id))


def store_final(store: Store, post_id: int) -> bool:
    return any(r.post_id == post_id and r.used_in_version is not None for r in store.rewards())


async def test_off_the_final_reward_trains_alone(make_loop: Any) -> None:
    base = settings(learn_min_rewards=1)
    online = OnlineConfig(lr=1e-3, epochs=1, max_kl=None, early_rewards=False)
    loop = make_loop(base.model_copy(update={"online": online}))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 3 * DAY)
    updates = [r for r in loop.store.runs(kind="online") if r.status == "completed"]
    assert updates and all(r.config["early"] == r.config["corrections"] == 0 for r in updates)
    assert all(loop.store.early_score(p.id) is None for p in loop.published())


async def test_turned_off_the_early_rewards_left_wait_for_their_final(make_loop: Any) -> None:
    loop = make_loop(settings(learn_min_rewards=1_000))  # early scores arrive, nothing trains
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 3 * DAY)
    assert loop.store.early_rewards()
    online = OnlineConfig(lr=1e-3, epochs=1, max_kl=None, early_rewards=False)
    loop.settings = settings(learn_min_rewards=1).model_copy(update={"online": online})
    restarted = loop.controller(seed=1)
    await restarted.start(schedule=False)
    await restarted.run_until(loop.clock.now() + DAY)
    updates = [r for r in loop.store.runs(kind="online") if r.status == "completed"]
    assert updates and sum(r.config["early"] for r in updates) == 0
