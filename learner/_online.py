"""Online learning from rewards: a short policy-gradient update on posts that were rewarded.

Rewards arrive hours after their posts were sampled, when the policy has already moved on, so
every sample is stale: it was drawn from a *behaviour* policy (the weights of its post time,
with temperature and top-p/top-k truncation) that is no longer the current one. The update:

- ``clipped`` (decoupled PPO, Hilton et al. 2021, "Batch size-invariance for policy
  optimization"): at the start of the update, before any step and without gradient, the
  current weights' logprobs of every completion token are computed once: the *proximal*
  policy π_prox. Each token's loss is ``w * min(r * A_t, clip(r, 1-clip, 1+clip) * A_t)``
  with ``r = π / π_prox`` (so the clip is centred on where this update started, not on the
  stale behaviour policy, and a stale sample whose ratio to its behaviour policy has already
  moved still gives gradient) and ``w = min(π_prox / π_behaviour, IS_TRUNCATION)``, a
  stop-gradient importance weight, truncated so one stale token cannot dominate (and the
  loss stays bounded where the advantage is negative and π_prox >> π_behaviour). Several
  epochs of minibatches over the batch.
- KL penalty, exact: ``kl_coef`` times KL(π || π_ref) computed over the whole vocabulary
  at each of the minibatch's completion positions (at the post's temperature), with its
  gradient, normalised per token like the surrogate. Why this form: it has no sampling
  noise, its gradient is exactly that of KL(π || π_ref) at those positions whatever policy
  sampled them (so stale samples need no correction for it), it follows the weights during
  the update (a penalty frozen at the update's start would not restrain the update's own
  drift), and it is the very quantity ``max_kl`` bounds. On samples from π its gradient
  equals the expected gradient of the k2 estimate ``0.5 (log π(a) - log π_ref(a))^2``, not
  the k3 estimate ``exp(d) - d - 1`` (d = log π_ref - log π) used directly as a loss before,
  whose expected gradient is that of KL(π_ref || π), the reverse direction, and on stale
  samples that of neither. It costs a reference forward per step and one more (B, T, V)
  tensor.
- ``max_kl``, a drift budget in nats per post: after each optimizer step the exact KL(π ||
  π_ref) over the whole vocabulary at each post's temperature is summed over each post's
  completion positions and averaged over the posts of the *probe*, each post weighted by the
  self-normalised importance weight π(post) / π_start(post) of the update's own move (the
  probe was sampled before it). A step that takes the upper end of its one-sided 95% interval
  (``KL_CONFIDENCE`` standard errors above the estimate) above ``max_kl`` (and above where it
  was before the step) is undone: the weights and the optimizer state go back to before that
  step and the update stops. The
  probe is a set of recent samples of the policy itself (the caller's newest candidates):
  the budget is about the posts the policy writes now, and along its own samples the sum of
  per-position KLs is an unbiased, low-variance estimate of the KL of whole posts. The
  rewarded batch is a poor stand-in: its prefixes were sampled by older policies, away from
  where the policy has since moved (bounded at 5 nats per post on its batches, a run's fresh
  samples ended at 5.08). Without a probe, the batch is measured.
- ``reinforce``: the baseline to beat: plain REINFORCE, one optimizer step on the whole batch,
  ``-A * log π(a_t)``; no KL, no clipping, no IS weights, no ``max_kl`` (its advantage is the
  reward minus a moving-average baseline, computed by the controller).
- both methods normalise their loss the same way, per token: the sum over the minibatch's
  completion tokens divided by their number (REINFORCE's minibatch is the whole batch), so
  a learning rate means the same step size for both.
- all-or-nothing: an update that fails half-way (an exception, a NaN loss, a non-finite KL
  after a step) restores the weights and the optimizer state of before the update and
  re-raises. ``should_stop`` (a shutdown) ends it at a step boundary, keeping the steps taken.
- reported (`UpdateStats`): KL per post and per token after (and per post before) the update,
  the policy's mean per-token entropy on the batch, the ratio π / π_prox (mean, max), the
  clip fraction (tokens with |ratio - 1| > clip) overall and by version lag, the mean
  truncated IS weight, steps kept and undone.

Simplifications (kept on purpose):
- the update's π (new and proximal) is the full softmax at each post's own temperature
  (``Trajectory.temperature``), not the top-p/top-k truncated distribution the post was
  sampled from: the truncation mask moves with the weights and would make tokens the policy
  no longer ranks high -inf. The behaviour logprobs are those of the truncated, renormalised
  distribution actually sampled (the engine returns them), so ``π_prox / π_behaviour`` is a
  true importance ratio between the two, which the weight w (truncated at ``IS_TRUNCATION``)
  corrects: for a fresh sample w is the mass the truncation kept (below 1), for a stale one
  it also carries the policy's move since. Tokens the truncation cut are never sampled, so
  their share of the gradient is missing: a bias any truncated sampling brings. Greedy posts
  (temperature 0) are treated as temperature 1.
- per-token (not per-sequence) importance weights, as PPO does.
- one scalar advantage per post, spread over its tokens (no critic, no per-token credit).
- the KL penalty is the per-position KL at the batch's prefixes (sampled by older policies),
  not the KL of whole posts under π: it does not credit a token with the KL of the prefixes it
  leads to (classic RLHF's reward shaping would, but computed once from π_prox it stays
  constant through the update and does not restrain it).
- only sampled tokens carry loss, the post's end token included (so ending a post is
  credited); the prompt is context.
- the probe is fresh at the update's start only: its samples are those of the policy before
  the update's own steps (a few small steps; the next update measures on newer samples).
  Measuring after every step costs a forward pass of the policy and of the reference over it.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._model import Transformer

Method = Literal["clipped", "reinforce"]

# The importance weight π_prox / π_behaviour of a stale token is truncated at this value.
IS_TRUNCATION = 2.0
# max_kl bounds the KL per post this many standard errors above its estimate (one-sided 95%).
KL_CONFIDENCE = 1.645


@dataclass(frozen=True)
class Trajectory:
    """One rewarded post, as the online update sees it."""

    prompt: list[int]  # the prompt's token ids, as the model saw them
    # The sampled token ids, the stop token that ended the post included (if it ended).
    completion: list[int]
    # Per completion token: its logprob under the distribution it was sampled from
    # (temperature, then top-k/top-p truncation, renormalised), as `Candidate.logprobs` holds.
    behaviour_logprobs: list[float]
    advantage: float  # reward minus baseline (normalised and clipped by the controller)
    # The temperature the post was sampled at; the update's π is the full softmax at it.
    # None: `OnlineUpdateConfig.temperature` (posts stored before it was recorded).
    temperature: float | None = None
    top_p: float | None = None  # the post's top-p (a record; the update does not use it)
    top_k: int | None = None  # the post's top-k (a record; the update does not use it)
    # The policy version that sampled the post: with the update's `current_version`, the
    # clip fraction is reported by version lag.
    policy_version: int | None = None


@dataclass(frozen=True)
class OnlineUpdateConfig:
    method: Method = "clipped"
    epochs: int = 2  # passes over the batch (clipped only)
    clip: float = 0.2  # PPO clip of the ratio π / π_prox
    kl_coef: float = 0.05  # weight of the KL(policy || reference) cost (clipped only)
    # Drift budget: KL(policy || reference) in nats per post (summed over a post's tokens,
    # averaged over the batch's posts); a step that crosses it is undone and the update
    # stops (clipped only). None: no budget.
    max_kl: float | None = 5.0
    grad_clip: float = 1.0
    temperature: float = 1.0  # for trajectories that carry no temperature of their own
    minibatch_size: int = 8


@dataclass(frozen=True)
class UpdateStats:
    loss: float  # mean over the steps kept
    # KL(policy || reference) after the update, nats per post (exact over the vocabulary at
    # each position of the posts measured: the probe, or the batch without one)
    kl_per_post: float
    kl_per_token: float  # the same, per completion token
    kl_per_post_before: float  # kl_per_post before the update
    kl_se: float  # the standard error of kl_per_post (max_kl bounds kl + KL_CONFIDENCE * se)
    entropy: float  # mean per-token entropy of the policy after the update, on the same posts
    measured_on: Literal["probe", "batch"]  # the posts KL and entropy were measured on
    clip_fraction: float  # tokens with |π/π_prox - 1| > clip, over all steps (kept or not)
    clip_fraction_by_lag: dict[int, float]  # the same by version lag (current - post's)
    ratio_mean: float  # π / π_prox over the tokens of all steps
    ratio_max: float
    # Truncated π_prox / π_behaviour, mean over the batch's tokens (reinforce: not used by
    # its loss, reported as a measure of how stale the batch is).
    is_weight_mean: float
    steps: int  # optimizer steps kept
    steps_undone: int  # steps undone because they crossed max_kl
    tokens: int  # completion tokens in the batch
    early_stopped: bool  # stopped before its last step (max_kl or should_stop)
    stop_reason: Literal["max_kl", "interrupted"] | None

    @property
    def kl(self) -> float:
        """KL(policy || reference) after the update in nats per post (= ``kl_per_post``), the
        unit of ``OnlineUpdateConfig.max_kl``; NaN without a reference."""
        return self.kl_per_post


def _temperature(t: Trajectory, config: OnlineUpdateConfig | None) -> float:
    temp = t.temperature if t.temperature is not None else (config.temperature if config else 1)
    return float(temp) if temp and temp > 0 else 1.0  # greedy: the model's own softmax


def _pad_batch(
    trajectories: Sequence[Trajectory], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded inputs (B, T), targets (B, T) and a mask (B, T) of completion positions.
    The mask's True entries, read row by row, are the completion tokens in order."""
    seqs = [t.prompt + t.completion for t in trajectories]
    T = max(len(s) for s in seqs) - 1
    B = len(seqs)
    idx = torch.zeros(B, T, dtype=torch.long)
    tgt = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, (t, s) in enumerate(zip(trajectories, seqs, strict=True)):
        n = len(s) - 1
        idx[i, :n] = torch.tensor(s[:-1])
        tgt[i, :n] = torch.tensor(s[1:])
        mask[i, len(t.prompt) - 1 : n] = True
    return idx.to(device), tgt.to(device), mask.to(device)


