"""Early rewards: learn from a post hours before its final reward.

A post's reactions keep arriving for hours (the final horizon, 24 h by default), but most of
them come early, so the score at the horizon before the final one (6 h) already says most of
what the final score will be. At that snapshot:

- the final score is estimated from the early one by a line fitted on the face's newest
  posts that have both (`Store.early_pairs`): least squares, through the origin until
  `AFFINE_MIN` pairs (a count that has not started stays near nothing), with an intercept
  from then on; nothing until `MIN_PAIRS` pairs, so the first posts wait for their final
  rewards as before;
- the estimate becomes a reward as a final score does (`normalise` against the face's
  scores) and trains the policy at the next update, like a reward;
- when the final reward arrives, a post whose early reward an update already used trains on
  the difference (final - early) as its advantage: policy-gradient steps add up, so the two
  updates together ask for what the final reward alone would have (minus the drift between
  them), and a wrong estimate is corrected rather than kept. A final reward whose early one
  was never used trains as usual.

The early scores are stored whether or not an estimator exists: they are what it is fitted
on. Only the audience's reactions have early scores (a rejection's reward comes at once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from plaudit.controller._context import LoopContext
from plaudit.controller._rewards import SCORE_WINDOW, normalise

# Completed posts (early and final score) before the first estimate; from AFFINE_MIN on the
# line gets an intercept; the newest WINDOW posts are fitted on.
MIN_PAIRS = 5
AFFINE_MIN = 20
WINDOW = 100


def fit_line(pairs: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """(intercept, slope) of final ~ early by least squares: through the origin below
    AFFINE_MIN pairs or when the early scores do not vary, else with an intercept. None
    below MIN_PAIRS pairs or when every early score is 0 (nothing to scale)."""
    if len(pairs) < MIN_PAIRS:
        return None
    xs = [x for x, _ in pairs]
    ys = [y for _, y in pairs]
    n = len(pairs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n >= AFFINE_MIN and sxx > 1e-12 * max(1.0, mx * mx):
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        return my - slope * mx, slope
    sx2 = sum(x * x for x in xs)
    if sx2 <= 0:
        return None
    return 0.0, sum(x * y for x, y in zip(xs, ys, strict=True)) / sx2


class EarlyRewards:
    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx

    @property
    def horizon(self) -> float | None:
        """The early horizon in seconds: the one before the final; None when early rewards
        are off or there is one horizon."""
        horizons = self.ctx.settings.controller.horizons
        if not self.ctx.settings.online.early_rewards or len(horizons) < 2:
            return None
        return horizons[-2].total_seconds()

    def record(self, *, post_id: int, face: str, horizon_s: float, observed: float) -> None:
        """Store the post's early score, with its estimate and reward when an estimator
        can be fitted."""
        store = self.ctx.store
        line = fit_line(store.early_pairs(face, horizon_s=horizon_s, limit=WINDOW))
        estimate = reward = None
        if line is not None:
            intercept, slope = line
            estimate = intercept + slope * observed
            if math.isfinite(estimate):
                reward = normalise(estimate, store.scores(face, limit=SCORE_WINDOW))
            else:
                estimate = None
        store.add_early_score(
            post_id=post_id,
            face=face,
            horizon_s=horizon_s,
            observed=observed,
            estimate=estimate,
            reward=reward,
        )
        if reward is not None:
            self.ctx.log.info(
                "early reward",
                face=face,
                post_id=post_id,
                observed=round(observed, 4),
                estimate=round(estimate or 0.0, 4),
                reward=round(reward, 3),
            )
