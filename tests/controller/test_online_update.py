"""The online policy update: its logprobs, its direction, its KL anchor and its early stop."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from plaudit.learner import ModelConfig, Transformer
from plaudit.learner._engine import Engine, SamplingConfig
from plaudit.learner._online import (
    OnlineUpdateConfig,
    Trajectory,
    measure_kl,
    policy_update,
    sequence_logprobs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(
        ModelConfig(
            vocab_size=64,
            max_seq_len=32,
            n_layer=2,
            n_head=2,
            n_kv_head=1,
            n_embd=32,
            intermediate_size=64,
        )
    )
    model.init_weights()
    return model.eval()


def batch_for(
    model: Transformer, advantages: list[float], *, temperature: float = 1.0
) -> list[Trajectory]:
    prompts = [[1, 5, 9], [1, 7], [1, 3, 3, 3], [1, 2]]
    completions = [[10, 11, 12, 13], [20, 21], [30, 31, 32], [40, 41, 42, 43, 44]]
    lps = sequence_logprobs(model, prompts, completions, temperature=temperature)
    return [
        Trajectory(prompt=p, completion=c, behaviour_logprobs=lp, advantage=a)
        for p, c, lp, a in zip(prompts, completions, lps, advantages, strict=True)
    ]


def test_sequence_logprobs_match_the_engine() -> None:
    model = tiny()
    prompts, comps = [[1, 5, 9], [1, 2]], [[10, 11, 12], [40, 41, 42, 43]]
    ours = sequence_logprobs(model, prompts, comps, temperature=0.7)
    engine = Engine(model=model)
    for p, c, lp in zip(prompts, comps, ours, strict=True):
        ref = engine.logprobs(p, c, sampling=SamplingConfig(temperature=0.7))
        assert torch.allclose(torch.tensor(lp), ref, atol=1e-5)


@pytest.mark.parametrize("method", ["clipped", "reinforce"])
def test_update_moves_towards_positive_advantage(method: str) -> None:
    model = tiny()
    reference = copy.deepcopy(model).requires_grad_(False)
    batch = batch_for(model, [1.0, -1.0, 1.0, -1.0])
    before = [
        sum(x)
        for x in sequence_logprobs(model, [t.prompt for t in batch], [t.completion for t in batch])
    ]
    opt = model.configure_optimizer(lr=3e-3, weight_decay=0.0)
    cfg = OnlineUpdateConfig(method=method, epochs=3, kl_coef=0.0, max_kl=None)  # type: ignore[arg-type]
    stats = policy_update(model=model, reference=reference, optimizer=opt, batch=batch, config=cfg)
    after = [
        sum(x)
        for x in sequence_logprobs(model, [t.prompt for t in batch], [t.completion for t in batch])
    ]
    assert stats.steps == (1 if method == "reinforce" else 3)
    assert after[0] > before[0] and after[2] > before[2]
    assert after[1] < before[1] and after[3] < before[3]
    assert stats.kl > 0


def test_first_clipped_step_has_ratio_one() -> None:
    model = tiny()
    batch = batch_for(model, [1.0, 0.5, -0.5, -1.0])
    opt = model.configure_optimizer(lr=1e-3, weight_decay=0.0)
    cfg = OnlineUpdateConfig(epochs=1, minibatch_size=8, kl_coef=0.0, max_kl=None)
    stats = policy_update(model=model, reference=None, optimizer=opt, batch=batch, config=cfg)
    assert stats.steps == 1
    assert stats.ratio_mean == pytest.approx(1.0, abs=1e-5)  # behaviour == current before the step


def test_kl_anchor_limits_drift() -> None:
    free, anchored = tiny(), tiny()
    reference = copy.deepcopy(free).requires_grad_(False)
    kls = {}
    for name, model, coef in (("free", free, 0.0), ("anchored", anchored, 5.0)):
        batch = batch_for(model, [2.0, -2.0, 2.0, -2.0])
        opt = model.configure_optimizer(lr=1e-2, weight_decay=0.0)
        cfg = OnlineUpdateConfig(epochs=6, kl_coef=coef, max_kl=None, clip=10.0)
        kls[name] = policy_update(
            model=model, reference=reference, optimizer=opt, batch=batch, config=cfg
        ).kl
    assert kls["anchored"] < kls["free"]


def test_max_kl_scales_the_move_back() -> None:
    model = tiny()
    reference = copy.deepcopy(model).requires_grad_(False)
    batch = batch_for(model, [3.0, -3.0, 3.0, -3.0])
    start = copy.deepcopy(model)
    opt = model.configure_optimizer(lr=5e-2, weight_decay=0.0)
    cfg = OnlineUpdateConfig(epochs=20, minibatch_size=2, kl_coef=0.01, max_kl=1e-3, clip=10.0)
    stats = policy_update(model=model, reference=reference, optimizer=opt, batch=batch, config=cfg)
    assert not stats.early_stopped and stats.steps == 40 and stats.pulled_back < 1
    # nats per post, weighted for the update's own move as the bound is
    assert measure_kl(model, reference, batch, start=start) <= 1e-3


def test_stop_event_interrupts_and_nan_is_refused() -> None:
    model = tiny()
    batch = batch_for(model, [1.0, -1.0, 1.0, -1.0])
    opt = model.configure_optimizer(lr=1e-3, weight_decay=0.0)
    stop = threading.Event()
    stop.set()
    stats = policy_update(
        model=model,
        reference=None,
        optimizer=opt,
        batch=batch,
        config=OnlineUpdateConfig(),
        should_stop=stop,
    )
    assert stats.steps == 0 and stats.early_stopped and stats.stop_reason == "interrupted"
    weights = copy.deepcopy(model.state_dict())
    bad = [Trajectory(t.prompt, t.completion, t.behaviour_logprobs, float("nan")) for t in batch]
    with pytest.raises(FloatingPointError, match="weights were not changed"):
        policy_update(
            model=model, reference=None, optimizer=opt, batch=bad, config=OnlineUpdateConfig()
        )
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