def _log_softmax(model: Transformer, idx: Tensor, temperatures: Tensor) -> Tensor:
    """(B, T, V) fp32 log-softmax of the logits divided by each row's temperature (B,)."""
    logits = model(idx).float()  # (B, T, V)
    if bool((temperatures != 1).any()):
        logits = logits / temperatures[:, None, None]
    return F.log_softmax(logits, dim=-1)


def _temperatures(
    trajectories: Sequence[Trajectory], config: OnlineUpdateConfig | None, device: torch.device
) -> Tensor:
    return torch.tensor([_temperature(t, config) for t in trajectories], device=device)


def _place(values: Sequence[Tensor], mask: Tensor) -> Tensor:
    """Per-trajectory token values (each (n_i,)) laid out on the (B, T) mask, 0 elsewhere."""
    out = torch.zeros(mask.shape, device=mask.device)
    out[mask] = torch.cat(list(values)).to(mask.device)
    return out


def sequence_logprobs(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
) -> list[list[float]]:
    """Per-token logprobs of each completion after its prompt under the full softmax at
    ``temperature``: the update's π (not the behaviour logprobs of top-p/top-k samples)."""
    assert len(prompts) == len(completions), "one prompt per completion"
    device = next(model.parameters()).device
    trajs = [
        Trajectory(list(p), list(c), [], 0.0, temperature=temperature)
        for p, c in zip(prompts, completions, strict=True)
    ]
    out: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(trajs), 8):
            chunk = [t for t in trajs[start : start + 8] if t.completion]
            if chunk:
                idx, tgt, mask = _pad_batch(chunk, device)
                logp = _log_softmax(model, idx, _temperatures(chunk, None, device))
                lp = logp.gather(-1, tgt[..., None]).squeeze(-1)
                rows = iter(lp[i][mask[i]].tolist() for i in range(len(chunk)))
            for t in trajs[start : start + 8]:
                out.append(next(rows) if t.completion else [])
    return out


