"""The reward model's talk head: fitted on the labelled candidates shipped with plaudit and the
faces' history, it filters the survivors it scores above the threshold ("assistant") before
the choice."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from loop_helpers import DAY, settings

import plaudit.controller._reward_model as reward_model
from plaudit.controller import (
    TALK_EXAMPLES,
    TALK_THRESHOLD,
    RewardModelConfig,
    fit_talk_head,
    talk_examples,
)
from plaudit.state import PostStatus


def test_the_shipped_labels_hold_both_kinds() -> None:
    texts, labels = talk_examples()
    assert len(texts) == len(labels) == 500
    assert set(labels) == {0.0, 1.0} and all(t.strip() for t in texts)


def test_a_damaged_label_file_names_its_line(tmp_path: Any) -> None:
    bad = tmp_path / "labels.jsonl"
    bad.write_text(TALK_EXAMPLES.read_text(encoding="utf-8").splitlines()[0] + '\n{"text": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        talk_examples(bad)


def test_the_head_separates_talk_from_posts_along_its_features() -> None:
    g = torch.Generator().manual_seed(0)
    talk, posts, history = (torch.randn(n, 16, generator=g) for n in (60, 60, 200))
    talk[:, 0] += 3.0  # talk stands out along one feature
    head = fit_talk_head(torch.cat([talk, posts]), [1.0] * 60 + [0.0] * 60, history)
    fresh_talk, fresh_posts = torch.randn(100, 16, generator=g), torch.randn(100, 16, generator=g)
    fresh_talk[:, 0] += 3.0
    caught = [v > TALK_THRESHOLD for v in head.predict(fresh_talk).mean]
    dropped = [v > TALK_THRESHOLD for v in head.predict(fresh_posts).mean]
    assert sum(caught) >= 80 and sum(dropped) <= 10


@pytest.mark.parametrize("threshold", [float("-inf"), float("inf")])
async def test_survivors_the_head_catches_are_filtered_before_the_choice(
    make_loop: Any, monkeypatch: pytest.MonkeyPatch, threshold: float
) -> None:
    monkeypatch.setattr(reward_model, "TALK_THRESHOLD", threshold)
    loop = make_loop(settings(learn_min_rewards=10_000))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + DAY)
    assert ctl.reward_model.talk is not None
    posts = loop.store.posts(limit=1000)
    assert posts
    talk = [p for p in posts if p.status is PostStatus.FILTERED and p.filter_reason == "assistant"]
    published = [p for p in posts if p.status is PostStatus.PUBLISHED]
    if threshold < 0:  # every survivor talks: nothing is published
        assert talk and not published
    else:
        assert published and all(p.predicted_reward is not None for p in posts)


async def test_without_the_talk_filter_no_head_is_fitted(make_loop: Any) -> None:
    loop = make_loop(settings())
    loop.settings = loop.settings.model_copy(
        update={"reward_model": RewardModelConfig(talk_filter=False)}
    )
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + DAY)
    assert ctl.reward_model.head is not None and ctl.reward_model.talk is None


async def test_the_talk_head_is_fitted_again_only_when_its_inputs_change(
    make_loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its inputs (the labelled candidates, the faces' history, the reference's features) do
    # not change with rewards: refits as rewards arrive fit the reward head alone.
    fits: list[int] = []
    real = reward_model.fit_talk_head

    def counting(labelled: Any, labels: Any, history: Any) -> Any:
        fits.append(len(history))
        return real(labelled, labels, history)

    monkeypatch.setattr(reward_model, "fit_talk_head", counting)
    loop = make_loop(settings(learn_min_rewards=10_000))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    rm = ctl.reward_model
    assert rm.head is not None and rm.talk is not None
    assert rm.head.n_own >= 2 and len(fits) == 1  # refitted with rewards; the talk head once
    talk = rm.talk
    ctl.ctx.policy.reset_reference()  # as an offline fit does: other features
    await rm.refit()
    assert len(fits) == 2 and rm.talk is not talk
