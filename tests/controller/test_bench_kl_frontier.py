"""bench/kl_frontier.py: the best gain at a drift budget, checked where it has a closed form."""

from __future__ import annotations

import math

import pytest
import torch
from bench_helpers import BENCH_DIR, load_bench


def test_the_tilt_of_normal_rewards_gains_sigma_root_two_k() -> None:
    """Rewards N(0, sigma^2) tilted by exp(lam r) stay normal, mean sigma^2 lam, at KL
    sigma^2 lam^2 / 2: the best gain at KL K is sigma sqrt(2K)."""
    frontier = load_bench(BENCH_DIR / "kl_frontier.py")
    sigma = 0.05
    rewards = (torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * sigma).tolist()
    for budget in (0.25, 1.0, 2.0):
        point = frontier.frontier_at(rewards, budget)
        assert point.kl == pytest.approx(budget, rel=1e-3)
        assert point.gain == pytest.approx(sigma * math.sqrt(2 * budget), rel=0.03)
        assert point.ess < len(rewards)


def test_no_budget_no_gain_and_the_whole_tilt_at_most_log_n() -> None:
    frontier = load_bench(BENCH_DIR / "kl_frontier.py")
    rewards = [0.0, 1.0, 2.0, 3.0]
    assert frontier.frontier_at(rewards, 0.0).gain == 0.0
    sharpest = frontier.frontier_at(rewards, 10.0)  # past log 4: all weight on the best
    assert sharpest.kl == pytest.approx(math.log(4), abs=1e-6)
    assert sharpest.gain == pytest.approx(3.0 - 1.5, abs=1e-6)
    with pytest.raises(ValueError, match="2 or more"):
        frontier.frontier_at([1.0], 1.0)
