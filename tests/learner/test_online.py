"""The online update's method: the KL penalty's gradient, the decoupled clip, truncated
importance weights, per-post temperatures, max_kl as a bound in nats per post, all-or-nothing,
and the two methods' common loss normalisation."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from plaudit.learner import ModelConfig, Transformer
from plaudit.learner._online import (
    IS_TRUNCATION,
    KL_CONFIDENCE,
    OnlineUpdateConfig,
    Trajectory,
    measure_kl,
    policy_update,
    sequence_logprobs,
)

PROMPTS = [[1, 5, 9], [1, 7], [1, 3, 3, 3], [1, 2]]
COMPLETIONS = [[10, 11, 12, 13], [20, 21], [30, 31, 32], [40, 41, 42, 43, 44]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(seed: int = 0, *, scale: float = 1.0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(
        ModelConfig(
            vocab_size=64, max_seq_len=32, n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
            intermediate_size=64,
        )
    )  # fmt: skip
    model.init_weights()
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(scale)
    return model.eval()


def batch_for(
    model: Transformer,
    advantages: list[float],
    *,
    temperature: float = 1.0,
    shift: float = 0.0,
    carry_temperature: bool = False,
) -> list[Trajectory]:
    """Trajectories whose behaviour logprobs are the model's own at `temperature`, minus
    `shift` (a stale sample the policy has since made more likely)."""
    lps = sequence_logprobs(model, PROMPTS, COMPLETIONS, temperature=temperature)
    own: dict[str, Any] = {"temperature": temperature} if carry_temperature else {}
    return [
        Trajectory(p, c, [x - shift for x in lp], a, **own)
        for p, c, lp, a in zip(PROMPTS, COMPLETIONS, lps, advantages, strict=True)
    ]


def probe_for(batch: list[Trajectory]) -> list[Trajectory]:
    """A probe: other completions of the batch's prompts, as the policy's recent samples."""
    return [
        Trajectory(t.prompt, [c + 1 for c in t.completion], [0.0] * len(t.completion), 0.0)
        for t in batch
    ]


def logprob_sums(model: Transformer, batch: list[Trajectory]) -> list[float]:
    lps = sequence_logprobs(model, [t.prompt for t in batch], [t.completion for t in batch])
    return [sum(x) for x in lps]


class RecordGrads(torch.optim.SGD):
    """SGD at lr 0 that keeps the gradients of each step."""

    def __init__(self, model: Transformer) -> None:
        super().__init__(model.parameters(), lr=0.0)
        self.grads: list[list[torch.Tensor]] = []
        self._params = list(model.parameters())

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.grads.append(
            [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in self._params]
        )


def test_kl_penalty_gradient_is_that_of_kl_policy_to_reference() -> None:
    """On samples from the current policy (one position, every token, weighted by its
    probability) the expected gradient of the update's KL term equals kl_coef times the exact
    gradient of KL(π || π_ref) over the vocabulary: not that of KL(π_ref || π)."""
    model, reference = tiny(0, scale=4.0), tiny(1, scale=4.0).requires_grad_(False)
    prompt, T, coef = [1, 5, 9], 0.8, 0.5
    V = model.config.vocab_size
    # The exact gradients, by autograd on the full distributions at the prompt's last position.
    logp = F.log_softmax(model(torch.tensor([prompt]))[0, -1] / T, dim=-1)
    with torch.no_grad():
        ref_logp = F.log_softmax(reference(torch.tensor([prompt]))[0, -1] / T, dim=-1)
    p = logp.exp()
    forward_kl = coef * (p * (logp - ref_logp)).sum()  # KL(π || ref)
    reverse_kl = coef * (ref_logp.exp() * (ref_logp - logp)).sum()  # KL(ref || π)
    want = torch.autograd.grad(
        forward_kl, list(model.parameters()), allow_unused=True, retain_graph=True
    )
    wrong = torch.autograd.grad(reverse_kl, list(model.parameters()), allow_unused=True)
    probs = p.detach()
    # The update's gradient for each one-token completion a, behaviour = current policy.
    cfg = OnlineUpdateConfig(
        epochs=1, kl_coef=coef, max_kl=None, grad_clip=1e9, temperature=T, minibatch_size=8
    )
    lps = sequence_logprobs(model, [prompt] * V, [[a] for a in range(V)], temperature=T)
    expected = [torch.zeros_like(q) for q in model.parameters()]
    for a in range(V):
        opt = RecordGrads(model)
        traj = Trajectory(prompt, [a], lps[a], 0.0)  # no advantage: the KL term alone
        policy_update(model=model, reference=reference, optimizer=opt, batch=[traj], config=cfg)
        for e, g in zip(expected, opt.grads[0], strict=True):
            e += probs[a] * g
    flat = torch.cat([e.flatten() for e in expected])
    flat_want = torch.cat([torch.zeros_like(q).flatten() if w is None else w.flatten()
                           for w, q in zip(want, model.parameters(), strict=True)])  # fmt: skip
    flat_wrong = torch.cat([torch.zeros_like(q).flatten() if w is None else w.flatten()
                            for w, q in zip(wrong, model.parameters(), strict=True)])  # fmt: skip
    assert flat_want.norm() > 1e-3
    assert (flat - flat_want).norm() <= 1e-4 * flat_want.norm() + 1e-7
    assert (flat - flat_wrong).norm() > 0.1 * flat_wrong.norm()  # the test can tell them apart


def test_stale_sample_beyond_the_clip_still_gets_gradient() -> None:
    """Behaviour logprobs 1 nat below the current policy (ratio to behaviour e > 1 + clip),
    positive advantage: the decoupled clip is centred on the update's start, so the step
    still raises the sample's logprob; its importance weight is truncated."""
    model = tiny()
    batch = batch_for(model, [1.0, 1.0, 1.0, 1.0], shift=1.0)
    before = logprob_sums(model, batch)
    opt = model.configure_optimizer(lr=1e-3, weight_decay=0.0)
    cfg = OnlineUpdateConfig(epochs=1, kl_coef=0.0, max_kl=None, clip=0.2)
    stats = policy_update(model=model, reference=None, optimizer=opt, batch=batch, config=cfg)
    after = logprob_sums(model, batch)
    assert stats.steps == 1
    assert all(a > b + 1e-3 for a, b in zip(after, before, strict=True))
    assert stats.is_weight_mean == pytest.approx(IS_TRUNCATION)
    assert stats.ratio_mean == pytest.approx(1.0, abs=1e-5)  # π / π_prox before the step


