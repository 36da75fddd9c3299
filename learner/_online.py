"""Online learning from rewards: a short policy-gradient update on posts that were rewarded.

Two methods, side by side:
- ``clipped``: importance-weighted, clipped policy gradient (PPO's surrogate) against the stored
  behaviour logprobs, several epochs over the batch, a KL penalty to the frozen reference
  model, gradient clipping, and an early stop once the KL to the reference passes ``max_kl``.
- ``reinforce``: the baseline to beat: plain REINFORCE, one optimizer step per batch, no KL,
  no clipping (how the best-known earlier system does it).

Simplifications (kept on purpose):
- logprobs are those of the temperature-scaled full softmax (no top-k/top-p mask): the mask
  moves with the weights and would make tokens the policy no longer ranks high -inf; the
  behaviour logprobs stored with each post are computed the same way (`sequence_logprobs`).
- one scalar advantage per post, spread over its tokens (no critic, no per-token credit).
- only sampled tokens carry loss; the prompt is context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ._model import Transformer

Method = Literal["clipped", "reinforce"]


@dataclass(frozen=True)
class Trajectory:
    prompt: list[int]
    completion: list[int]
    behaviour_logprobs: list[float]  # per completion token, from `sequence_logprobs` at post time
    advantage: float  # reward minus baseline


@dataclass(frozen=True)
class OnlineUpdateConfig:
    method: Method = "clipped"
    epochs: int = 2  # passes over the batch (clipped only)
    clip: float = 0.2  # PPO ratio clip
    kl_coef: float = 0.05  # penalty weight on KL(policy || reference)
    max_kl: float | None = 0.1  # stop the update early once the mean per-token KL passes this
    grad_clip: float = 1.0
    temperature: float = 1.0  # the temperature the samples were drawn at
    minibatch_size: int = 8


@dataclass(frozen=True)
class UpdateStats:
    loss: float
    kl: float  # mean per-token KL(policy || reference) after the update, on the batch
    clip_fraction: float
    ratio_mean: float
    steps: int
    tokens: int
    early_stopped: bool


def _pad_batch(
    trajectories: Sequence[Trajectory], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded inputs (B, T), targets (B, T) and a mask (B, T) of completion positions."""
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


def _token_logprobs(model: Transformer, idx: Tensor, tgt: Tensor, temperature: float) -> Tensor:
    logits = model(idx)  # (B, T, V)
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, tgt[..., None]).squeeze(-1)


def sequence_logprobs(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
) -> list[list[float]]:
    """Per-token logprobs of each completion after its prompt, as the update computes them."""
    assert len(prompts) == len(completions), "one prompt per completion"
    device = next(model.parameters()).device
    trajs = [
        Trajectory(list(p), list(c), [], 0.0) for p, c in zip(prompts, completions, strict=True)
    ]
    out: list[list[float]] = []
    with torch.inference_mode():
        for start in range(0, len(trajs), 8):
            chunk = [t for t in trajs[start : start + 8] if t.completion]
            if chunk:
                idx, tgt, mask = _pad_batch(chunk, device)
                lp = _token_logprobs(model, idx, tgt, temperature)
                rows = iter(lp[i][mask[i]].tolist() for i in range(len(chunk)))
            for t in trajs[start : start + 8]:
                out.append(next(rows) if t.completion else [])
    return out


