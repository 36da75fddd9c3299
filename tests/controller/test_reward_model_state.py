"""The reward model's features and head are kept with each checkpoint, so a restart anchored
to the same reference does not read the history's features again; a damaged or foreign file
is passed over (a cache)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from loop_helpers import DAY, settings

import plaudit.learner
from plaudit.controller._reward_model import STATE_FILE
from plaudit.learner import RewardModelState


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many texts each `text_features` call read."""
    calls: list[int] = []
    real = plaudit.learner.text_features

    def counting(model: Any, tokenizer: Any, texts: Any, **kw: Any) -> torch.Tensor:
        calls.append(len(texts))
        return real(model, tokenizer, texts, **kw)

    monkeypatch.setattr(plaudit.learner, "text_features", counting)
    return calls


async def test_a_restart_keeps_the_features_and_reads_only_new_posts(
    make_loop: Any, counted: list[int]
) -> None:
    loop = make_loop(settings(learn_min_rewards=2))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    assert loop.store.latest_checkpoint() is not None
    state = RewardModelState.load(loop.state_dir / STATE_FILE)
    assert state.reference == "base" and state.head is not None
    assert len(state.keys) >= 40  # the 40 history posts and the rewarded ones

    restarted = loop.controller(seed=1)
    counted.clear()
    await restarted.start(schedule=False)
    assert restarted.reward_model.head is not None  # before any refit
    counts = await restarted.run_until(loop.clock.now() + DAY)
    assert counts["post"]["success"] >= 2
    # No refit read the 40 history posts again: only posts rewarded since the save and the
    # candidates to predict, a handful per call.
    assert counted and max(counted) < 40


async def test_a_damaged_state_file_is_passed_over(make_loop: Any, counted: list[int]) -> None:
    loop = make_loop(settings(learn_min_rewards=2))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    (loop.state_dir / STATE_FILE).write_bytes(b"not a torch file")
    restarted = loop.controller(seed=1)
    await restarted.start(schedule=False)
    assert restarted.reward_model.head is None
    counted.clear()
    await restarted.run_until(loop.clock.now() + DAY)
    assert max(counted) >= 40  # the history read again