def test_each_trajectory_uses_its_own_temperature() -> None:
    """Fresh samples drawn at 0.7 while the config says 1.0: the importance weights are 1
    (π_prox at 0.7 over behaviour at 0.7), so the config's temperature was not used."""
    model = tiny(scale=4.0)
    batch = batch_for(model, [1.0, -1.0, 1.0, -1.0], temperature=0.7, carry_temperature=True)
    assert all(t.temperature == 0.7 for t in batch)
    opt = model.configure_optimizer(lr=1e-4, weight_decay=0.0)
    cfg = OnlineUpdateConfig(epochs=1, kl_coef=0.0, max_kl=None, temperature=1.0)
    stats = policy_update(model=model, reference=None, optimizer=opt, batch=batch, config=cfg)
    assert stats.is_weight_mean == pytest.approx(1.0, abs=1e-5)
    # The same trajectories without a temperature fall back to the config's: weights move.
    bare = [Trajectory(t.prompt, t.completion, t.behaviour_logprobs, t.advantage) for t in batch]
    stats = policy_update(model=model, reference=None, optimizer=opt, batch=bare, config=cfg)
    assert abs(stats.is_weight_mean - 1.0) > 1e-3


def test_a_step_far_over_max_kl_is_kept_and_the_move_scaled_back_inside() -> None:
    """A huge step (lr 1) takes the drift far over the budget: it is kept, and the whole move
    from the reference shrinks until the upper end of the drift's interval is inside; so do
    the steps after it (the learning rate times the same factor)."""
    model = tiny()
    reference = copy.deepcopy(model).requires_grad_(False)
    batch = batch_for(model, [3.0, -3.0, 3.0, -3.0])
    start = copy.deepcopy(model)
    opt = model.configure_optimizer(lr=1.0, weight_decay=0.0)  # a huge step
    cfg = OnlineUpdateConfig(epochs=3, minibatch_size=2, kl_coef=0.0, max_kl=0.05)
    stats = policy_update(model=model, reference=reference, optimizer=opt, batch=batch, config=cfg)
    assert stats.steps == 6 and not stats.early_stopped and stats.stop_reason is None
    assert 0 < stats.pulled_back < 1 and stats.changed
    assert 0 < stats.kl_per_post + KL_CONFIDENCE * stats.kl_se <= 0.05
    assert stats.kl_per_post == pytest.approx(measure_kl(model, reference, batch, start=start))
    assert all(g["lr"] == pytest.approx(stats.pulled_back) for g in opt.param_groups)


