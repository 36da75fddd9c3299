"""The VADER tweets corpus that the simulated face serves as its history (see
NOTICE-vader-tweets.txt beside this file for provenance and license)."""

from __future__ import annotations

import functools
import gzip
import html
from dataclasses import dataclass
from importlib import resources

__all__ = ["CORPUS_FILE", "CorpusPost", "load_corpus"]

CORPUS_FILE = "tweets_GroundTruth.txt.gz"
CORPUS_SIZE = 4200


@dataclass(frozen=True)
class CorpusPost:
    """One corpus tweet: its number (1..4200), the mean human rating (-4..+4) and its text."""

    id: int
    rating: float
    text: str


def parse_corpus(raw: bytes) -> list[CorpusPost]:
    """Parse the ground-truth file: UTF-8, CRLF lines of `id<TAB>rating<TAB>text`, Twitter's
    HTML escapes in the text (decoded here), stray spaces around it (stripped)."""
    posts = []
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise ValueError(
                f"{CORPUS_FILE} line {number} has {len(fields)} tab-separated fields, expected "
                "3 (id, rating, text); the packaged file is damaged, reinstall plaudit."
            )
        post_id, rating, text = fields
        posts.append(CorpusPost(int(post_id), float(rating), html.unescape(text).strip()))
    return posts


@functools.cache
def load_corpus() -> tuple[CorpusPost, ...]:
    """The 4,200 corpus posts in file order (ids 1..4200). Read once per process (immutable)."""
    raw = gzip.decompress((resources.files(__package__) / CORPUS_FILE).read_bytes())
    posts = parse_corpus(raw)
    if len(posts) != CORPUS_SIZE:
        raise ValueError(
            f"{CORPUS_FILE} holds {len(posts)} posts, expected {CORPUS_SIZE}; the packaged "
            "file is damaged, reinstall plaudit."
        )
    return tuple(posts)