# --- one pass over the batch: logprobs, exact KL, entropy ------------------------------------


@dataclass
class _Pass:
    """What one no-grad pass of the policy (and the reference) over the batch found."""

    logprobs: list[Tensor]  # per trajectory (n_i,): log π(a_t), full softmax at its temperature
    kl_per_post: float  # exact KL(π || π_ref), summed per post, mean over posts; NaN: no ref
    kl_per_token: float
    entropy: float  # mean per-token entropy of π
    kl_posts: Tensor | None = None  # (N,) each post's KL sum; None without a reference
    kl_se: float = 0.0  # the standard error of kl_per_post (posts differ)

    @property
    def kl_upper(self) -> float:
        """The upper end of a one-sided 95% interval of the KL per post: what ``max_kl``
        bounds, so a step is kept only when the drift is inside the budget with confidence,
        not when a few lucky posts say so (the update keeps stepping until the estimate
        crosses the budget, so bounding the estimate itself leaves the true drift above it:
        measured, 4 of 5 runs ended 3-18% over on 200 fresh samples)."""
        return self.kl_per_post + KL_CONFIDENCE * self.kl_se

    def moved_from(self, start: _Pass) -> _Pass:
        """This pass's KL re-weighted for the posts the weights now write: the posts were
        sampled before the update (by the weights `start` measured), so each one's KL counts
        with the self-normalised importance weight π(post) / π_start(post) of the update's
        own move. Unweighted, a measure on pre-update samples misses where the update has
        taken the policy (measured: bounded at 5 nats per post that way, 4 of 5 runs ended
        at 5.4-6.1 on 200 fresh samples)."""
        if self.kl_posts is None or not len(self.kl_posts):
            return self
        log_w = torch.stack(
            [(a - b).sum() for a, b in zip(self.logprobs, start.logprobs, strict=True)]
        )
        w = torch.softmax(log_w, dim=0)  # self-normalised
        lengths = torch.tensor([float(len(x)) for x in self.logprobs])
        kl_post = float((w * self.kl_posts).sum())
        kl_token = kl_post / max(float((w * lengths).sum()), 1.0)
        # the delta-method variance of a self-normalised importance-sampling mean
        se = float((w.square() * (self.kl_posts - kl_post).square()).sum().sqrt())
        return _Pass(
            logprobs=self.logprobs,
            kl_per_post=kl_post,
            kl_per_token=kl_token,
            entropy=self.entropy,
            kl_posts=self.kl_posts,
            kl_se=se,
        )