def test_max_kl_bounds_the_drift_in_nats_per_post() -> None:
    model = tiny()
    reference = copy.deepcopy(model).requires_grad_(False)
    batch = batch_for(model, [3.0, -3.0, 3.0, -3.0])
    start = copy.deepcopy(model)
    opt = model.configure_optimizer(lr=3e-3, weight_decay=0.0)
    cfg = OnlineUpdateConfig(epochs=50, minibatch_size=2, kl_coef=0.0, max_kl=0.5, clip=10.0)
    stats = policy_update(model=model, reference=reference, optimizer=opt, batch=batch, config=cfg)
    assert stats.steps == 100 and stats.stop_reason is None and stats.pulled_back < 1
    kl = measure_kl(model, reference, batch, start=start)
    assert 0 < kl <= 0.5 and stats.kl == pytest.approx(kl, rel=1e-4)
    assert stats.kl == stats.kl_per_post
    # per token: the same weighted sum over the weighted number of tokens
    assert 0 < stats.kl_per_token < stats.kl_per_post
    assert 0 < stats.entropy <= math.log(model.config.vocab_size) + 1e-5
    assert stats.ratio_max >= stats.ratio_mean > 0


def test_max_kl_is_enforced_on_the_probe_of_recent_samples() -> None:
    """With a probe (the policy's own recent samples), drift is measured and bounded there,
    not on the rewarded batch: the move is scaled back where the probe crosses the budget."""
    model = tiny()
    reference = copy.deepcopy(model).requires_grad_(False)
    batch = batch_for(model, [3.0, -3.0, 3.0, -3.0])
    probe = probe_for(batch)
    cfg = OnlineUpdateConfig(epochs=50, minibatch_size=2, kl_coef=0.0, max_kl=0.5, clip=10.0)

    def run(with_probe: bool) -> tuple[Transformer, Any]:
        m = copy.deepcopy(model)
        torch.manual_seed(1)
        opt = m.configure_optimizer(lr=3e-3, weight_decay=0.0)
        stats = policy_update(
            model=m, reference=reference, optimizer=opt, batch=batch, config=cfg,
            probe=probe if with_probe else (),
        )  # fmt: skip
        return m, stats

    probed, stats = run(True)
    assert stats.measured_on == "probe" and stats.pulled_back < 1
    assert stats.kl_per_post_before == 0.0
    # weighted for the update's own move (the probe was sampled before it)
    kl = measure_kl(probed, reference, probe, start=model)
    assert 0 < kl <= 0.5 and stats.kl_per_post == pytest.approx(kl, rel=1e-4)
    assert kl != pytest.approx(measure_kl(probed, reference, probe), rel=1e-3)
    unprobed, plain = run(False)
    assert plain.measured_on == "batch"
    kl_batch = measure_kl(unprobed, reference, batch, start=model)
    assert plain.kl_per_post == pytest.approx(kl_batch, rel=1e-4)
    # the two sets disagree, and each run kept to the bound on its own set
    assert measure_kl(probed, reference, batch) != pytest.approx(plain.kl_per_post)


