"""The simulated audience: how much it likes a post, and when its reactions arrive.

    appeal = preference(post) + topic bonus - penalties                (about -3 .. +1.5)
    rate   = base_rate · exp(gain · appeal)                            (share of the audience)
    likes  ~ Poisson(audience · rate · noise),  noise ~ LogNormal(0, noise_sigma), seeded
    reposts, replies, quotes ~ Poisson(the same, times their ratios)
    arrival of each reaction: elapsed ~ Exponential(mean = arrival_mean), in simulated time

The preference is the VADER compound sentiment of the post (-1..1) for live posts, computed
after collapsing repeated punctuation so "!!!!" adds no sentiment; historical posts use their
mean human rating / 4 instead. Penalties, each 0..1 times its weight, make the obvious exploits
lose rather than win:

- degenerate: runs of repeated punctuation ("!!!!", "????"), shouting in capitals, very short
  posts, word salad (almost no function words, or almost only sentiment words), one word
  repeated, mostly symbols;
- repetition: word 3-gram Jaccard similarity to any of the account's recent posts (a near
  duplicate of a recent post is worth a fraction of a fresh one);
- template: the share of the post's content bigrams that already occur in several recent posts
  (the same phrase again and again).

Everything is a pure function of its inputs and an explicit seed; no global random state.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Appeal",
    "AudienceModel",
    "arrival_offsets",
    "collapse_punctuation",
    "degenerate_penalties",
    "draw_totals",
    "repetition_penalty",
    "seeded_rng",
    "template_penalty",
    "words",
]

# English function words: natural sentences are 30-60% of them, word salad almost none.
_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if in
into is it its itself just me more most my myself no nor not now of off on once only or
other our ours out over own same she should so some such than that the their theirs them
then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself im i'm it's
don't can't u ur get got go going went one like
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_PUNCT_RUN = re.compile(r"([^\w\s])\1+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, one inner apostrophe)."""
    return _WORD.findall(text.lower())


def collapse_punctuation(text: str) -> str:
    """Repeated punctuation collapsed to one character ("wow!!!!" -> "wow!"), "..." kept."""
    return _PUNCT_RUN.sub(lambda m: "..." if m.group(1) == "." else m.group(1), text)


