"""Prompts for candidates. Diversity is the point: each prompt shows a different pair of real
posts from the face's history, so that rarely-liked but real behaviours get tried at all."""

from __future__ import annotations

import random
from collections.abc import Sequence

SYSTEM = "You write short, original social media posts."
INSTRUCTION = (
    "Here are two posts from this community:\n\n{examples}\n\nWrite one new post in the same "
    "style (under {max_chars} characters). Do not copy them. Reply with the post only."
)
TOPICLESS = (
    "Write one short, original social media post (under {max_chars} characters). "
    "Reply with the post only."
)


def instructions(
    *, history: Sequence[str], n: int, max_chars: int, rng: random.Random
) -> list[str]:
    """``n`` instructions, each showing two history posts drawn without replacement."""
    if len(history) < 2:
        return [TOPICLESS.format(max_chars=max_chars)] * n
    out = []
    for _ in range(n):
        a, b = rng.sample(list(history), 2)
        examples = f"- {a.strip()}\n- {b.strip()}"
        out.append(INSTRUCTION.format(examples=examples, max_chars=max_chars))
    return out