class FailAt(torch.optim.AdamW):
    """AdamW that fails on its `at`-th step: a NaN in the weights after the step before it
    (the next loss is NaN) or an exception."""

    def __init__(self, model: Transformer, at: int, how: str) -> None:
        super().__init__(model.parameters(), lr=1e-3)
        self.calls, self.at, self.how = 0, at, how

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.calls += 1
        if self.how == "raise" and self.calls == self.at:
            raise RuntimeError("boom")
        super().step()
        if self.how == "nan" and self.calls == self.at - 1:
            with torch.no_grad():
                next(iter(self.param_groups[0]["params"])).fill_(float("nan"))


@pytest.mark.parametrize("how", ["raise", "nan"])
def test_a_failed_update_changes_nothing(how: str) -> None:
    model = tiny()
    reference = copy.deepcopy(model).requires_grad_(False)
    batch = batch_for(model, [1.0, -1.0, 1.0, -1.0])
    opt = FailAt(model, at=3, how=how)
    cfg = OnlineUpdateConfig(epochs=1, minibatch_size=1, kl_coef=0.1, max_kl=None)
    opt.at = 10**9  # a first update that works, so the optimizer has moments to keep
    policy_update(model=model, reference=reference, optimizer=opt, batch=batch, config=cfg)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = copy.deepcopy(opt.state_dict())
    opt.calls, opt.at = 0, 3
    with pytest.raises((RuntimeError, FloatingPointError)):
        policy_update(model=model, reference=reference, optimizer=opt, batch=batch, config=cfg)
    assert opt.calls >= 2  # it failed half-way, after steps were taken
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert now["state"].keys() == state["state"].keys()
    for i, s in state["state"].items():
        assert all(
            torch.equal(torch.as_tensor(s[k]), torch.as_tensor(now["state"][i][k])) for k in s
        )


def test_both_methods_normalise_per_token() -> None:
    """On fresh samples (ratio 1, weights 1, no KL) one step of each method has the same
    gradient: REINFORCE's loss is normalised per token like the clipped one's."""
    model = tiny()
    batch = batch_for(model, [1.0, -0.5, 2.0, -1.0])
    grads = {}
    for method in ("clipped", "reinforce"):
        opt = RecordGrads(model)
        cfg = OnlineUpdateConfig(
            method=method,  # type: ignore[arg-type]
            epochs=1, minibatch_size=8, kl_coef=0.0, max_kl=None, grad_clip=1e9,
        )  # fmt: skip
        policy_update(model=model, reference=None, optimizer=opt, batch=batch, config=cfg)
        grads[method] = torch.cat([g.flatten() for g in opt.grads[0]])
    assert grads["clipped"].norm() > 0
    torch.testing.assert_close(grads["clipped"], grads["reinforce"], atol=1e-6, rtol=1e-4)


def _step_grads(model: Transformer, batch: list[Trajectory], method: str, mb: int = 8) -> Tensor:
    opt = RecordGrads(model)
    cfg = OnlineUpdateConfig(
        method=method,  # type: ignore[arg-type]
        epochs=1, minibatch_size=mb, kl_coef=0.0, max_kl=None, grad_clip=1e9,
    )  # fmt: skip
    policy_update(model=model, reference=None, optimizer=opt, batch=batch, config=cfg)
    return torch.cat([torch.cat([g.flatten() for g in step]) for step in opt.grads])


