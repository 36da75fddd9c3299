"""Filters between generation and publishing. Each drop has one reason from a small fixed set
(they label a metric): a post that reads like a copy of the training data or of the bot's own
posts is never published."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

REASONS = ("empty", "unfinished", "too_short", "too_long", "blocklist", "duplicate", "novelty")
_WORD = re.compile(r"\w+", re.UNICODE)


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
) -> str | None:
    """The reason to drop ``text``, or None to keep it. ``finished``: the model ended the post
    itself (its end token within the budget), or it ran out of tokens and was cut after its
    last complete sentence; a post that stops mid-sentence is never published."""
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
    return None