def _shingles(tokens: Sequence[str], n: int = 3) -> set[tuple[str, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def degenerate_penalties(text: str, lexicon: frozenset[str] | None = None) -> dict[str, float]:
    """Penalties (0..1 each) for text no real audience rewards. `lexicon` is the set of
    sentiment words (VADER's) used to spot word salad."""
    tokens = words(text)
    out: dict[str, float] = {}
    # Punctuation spam: every character of a run beyond the first ("..." is fine) counts.
    excess = 0
    for match in _PUNCT_RUN.finditer(text):
        run = len(match.group(0))
        excess += max(0, run - (3 if match.group(1) == "." else 1))
    out["punctuation"] = min(1.0, excess / 4)
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= 10:
        upper = sum(c.isupper() for c in letters) / len(letters)
        out["shouting"] = max(0.0, min(1.0, (upper - 0.5) * 2))
    n = len(tokens)
    out["short"] = 1.0 if n < 3 else 0.5 if n < 5 else 0.0
    if n >= 6:
        function_share = sum(t in STOPWORDS for t in tokens) / n
        salad = max(0.0, (0.15 - function_share) / 0.15)
        if lexicon is not None:
            sentiment_share = sum(t in lexicon for t in tokens) / n
            salad = max(salad, (sentiment_share - 0.45) / 0.35)
        out["word_salad"] = min(1.0, salad)
        top_count = Counter(t for t in tokens if t not in STOPWORDS).most_common(1)
        if top_count and top_count[0][1] >= 3:
            out["repeated_word"] = min(1.0, max(0.0, (top_count[0][1] / n - 0.2) / 0.3))
    visible = [c for c in text if not c.isspace()]
    if visible:
        symbols = sum(not c.isalnum() for c in visible) / len(visible)
        out["symbols"] = max(0.0, min(1.0, (symbols - 0.25) / 0.35))
    return {k: v for k, v in out.items() if v > 0}


def repetition_penalty(text: str, recent: Sequence[str]) -> float:
    """0..1: how close the post is to the closest recent post (word 3-gram Jaccard; 0 below a
    similarity of 0.2, 1 for an exact duplicate)."""
    mine = _shingles(words(text))
    if not mine:
        return 0.0
    best = 0.0
    for other in recent:
        theirs = _shingles(words(other))
        if theirs:
            best = max(best, len(mine & theirs) / len(mine | theirs))
    return max(0.0, min(1.0, (best - 0.2) / 0.6))


def template_penalty(text: str, recent: Sequence[str], *, min_posts: int = 3) -> float:
    """0..1: the share of the post's content bigrams (not made of function words only) that
    already occur in at least `min_posts` of the recent posts."""
    tokens = words(text)
    bigrams = {
        (a, b) for a, b in itertools.pairwise(tokens) if not (a in STOPWORDS and b in STOPWORDS)
    }
    if not bigrams or len(recent) < min_posts:
        return 0.0
    seen: Counter[tuple[str, str]] = Counter()
    for other in recent:
        t = words(other)
        seen.update(set(itertools.pairwise(t)))
    return sum(seen[b] >= min_posts for b in bigrams) / len(bigrams)


def seeded_rng(seed: int, *parts: str) -> np.random.Generator:
    """A generator seeded from `seed` and the given strings (stable across processes)."""
    digest = hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Appeal:
    """How much the audience likes one post, with its parts (for logs and the status page)."""

    preference: float
    topic: float
    penalties: dict[str, float]  # name -> weighted penalty
    total: float

    def as_dict(self) -> dict[str, object]:
        return {
            "preference": self.preference,
            "topic": self.topic,
            "penalties": self.penalties,
            "total": self.total,
        }


@dataclass(frozen=True)
class AudienceModel:
    """The audience's taste and habits (built from `SimulatedConfig`)."""

    size: int = 1000
    base_rate: float = 0.03  # share of the audience that likes a neutral, clean post
    gain: float = 1.6  # how strongly appeal moves the rate (exp(gain·appeal))
    repost_ratio: float = 0.2
    reply_ratio: float = 0.06
    quote_ratio: float = 0.02
    noise_sigma: float = 0.25
    preference: str = "positive"  # positive | negative | neutral | intense
    topics: dict[str, float] = field(default_factory=dict)  # word -> bonus when present
    penalty_weights: dict[str, float] = field(
        default_factory=lambda: {"degenerate": 1.5, "repetition": 2.0, "template": 1.0}
    )

    def preference_of(self, sentiment: float) -> float:
        """Map a sentiment in -1..1 to the audience's preference in -1..1."""
        if self.preference == "positive":
            return sentiment
        if self.preference == "negative":
            return -sentiment
        if self.preference == "neutral":
            return 1.0 - 2.0 * abs(sentiment)
        if self.preference == "intense":
            return 2.0 * abs(sentiment) - 1.0
        raise ValueError(f"unknown preference {self.preference!r}")

    def appeal(
        self,
        text: str,
        *,
        sentiment: float,
        recent: Sequence[str] = (),
        lexicon: frozenset[str] | None = None,
    ) -> Appeal:
        """The appeal of `text` given its sentiment (-1..1) and the account's recent posts."""
        preference = self.preference_of(sentiment)
        tokens = set(words(text))
        topic = sum(bonus for word, bonus in self.topics.items() if word.lower() in tokens)
        w = self.penalty_weights
        degenerate = degenerate_penalties(text, lexicon)
        penalties = {f"degenerate.{k}": w.get("degenerate", 0.0) * v for k, v in degenerate.items()}
        if recent:
            penalties["repetition"] = w.get("repetition", 0.0) * repetition_penalty(text, recent)
            penalties["template"] = w.get("template", 0.0) * template_penalty(text, recent)
        penalties = {k: round(v, 6) for k, v in penalties.items() if v > 0}
        total = max(-3.0, min(2.0, preference + topic - sum(penalties.values())))
        return Appeal(preference=preference, topic=topic, penalties=penalties, total=total)

    def expected(self, appeal: float) -> dict[str, float]:
        """Expected final counts for a post of this appeal (before noise)."""
        likes = self.size * self.base_rate * math.exp(self.gain * appeal)
        return {
            "likes": likes,
            "reposts": likes * self.repost_ratio * math.exp(0.5 * appeal),
            "replies": likes * self.reply_ratio,
            "quotes": likes * self.quote_ratio * math.exp(0.5 * appeal),
        }

    def mean_totals(self, appeal: float) -> dict[str, float]:
        """The mean final counts of `draw_totals` for a post of this appeal: `expected` times
        the mean of the log-normal noise, exp(sigma^2 / 2) (Poisson keeps the mean)."""
        noise_mean = math.exp(self.noise_sigma**2 / 2)
        return {k: v * noise_mean for k, v in self.expected(appeal).items()}


def draw_totals(model: AudienceModel, appeal: float, rng: np.random.Generator) -> dict[str, int]:
    """Final reaction counts: Poisson around the expectation times a shared log-normal noise."""
    noise = float(rng.lognormal(0.0, model.noise_sigma))
    return {k: int(rng.poisson(v * noise)) for k, v in model.expected(appeal).items()}


def arrival_offsets(
    count: int, mean_seconds: float, rng: np.random.Generator
) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
    """Sorted arrival times (simulated seconds after publishing) of `count` reactions: a
    decaying arrival rate, most within a few `mean_seconds`."""
    return np.sort(rng.exponential(mean_seconds, size=count))