@pytest.mark.parametrize("method", ["clipped", "reinforce"])
def test_a_trajectory_counts_by_its_weight(method: str) -> None:
    """Weight 0 adds nothing to the policy gradient; weight 1/2 on every post is the same
    weighted mean as weight 1 (the loss is divided by the weighted tokens); halving one
    post's weight is halving its tokens' share."""
    model = tiny()
    batch = batch_for(model, [1.0, -0.5, 2.0, -1.0])
    plain = _step_grads(model, batch[:2], method)
    with_zero = [*batch[:2], *(dataclasses.replace(t, weight=0.0) for t in batch[2:])]
    torch.testing.assert_close(_step_grads(model, with_zero, method), plain)
    # the weighted mean: divided by 6 tokens (4 + 2) in both
    halves = [dataclasses.replace(t, weight=0.5) for t in batch[:2]]
    torch.testing.assert_close(_step_grads(model, halves, method), plain, atol=1e-7, rtol=1e-5)
    # post 0 alone, and post 1 alone, recombined with post 1 at half weight
    g0 = _step_grads(model, batch[:1], method) * 4
    g1 = _step_grads(model, batch[1:2], method) * 2
    light = [batch[0], dataclasses.replace(batch[1], weight=0.5)]
    torch.testing.assert_close(
        _step_grads(model, light, method), (g0 + 0.5 * g1) / 5, atol=1e-7, rtol=1e-5
    )


def test_light_minibatches_move_the_policy_less() -> None:
    """Minibatches share one normaliser: a minibatch of weight-0.1 trajectories gets a tenth
    of the gradient the same trajectories get at weight 1."""
    model = tiny()
    batch = batch_for(model, [1.0, -0.5, 2.0, -1.0])
    torch.manual_seed(0)
    heavy = _step_grads(model, batch, "clipped", mb=1)
    torch.manual_seed(0)
    light = _step_grads(model, [dataclasses.replace(t, weight=0.1) for t in batch], "clipped", mb=1)
    torch.testing.assert_close(light, heavy, atol=1e-7, rtol=1e-5)  # all light: the same mean
    mixed = [*batch[:2], *(dataclasses.replace(t, weight=0.1) for t in batch[2:])]
    torch.manual_seed(0)
    order = torch.randperm(4).tolist()
    torch.manual_seed(0)
    steps = _step_grads(model, mixed, "clipped", mb=1).view(4, -1)
    torch.manual_seed(0)
    unit = _step_grads(model, batch, "clipped", mb=1).view(4, -1)
    for step, i in enumerate(order):
        scale = (1.0 if i < 2 else 0.1) * (4 + 2 + 3 + 5) / (4 + 2 + 0.1 * (3 + 5))
        torch.testing.assert_close(steps[step], unit[step] * scale, atol=1e-7, rtol=1e-5)


def test_a_weight_must_be_finite_and_not_negative() -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="weight"):
            Trajectory([1], [2], [-0.1], 1.0, weight=bad)


def test_clip_fraction_by_version_lag() -> None:
    model = tiny()
    lps = sequence_logprobs(model, PROMPTS, COMPLETIONS)
    batch = [
        Trajectory(p, c, lp, a, policy_version=v)
        for p, c, lp, a, v in zip(
            PROMPTS, COMPLETIONS, lps, [2.0, -2.0, 2.0, -2.0], [5, 5, 3, 3], strict=True
        )
    ]
    opt = model.configure_optimizer(lr=3e-2, weight_decay=0.0)
    cfg = OnlineUpdateConfig(epochs=4, minibatch_size=2, kl_coef=0.0, max_kl=None, clip=0.05)
    stats = policy_update(
        model=model, reference=None, optimizer=opt, batch=batch, config=cfg, current_version=6
    )
    assert set(stats.clip_fraction_by_lag) == {1, 3}
    assert all(0 <= f <= 1 for f in stats.clip_fraction_by_lag.values())
    assert stats.clip_fraction > 0
    assert math.isnan(stats.kl_per_post)  # no reference, no KL


