"""Posting prompts: two history examples each, a share of them from the most-liked posts."""

from __future__ import annotations

import random
import re

from plaudit.controller import instructions

HISTORY = [f"post number {i} about things" for i in range(100)]
SCORES = [float(i) for i in range(100)]  # post i scored i: the top 10% are 90..99


def examples(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"- post number (\d+)", text)]


def test_liked_share_one_shows_only_the_most_liked() -> None:
    out = instructions(history=HISTORY, n=50, max_chars=280, rng=random.Random(0),
                       scores=SCORES, liked_share=1.0)  # fmt: skip
    for text in out:
        a, b = examples(text)
        assert a != b
        assert a >= 90 and b >= 90


def test_liked_share_mixes_liked_and_random() -> None:
    out = instructions(history=HISTORY, n=400, max_chars=280, rng=random.Random(1),
                       scores=SCORES, liked_share=0.5)  # fmt: skip
    shown = [x for text in out for x in examples(text)]
    liked = sum(x >= 90 for x in shown) / len(shown)
    # half drawn from the top tenth, half at random (a tenth of which is top too): 0.55
    assert 0.48 < liked < 0.62


def test_without_scores_or_share_the_examples_are_random_as_before() -> None:
    plain = instructions(history=HISTORY, n=20, max_chars=280, rng=random.Random(2))
    no_share = instructions(history=HISTORY, n=20, max_chars=280, rng=random.Random(2),
                            scores=SCORES, liked_share=0.0)  # fmt: skip
    unscored = instructions(history=HISTORY, n=20, max_chars=280, rng=random.Random(2),
                            liked_share=1.0)  # fmt: skip
    assert plain == no_share == unscored
    shown = [x for text in plain for x in examples(text)]
    assert sum(x >= 90 for x in shown) < len(shown) / 2
