"""Every candidate teaches: a rewarded post's unpublished survivors join its update with the
reward model's stored predictions, relative to their cycle's mean, sharing a weight."""

from __future__ import annotations

import math
from typing import Any

import pytest
from loop_helpers import DAY, record_updates, settings

from plaudit.controller import OnlineConfig, RewardModelConfig
from plaudit.controller._learning import CHOICE_WEIGHT_MAX, choice_weight
from plaudit.state import PostStatus


async def test_a_rewarded_posts_cycle_teaches_with_group_relative_predictions(
    make_loop: Any,
) -> None:
    loop = make_loop(settings(learn_min_rewards=10_000))  # rewards arrive, no update runs
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 1.5 * DAY)
    rewarded = [loop.store.get_post(r.post_id) for r in loop.store.rewards(limit=100)]
    assert rewarded
    seen = 0
    for post in rewarded:
        cycle = loop.store.posts(cycle_id=post.cycle_id, limit=100)
        unpublished = [p for p in cycle if p.status is PostStatus.CANDIDATE]
        taught = ctl.learning.candidates(post, 0.5)
        assert [t.completion for t in taught] == [p.tokens for p in unpublished]
        if not taught:
            continue
        seen += 1
        group = [post.predicted_reward, *(p.predicted_reward for p in unpublished)]
        mean = sum(group) / len(group)
        for t, p in zip(taught, unpublished, strict=True):
            assert t.advantage == pytest.approx(p.predicted_reward - mean)
            assert t.behaviour_logprobs == p.logprobs and t.prompt == p.prompt_tokens
        assert math.isclose(sum(t.weight for t in taught), 0.5)
        # Filtered candidates never teach; without a weight nothing does.
        assert not {p.id for p in cycle if p.status is PostStatus.FILTERED} & {
            p.id for p in unpublished
        }
        assert ctl.learning.candidates(post, 0.0) == []
    assert seen


@pytest.mark.parametrize("weight", [0.0, 0.5])
async def test_updates_count_the_candidates_they_learned_from(
    make_loop: Any, weight: float
) -> None:
    base = settings(learn_min_rewards=2)
    loop = make_loop(
        base.model_copy(
            update={
                "online": OnlineConfig(lr=1e-3, epochs=1, max_kl=None, candidates_weight=weight),
            }
        )
    )
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    updates = [r for r in loop.store.runs(kind="online") if r.status == "completed"]
    assert updates
    taught = sum(r.config["candidates"] for r in updates)
    rewards = sum(r.config["rewards"] for r in updates)
    assert (taught > rewards) if weight else taught == 0  # 4 candidates a cycle: up to 3 each


async def test_replay_takes_the_newest_posts_trained_on_before(make_loop: Any) -> None:
    online = OnlineConfig(lr=1e-3, epochs=1, max_kl=None, replay_posts=2, early_rewards=False)
    loop = make_loop(settings(learn_min_rewards=2).model_copy(update={"online": online}))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 3 * DAY)
    updates = sorted(
        (r for r in loop.store.runs(kind="online") if r.status == "completed"), key=lambda r: r.id
    )
    assert len(updates) >= 3
    assert updates[0].config["replayed"] == 0  # nothing trained on before the first
    assert all(r.config["replayed"] == 2 for r in updates[1:])
    # Replayed posts are not rewards spent again: each reward is used by one update.
    used = [r for r in loop.store.rewards(limit=1000) if r.used_in_version is not None]
    assert sum(r.config["rewards"] for r in updates) == len(used)


