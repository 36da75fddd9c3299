"""Sampling settings at their edges: a temperature too small to divide by is greedy, seeds
stay in torch's range."""

from __future__ import annotations

import pytest

from plaudit.learner import SamplingConfig


def test_a_vanishing_temperature_is_greedy() -> None:
    assert SamplingConfig(temperature=1e-300).temperature == 0.0
    assert SamplingConfig(temperature=0.0009).temperature == 0.0
    assert SamplingConfig(temperature=0.001).temperature == 0.001


@pytest.mark.parametrize("seed", [-1, 2**63, 2**80])
def test_seeds_beyond_torchs_range_are_refused(seed: int) -> None:
    with pytest.raises(ValueError, match=r"seed must be in 0 \.\. 2\*\*63 - 1"):
        SamplingConfig(seed=seed)
    assert SamplingConfig(seed=2**63 - 1).seed == 2**63 - 1