def test_between_steps_runs_after_each_kept_step_and_changes_nothing() -> None:
    """Generation between the steps (the worker's step boundary) sees the weights of a kept
    step, may put the model in eval mode, and leaves the update's result as it was; it runs
    between the chunks of the measuring passes too (here the start's and the end's)."""
    reference = tiny(1).requires_grad_(False)
    results = []
    for hook in (False, True):
        model = tiny(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        seen: list[float] = []

        def between(model: Transformer = model, seen: list[float] = seen) -> None:
            model.eval()  # as generation does
            seen.append(float(next(model.parameters()).detach().sum()))

        torch.manual_seed(3)
        stats = policy_update(
            model=model,
            reference=reference,
            optimizer=opt,
            batch=batch_for(model, [1.0, -1.0, 0.5, -0.5]),
            config=OnlineUpdateConfig(epochs=3, minibatch_size=2, max_kl=None),
            between_steps=between if hook else None,
        )
        if hook:
            # before the first step, after each of the 6, and between the two chunks of the
            # batch's pass at the start and at the end (measured there: no max_kl)
            assert len(seen) == 1 + stats.steps + 2 == 9
            assert len(set(seen)) == 7, "each step's weights, and the start's"
            assert seen[0] == seen[1] and seen[-2] == seen[-1]
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])


def test_completion_logprobs_match_the_full_forward() -> None:
    """The update's logprobs (head and softmax at the completion positions only) are the full
    forward's at those positions."""
    model = tiny(0)
    lps = sequence_logprobs(model, PROMPTS, COMPLETIONS, temperature=0.7)
    for p, c, lp in zip(PROMPTS, COMPLETIONS, lps, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([p + c]))[0, len(p) - 1 : -1] / 0.7
        want = F.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor(lp), want, atol=1e-5)


def shared_prompt_batch() -> list[Trajectory]:
    """Six posts of three prompts (a cycle's candidates share theirs), prompts and completions
    of different lengths, three temperatures."""
    prompts = [[1, 5, 9, 4, 4], [1, 7], [1, 5, 9, 4, 4], [1, 3, 3], [1, 7], [1, 5, 9, 4, 4]]
    completions = [[10, 11, 12], [20], [30, 31, 32, 33, 34], [40, 41], [50, 51, 52], [60, 2]]
    return [
        Trajectory(p, c, [0.0] * len(c), 0.0, temperature=t)
        for p, c, t in zip(prompts, completions, [1.0, 0.7, 1.0, 1.3, 0.7, 1.0], strict=True)
    ]


def test_shared_prompts_give_the_same_logprobs_kl_and_order() -> None:
    """A set whose posts share prompts (a cycle's candidates) runs each prompt once; the
    logprobs, each post's KL and entropy are those of running every post whole, in the
    trajectories' own order, whatever the prompts' lengths (left padding), the completions'
    (right padding) and temperatures."""
    from plaudit.learner._online import _Posts

    model, reference = tiny(0), tiny(1)
    batch = shared_prompt_batch()
    shared = _Posts(batch, reference, None, torch.device("cpu"), 8)
    assert shared.chunks[0].prefix is not None  # 3 distinct prompts among 6 posts
    got = shared.measure(model)
    for t, lp in zip(batch, got.logprobs, strict=True):  # each post on its own
        want = sequence_logprobs(model, [t.prompt], [t.completion], temperature=t.temperature)
        assert torch.allclose(lp, torch.tensor(want[0]), atol=1e-5)
    alone = [_Posts([t], reference, None, torch.device("cpu"), 8).measure(model) for t in batch]
    assert all(a.kl_posts is not None for a in alone)
    want_kl = torch.cat([a.kl_posts for a in alone if a.kl_posts is not None])
    assert got.kl_posts is not None and torch.allclose(got.kl_posts, want_kl, atol=1e-5)
    tokens = sum(len(t.completion) for t in batch)
    entropy = sum(a.entropy * len(t.completion) for a, t in zip(alone, batch, strict=True))
    assert got.entropy == pytest.approx(entropy / tokens, abs=1e-5)
    # the reference's rows as a training minibatch lays them out, in any order
    mb = [4, 0, 2]
    ref = shared.reference_rows(mb)
    want_ref = torch.cat(
        [_Posts([batch[i]], reference, None, torch.device("cpu"), 1).reference_logp(0) for i in mb]  # type: ignore[misc]
    )
    assert ref is not None and torch.allclose(ref, want_ref, atol=1e-5)


