"""`max_kl` as a bound across updates: an update that starts with the drift over the budget
(a new probe sees what the last one missed) first scales the policy's move from the reference
back inside it, for full fine-tuning and for LoRA, and a failure after that puts the weights
back as they were; a step that crosses the budget is kept, the whole move scaled back, and the
steps to come shrink with it (`scale_steps`), across updates and a checkpoint."""

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
from plaudit.learner._online import KL_CONFIDENCE, measure_kl, move_scale

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


def test_policy_update_scales_every_weight_back_by_default(tiny_model_dir: Path) -> None:
    """`policy_update` without ``toward_reference`` (the module's own callers) pulls back
    full fine-tuning's way: every weight toward the reference's."""
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
    assert 0 < stats.pulled_back < 1
    assert stats.kl_per_post <= before / 3


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


def test_a_step_over_the_budget_is_kept_and_the_whole_move_shrinks(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A step that takes the drift over ``max_kl`` is not undone (its rewards would be spent
    for nothing): the whole move from the reference is scaled
    back inside the budget, the update goes on, and every step after it, in this update and
    the next ones, is taken at the learning rate times the same factor, so the policy stays
    ``ref + s * (the sum of all its steps at the configured rate)``."""
    policy = Policy.load(tiny_model_dir, lr=1e-2)
    assert policy.reference is not None
    probe = rewarded(policy, [0.0] * 16, SAMPLING)
    batch = rewarded(policy, [3.0, -3.0, 3.0, -3.0], SAMPLING)
    config = OnlineUpdateConfig(epochs=10, minibatch_size=2, kl_coef=0.0, max_kl=0.5, clip=10.0)
    stats = policy.update(batch, config=config, probe=probe)
    assert stats.steps == 20 and stats.stop_reason is None
    assert 0 < stats.pulled_back < 1
    assert stats.kl_per_post + KL_CONFIDENCE * stats.kl_se <= 0.5  # the upper end, inside
    scale = move_scale(policy.optimizer)
    assert scale == pytest.approx(stats.pulled_back)
    assert all(g["lr"] == pytest.approx(1e-2 * scale) for g in policy.optimizer.param_groups)

    # The next update starts at the shrunk rate, not the configured one.
    seen: list[float] = []
    policy.update(
        rewarded(policy, [1.0, -1.0], SAMPLING),
        config=dataclasses.replace(config, epochs=1, max_kl=50.0),
        probe=probe,
        between_steps=lambda: seen.append(policy.optimizer.param_groups[0]["lr"]),
    )
    assert seen[0] == pytest.approx(1e-2 * scale)

    # The factor is the optimizer's: a checkpoint keeps it, a new reference starts afresh.
    policy.save(tmp_path / "ckpt")
    restored = Policy.load(tiny_model_dir, lr=1e-2, checkpoint=tmp_path / "ckpt")
    assert move_scale(restored.optimizer) == pytest.approx(scale)
    restored.reset_reference()
    assert move_scale(restored.optimizer) == 1.0


def test_a_failed_update_puts_the_rate_and_its_factor_back(tiny_model_dir: Path) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-2)
    probe = rewarded(policy, [0.0] * 16, SAMPLING)
    config = OnlineUpdateConfig(epochs=10, minibatch_size=2, kl_coef=0.0, max_kl=0.5, clip=10.0)
    policy.update(rewarded(policy, [3.0, -3.0, 3.0, -3.0], SAMPLING), config=config, probe=probe)
    groups = [dict(g, params=None) for g in policy.optimizer.param_groups]
    assert move_scale(policy.optimizer) < 1
    batch = rewarded(policy, [3.0, -3.0, 3.0, -3.0], SAMPLING)
    batch[-1] = dataclasses.replace(batch[-1], advantage=float("nan"))  # fails at step 2
    with pytest.raises(FloatingPointError, match="not finite"):
        policy.update(batch, config=dataclasses.replace(config, max_kl=0.01), probe=probe)
    assert [dict(g, params=None) for g in policy.optimizer.param_groups] == groups
