"""Candidate filters and reward normalisation."""

from __future__ import annotations

import pytest

from plaudit.controller._filters import FilterConfig, NoveltyIndex, reject_reason
from plaudit.controller._rewards import normalise


def reason(
    text: str,
    *,
    own: list[str] = (),
    training: list[str] = (),
    batch: list[str] = (),
    max_length: int = 280,
) -> str | None:
    own_idx, train_idx = NoveltyIndex(n=6), NoveltyIndex(n=6)
    own_idx.extend(own)
    train_idx.extend(training)
    return reject_reason(
        text,
        config=FilterConfig(blocklist=("badword",)),
        max_length=max_length,
        measure=len,
        own_posts=own_idx,
        training_posts=train_idx,
        batch_seen=batch,
    )


def test_each_reason() -> None:
    assert reason("   ") == "empty"
    assert reason("too short") == "too_short"
    assert reason("a perfectly fine post " * 20, max_length=100) == "too_long"
    assert reason("this post contains a BadWord somewhere") == "blocklist"
    assert reason("Hello there, lovely people!", own=["hello there lovely people"]) == "duplicate"
    assert reason("Hello there, lovely people!", batch=["Hello there lovely people"]) == "duplicate"
    copied = "the quick brown fox jumps over the lazy dog"
    assert reason(f"Wow: {copied} today", training=[copied]) == "novelty"
    assert reason("A brand new sentence about sunny mornings") is None


def test_novelty_needs_a_long_shared_run() -> None:
    # Five shared words is style; six is a copy.
    assert reason("I love the quick brown fox so much", training=["the quick brown fox so"]) is None
    assert (
        reason("I love the quick brown fox so much", training=["love the quick brown fox so"])
        == "novelty"
    )


def test_normalise_is_a_clipped_z_score_with_early_shrinkage() -> None:
    assert normalise(5.0, []) == 0.0
    assert normalise(5.0, [1.0]) == 0.0
    history = [0.01, 0.02, 0.03, 0.02, 0.01]
    assert normalise(0.05, history) > 1.0
    assert normalise(0.0, history) < 0
    assert normalise(100.0, history) == 3.0
    # Near-identical early scores: the spread floor keeps the reward small.
    assert abs(normalise(1.001, [1.0, 1.0, 1.0])) < 0.05
    assert normalise(3.0, [1.0, 2.0]) == pytest.approx((3.0 - 1.5) / 0.7071067811865476)
    with pytest.raises(ValueError, match="finite"):
        normalise(float("nan"), history)
