"""A small synthetic corpus for the offline-training tests (imported by name: every test
folder has its own conftest.py, so `from conftest import ...` is ambiguous)."""

from __future__ import annotations

import random

WORDS = [
    "the",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "ran",
    "fast",
    "slow",
    "big",
    "red",
    "blue",
    "happy",
    "sad",
    "day",
    "night",
    "sun",
    "moon",
    "love",
    "this",
    "great",
    "awful",
    "so",
    "very",
    "not",
    "really",
    "what",
    "a",
    "time",
    "to",
    "be",
    "alive",
]


def make_posts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]
