"""The reward model's examples: the bot's rewarded posts, then each face's history posts with
targets judged as rewards are (each score against the scores around it)."""

from __future__ import annotations

from typing import Any

import pytest
from loop_helpers import DAY, settings

import plaudit.controller._reward_model as reward_model
from plaudit.controller._rewards import SCORE_WINDOW, normalise


async def test_history_targets_are_worked_out_once_per_history(
    make_loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    real = reward_model.normalise

    def counting(score: float, history: Any) -> float:
        calls.append(score)
        return real(score, history)

    monkeypatch.setattr(reward_model, "normalise", counting)
    loop = make_loop(settings(learn_min_rewards=10_000))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    rm = ctl.reward_model
    (_face, rt), *_ = ctl.ctx.faces.items()
    scores = rt.history_scores
    assert rm.head is not None and rm.head.n_own >= 2  # refitted as rewards arrived
    assert len(calls) == len(scores) > 2  # but the history's targets worked out once

    texts, targets, _weights, n_own = rm._examples()
    expected = [
        normalise(s, scores[max(0, i - SCORE_WINDOW) : i] + scores[i + 1 : i + SCORE_WINDOW])
        for i, s in enumerate(scores)
    ]
    assert targets[n_own:] == expected and texts[n_own:] == rt.history

    rt.history_scores = [s * 2.0 + 1.0 for s in scores]  # a history read again: new scores
    calls.clear()
    _texts, again, _weights, n_own = rm._examples()
    assert len(calls) == len(scores) and again[n_own:] != expected
