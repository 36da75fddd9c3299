"""Filters between generation and publishing. Each drop has one reason from a small fixed set
(they label a metric): a post that reads like a copy of the training data or of the bot's own
posts is never published."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

REASONS = (
    "empty",
    "unfinished",
    "too_short",
    "too_long",
    "blocklist",
    "duplicate",
    "novelty",
    "assistant",
)
_WORD = re.compile(r"\w+", re.UNICODE)

# Phrases of a chat assistant or of the posting instruction, not of a post (case-insensitive).
ASSISTANT = re.compile(
    "|".join(
        [
            r"\bhere (?:is|are|'s)\b",
            r"\bi'?d be happy\b",
            r"\bas an ai\b",
            r"^\W*sure\b",
            r"\bnew post\b",
            r"\bsocial media post\b",
            r"\bin the same style\b",
            r"\bthis community\b",
            r"\bdo not copy\b",
            r"\breply with the post\b",
            r"\bunder \d+ characters\b",
        ]
    ),
    re.IGNORECASE,
)
ECHO_WORDS = 6  # a candidate that repeats this many consecutive words of its prompt echoes it


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    return " ".join(_words(text))


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 12
    blocklist: tuple[str, ...] = ()
    # A candidate sharing any run of this many words with a known post is a copy.
    novelty_ngram: int = 6


class NoveltyIndex:
    """Word n-grams of every post the bot must not copy (training history and its own posts)."""

    def __init__(self, *, n: int) -> None:
        self.n = n
        self._grams: set[int] = set()
        self._exact: set[str] = set()

    def _ngrams(self, text: str) -> Iterable[int]:
        words = _words(text)
        return (hash(tuple(words[i : i + self.n])) for i in range(len(words) - self.n + 1))

    def add(self, text: str) -> None:
        self._exact.add(normalise(text))
        self._grams.update(self._ngrams(text))

    def extend(self, texts: Iterable[str]) -> None:
        for t in texts:
            self.add(t)

    def is_duplicate(self, text: str) -> bool:
        return normalise(text) in self._exact

    def copies(self, text: str) -> bool:
        return any(g in self._grams for g in self._ngrams(text))

    def __len__(self) -> int:
        return len(self._exact)


def reject_reason(
    text: str,
    *,
    finished: bool = True,
    config: FilterConfig,
    max_length: int,
    measure: Callable[[str], int],
    own_posts: NoveltyIndex,
    training_posts: NoveltyIndex,
    batch_seen: Sequence[str] = (),
    prompt: str = "",
) -> str | None:
    """The reason to drop ``text``, or None to keep it. ``finished``: the model ended the post
    itself (its end token within the budget), or it ran out of tokens and was cut after its
    last complete sentence; a post that stops mid-sentence is never published. ``prompt``:
    the prompt the candidate answered (a candidate that echoes it is assistant talk)."""
    if not text.strip():
        return "empty"
    if not finished:
        return "unfinished"
    if len(text.strip()) < config.min_chars:
        return "too_short"
    if measure(text) > max_length:
        return "too_long"
    lowered = text.lower()
    if any(word.lower() in lowered for word in config.blocklist):
        return "blocklist"
    if own_posts.is_duplicate(text) or normalise(text) in {normalise(b) for b in batch_seen}:
        return "duplicate"
    if training_posts.is_duplicate(text) or training_posts.copies(text) or own_posts.copies(text):
        return "novelty"
    if talks_like_assistant(text, prompt):
        return "assistant"
    return None


def talks_like_assistant(text: str, prompt: str = "") -> bool:
    """Whether a candidate reads like an assistant's reply or like the posting instruction
    (`ASSISTANT`), or repeats `ECHO_WORDS` consecutive words of its prompt. On the simulated
    face's 4,200 real history posts it catches 5 (0.12%)."""
    if ASSISTANT.search(text):
        return True
    said = _words(prompt)
    grams = {tuple(said[i : i + ECHO_WORDS]) for i in range(len(said) - ECHO_WORDS + 1)}
    mine = _words(text)
    return any(tuple(mine[i : i + ECHO_WORDS]) in grams for i in range(len(mine) - ECHO_WORDS + 1))