def policy_update(
    *,
    model: Transformer,
    reference: Transformer | None,
    optimizer: torch.optim.Optimizer,
    batch: Sequence[Trajectory],
    config: OnlineUpdateConfig,
    should_stop: object = None,
) -> UpdateStats:
    """Improve ``model`` on a batch of rewarded posts; returns what happened.

    ``should_stop``: an object with ``is_set()`` (a threading.Event) checked between steps, so
    a shutdown interrupts the update at a step boundary."""
    batch = [t for t in batch if t.completion]
    assert batch, "policy_update needs at least one trajectory with a completion"
    for t in batch:
        assert len(t.behaviour_logprobs) == len(t.completion), (
            f"{len(t.behaviour_logprobs)} behaviour logprobs for {len(t.completion)} tokens"
        )
    device = next(model.parameters()).device
    model.train()
    epochs = config.epochs if config.method == "clipped" else 1
    steps, losses, clipped, ratios, early = 0, [], [], [], False
    n_tokens = sum(len(t.completion) for t in batch)
    for _epoch in range(epochs):
        order = torch.randperm(len(batch)).tolist() if config.method == "clipped" else None
        chunks = (
            [
                [batch[i] for i in order[s : s + config.minibatch_size]]
                for s in range(0, len(batch), config.minibatch_size)
            ]
            if order is not None
            else [list(batch)]  # REINFORCE: one step on the whole batch
        )
        for chunk in chunks:
            if should_stop is not None and should_stop.is_set():  # type: ignore[attr-defined]
                early = True
                break
            idx, tgt, mask = _pad_batch(chunk, device)
            new_lp = _token_logprobs(model, idx, tgt, config.temperature)  # (B, T)
            adv = torch.tensor([t.advantage for t in chunk], device=device)[:, None]  # (B, 1)
            maskf = mask.float()
            denom = maskf.sum().clamp(min=1.0)
            if config.method == "reinforce":
                loss = -(adv * new_lp * maskf).sum() / len(chunk)
                ratio = torch.ones_like(new_lp)
                kl_term = torch.zeros((), device=device)
            else:
                old_lp = torch.zeros_like(new_lp)
                for i, t in enumerate(chunk):
                    old_lp[i][mask[i]] = torch.tensor(t.behaviour_logprobs, device=device)
                ratio = torch.exp((new_lp - old_lp).clamp(-20, 20))  # (B, T)
                surr = torch.minimum(
                    ratio * adv, ratio.clamp(1 - config.clip, 1 + config.clip) * adv
                )
                loss = -(surr * maskf).sum() / denom
                kl_term = torch.zeros((), device=device)
                if reference is not None and config.kl_coef > 0:
                    with torch.no_grad():
                        ref_lp = _token_logprobs(reference, idx, tgt, config.temperature)
                    # k3 estimator of KL(policy || reference): unbiased, always >= 0.
                    d = (ref_lp - new_lp).clamp(-20, 20)
                    kl_tok = torch.exp(d) - d - 1
                    kl_term = (kl_tok * maskf).sum() / denom
                    loss = loss + config.kl_coef * kl_term
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    "online update: the loss is not finite (NaN/inf); the weights were not "
                    "changed. Lower online.lr or check the rewards for NaN"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            steps += 1
            losses.append(float(loss.detach()))
            with torch.no_grad():
                m = mask
                ratios.append(float(ratio[m].mean()))
                clipped.append(float(((ratio[m] - 1).abs() > config.clip).float().mean()))
            if (
                config.method == "clipped"
                and config.max_kl is not None
                and float(kl_term.detach()) > config.max_kl
            ):
                early = True
                break
        if early:
            break
    model.eval()
    kl_after = measure_kl(model, reference, batch, temperature=config.temperature)
    return UpdateStats(
        loss=sum(losses) / max(len(losses), 1),
        kl=kl_after,
        clip_fraction=sum(clipped) / max(len(clipped), 1),
        ratio_mean=sum(ratios) / max(len(ratios), 1),
        steps=steps,
        tokens=n_tokens,
        early_stopped=early,
    )


def measure_kl(
    model: Transformer,
    reference: Transformer | None,
    batch: Sequence[Trajectory],
    *,
    temperature: float = 1.0,
) -> float:
    """Mean per-token KL(policy || reference) on the batch's completions (k3 estimator)."""
    if reference is None:
        return math.nan
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(batch), 8):
            chunk = [t for t in batch[start : start + 8] if t.completion]
            if not chunk:
                continue
            idx, tgt, mask = _pad_batch(chunk, device)
            d = _token_logprobs(reference, idx, tgt, temperature) - _token_logprobs(
                model, idx, tgt, temperature
            )
            kl = torch.exp(d) - d - 1
            total += float(kl[mask].sum())
            count += int(mask.sum())
    return total / max(count, 1)