async def test_the_candidates_share_follows_how_right_the_reward_model_has_been(
    make_loop: Any,
) -> None:
    base = settings()
    loop = make_loop(base.model_copy(update={"reward_model": RewardModelConfig(trust=True)}))
    ctl = loop.controller()
    share = ctl.learning.candidates_share
    assert share("mem") == 0.5  # not measured yet: the whole weight
    ctl.reward_model.correlation["mem"] = 0.6
    assert share("mem") == pytest.approx(0.3)
    ctl.reward_model.correlation["mem"] = -0.2
    assert share("mem") == 0.0  # a head that steers wrong teaches nothing
    loop.settings = base  # trust off (the default): the whole weight whatever the correlation
    ctl = loop.controller()
    ctl.reward_model.correlation["mem"] = -0.2
    assert ctl.learning.candidates_share("mem") == 0.5


async def test_a_head_whose_predictions_ran_against_the_rewards_does_not_choose(
    make_loop: Any,
) -> None:
    base = settings()
    greedy = RewardModelConfig(trust=True, selection="greedy")
    loop = make_loop(base.model_copy(update={"reward_model": greedy}))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    texts = [f"post number {i} about the weather and the sea" for i in range(6)]
    survivors = [0, 2, 3, 5]
    first = await ctl.reward_model.choose(texts, survivors, face="mem")
    assert first is not None
    best = max(survivors, key=lambda i: first.predicted[i])
    ctl.reward_model.correlation["mem"] = 0.4  # right more often than not: the head chooses
    for _ in range(5):
        choice = await ctl.reward_model.choose(texts, survivors, face="mem")
        assert choice is not None and choice.index == best
    ctl.reward_model.correlation["mem"] = -0.3  # wrong: it predicts, the choice is uniform
    chosen = set()
    for _ in range(40):
        choice = await ctl.reward_model.choose(texts, survivors, face="mem")
        assert choice is not None and choice.predicted == pytest.approx(first.predicted)
        chosen.add(choice.index)
    assert chosen == set(survivors)


@pytest.mark.parametrize("selection", ["thompson", "uniform"])
async def test_a_chosen_post_trains_weighted_by_the_inverse_of_its_chance(
    make_loop: Any, selection: str
) -> None:
    """The chance the choice rule gave the published post is stored with it, and the update
    weighs the post by 1 / (survivors x chance), truncated: a uniform choice weighs 1."""
    online = OnlineConfig(
        lr=1e-3, epochs=1, max_kl=None, candidates_weight=0.0, filtered_reward=None
    )
    loop = make_loop(
        settings(learn_min_rewards=2).model_copy(
            update={"online": online, "reward_model": RewardModelConfig(selection=selection)}
        )
    )
    ctl = loop.controller()
    batches = record_updates(ctl)
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    published = [p for p in loop.store.posts(limit=1000) if p.status is PostStatus.PUBLISHED]
    assert published and batches
    weights: dict[tuple[int, ...], float] = {}
    for post in published:
        cycle = loop.store.posts(cycle_id=post.cycle_id, limit=100)
        survivors = [p for p in cycle if p.status is not PostStatus.FILTERED]
        chance = post.sampling["choice_chance"]
        assert post.sampling["survivors"] == len(survivors)
        assert 0 < chance <= 1
        if selection == "uniform":
            assert chance == pytest.approx(1 / len(survivors))
        weights[tuple(post.tokens)] = min(CHOICE_WEIGHT_MAX, 1 / (len(survivors) * chance))
        assert choice_weight(post) == pytest.approx(weights[tuple(post.tokens)])
        # Unpublished candidates carry no chance: only the published post was chosen.
        assert all("choice_chance" not in p.sampling for p in cycle if p.id != post.id)
    trained = [t for batch in batches for t in batch]
    assert trained and all(t.weight == pytest.approx(weights[tuple(t.completion)]) for t in trained)
    means = [r.config["choice_weight_mean"] for r in loop.store.runs(kind="online")]
    assert means and all(0 < m <= CHOICE_WEIGHT_MAX for m in means)
    if selection == "thompson":  # the head's choice was not uniform
        assert any(abs(w - 1) > 0.05 for w in weights.values())
    else:
        assert all(w == pytest.approx(1.0) for w in weights.values()) and set(means) == {1.0}
