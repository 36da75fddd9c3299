"""From a face's score to a reward: normalised per face over the bot's own posts only, so
rewards from a 50-follower account and a 50,000-follower one mean the same thing."""

from __future__ import annotations

import math
from collections.abc import Sequence

# With fewer own posts than this, there is no spread to normalise by: the reward is 0.
MIN_HISTORY = 2
CLIP = 3.0


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