def test_shared_prompts_give_the_same_gradient() -> None:
    """A training minibatch whose posts share prompts runs each prompt once, with gradient:
    the loss and every weight's gradient are those of running every post whole."""
    from plaudit.learner._online import _completion_logp, _rows

    model = tiny(0).train()
    prompts = [[1, 5, 9, 4], [1, 7], [1, 5, 9, 4], [1, 7], [1, 5, 9, 4]]
    completions = [[10, 11, 12], [20, 21, 22, 23], [30], [40, 41], [50, 51, 52, 53, 54]]
    batch = [
        Trajectory(p, c, [0.0] * len(c), 0.0, temperature=t)
        for p, c, t in zip(prompts, completions, [1.0, 0.7, 1.0, 1.3, 1.0], strict=True)
    ]
    coef = torch.randn(sum(map(len, completions)), generator=torch.Generator().manual_seed(0))
    # Each post on its own (nothing to share) against all of them in one minibatch.
    offsets = [0, *itertools.accumulate(map(len, completions))]
    parts = [([t], coef[offsets[i] : offsets[i + 1]]) for i, t in enumerate(batch)]
    grads, losses = [], []
    for share, sets in ((False, parts), (True, [(batch, coef)])):
        model.zero_grad(set_to_none=True)
        total = 0.0
        for posts, c in sets:
            rows = _rows(posts, None, torch.device("cpu"))
            assert (rows.prefix is not None) == share
            logp = _completion_logp(model, rows)
            picked = logp.gather(-1, rows.targets[:, None]).squeeze(-1)
            loss = (c * picked).sum() + logp.exp().mul(logp).sum()  # policy and entropy terms
            loss.backward()  # type: ignore[no-untyped-call]  # gradients add up over the posts
            total += float(loss.detach())
        losses.append(total)
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert len(grads[0]) == len(grads[1]) == len(list(model.parameters()))
    for plain, shared in zip(*grads, strict=True):
        assert torch.allclose(shared, plain, atol=1e-5, rtol=1e-4)


def test_the_drift_error_stays_honest_when_the_weights_fall_on_one_post() -> None:
    """A move that puts nearly all the importance weight on one post: the delta method's
    standard error goes to 0, the bound's is floored by the probe's spread over the effective
    sample size; with no move both are the plain standard error."""
    from plaudit.learner._online import _Pass

    kl = torch.tensor([1.0, 2.0, 3.0, 4.0])
    start = _Pass(logprobs=[torch.zeros(3)] * 4, kl_per_post=2.5, kl_per_token=0.8, entropy=1.0)
    moved = dataclasses.replace(start, logprobs=[torch.full((3,), 10.0)] + [torch.zeros(3)] * 3)
    moved.kl_posts = kl
    far = moved.moved_from(start)
    assert far.kl_per_post == pytest.approx(1.0, abs=1e-9)
    assert far.kl_se >= float(kl.std()) * 0.99  # an effective sample of one post
    still = dataclasses.replace(start, kl_posts=kl).moved_from(start)
    assert still.kl_per_post == pytest.approx(2.5)
    assert still.kl_se == pytest.approx(float(kl.std()) / 2)


