"""`max_kl` as a bound across updates: an update that starts with the drift over the budget
(a new probe sees what the last one missed) first scales the policy's move from the reference
back inside it, for full fine-tuning and for LoRA, and a failure after that puts the weights
back as they were."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from policy_helpers import rewarded

from plaudit.learner import (
    LoRAConfig,
    OnlineUpdateConfig,
    Policy,
    SamplingConfig,
)
from plaudit.learner._online import measure_kl

SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=5)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def drifted(folder: Path, lora: bool) -> Policy:
    """A policy some way from its reference: every weight moved (full fine-tuning) or the
    adapters set (LoRA)."""
    policy = Policy.load(folder, lr=1e-5, lora=LoRAConfig(rank=4, alpha=8.0) if lora else None)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if policy.adapters is not None:
            for _name, _layer, _a, b in policy.adapters.pairs():
                b.copy_(torch.randn(b.shape, generator=gen) * 0.2)
        else:
            for p in policy.model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return policy


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_an_update_over_the_budget_pulls_the_policy_back_inside(
    tiny_model_dir: Path, lora: bool
) -> None:
    policy = drifted(tiny_model_dir, lora)
    assert policy.reference is not None
    probe = rewarded(policy, [0.0] * 16, SAMPLING)
    batch = rewarded(policy, [1.0, -1.0, 0.5, -0.5], SAMPLING)
    # The weights that sampled the probe (with LoRA, merged: a copy would share the hooks).
    adapters = policy.adapters
    start = adapters.merged(policy.model) if adapters else copy.deepcopy(policy.model)
    before = measure_kl(policy.model, policy.reference, probe)
    assert before > 0
    base = {k: v.clone() for k, v in policy.model.state_dict().items()}
    config = OnlineUpdateConfig(epochs=1, minibatch_size=4, max_kl=before / 3)
    stats = policy.update(batch, config=config, probe=probe)
    assert 0 < stats.pulled_back < 1 and stats.changed and policy.version == 1
    assert stats.kl_per_post_before == pytest.approx(before, rel=1e-4)
    # Inside the budget, as measured on the probe the update's way.
    assert stats.kl_per_post <= config.max_kl  # type: ignore[operator]
    after = measure_kl(policy.model, policy.reference, probe, start=start)
    assert stats.kl_per_post == pytest.approx(after, rel=1e-3)
    if lora:  # the adapters shrank; the base weights (the reference) did not move
        assert all(torch.equal(base[k], v) for k, v in policy.model.state_dict().items())


def test_without_a_way_back_an_update_over_the_budget_only_refuses_steps(
    tiny_model_dir: Path,
) -> None:
    """`policy_update` without ``toward_reference`` (the module's own callers) keeps the
    old rule: steps that raise the drift further are undone, the weights stay over."""
    from plaudit.learner._online import policy_update

    policy = drifted(tiny_model_dir, lora=False)
    assert policy.reference is not None
    probe = rewarded(policy, [0.0] * 16, SAMPLING)
    batch = rewarded(policy, [1.0, -1.0, 0.5, -0.5], SAMPLING)
    before = measure_kl(policy.model, policy.reference, probe)
    stats = policy_update(
        model=policy.model,
        reference=policy.reference,
        optimizer=policy.optimizer,
        batch=batch,
        config=OnlineUpdateConfig(epochs=1, minibatch_size=4, max_kl=before / 3),
        probe=probe,
    )
    assert stats.pulled_back == 1.0
    assert stats.kl_per_post > before / 3


def test_a_failure_after_the_pull_back_restores_the_drifted_weights(tiny_model_dir: Path) -> None:
    policy = drifted(tiny_model_dir, lora=False)
    assert policy.reference is not None
    probe = rewarded(policy, [0.0] * 16, SAMPLING)
    batch = rewarded(policy, [1.0, -1.0, 0.5, -0.5], SAMPLING)
    batch[0] = dataclasses.replace(batch[0], advantage=float("nan"))  # a NaN loss at step 1
    weights = {k: v.clone() for k, v in policy.model.state_dict().items()}
    before = measure_kl(policy.model, policy.reference, probe)
    with pytest.raises(FloatingPointError, match="not finite"):
        policy.update(
            batch, config=OnlineUpdateConfig(epochs=1, minibatch_size=4, max_kl=before / 3),
            probe=probe,
        )  # fmt: skip
    assert policy.version == 0
    assert all(torch.equal(weights[k], v) for k, v in policy.model.state_dict().items())
