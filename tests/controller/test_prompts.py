"""Posting prompts: two history examples each, a share of them from the most-liked posts; the
instruction lists them, and they travel with it (a plain model's context)."""

from __future__ import annotations

import random
import re

from plaudit.controller import PostPrompt, post_prompts

HISTORY = [f"post number {i} about things" for i in range(100)]
SCORES = [float(i) for i in range(100)]  # post i scored i: the top 10% are 90..99


def examples(prompt: PostPrompt) -> list[int]:
    listed = [int(m) for m in re.findall(r"- post number (\d+)", prompt.instruction)]
    assert listed == [int(e.split()[2]) for e in prompt.examples]  # the same posts, in order
    return listed


def test_liked_share_one_shows_only_the_most_liked() -> None:
    out = post_prompts(history=HISTORY, n=50, max_chars=280, rng=random.Random(0),
                       scores=SCORES, liked_share=1.0)  # fmt: skip
    for prompt in out:
        a, b = examples(prompt)
        assert a != b
        assert a >= 90 and b >= 90


def test_liked_share_mixes_liked_and_random() -> None:
    out = post_prompts(history=HISTORY, n=400, max_chars=280, rng=random.Random(1),
                       scores=SCORES, liked_share=0.5)  # fmt: skip
    shown = [x for prompt in out for x in examples(prompt)]
    liked = sum(x >= 90 for x in shown) / len(shown)
    # half drawn from the top tenth, half at random (a tenth of which is top too): 0.55
    assert 0.48 < liked < 0.62


def test_without_scores_or_share_the_examples_are_random_as_before() -> None:
    plain = post_prompts(history=HISTORY, n=20, max_chars=280, rng=random.Random(2))
    no_share = post_prompts(history=HISTORY, n=20, max_chars=280, rng=random.Random(2),
                            scores=SCORES, liked_share=0.0)  # fmt: skip
    unscored = post_prompts(history=HISTORY, n=20, max_chars=280, rng=random.Random(2),
                            liked_share=1.0)  # fmt: skip
    assert plain == no_share == unscored
    shown = [x for prompt in plain for x in examples(prompt)]
    assert sum(x >= 90 for x in shown) < len(shown) / 2


def test_a_history_of_one_post_asks_without_examples() -> None:
    (prompt,) = post_prompts(history=["only one"], n=1, max_chars=280, rng=random.Random(0))
    assert prompt.examples == () and "only one" not in prompt.instruction