def _batch_pass(
    model: Transformer,
    reference: Transformer | None,
    batch: Sequence[Trajectory],
    config: OnlineUpdateConfig | None,
    *,
    chunk_size: int = 8,
) -> _Pass:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logprobs: list[Tensor] = []
    kl_posts: list[Tensor] = []
    entropy_sum, tokens = 0.0, 0
    try:
        with torch.inference_mode():
            for start in range(0, len(batch), chunk_size):
                chunk = batch[start : start + chunk_size]
                idx, tgt, mask = _pad_batch(chunk, device)
                temps = _temperatures(chunk, config, device)
                logp = _log_softmax(model, idx, temps)  # (B, T, V)
                picked = logp.gather(-1, tgt[..., None]).squeeze(-1)  # (B, T)
                p = logp.exp()
                ent = -(p * logp).sum(-1)  # (B, T)
                entropy_sum += float(ent[mask].sum())
                tokens += int(mask.sum())
                logprobs.extend(picked[i][mask[i]].cpu() for i in range(len(chunk)))
                if reference is not None:
                    ref_logp = _log_softmax(reference, idx, temps)
                    kl = (p * (logp - ref_logp)).sum(-1)  # (B, T), exact per position
                    kl_posts.append((kl * mask).sum(-1).cpu())  # (B,)
    finally:
        model.train(was_training)
    total: Tensor | None = None
    kl_se = 0.0
    if reference is None:
        kl_post = kl_token = math.nan
    else:
        total = torch.cat(kl_posts)
        kl_post = float(total.mean())
        kl_se = float(total.std() / math.sqrt(len(total))) if len(total) > 1 else 0.0
        kl_token = float(total.sum()) / max(tokens, 1)
    return _Pass(
        logprobs=logprobs,
        kl_posts=total,
        kl_se=kl_se,
        kl_per_post=kl_post,
        kl_per_token=kl_token,
        entropy=entropy_sum / max(tokens, 1),
    )


def measure_kl(
    model: Transformer,
    reference: Transformer | None,
    batch: Sequence[Trajectory],
    *,
    temperature: float = 1.0,
    start: Transformer | None = None,
) -> float:
    """Exact KL(policy || reference) on the batch's completion positions, over the whole
    vocabulary at each post's temperature (``temperature`` for posts without one): summed over
    each post's tokens, averaged over posts (nats per post, the unit of ``max_kl``). With
    ``start`` (the weights that sampled the posts), each post weighs π(post) / π_start(post),
    self-normalised, as the update measures its drift."""
    if reference is None:
        return math.nan
    batch = [t for t in batch if t.completion]
    if not batch:
        return 0.0
    config = OnlineUpdateConfig(temperature=temperature)
    now = _batch_pass(model, reference, batch, config)
    if start is not None:
        now = now.moved_from(_batch_pass(start, reference, batch, config))
    return now.kl_per_post


# --- the loss ----------------------------------------------------------------------------


@dataclass
class _Prepared:
    """A trajectory with what the update computed for it at its start (without grad)."""

    traj: Trajectory
    prox: Tensor  # (n,) log π_prox(a_t): the weights at the start of the update
    weight: Tensor  # (n,) min(π_prox / π_behaviour, IS_TRUNCATION) (clipped only)


def _prepare(batch: Sequence[Trajectory], start: _Pass) -> list[_Prepared]:
    out = []
    for t, prox in zip(batch, start.logprobs, strict=True):
        behaviour = torch.tensor(t.behaviour_logprobs, dtype=torch.float32)
        log_w = (prox - behaviour).clamp(max=math.log(IS_TRUNCATION))
        # reinforce reports the weights (how stale the batch is) but does not use them
        out.append(_Prepared(traj=t, prox=prox, weight=log_w.exp()))
    return out


def _loss(
    model: Transformer,
    reference: Transformer | None,
    items: Sequence[_Prepared],
    config: OnlineUpdateConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """The minibatch's loss (normalised per token) with its gradient; the ratios π / π_prox
    (B, T) and the completion mask (B, T)."""
    device = next(model.parameters()).device
    trajs = [it.traj for it in items]
    idx, tgt, mask = _pad_batch(trajs, device)
    temps = _temperatures(trajs, config, device)
    logp = _log_softmax(model, idx, temps)  # (B, T, V)
    new_lp = logp.gather(-1, tgt[..., None]).squeeze(-1)  # (B, T)
    maskf = mask.float()
    denom = maskf.sum().clamp(min=1.0)
    adv = torch.tensor([t.advantage for t in trajs], device=device)[:, None]  # (B, 1)
    prox = _place([it.prox for it in items], mask)
    ratio = torch.exp((new_lp - prox).clamp(-20, 20)) * maskf  # (B, T), 0 off the mask
    if config.method == "reinforce":
        return -(adv * new_lp * maskf).sum() / denom, ratio.detach(), mask
    weight = _place([it.weight for it in items], mask)
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - config.clip, 1 + config.clip) * adv)
    loss = -(weight * surr * maskf).sum() / denom
    if reference is not None and config.kl_coef > 0:
        with torch.no_grad():
            ref_logp = _log_softmax(reference, idx, temps)
        kl = (logp.exp() * (logp - ref_logp)).sum(-1)  # (B, T) exact KL(π || π_ref)
        loss = loss + config.kl_coef * (kl * maskf).sum() / denom
    return loss, ratio.detach(), mask


# --- all-or-nothing ----------------------------------------------------------------------


class _Snapshot:
    """The weights and the optimizer state at one moment, to go back to."""

    def __init__(self, model: Transformer, optimizer: torch.optim.Optimizer) -> None:
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.optimizer: dict[str, Any] = copy.deepcopy(optimizer.state_dict())

    def restore(self, model: Transformer, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            model.load_state_dict(self.weights)
        # A copy: load_state_dict keeps tensors of the right device and dtype as they are, so
        # the snapshot's own tensors would be stepped on afterwards.
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))


def policy_update(
    *,
    model: Transformer,
    reference: Transformer | None,
    optimizer: torch.optim.Optimizer,
    batch: Sequence[Trajectory],
    config: OnlineUpdateConfig,
    should_stop: object = None,
    current_version: int | None = None,
    probe: Sequence[Trajectory] = (),
) -> UpdateStats:
    """Improve ``model`` on a batch of rewarded posts; returns what happened (see the module
    docstring for the method).

    ``probe``: recent samples of the policy (their advantages are not used) on which KL and
    entropy are measured and ``max_kl`` is enforced; empty: measured on the batch.

    ``should_stop``: an object with ``is_set()`` (a threading.Event) checked between steps, so
    a shutdown interrupts the update at a step boundary (the steps taken are kept).
    ``current_version``: the policy's version, for the clip fraction by version lag.
    All-or-nothing: on any exception the weights and the optimizer state are restored to
    those of before the call and the exception is re-raised."""
    batch = [t for t in batch if t.completion]
    assert batch, "policy_update needs at least one trajectory with a completion"
    for t in batch:
        assert len(t.behaviour_logprobs) == len(t.completion), (
            f"{len(t.behaviour_logprobs)} behaviour logprobs for {len(t.completion)} tokens"
        )
    probe = [t for t in probe if t.completion]
    initial = _Snapshot(model, optimizer)
    was_training = model.training
    try:
        return _update(
            model, reference, optimizer, batch, config, should_stop, current_version, probe
        )
    except BaseException:
        initial.restore(model, optimizer)
        raise
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)


def _update(
    model: Transformer,
    reference: Transformer | None,
    optimizer: torch.optim.Optimizer,
    batch: list[Trajectory],
    config: OnlineUpdateConfig,
    should_stop: object,
    current_version: int | None,
    probe: list[Trajectory],
) -> UpdateStats:
    clipped_method = config.method == "clipped"
    chunk = max(config.minibatch_size, 1)
    start = _batch_pass(model, reference, batch, config, chunk_size=chunk)
    items = _prepare(batch, start)
    bound = config.max_kl if clipped_method and reference is not None else None
    measured = probe or batch  # where drift is measured (and bounded)

    # the pass that measured the weights as they were at the start, on the measured posts
    first = start if not probe else _batch_pass(model, reference, probe, config, chunk_size=chunk)

    def measure() -> _Pass:
        after = _batch_pass(model, reference, measured, config, chunk_size=chunk)
        return after.moved_from(first)

    current = first  # the pass that measured the weights as they are now
    epochs = config.epochs if clipped_method else 1
    steps, undone, losses = 0, 0, []
    stop_reason: Literal["max_kl", "interrupted"] | None = None
    ratio_sum, ratio_max, ratio_n, clipped_n = 0.0, 0.0, 0, 0
    lag_clipped: dict[int, int] = defaultdict(int)
    lag_tokens: dict[int, int] = defaultdict(int)
    model.train()
    for _epoch in range(epochs):
        if clipped_method:
            order = torch.randperm(len(items)).tolist()
            minibatches = [
                [items[i] for i in order[s : s + chunk]] for s in range(0, len(items), chunk)
            ]
        else:
            minibatches = [list(items)]  # REINFORCE: one step on the whole batch
        for mb in minibatches:
            if should_stop is not None and should_stop.is_set():  # type: ignore[attr-defined]
                stop_reason = "interrupted"
                break
            loss, ratio, mask = _loss(model, reference, mb, config)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    "online update: the loss is not finite (NaN/inf); the weights were not "
                    "changed. Lower online.lr or check the rewards for NaN"
                )
            before = _Snapshot(model, optimizer) if bound is not None else None
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            # Ratio statistics of the tokens this step saw (before it moved the weights).
            r = ratio[mask]
            out = (r - 1).abs() > config.clip
            ratio_sum += float(r.sum())
            ratio_max = max(ratio_max, float(r.max()))
            ratio_n += r.numel()
            clipped_n += int(out.sum())
            if current_version is not None:
                for i, it in enumerate(mb):
                    if it.traj.policy_version is None:
                        continue
                    lag = current_version - it.traj.policy_version
                    lag_clipped[lag] += int(((ratio[i][mask[i]] - 1).abs() > config.clip).sum())
                    lag_tokens[lag] += int(mask[i].sum())
            if bound is not None:
                after = measure()
                if not math.isfinite(after.kl_per_post):
                    raise FloatingPointError(
                        "online update: the KL to the reference is not finite after a step; "
                        "the weights were not changed. Lower online.lr"
                    )
                if after.kl_upper > bound and after.kl_upper > current.kl_upper:
                    assert before is not None
                    before.restore(model, optimizer)
                    undone += 1
                    stop_reason = "max_kl"
                    break
                current = after
            steps += 1
            losses.append(float(loss.detach()))
        if stop_reason is not None:
            break
    if current is first and steps > 0:  # not measured after the steps (no max_kl)
        current = measure()
    if not math.isfinite(current.entropy):
        raise FloatingPointError(
            "online update: the policy's entropy is not finite after the update; the weights "
            "were not changed. Lower online.lr"
        )
    n_weights = sum(it.weight.numel() for it in items)
    return UpdateStats(
        loss=sum(losses) / max(len(losses), 1),
        kl_per_post=current.kl_per_post,
        kl_per_token=current.kl_per_token,
        kl_per_post_before=first.kl_per_post,
        kl_se=current.kl_se,
        entropy=current.entropy,
        measured_on="probe" if probe else "batch",
        clip_fraction=clipped_n / max(ratio_n, 1),
        clip_fraction_by_lag={
            lag: lag_clipped[lag] / max(n, 1) for lag, n in sorted(lag_tokens.items())
        },
        ratio_mean=ratio_sum / ratio_n if ratio_n else math.nan,
        ratio_max=ratio_max if ratio_n else math.nan,
        is_weight_mean=float(sum(float(it.weight.sum()) for it in items)) / max(n_weights, 1),
        steps=steps,
        steps_undone=undone,
        tokens=sum(len(t.completion) for t in batch),
        early_stopped=stop_reason is not None,
        stop_reason=stop_reason,
    )