def test_an_update_is_reproducible_whatever_the_global_generator() -> None:
    """The minibatch order is drawn from the policy version, not torch's global generator
    (which every process seeds at random): the same batch at the same version trains the same
    way, so a learning run can be replayed; another version may order it otherwise."""

    def weights_after(global_seed: int, version: int) -> Tensor:
        model = tiny(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        torch.manual_seed(global_seed)
        policy_update(
            model=model,
            reference=tiny(1).requires_grad_(False),
            optimizer=opt,
            batch=batch_for(model, [1.0, -1.0, 0.5, -0.5]),
            config=OnlineUpdateConfig(epochs=3, minibatch_size=1, max_kl=None),
            current_version=version,
        )
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = weights_after(1, version=7)
    assert torch.equal(first, weights_after(2, version=7))
    assert not torch.equal(first, weights_after(1, version=8)), "the order follows the version"


def test_the_drift_is_checked_after_each_epoch_and_where_an_update_stops() -> None:
    """The probe is measured at the update's start and after each epoch's last step, not after
    every minibatch (a probe pass costs a forward as large as a step's); an update stopped
    mid-epoch measures the weights it leaves, so its figures are theirs."""
    import threading

    import plaudit.learner._online as online

    model = tiny()
    reference = copy.deepcopy(model).requires_grad_(False)
    batch = batch_for(model, [3.0, -3.0, 3.0, -3.0])
    probe = probe_for(batch)
    cfg = OnlineUpdateConfig(epochs=3, minibatch_size=1, kl_coef=0.0, max_kl=1e6)
    opt = model.configure_optimizer(lr=1e-2, weight_decay=0.0)
    passes = 0
    measure = online._Posts.measure

    def counted(self: Any, m: Transformer, between: Any = None) -> Any:
        nonlocal passes
        passes += int(self.trajectories[0] is probe[0])
        return measure(self, m, between)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(online._Posts, "measure", counted)
        stats = policy_update(
            model=model, reference=reference, optimizer=opt, batch=batch, config=cfg, probe=probe
        )
    assert stats.steps == 12 and passes == 1 + 3, "the start, then each epoch's end"

    stop, taken, step = threading.Event(), 0, opt.step

    def stop_after_two(*args: Any, **kwargs: Any) -> Any:
        nonlocal taken
        taken += 1
        if taken == 2:
            stop.set()
        return step(*args, **kwargs)

    opt.step = stop_after_two  # type: ignore[method-assign]
    start = copy.deepcopy(model)
    stats = policy_update(
        model=model, reference=reference, optimizer=opt, batch=batch, config=cfg,
        probe=probe, should_stop=stop,
    )  # fmt: skip
    assert stats.steps == 2 and stats.stop_reason == "interrupted"
    assert stats.kl_per_post == pytest.approx(
        measure_kl(model, reference, probe, start=start), rel=1e-4
    )


def test_minibatches_keep_the_posts_of_a_prompt_together() -> None:
    """Posts that share a prompt (a cycle's candidates) train in the same minibatch, whatever
    their order in the batch, so each step runs one prompt, not most of the batch's."""
    import plaudit.learner._online as online

    model = tiny()
    prompts = [[1, 5, 9], [1, 7, 7], [1, 3, 3, 3], [1, 2, 6]]
    batch = [
        Trajectory(prompts[i % 4], [10 + i, 11 + i, 12], [-3.0] * 3, (-1.0) ** i) for i in range(8)
    ]  # interleaved: posts 0 and 4 share a prompt, 1 and 5, ...
    steps: list[set[tuple[int, ...]]] = []
    rows = online._rows

    def recorded(trajectories: Any, *args: Any) -> Any:  # the steps' and the measurements'
        steps.append({tuple(t.prompt) for t in trajectories})
        return rows(trajectories, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(online, "_rows", recorded)
        stats = policy_update(
            model=model,
            reference=copy.deepcopy(model).requires_grad_(False),
            optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
            batch=batch,
            config=OnlineUpdateConfig(epochs=2, minibatch_size=2, max_kl=None),
            current_version=3,
        )
    assert stats.steps == 8 and len(steps) > 8
    assert all(len(s) == 1 for s in steps), steps
