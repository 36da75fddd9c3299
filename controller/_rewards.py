"""Score -> reward -> advantage, in one place.

- score: the face's own number for a post's reactions at the final horizon (`Face.score`, for
  example (likes + 2 reposts + replies) / followers);
- reward: that score as a z-score against the face's earlier scores (its own posts only), so
  rewards from a 50-follower account and a 50,000-follower one mean the same thing;
- advantage: the reward minus a moving-average baseline, in the order the rewards arrived.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# With fewer own posts than this, there is no spread to normalise by: the reward is 0.
MIN_HISTORY = 2
CLIP = 3.0
# The reward of a post is judged against at most this many earlier scores of its face.
SCORE_WINDOW = 200


def normalise(score: float, history: Sequence[float]) -> float:
    """z-score of ``score`` against ``history`` (the face's earlier scores; the post is judged
    against the past, not against itself), clipped to +-3.

    The spread has a floor (10% of the mean magnitude) so that a few near-identical early
    scores do not turn tiny differences into huge rewards (strong shrinkage early)."""
    if not math.isfinite(score):
        raise ValueError(f"score must be a finite number, got {score!r}")
    values = list(history)
    if len(values) < MIN_HISTORY:
        return 0.0
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    spread = max(math.sqrt(var), 0.1 * abs(mean), 1e-9)
    return max(-CLIP, min(CLIP, (score - mean) / spread))


@dataclass
class Baseline:
    """A moving average of rewards; advantage = reward - the average before it."""

    value: float = 0.0
    decay: float = 0.9

    def advantage(self, reward: float) -> float:
        """The advantage of ``reward``, then fold it into the average (call in time order)."""
        adv = reward - self.value
        self.value = self.decay * self.value + (1 - self.decay) * reward
        return adv


def selection_kl(n: int) -> float:
    """The KL of choosing one of n samples (best-of-n) to the distribution they were drawn
    from, at most log n - (n - 1) / n nats per post (Beirami et al. 2024, "Theoretical
    guarantees on the best-of-n alignment policy"). It counts in the drift budget."""
    return math.log(n) - (n - 1) / n if n > 1 else 0.0


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank); NaN when either side is
    constant or there are fewer than 3 pairs."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs pairs: {len(a)} values against {len(b)}")
    if len(a) < 3:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks
