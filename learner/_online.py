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
- ``max_kl``, a drift budget in nats per post: after each epoch's last step (and where an
  update stops) the exact KL(π || π_ref) over the whole vocabulary at each post's
  temperature is summed over each post's completion positions and averaged over the posts of
  the *probe*, each post weighted by the self-normalised importance weight π(post) /
  π_start(post) of the update's own move (the probe was sampled before it). Steps that take
  the upper end of its one-sided 95% interval (``KL_CONFIDENCE`` standard errors above the
  estimate) above ``max_kl`` (and above where it was at the last check) are kept, and the
  policy's whole move from the reference is scaled back until that upper end is inside (the
  pull-back below, aimed at the upper end); the update goes on. From then on every step, in
  this update and the later ones, is taken at the learning rate times the product of all
  pull-backs so far (`scale_steps`), so the policy is always ``ref + s * (the sum of its
  steps at the configured rate)``: each reward keeps an equal share of the move and the
  budget sets only its length. Undoing the step (the rule before) spent its rewards for
  nothing, and scaling back without shrinking the steps to come weighed each new reward 1/s
  times the older ones, a policy held at the budget forgetting its older
  rewards geometrically (both measured, `scale_steps`). An update that starts with the
  estimate itself above ``max_kl`` (a new probe sees drift the last one missed) first pulls
  the policy back: its move from the
  reference is scaled down, weights ``ref + α (θ - ref)`` (with LoRA the adapters' ``B``
  times α, the same thing), α chosen from KL's quadratic growth near the reference to land
  the estimate at ``PULL_BACK_TARGET`` of the budget, measured again (a few tries). Without
  it a policy over the budget comes back only as fast as the KL penalty pulls it (measured,
  the slow learning test at lr 5e-5: one seed of five ended at 5.049 nats per post on 200
  fresh samples). The pull-back takes the point estimate, not the upper end the steps are
  held to: the upper end of a 32-post probe crosses the budget on noise well below it, and
  each pull-back takes back learning (`bench/online.py`, plaudit, 300 posts, seeds 0 and 1:
  fresh reward 0.0685 and 0.0726 with the upper end as trigger, 0.0751 and 0.0943 with the
  estimate; two seeds of runs that are not reproducible). The
  probe is a set of recent samples of the policy itself (the caller's newest candidates):
  the budget is about the posts the policy writes now, and along its own samples the sum of
  per-position KLs is an unbiased, low-variance estimate of the KL of whole posts. The
  rewarded batch is a poor stand-in: its prefixes were sampled by older policies, away from
  where the policy has since moved (bounded at 5 nats per post on its batches, a run's fresh
  samples ended at 5.08). Without a probe, the batch is measured.
  Why each epoch and not each minibatch step: a check is a forward over the probe, about as
  large as the batch (the candidates of the cycles since the last update), so a check after
  each of an epoch's steps costs as much as the epoch again (bench/online_update.py, `tiny`,
  8 rewarded posts with their candidates: 1.93x the floor against 1.30x). Between checks a
  few steps of the configured size run unchecked, and posts the torch worker samples there
  (``between_steps``) come from weights the next check may scale back: the budget holds at
  each check, so at every update's end, not at every step. Why not only at the update's end
  (a probe pass less: with 8 rewarded posts and 2 epochs, a third of the probe's cost): an
  epoch's steps taken past the budget are then scaled back with the whole move, and every
  later step with them (`scale_steps`), so the policy learns slower; measured, the learning
  test's 5 seeds at 192 posts ended lower in every seed (z +6.37, +3.50, +5.45, +5.29, +5.87
  against +7.81, +5.28, +7.14, +6.52, +6.19 checked each epoch).
- ``reinforce``: the baseline to beat: plain REINFORCE, one optimizer step on the whole batch,
  ``-A * log π(a_t)``; no KL, no clipping, no IS weights, no ``max_kl`` (its advantage is the
  reward minus a moving-average baseline, computed by the controller).
- both methods normalise their loss the same way, per token (REINFORCE's minibatch is the
  whole batch), so a learning rate means the same step size for both. A trajectory's
  ``weight`` (1 unless said: a candidate scored by a reward model counts less than a real
  reward) scales its tokens' policy-gradient terms, and each minibatch's sum is divided by
  the batch's weighted tokens per minibatch, the same for every minibatch of the update: a
  batch of weight-1 posts in one minibatch is the plain per-token mean, and a minibatch of
  light trajectories moves the policy less than one of rewarded posts. The KL penalty stays
  a plain mean over the minibatch's positions (it is about the policy there, whoever scored
  the sample).
- all-or-nothing: an update that fails half-way (an exception, a NaN loss, a non-finite KL
  after a step) restores the weights and the optimizer state of before the update and
  re-raises. ``should_stop`` (a shutdown) ends it at a step boundary, keeping the steps taken.
- reported (`UpdateStats`): KL per post and per token after (and per post before) the update,
  the policy's mean per-token entropy on the batch, the ratio π / π_prox (mean, max), the
  clip fraction (tokens with |ratio - 1| > clip) overall and by version lag, the mean
  truncated IS weight, the steps and the factor the move was scaled back by.

What it costs (the floor is ``epochs`` forward-backward-steps and one forward over the
batch): every forward takes the final norm, the head and the softmax at the completion
positions only (the prompts, most of each sequence, never reach the (N, V) logits); the
reference's log-softmax at the batch's and the probe's completion positions is computed once
per update and kept (it is frozen; up to ``REFERENCE_CACHE_BYTES``), and with a
`ReferenceCache` (the policy keeps one) the reference's final hidden states at a post's
completion positions are kept across updates, so a post an earlier update met costs the
reference's head alone; when the batch is one minibatch the proximal logprobs are read off
the first step's own forward; a step is never undone, so no snapshot is taken between steps
(only the update's start, all-or-nothing); posts that share a prompt (a post cycle's
candidates: the probe, and the batch when candidates teach) run it once in every pass,
training's included (`PromptCache`: the prompt is most of each sequence). Above the floor
remain the reference's forward over the posts no update met before (the head over the
others), and the probe's policy forward at the start and after each epoch (the drift check):
measured by bench/online_update.py.

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
  Sampling a new probe at every check would cost generation on top of the forward.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ._kv_cache import PromptCache
from ._model import Transformer
from ._reference_cache import ReferenceCache, post_key

Method = Literal["clipped", "reinforce"]

# The importance weight π_prox / π_behaviour of a stale token is truncated at this value.
IS_TRUNCATION = 2.0
# max_kl bounds the KL per post this many standard errors above its estimate (one-sided 95%).
KL_CONFIDENCE = 1.645
# A pull-back aims the drift's estimate at this share of max_kl, measuring again up to
# PULL_BACK_TRIES times.
PULL_BACK_TARGET = 0.95
PULL_BACK_TRIES = 4
# The optimizer's param groups carry the product of every pull-back since the reference was
# set under this key; an update steps at the configured lr times it (`scale_steps`).
MOVE_SCALE = "move_scale"


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
    # How much the trajectory counts in the policy-gradient term against a post with a real
    # reward (1): a candidate that was never published and learns from a reward model's
    # estimate counts less.
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"a trajectory's weight must be finite and >= 0, got {self.weight}")


@dataclass(frozen=True)
class OnlineUpdateConfig:
    method: Method = "clipped"
    epochs: int = 2  # passes over the batch (clipped only)
    clip: float = 0.2  # PPO clip of the ratio π / π_prox
    kl_coef: float = 0.05  # weight of the KL(policy || reference) cost (clipped only)
    # Drift budget: KL(policy || reference) in nats per post (summed over a post's tokens,
    # averaged over the probe's posts); a step that crosses it is kept and the whole move
    # scaled back inside it (clipped only). None: no budget.
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
    steps: int  # optimizer steps taken
    tokens: int  # completion tokens in the batch
    early_stopped: bool  # stopped before its last step (should_stop)
    stop_reason: Literal["interrupted"] | None
    # The factor the policy's move from the reference was scaled by in this update (at its
    # start, and after steps that crossed max_kl) to keep it inside the budget (1.0: none).
    pulled_back: float = 1.0

    @property
    def changed(self) -> bool:
        """Whether the weights changed: a step kept, or a pull-back."""
        return self.steps > 0 or self.pulled_back < 1.0

    @property
    def kl(self) -> float:
        """KL(policy || reference) after the update in nats per post (= ``kl_per_post``), the
        unit of ``OnlineUpdateConfig.max_kl``; NaN without a reference."""
        return self.kl_per_post


def _temperature(t: Trajectory, config: OnlineUpdateConfig | None) -> float:
    temp = t.temperature if t.temperature is not None else (config.temperature if config else 1)
    return float(temp) if temp and temp > 0 else 1.0  # greedy: the model's own softmax


@dataclass
class _Prefix:
    """The distinct prompts of a set of rows, each once: their keys and values are computed
    once and every row that continues one attends to them (a post cycle's candidates share
    their prompt, and the prompt is most of each sequence)."""

    tokens: Tensor  # (P, Tp) each distinct prompt but its last token, left-padded
    pad: Tensor  # (P,) leading padding columns of each
    owner: Tensor  # (B,) the distinct prompt each row continues


@dataclass
class _Rows:
    """Trajectories padded into one forward: right-padded inputs (B, T) and the completion
    positions, a (B, T) mask whose True entries, read row by row, are the completion tokens in
    order; per completion position its target token, its row and its row's temperature (N,).
    With a ``prefix`` the inputs are each row's last prompt token and its completion (the
    rest of the prompt is the prefix's)."""

    idx: Tensor
    mask: Tensor
    targets: Tensor
    rows: Tensor
    temps: Tensor
    lengths: list[int]  # completion tokens per row
    prefix: _Prefix | None = None

    def per_row(self, values: Tensor) -> list[Tensor]:
        """(N,) values split into one tensor per row."""
        return list(torch.split(values, self.lengths))

    def row_sums(self, values: Tensor) -> Tensor:
        """(N,) values summed per row: (B,)."""
        out = torch.zeros(len(self.lengths), device=values.device, dtype=values.dtype)
        return out.index_add_(0, self.rows, values)


def _rows(
    trajectories: Sequence[Trajectory], config: OnlineUpdateConfig | None, device: torch.device
) -> _Rows:
    """Rows with the same prompt run it once (a `_Prefix`) where that computes fewer
    positions."""
    prefix = _prefix(trajectories, device)
    if prefix is not None:
        seqs = [t.prompt[-1:] + t.completion for t in trajectories]
        starts = [0] * len(trajectories)
    else:
        seqs = [t.prompt + t.completion for t in trajectories]
        starts = [len(t.prompt) - 1 for t in trajectories]
    T = max(len(s) for s in seqs) - 1
    B = len(seqs)
    idx = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, (s, start) in enumerate(zip(seqs, starts, strict=True)):
        n = len(s) - 1
        idx[i, :n] = torch.tensor(s[:-1])
        mask[i, start:n] = True
    lengths = [len(t.completion) for t in trajectories]
    rows = torch.repeat_interleave(torch.arange(B), torch.tensor(lengths))
    temps = torch.tensor([_temperature(t, config) for t in trajectories])[rows]
    targets = torch.tensor([tok for t in trajectories for tok in t.completion], dtype=torch.long)
    return _Rows(
        idx=idx.to(device),
        mask=mask.to(device),
        targets=targets.to(device),
        rows=rows.to(device),
        temps=temps.to(device),
        lengths=lengths,
        prefix=prefix,
    )


def _prefix(trajectories: Sequence[Trajectory], device: torch.device) -> _Prefix | None:
    """The rows' distinct prompts as a `_Prefix`, or None where sharing them computes no
    fewer positions (every prompt distinct) or a prompt is a single token."""
    if any(len(t.prompt) < 2 for t in trajectories):
        return None
    distinct: dict[tuple[int, ...], int] = {}
    owner = [distinct.setdefault(tuple(t.prompt), len(distinct)) for t in trajectories]
    B, P = len(trajectories), len(distinct)
    Tp = max(len(p) for p in distinct) - 1
    tail = max(len(t.completion) for t in trajectories)
    plain = max(len(t.prompt) + len(t.completion) for t in trajectories) - 1
    if P * Tp + B * tail >= B * plain:
        return None
    tokens = torch.zeros(P, Tp, dtype=torch.long)
    pad = torch.zeros(P, dtype=torch.long)
    for i, prompt in enumerate(distinct):
        body = prompt[:-1]
        pad[i] = Tp - len(body)
        tokens[i, Tp - len(body) :] = torch.tensor(body)
    return _Prefix(
        tokens=tokens.to(device), pad=pad.to(device), owner=torch.tensor(owner, device=device)
    )


def _completion_logp(model: Transformer, rows: _Rows) -> Tensor:
    """(N, V) fp32 log-softmax at the completion positions only, each at its row's
    temperature. The final norm, the head and the softmax never see the prompts' positions
    (most of each sequence: a posting prompt shows two example posts), nor the padding; the
    same numbers as the full forward's at those positions (float rounding apart, with a
    prefix)."""
    return _head_logp(model, _completion_hidden(model, rows), rows.temps)


def _completion_hidden(model: Transformer, rows: _Rows) -> Tensor:
    """(N, C) the final norm's output at the completion positions: what the head reads."""
    if rows.prefix is None:
        h = model.hidden_states(rows.idx, layers=model.config.n_layer)  # (B, T, C)
    else:
        h = _after_prefix(model, rows.idx, rows.prefix)
    return cast("Tensor", model.norm_f(h[rows.mask]))  # (N, C)


def _head_logp(model: Transformer, hidden: Tensor, temps: Tensor) -> Tensor:
    """(N, V) fp32 log-softmax of the head over final-norm outputs (N, C), row i at temps[i]."""
    head = model.tok_emb.weight if model.lm_head is None else model.lm_head.weight
    logits = F.linear(hidden, cast("Tensor", head)).float()  # (N, V)
    if bool((temps != 1).any()):
        logits = logits / temps[:, None]
    return F.log_softmax(logits, dim=-1)


def _after_prefix(model: Transformer, idx: Tensor, prefix: _Prefix) -> Tensor:
    """The residual stream (B, T, C) of idx continuing each row's prompt: the distinct
    prompts run once, their keys and values shared by the rows that continue them (with
    gradient, when there is one)."""
    cache = PromptCache(prefix.pad)
    model.hidden_states(prefix.tokens, layers=model.config.n_layer, kv_cache=cache)
    cache.continue_rows(prefix.owner)
    return model.hidden_states(idx, layers=model.config.n_layer, kv_cache=cache)


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
                rows = _rows(chunk, None, device)
                logp = _completion_logp(model, rows)
                picked = logp.gather(-1, rows.targets[:, None]).squeeze(-1)
                lists = iter(x.tolist() for x in rows.per_row(picked))
            for t in trajs[start : start + 8]:
                out.append(next(lists) if t.completion else [])
    return out


# --- passes over a fixed set of posts: logprobs, exact KL, entropy ---------------------------


@dataclass
class _Pass:
    """What one no-grad pass of the policy (and the reference) over a set of posts found."""

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
        at 5.4-6.1 on 200 fresh samples).

        Its standard error is the delta method's, but never below the probe's unweighted
        spread over the weights' effective sample size (Kish's 1 / sum w²): when a large move
        puts nearly all the weight on one post the delta method's error goes to 0 (measured:
        0.0 at 2.88 nats per post in the SmolLM2 demo's first update), and the bound would
        rest on that one post. At small moves (the `tiny` learning runs: effective sample
        size 99-100% of the probe) the two agree within 6%."""
        if self.kl_posts is None or not len(self.kl_posts):
            return self
        log_w = torch.stack(
            [(a - b).sum() for a, b in zip(self.logprobs, start.logprobs, strict=True)]
        )
        w = torch.softmax(log_w, dim=0)  # self-normalised
        lengths = torch.tensor([float(len(x)) for x in self.logprobs])
        kl_post = float((w * self.kl_posts).sum())
        kl_token = kl_post / max(float((w * lengths).sum()), 1.0)
        # the delta-method variance of a self-normalised importance-sampling mean, floored
        # by the unweighted spread over the effective sample size
        delta = (w.square() * (self.kl_posts - kl_post).square()).sum().sqrt()
        spread = self.kl_posts.std() if len(self.kl_posts) > 1 else torch.zeros(())
        se = float(torch.maximum(delta, spread * w.square().sum().sqrt()))
        return _Pass(
            logprobs=self.logprobs,
            kl_per_post=kl_post,
            kl_per_token=kl_token,
            entropy=self.entropy,
            kl_posts=self.kl_posts,
            kl_se=se,
        )


# The reference's log-softmax at a set's completion positions is kept for the update when it
# takes at most this much memory (fp32, N x V); a larger backlog recomputes it where needed.
REFERENCE_CACHE_BYTES = 1 << 30


class _Posts:
    """A fixed set of trajectories in forward-sized chunks, with the reference's log-softmax
    at their completion positions computed once for the whole update: the reference is
    frozen, so however many steps measure these posts or train on them, each post costs one
    reference forward (before, every step ran the reference again over its minibatch and over
    the probe). With a `ReferenceCache` (bound to the reference) a post an earlier update met
    costs the head alone: the reference's hidden states at its completion positions are
    kept across updates."""

    def __init__(
        self,
        trajectories: Sequence[Trajectory],
        reference: Transformer | None,
        config: OnlineUpdateConfig | None,
        device: torch.device,
        chunk_size: int,
        cache: ReferenceCache | None = None,
    ) -> None:
        self.trajectories = list(trajectories)
        self.reference = reference
        self.config = config
        self.device = device
        self.cache = cache if reference is not None else None
        # Posts with the same prompt (a cycle's candidates) go in one chunk, which runs that
        # prompt once: `order[k]` is the trajectory at the k-th place of the chunks, and
        # `place[i]` the place of trajectory i.
        n = len(self.trajectories)
        order = sorted(range(n), key=lambda i: self.trajectories[i].prompt)
        self.place = [0] * n
        for k, i in enumerate(order):
            self.place[i] = k
        self.order = order
        self.chunk_size = chunk_size
        self.chunks = [
            _rows([self.trajectories[i] for i in order[s : s + chunk_size]], config, device)
            for s in range(0, n, chunk_size)
        ]
        vocab = reference.config.vocab_size if reference is not None else 0
        tokens = sum(len(t.completion) for t in self.trajectories)
        self._keep = tokens * vocab * 4 <= REFERENCE_CACHE_BYTES
        self._ref: list[Tensor | None] = [None] * len(self.chunks)

    def reference_logp(self, c: int) -> Tensor | None:
        """(N_c, V) the reference's log-softmax at chunk c's completion positions."""
        if self.reference is None:
            return None
        cached = self._ref[c]
        if cached is not None:
            return cached
        with torch.inference_mode():
            ref = _head_logp(self.reference, self.reference_hidden(c), self.chunks[c].temps)
        if self._keep:
            self._ref[c] = ref
        return ref

    def reference_hidden(self, c: int) -> Tensor:
        """(N_c, C) the reference's final-norm outputs at chunk c's completion positions: from
        the cache where an earlier update met the post, the rest from one forward over them."""
        assert self.reference is not None
        rows = self.chunks[c]
        if self.cache is None:
            return _completion_hidden(self.reference, rows)
        s = self.chunk_size
        trajs = [self.trajectories[i] for i in self.order[c * s : (c + 1) * s]]
        keys = [post_key(t.prompt, t.completion) for t in trajs]
        parts: list[Tensor | None] = [self.cache.get(k) for k in keys]
        missing = [j for j, part in enumerate(parts) if part is None]
        if missing:
            todo = _rows([trajs[j] for j in missing], self.config, self.device)
            computed = torch.split(_completion_hidden(self.reference, todo), todo.lengths)
            for j, h in zip(missing, computed, strict=True):
                self.cache.put(keys[j], h)
                parts[j] = h
        return torch.cat(cast("list[Tensor]", parts))

    def reference_rows(self, indices: Sequence[int]) -> Tensor | None:
        """(N, V) the reference's log-softmax at the completion positions of the trajectories
        ``indices`` (in that order), as one training minibatch lays them out."""
        if self.reference is None:
            return None
        parts = []
        for i in indices:
            c, r = divmod(self.place[i], self.chunk_size)
            ref = self.reference_logp(c)
            assert ref is not None
            lengths = self.chunks[c].lengths
            start = sum(lengths[:r])
            parts.append(ref[start : start + lengths[r]])
        return torch.cat(parts)

    def measure(self, model: Transformer, between: Callable[[], object] | None = None) -> _Pass:
        """The policy's logprobs, exact KL to the reference and entropy on these posts;
        ``between`` is called between its chunks (the weights unchanged, nothing in flight), so
        waiting generation runs there rather than behind the whole pass."""
        was_training = model.training
        logprobs: list[Tensor] = []
        kl_posts: list[Tensor] = []
        entropy_sum, tokens = 0.0, 0
        try:
            for c, rows in enumerate(self.chunks):
                if c and between is not None:
                    between()
                model.eval()
                with torch.inference_mode():
                    logp = _completion_logp(model, rows)  # (N, V)
                    picked = logp.gather(-1, rows.targets[:, None]).squeeze(-1)  # (N,)
                    p = logp.exp()
                    entropy_sum += float(-(p * logp).sum())
                    tokens += int(picked.numel())
                    logprobs.extend(x.cpu() for x in rows.per_row(picked))
                    ref = self.reference_logp(c)
                    if ref is not None:
                        kl = (p * (logp - ref)).sum(-1)  # (N,), exact per position
                        kl_posts.append(rows.row_sums(kl).cpu())  # (B,)
        finally:
            model.train(was_training)
        logprobs = [logprobs[k] for k in self.place]  # back in the trajectories' order
        total: Tensor | None = None
        kl_se = 0.0
        if self.reference is None:
            kl_post = kl_token = math.nan
        else:
            total = torch.cat(kl_posts)[self.place]
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


def remember_reference(
    reference: Transformer,
    cache: ReferenceCache,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    chunk_size: int = 8,
) -> None:
    """Run the reference over these posts now and keep in ``cache`` what online updates need
    of it: a post cycle's candidates, which the next updates measure their drift on and, once
    rewarded, train on. Posts already kept are skipped; empty completions have nothing."""
    trajectories = [
        Trajectory(list(p), list(c), [0.0] * len(c), 0.0)
        for p, c in zip(prompts, completions, strict=True)
        if c
    ]
    if not trajectories:
        return
    cache.bind(reference)
    device = next(reference.parameters()).device
    posts = _Posts(trajectories, reference, None, device, chunk_size, cache)
    with torch.inference_mode():
        for c in range(len(posts.chunks)):
            posts.reference_hidden(c)


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
    posts = _Posts(batch, reference, config, next(model.parameters()).device, 8)
    now = posts.measure(model)
    if start is not None:
        now = now.moved_from(posts.measure(start))
    return now.kl_per_post


# --- the loss ----------------------------------------------------------------------------


@dataclass
class _Prepared:
    """A trajectory with what the update computed for it at its start (without grad)."""

    traj: Trajectory
    prox: Tensor  # (n,) log π_prox(a_t): the weights at the start of the update
    weight: Tensor  # (n,) min(π_prox / π_behaviour, IS_TRUNCATION) (clipped only)


def _prepare(batch: Sequence[Trajectory], proximal: Sequence[Tensor]) -> list[_Prepared]:
    out = []
    for t, prox in zip(batch, proximal, strict=True):
        behaviour = torch.tensor(t.behaviour_logprobs, dtype=torch.float32)
        log_w = (prox.cpu() - behaviour).clamp(max=math.log(IS_TRUNCATION))
        # reinforce reports the weights (how stale the batch is) but does not use them
        out.append(_Prepared(traj=t, prox=prox.cpu(), weight=log_w.exp()))
    return out


def _loss(
    logp: Tensor,
    new_lp: Tensor,
    rows: _Rows,
    items: Sequence[_Prepared],
    reference: Tensor | None,
    config: OnlineUpdateConfig,
    norm: float,
) -> tuple[Tensor, Tensor]:
    """The minibatch's loss with its gradient, from the policy's log-softmax ``logp`` (N, V)
    at the completion positions and its picked logprobs ``new_lp`` (N,); and the ratios
    π / π_prox (N,). The policy-gradient terms, each scaled by its trajectory's weight, are
    divided by ``norm`` (the batch's weighted tokens per minibatch); the KL by the tokens."""
    device = logp.device
    n = max(new_lp.numel(), 1)
    adv = torch.tensor([it.traj.advantage for it in items], device=device)[rows.rows]  # (N,)
    counts = torch.tensor([it.traj.weight for it in items], device=device)[rows.rows]  # (N,)
    prox = torch.cat([it.prox for it in items]).to(device)
    ratio = torch.exp((new_lp - prox).clamp(-20, 20))  # (N,)
    if config.method == "reinforce":
        return -(counts * adv * new_lp).sum() / norm, ratio.detach()
    weight = torch.cat([it.weight for it in items]).to(device)
    surr = torch.minimum(ratio * adv, ratio.clamp(1 - config.clip, 1 + config.clip) * adv)
    loss = -(counts * weight * surr).sum() / norm
    if reference is not None and config.kl_coef > 0:
        kl = (logp.exp() * (logp - reference)).sum(-1)  # (N,) exact KL(π || π_ref)
        loss = loss + config.kl_coef * kl.sum() / n
    return loss, ratio.detach()


# --- all-or-nothing ----------------------------------------------------------------------


class _Snapshot:
    """The trained weights (the optimizer's parameters: every weight, or LoRA's adapters), the
    optimizer state and each param group's rate and move scale, to go back to."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            self.weights = [p.detach().clone() for p in _trained(optimizer)]
            self.state: dict[Tensor, dict[str, Any]] = {}
            for param, per_param in optimizer.state.items():
                kept: dict[str, Any] = {}
                for key, value in per_param.items():
                    _copy_into(kept, key, value)
                self.state[param] = kept
        self.groups = [(g["lr"], g.get(MOVE_SCALE)) for g in optimizer.param_groups]

    def restore(self, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for p, kept in zip(_trained(optimizer), self.weights, strict=True):
                p.copy_(kept)
            for param in list(optimizer.state):
                if param not in self.state:
                    del optimizer.state[param]  # no state yet at the capture (a fresh optimizer)
            for param, kept_state in self.state.items():
                live = optimizer.state[param]
                for key, value in kept_state.items():
                    _copy_into(live, key, value)
            for group, (lr, scale) in zip(optimizer.param_groups, self.groups, strict=True):
                group["lr"] = lr
                if scale is None:
                    group.pop(MOVE_SCALE, None)
                else:
                    group[MOVE_SCALE] = scale


def _lerp_toward(model: Transformer, reference: Transformer, alpha: float) -> None:
    """``model``'s weights become ``ref + alpha (θ - ref)``."""
    for p, ref in zip(model.parameters(), reference.parameters(), strict=True):
        p.lerp_(ref, 1.0 - alpha)


def scale_steps(optimizer: torch.optim.Optimizer, alpha: float) -> None:
    """Shrink the steps to come by ``alpha``, as a pull-back shrinks the move made so far.

    The policy is then always ``ref + s * (sum of every step at the configured lr)``, s the
    product of the pull-backs (`MOVE_SCALE`): every reward keeps an equal share of the move,
    and the budget sets only its length. Steps taken at the full lr after a pull-back would
    weigh each new reward 1/s times an old one, so a policy held at the budget would forget
    its older rewards geometrically. Measured (`bench/online.py`, `tiny`, the update alone,
    lr 5e-5, 300 posts, 2-core AMD EPYC), fresh-sample reward at post 300 on seeds 0-2:
    0.1028, 0.0976, 0.0988 with crossing steps undone (18 of 71 updates on seed 2: their
    rewards spent); 0.1104, 0.1033, 0.1019 and 0.1028, 0.1063, 0.1072 (two runs) with them
    kept and the move scaled back this way. Kept and scaled back with the steps to come at
    the full rate (lr 2.5e-5): 0.1078, 0.0934, 0.1079, below undoing them (0.1094, 0.0961,
    0.1165)."""
    for group in optimizer.param_groups:
        group["lr"] *= alpha
        group[MOVE_SCALE] = group.get(MOVE_SCALE, 1.0) * alpha


def move_scale(optimizer: torch.optim.Optimizer) -> float:
    """The product of the pull-backs since this optimizer started (1.0: none)."""
    return float(optimizer.param_groups[0].get(MOVE_SCALE, 1.0))


def _trained(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters an optimizer steps, in a fixed order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _copy_into(into: dict[str, Any], key: str, value: Any) -> None:
    """into[key] = a copy of value, in place where the tensor there fits."""
    old = into.get(key)
    if isinstance(value, Tensor):
        if isinstance(old, Tensor) and old.shape == value.shape and old.dtype == value.dtype:
            old.copy_(value)
        else:
            into[key] = value.detach().clone()
    else:
        into[key] = copy.deepcopy(value)


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
    between_steps: Callable[[], object] | None = None,
    toward_reference: Callable[[float], None] | None = None,
    reference_cache: ReferenceCache | None = None,
) -> UpdateStats:
    """Improve ``model`` on a batch of rewarded posts; returns what happened (see the module
    docstring for the method).

    ``toward_reference(α)``: scales the policy's move from the reference by α in (0, 1), its
    trained weights becoming ``ref + α (θ - ref)``, under ``max_kl`` (the weights it changes
    must be the optimizer's, so that a failure restores them); default: ``model``'s weights
    toward ``reference``'s (full fine-tuning; LoRA passes its adapters' own).

    ``probe``: recent samples of the policy (their advantages are not used) on which KL and
    entropy are measured and ``max_kl`` is enforced; empty: measured on the batch.

    ``should_stop``: an object with ``is_set()`` (a threading.Event) checked between steps, so
    a shutdown interrupts the update at a step boundary (the steps taken are kept).
    ``between_steps``: called before the first step, after every step kept and between the
    chunks of the update's measuring passes (the probe's, the proximal logprobs'), where
    nothing of the update is in flight (no graph, the weights those of a kept step): the
    torch worker runs waiting generation there, so posting waits at most about one step
    behind an update (a batch's proximal pass alone is as long as several steps). It may
    use the model (eval mode, inference); the update sets training mode again after it.
    ``current_version``: the policy's version, for the clip fraction by version lag.
    ``reference_cache``: the reference's work on posts kept across updates (bound to
    ``reference`` here; a post an earlier update met costs the reference's head alone).
    All-or-nothing: on any exception the weights and the optimizer state are restored to
    those of before the call and the exception is re-raised."""
    batch = [t for t in batch if t.completion]
    assert batch, "policy_update needs at least one trajectory with a completion"
    for t in batch:
        assert len(t.behaviour_logprobs) == len(t.completion), (
            f"{len(t.behaviour_logprobs)} behaviour logprobs for {len(t.completion)} tokens"
        )
    probe = [t for t in probe if t.completion]
    if toward_reference is None and reference is not None:
        toward_reference = partial(_lerp_toward, model, reference)
    if reference_cache is not None and reference is not None:
        reference_cache.bind(reference)
    initial = _Snapshot(optimizer)
    was_training = model.training
    try:
        return _Update(
            model, reference, optimizer, batch, config, current_version, probe, reference_cache
        ).run(should_stop, between_steps, toward_reference)
    except BaseException:
        initial.restore(optimizer)
        raise
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)


class _Update:
    """One update's state: the batch and the probe with their cached reference, the proximal
    logprobs, the running statistics."""

    def __init__(
        self,
        model: Transformer,
        reference: Transformer | None,
        optimizer: torch.optim.Optimizer,
        batch: list[Trajectory],
        config: OnlineUpdateConfig,
        current_version: int | None,
        probe: list[Trajectory],
        cache: ReferenceCache | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.config = config
        self.current_version = current_version
        self.clipped_method = config.method == "clipped"
        self.chunk = max(config.minibatch_size, 1)
        self.device = next(model.parameters()).device
        self.batch = _Posts(batch, reference, config, self.device, self.chunk, cache)
        self.measured = (
            _Posts(probe, reference, config, self.device, self.chunk, cache) if probe else None
        )
        self.bound = config.max_kl if self.clipped_method and reference is not None else None
        # The policy-gradient terms are a weighted mean per token: the batch's weighted tokens
        # shared among its minibatches, so a minibatch of light trajectories (candidates
        # scored by a reward model) moves the policy less than one of rewarded posts.
        weighted = sum(t.weight * len(t.completion) for t in self.batch.trajectories)
        n = len(self.batch.trajectories)
        per_epoch = math.ceil(n / self.chunk) if self.clipped_method else 1
        self.norm = max(weighted / max(per_epoch, 1), 1e-12)
        self.ratio_sum, self.ratio_max, self.ratio_n, self.clipped_n = 0.0, 0.0, 0, 0
        self.lag_clipped: dict[int, int] = defaultdict(int)
        self.lag_tokens: dict[int, int] = defaultdict(int)
        # The minibatch order is drawn from the policy version: the same batch at the same
        # weights trains the same way, so a run (and the learning test) can be replayed.
        self.shuffle = torch.Generator().manual_seed(current_version or 0)
        # The batch's posts by prompt, for the minibatches (`_minibatches`); a one-token prompt
        # is never shared (`_prefix`), so such posts are groups of one.
        groups: dict[tuple[int, ...] | int, list[int]] = {}
        for i, t in enumerate(batch):
            groups.setdefault(tuple(t.prompt) if len(t.prompt) > 1 else i, []).append(i)
        self.groups = list(groups.values())
        self.pulled_back = 1.0  # the factor the move was scaled back by, in all

    def _minibatches(self, n: int) -> list[list[int]]:
        """Minibatches of ``minibatch_size`` posts in a random order of their prompt groups:
        posts that share a prompt (a cycle's candidates) stay together, so each minibatch runs
        a prompt or two once (`PromptCache`) instead of most of the batch's prompts (the
        prompt is most of a post's tokens). Where no prompt is shared the order is that of
        the posts themselves."""
        if not self.clipped_method:
            return [list(range(n))]  # REINFORCE: one step on the whole batch
        order = [
            i for g in torch.randperm(len(self.groups), generator=self.shuffle).tolist()
            for i in self.groups[g]
        ]  # fmt: skip
        return [order[s : s + self.chunk] for s in range(0, n, self.chunk)]

    def _pull_back(
        self,
        measured: _Posts,
        sampled: _Pass,
        now: _Pass,
        toward_reference: Callable[[float], None] | None,
        *,
        upper: bool,
    ) -> tuple[_Pass, float]:
        """Scale the policy's move from the reference until the drift is inside ``max_kl``
        (nothing when it is already): its estimate (``upper``: the upper end of its interval)
        measured by ``now``. Near the reference KL grows as α², so α = sqrt(target / KL).
        The steps to come shrink by the same factor (`scale_steps`). Returns the pass at the
        weights left and the factor applied in all."""
        # policy_update's default way back exists wherever there is a reference (a bound)
        assert self.bound is not None and toward_reference is not None
        factor = 1.0
        for _ in range(PULL_BACK_TRIES):
            kl = now.kl_upper if upper else now.kl_per_post
            if kl <= self.bound:
                break
            alpha = math.sqrt(PULL_BACK_TARGET * self.bound / kl)
            with torch.no_grad():
                toward_reference(alpha)
            scale_steps(self.optimizer, alpha)
            factor *= alpha
            now = measured.measure(self.model).moved_from(sampled)
        return now, factor

    def _check(
        self,
        measured: _Posts,
        sampled: _Pass,
        current: _Pass,
        toward_reference: Callable[[float], None] | None,
        between: Callable[[], object] | None,
        after: _Pass | None = None,
    ) -> _Pass:
        """The drift check after an epoch: measured anew (unless ``after`` is that
        measurement; ``between`` runs between its chunks), and a move whose upper end crossed
        ``max_kl`` (and rose) scaled back inside it. Returns the pass at the weights left."""
        if after is None:
            after = measured.measure(self.model, between).moved_from(sampled)
        if not math.isfinite(after.kl_per_post):
            raise FloatingPointError(
                "online update: the KL to the reference is not finite after a step; the "
                "weights were not changed. Lower online.lr"
            )
        if after.kl_upper > cast(float, self.bound) and after.kl_upper > current.kl_upper:
            # Keep the steps' direction, shrink the whole move: their rewards are not lost,
            # and every reward so far keeps its share of the move.
            after, factor = self._pull_back(measured, sampled, after, toward_reference, upper=True)
            self.pulled_back *= factor
        return after

    def run(
        self,
        should_stop: object,
        between_steps: Callable[[], object] | None,
        toward_reference: Callable[[float], None] | None,
    ) -> UpdateStats:
        model, config = self.model, self.config
        n = len(self.batch.trajectories)
        items: list[_Prepared] | None = None
        measured = self.measured or self.batch
        # At the weights that sampled the probe (its importance weights are relative to them).
        sampled = measured.measure(model, between_steps)
        first = sampled  # the pass at the weights the steps start from
        if self.bound is not None:
            first, self.pulled_back = self._pull_back(
                measured, sampled, sampled, toward_reference, upper=False
            )
        if self.clipped_method and (self.measured is None or n > self.chunk):
            # The proximal logprobs: the batch's own pass at the starting weights. (With a
            # probe and one minibatch, the first step's forward is at those weights, so they
            # come from it, at no pass of their own; REINFORCE has no proximal policy.)
            start = first if self.measured is None else self.batch.measure(model, between_steps)
            items = _prepare(self.batch.trajectories, start.logprobs)
        current = first  # the pass that measured the weights as they are now
        epochs = config.epochs if self.clipped_method else 1
        steps, checked, losses = 0, 0, []
        stop_reason: Literal["interrupted"] | None = None
        if between_steps is not None:  # the passes above took about as long as a step
            between_steps()
        model.train()
        for _epoch in range(epochs):
            minibatches = self._minibatches(n)
            for j, mb in enumerate(minibatches):
                if should_stop is not None and should_stop.is_set():  # type: ignore[attr-defined]
                    stop_reason = "interrupted"
                    break
                rows = _rows([self.batch.trajectories[i] for i in mb], config, self.device)
                logp = _completion_logp(model, rows)  # (N, V)
                new_lp = logp.gather(-1, rows.targets[:, None]).squeeze(-1)  # (N,)
                if items is None:
                    proximal = dict(zip(mb, rows.per_row(new_lp.detach()), strict=True))
                    items = _prepare(self.batch.trajectories, [proximal[i] for i in range(n)])
                mb_items = [items[i] for i in mb]
                ref = self.batch.reference_rows(mb) if self.clipped_method else None
                loss, ratio = _loss(logp, new_lp, rows, mb_items, ref, config, self.norm)
                del logp
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        "online update: the loss is not finite (NaN/inf); the weights were not "
                        "changed. Lower online.lr or check the rewards for NaN"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(_trained(self.optimizer), config.grad_clip)
                self.optimizer.step()
                self._count(ratio, rows, mb_items)
                steps += 1
                losses.append(float(loss.detach()))
                if self.bound is not None and j == len(minibatches) - 1:
                    current = self._check(
                        measured, sampled, current, toward_reference, between_steps
                    )
                    checked = steps
                if between_steps is not None:
                    self.optimizer.zero_grad(set_to_none=True)
                    between_steps()
                    model.train()
            if stop_reason is not None:
                break
        if steps > checked:  # steps not measured yet (no max_kl, or stopped mid-epoch)
            after = measured.measure(model, between_steps).moved_from(sampled)
            if self.bound is not None:
                after = self._check(
                    measured, sampled, current, toward_reference, between_steps, after
                )
            current = after
        if not math.isfinite(current.entropy):
            raise FloatingPointError(
                "online update: the policy's entropy is not finite after the update; the "
                "weights were not changed. Lower online.lr"
            )
        assert items is not None
        n_weights = sum(it.weight.numel() for it in items)
        return UpdateStats(
            loss=sum(losses) / max(len(losses), 1),
            kl_per_post=current.kl_per_post,
            kl_per_token=current.kl_per_token,
            kl_per_post_before=sampled.kl_per_post,
            kl_se=current.kl_se,
            entropy=current.entropy,
            measured_on="probe" if self.measured is not None else "batch",
            clip_fraction=self.clipped_n / max(self.ratio_n, 1),
            clip_fraction_by_lag={
                lag: self.lag_clipped[lag] / max(k, 1) for lag, k in sorted(self.lag_tokens.items())
            },
            ratio_mean=self.ratio_sum / self.ratio_n if self.ratio_n else math.nan,
            ratio_max=self.ratio_max if self.ratio_n else math.nan,
            is_weight_mean=float(sum(float(it.weight.sum()) for it in items)) / max(n_weights, 1),
            steps=steps,
            tokens=sum(len(t.completion) for t in self.batch.trajectories),
            early_stopped=stop_reason is not None,
            stop_reason=stop_reason,
            pulled_back=self.pulled_back,
        )

    def _count(self, ratio: Tensor, rows: _Rows, items: Sequence[_Prepared]) -> None:
        """Ratio statistics of the tokens a step saw (before it moved the weights)."""
        clip = self.config.clip
        out = (ratio - 1).abs() > clip
        self.ratio_sum += float(ratio.sum())
        self.ratio_max = max(self.ratio_max, float(ratio.max()))
        self.ratio_n += ratio.numel()
        self.clipped_n += int(out.sum())
        if self.current_version is None:
            return
        for it, row_out in zip(items, rows.per_row(out), strict=True):
            if it.traj.policy_version is None:
                continue
            lag = self.current_version - it.traj.policy_version
            self.lag_clipped[lag] += int(row_out.sum())
            self.lag_tokens[lag] += int(row_out.numel())
