"""The Policy the controller drives: candidates with the behaviour logprobs of the distribution
actually sampled (float32 whatever the generation dtype), posts the model ended keep their end
token, prompts for models with and without a chat template, and an update that fails changes
nothing."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from plaudit.learner._engine import Engine, SamplingConfig
from plaudit.learner._online import OnlineUpdateConfig, Trajectory
from plaudit.learner._policy import Candidate, Policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def truncated_logprobs(policy: Policy, c: Candidate, s: SamplingConfig) -> list[float]:
    """Written out directly: softmax at the temperature, the top-k, the smallest most-likely
    set with mass >= top_p, renormalised; the log of the sampled token's probability."""
    seq = torch.tensor([c.prompt_tokens + c.tokens[:-1]])
    with torch.no_grad():
        logits = policy.model(seq)[0, len(c.prompt_tokens) - 1 :].float() / s.temperature
    out = []
    for row, tok in zip(logits, c.tokens, strict=True):
        probs = F.softmax(row, dim=-1)
        order = torch.argsort(probs, descending=True)
        keep = torch.zeros_like(probs, dtype=torch.bool)
        mass = 0.0
        for rank, i in enumerate(order.tolist()):
            if s.top_k is not None and rank >= s.top_k:
                break
            keep[i] = True
            mass += float(probs[i])
            if s.top_p is not None and mass >= s.top_p * float(probs[order[: s.top_k]].sum()):
                break
        kept = probs * keep
        out.append(float((kept[tok] / kept.sum()).log()))
    return out


SAMPLINGS = [
    SamplingConfig(temperature=0.9, top_p=0.5, max_new_tokens=12, seed=3),
    SamplingConfig(temperature=0.7, top_k=40, top_p=0.8, max_new_tokens=12, seed=4),
]


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_behaviour_logprobs_are_those_of_the_truncated_distribution(
    tiny_model_dir: Path, sampling: SamplingConfig
) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-4)
    assert policy.render_prompt("write a post") == ""  # no chat template: start from BOS
    cands = policy.generate(["", ""], n=2, sampling=sampling)
    assert len(cands) == 4
    for c in cands:
        assert c.prompt_tokens == [policy.tokenizer.bos_id]
        assert len(c.logprobs) == len(c.tokens) > 0
        assert (c.temperature, c.top_p, c.top_k) == (
            sampling.temperature,
            sampling.top_p,
            sampling.top_k,
        )
        assert c.logprobs == pytest.approx(truncated_logprobs(policy, c, sampling), abs=1e-4)


def test_bf16_generation_gives_float32_behaviour_logprobs(tiny_model_dir: Path) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-4, generation_dtype=torch.bfloat16)
    sampling = SAMPLINGS[0]
    cands = policy.generate(["", ""], n=2, sampling=sampling)
    engine = Engine(model=policy.model, dtype=torch.bfloat16)
    values = torch.tensor([lp for c in cands for lp in c.logprobs], dtype=torch.float64)
    assert all(lp <= 0 for lp in values.tolist())
    assert not torch.equal(values.float().bfloat16().double(), values.float().double())
    assert torch.equal(values.float().double(), values)  # float32 values
    for c in cands:
        want = engine.logprobs(c.prompt_tokens, c.tokens, sampling=sampling)
        assert c.logprobs == pytest.approx(want.tolist(), abs=2e-2)
    assert next(policy.model.parameters()).dtype == torch.float32  # training weights untouched


def test_a_post_the_model_ended_keeps_its_end_token(tiny_model_dir: Path) -> None:
    """Stop tokens common enough that some posts end and some run out: an ended one keeps its
    stop token last (credited by the update), its text leaves it out; one that ran out keeps
    all its tokens and finished=False."""
    policy = Policy.load(tiny_model_dir, lr=1e-4)
    bos = policy.tokenizer.bos_id
    assert bos is not None
    with torch.no_grad():
        first = policy.model(torch.tensor([[bos]]))[0, -1]
    stops = tuple(torch.topk(first, 60).indices.tolist())
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=12, stop_tokens=stops, seed=1)
    cands = policy.generate([""], n=12, sampling=sampling)
    ended = [c for c in cands if c.finished]
    ran_out = [c for c in cands if not c.finished]
    assert ended and ran_out
    stop_set = set(stops) | set(policy.tokenizer.stop_ids)
    for c in ended:
        assert c.tokens[-1] in stop_set and len(c.logprobs) == len(c.tokens)
        assert c.text == policy.tokenizer.decode(c.tokens[:-1], skip_special=True).strip()
    for c in ran_out:
        assert len(c.tokens) == len(c.logprobs) == sampling.max_new_tokens
        assert c.text == policy.tokenizer.decode(c.tokens, skip_special=True).strip()


def state_of(policy: Policy) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    weights = {k: v.clone() for k, v in policy.model.state_dict().items()}
    return weights, copy.deepcopy(policy.optimizer.state_dict()), policy.version


def test_an_update_that_fails_half_way_changes_nothing(tiny_model_dir: Path) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-3)
    sampling = SamplingConfig(temperature=0.9, top_p=0.9, max_new_tokens=8, seed=2)
    cands = policy.generate(["", ""], n=2, sampling=sampling)
    batch = [
        Trajectory(
            prompt=c.prompt_tokens, completion=c.tokens, behaviour_logprobs=c.logprobs,
            advantage=a, temperature=c.temperature, top_p=c.top_p, policy_version=0,
        )
        for c, a in zip(cands, [1.0, -1.0, 0.5, -0.5], strict=True)
    ]  # fmt: skip
    config = OnlineUpdateConfig(epochs=2, minibatch_size=1, max_kl=None)
    stats = policy.update(batch, config=config)  # works: the optimizer has moments now
    assert stats.steps == 8 and policy.version == 1
    assert set(stats.clip_fraction_by_lag) == {0}  # sampled by the weights it updated
    weights, optimizer, version = state_of(policy)
    opt = policy.optimizer
    real_step, calls = opt.step, []

    def step(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the third step fails")
        return real_step(*args, **kwargs)

    opt.step = step  # type: ignore[method-assign]
    policy.lr = 5e-3
    try:
        with pytest.raises(RuntimeError, match="third step"):
            policy.update(batch, config=config)
    finally:
        del opt.step
    assert len(calls) == 3 and policy.version == version
    assert all(torch.equal(weights[k], v) for k, v in policy.model.state_dict().items())
    now = policy.optimizer.state_dict()
    assert now["param_groups"] == optimizer["param_groups"]  # the learning rate too
    for i, s in optimizer["state"].items():
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(now["state"][i][k]))
                   for k, v in s.items())  # fmt: skip


def test_a_post_out_of_tokens_is_cut_after_its_last_sentence(tiny_model_dir: Path) -> None:
    import re

    policy = Policy.load(tiny_model_dir, lr=1e-4)
    sampling = SamplingConfig(temperature=1.0, top_p=None, max_new_tokens=24, seed=0)
    cands = policy.generate([""] * 16, n=1, sampling=sampling)
    cut = [c for c in cands if c.cut]
    assert cut, "the untrained tiny model runs out of tokens; some samples have a sentence end"
    for c in cut:
        assert not c.finished and len(c.tokens) == len(c.logprobs) < 24
        assert re.search(r"[.!?…)\"'»\n]\s*$", policy.tokenizer.decode(c.tokens))
    for c in cands:
        if not c.finished and not c.cut:
            assert len(c.tokens) == 24  # nothing to cut at: kept whole, dropped by the filter
