"""What must never be published teaches: candidates filtered for what they say (assistant talk,
copies, blocklisted words) join the next update with `online.filtered_reward` against the
baseline, weighing 1 / (their cycle's survivors), each once; length and finish do not teach."""

from __future__ import annotations

from typing import Any

import pytest
from loop_helpers import DAY, record_updates, settings

from plaudit.controller import TRAJECTORY_KINDS, OnlineConfig
from plaudit.controller._learning import FILTERED_TAUGHT, TAUGHT_REASONS
from plaudit.state import Post, PostStatus, Store


def mark(store: Store, cycles: int, reasons: tuple[str, ...] = TAUGHT_REASONS) -> list[Post]:
    """Mark one unpublished candidate of each of the newest ``cycles`` cycles that have one as
    filtered (as the filters do at posting time), taking ``reasons`` in turn; newest first."""
    marked: list[Post] = []
    seen: set[str | None] = set()
    for post in store.posts(status=PostStatus.CANDIDATE, limit=1000):
        if post.cycle_id in seen or len(marked) == cycles:
            continue
        seen.add(post.cycle_id)
        store.mark_filtered(post.id, reason=reasons[len(marked) % len(reasons)])
        marked.append(post)
    assert len(marked) == cycles
    return marked


def survivors(store: Store, post: Post) -> int:
    cycle = store.posts(cycle_id=post.cycle_id, limit=100)
    return sum(p.status is not PostStatus.FILTERED for p in cycle)


async def test_filtered_candidates_teach_with_the_filtered_reward_once(make_loop: Any) -> None:
    loop = make_loop(settings(learn_min_rewards=10_000))  # candidates pile up, no update runs
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 1.5 * DAY)
    store = loop.store
    untaught = mark(store, 2, reasons=("too_short", "unfinished"))
    marked = mark(store, 3)
    taught, through = ctl.learning.filtered(-2.0, 0.25, limit=10)
    mine = {p.id for p in marked}
    ids = [p.id for p in store.posts(status=PostStatus.FILTERED, limit=1000)]
    assert through == max(i for i in ids if store.get_post(i).filter_reason in TAUGHT_REASONS)
    by_tokens = {tuple(t.completion): t for t in taught}
    for post in marked:
        t = by_tokens[tuple(post.tokens)]
        assert t.advantage == pytest.approx(-2.25)
        assert t.weight == pytest.approx(1 / max(1, survivors(store, post)))
        assert t.behaviour_logprobs == post.logprobs and t.prompt == post.prompt_tokens
    assert through is not None and mine <= set(range(through + 1))
    assert not {tuple(p.tokens) for p in untaught} & set(by_tokens)
    # The newest first; none after the stored mark; none without a filtered reward.
    newest, _ = ctl.learning.filtered(-2.0, 0.0, limit=1)
    assert len(newest) == 1 and newest[0].advantage == pytest.approx(-2.0)
    store.set_value(FILTERED_TAUGHT, str(through))
    assert ctl.learning.filtered(-2.0, 0.0, limit=10) == ([], None)
    store.set_value(FILTERED_TAUGHT, "0")
    assert ctl.learning.filtered(None, 0.0, limit=10) == ([], None)


@pytest.mark.parametrize("filtered_reward", [-2.0, None])
async def test_an_update_takes_the_candidates_filtered_since_the_last(
    make_loop: Any, filtered_reward: float | None
) -> None:
    online = OnlineConfig(lr=1e-3, epochs=1, max_kl=None, filtered_reward=filtered_reward)
    loop = make_loop(settings(learn_min_rewards=2).model_copy(update={"online": online}))
    ctl = loop.controller()
    batches = record_updates(ctl)
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 1.5 * DAY)
    store = loop.store
    before = len(batches)
    assert before  # updates ran
    marked = mark(store, 2)
    await ctl.run_until(loop.clock.now() + DAY)
    updates = sorted(
        (r for r in store.runs(kind="online") if r.status == "completed"), key=lambda r: r.id
    )
    trained = [tuple(t.completion) for batch in batches[before:] for t in batch]
    talked = sum(r.config["filtered"] for r in updates)
    # The trajectories counter says what every completed update trained on.
    counted = loop.metrics.registry.get_sample_value
    total = {k: counted("plaudit_online_trajectories_total", {"kind": k}) for k in TRAJECTORY_KINDS}
    assert total["filtered"] == talked
    assert total["reward"] + total["correction"] == sum(r.config["rewards"] for r in updates)
    assert total["candidate"] == sum(r.config["candidates"] for r in updates)
    assert sum(total.values()) == sum(len(b) for b in batches)
    if filtered_reward is None:
        assert talked == 0 and store.get_value(FILTERED_TAUGHT) is None
        assert not {tuple(p.tokens) for p in marked} & set(trained)
        return
    # Each marked candidate trained once, in the first update after it was filtered.
    for post in marked:
        assert trained.count(tuple(post.tokens)) == 1
    assert talked >= len(marked)
    assert int(store.get_value(FILTERED_TAUGHT) or 0) >= max(p.id for p in marked)
