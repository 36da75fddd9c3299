"""Grow a trained model into a larger one that starts out computing (nearly) the same function,
so training goes on from what was learnt instead of from scratch.

Depth: new blocks are copies of the block below them with their two output projections
(attn.proj, mlp.proj) zeroed, so each starts as an identity residual block (LLaMA-Pro style block
expansion); they are spread evenly through the stack. Logits are unchanged exactly.

Width: the old weights fill the leading slice of every matrix; the new residual dimensions start
at zero and nothing writes to them yet (zero rows in the output projections, zero embedding
columns), new attention heads and MLP units read freely but their outputs are zeroed. The norms
now average over more (zero) dimensions: their weights on the old dimensions are scaled by
sqrt(old/new) and eps by old/new, so an RMSNorm sees the same statistics (exact); a LayerNorm's
mean shifts too, which no padding undoes, so GPT-2 width growth is only close (measured: max
|logit difference| 0.2-0.5 from nano to micro/tiny/small on a perturbed random model).
Head width: old heads keep their dimensions, padded with zeros; their queries are scaled for the
new 1/sqrt(head_dim); with RoPE the old dimensions move to where the wider head rotates them at
the same frequencies (exact when the new head_dim is a multiple of the old).
`logit_difference` measures what is left.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from ._errors import TrainingError
from ._model import PRESETS, ModelConfig, Transformer


def target_config(source: ModelConfig, size: str) -> ModelConfig:
    """The preset `size` shaped like `source` where growth cannot change things (family,
    vocabulary, context, biases, tying)."""
    if size not in PRESETS:
        raise TrainingError(f"Unknown size {size!r}; choose one of {', '.join(PRESETS)}.")
    preset = PRESETS[size]
    return replace(
        preset,
        family=source.family,
        vocab_size=source.vocab_size,
        max_seq_len=source.max_seq_len,
        bias=source.bias,
        tie_embeddings=source.tie_embeddings,
        # The norms average over n_embd: scaling eps with it keeps rms(x) + eps exact.
        norm_eps=source.norm_eps * source.n_embd / preset.n_embd,
        rope_theta=source.rope_theta,
        n_kv_head=preset.n_head if source.family == "gpt2" else preset.n_kv_head,
    )


def _check(src: ModelConfig, dst: ModelConfig) -> None:
    smaller = [
        name
        for name in ("n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size", "head_dim")
        if getattr(dst, name) < getattr(src, name)
    ]
    if smaller:
        raise TrainingError(
            f"Cannot grow into a smaller model: target {', '.join(smaller)} below the source's; "
            f"pick a larger --to size."
        )
    if src.n_head // src.n_kv_head != dst.n_head // dst.n_kv_head:
        raise TrainingError(
            f"The query heads per key/value head differ ({src.n_head // src.n_kv_head} -> "
            f"{dst.n_head // dst.n_kv_head}), so old heads cannot keep their keys; grow to a "
            f"config with the same grouping."
        )
    if (src.family, src.vocab_size) != (dst.family, dst.vocab_size):
        raise TrainingError("Growth keeps the family and the vocabulary; the targets differ.")


def _dim_map(d_old: int, d_new: int, *, rope: bool) -> Tensor:
    """Where each old head dimension goes in the wider head. With RoPE, old dimension i
    (rotated at frequency theta^(-2i/d_old), paired with i + d_old/2) moves to i * d_new/d_old,
    which the wider head rotates at the same frequency, so positions are encoded exactly."""
    if rope and d_new % d_old == 0:
        r, half = d_new // d_old, d_old // 2
        first = torch.arange(half) * r
        return torch.cat([first, first + d_new // 2])
    return torch.arange(d_old)


def _head_rows(n_heads: int, dims: Tensor, d_new: int, offset: int) -> Tensor:
    """New row indices of the old rows of `n_heads` heads laid out (head, dim)."""
    return torch.cat([offset + h * d_new + dims for h in range(n_heads)])


SD = dict[str, Tensor]


def _widen_block(o: SD, n: SD, src: ModelConfig, dst: ModelConfig) -> None:
    """Write old block state `o` into new block state `n` (keys like "attn.qkv.weight")."""
    Cs = src.n_embd
    Ds, Dt = src.head_dim, dst.head_dim
    Hs, Hkvs, Ht, Hkvt = src.n_head, src.n_kv_head, dst.n_head, dst.n_kv_head
    res = torch.arange(Cs)
    dims = _dim_map(Ds, Dt, rope=src.family == "llama")
    q_rows = _head_rows(Hs, dims, Dt, 0)
    kv_rows = torch.cat(
        [_head_rows(Hkvs, dims, Dt, Ht * Dt), _head_rows(Hkvs, dims, Dt, (Ht + Hkvt) * Dt)]
    )
    old_rows = torch.cat([q_rows, kv_rows])
    q_scale = math.sqrt(Dt / Ds)  # SDPA now divides by sqrt(Dt)

    # attention: old heads' rows (every padded dim included) are zeroed, then refilled.
    for suffix in ("weight", "bias"):
        key = f"attn.qkv.{suffix}"
        if key not in o:
            continue
        for h in range(Hs + 2 * Hkvs):
            base = h if h < Hs else Ht + (h - Hs) if h < Hs + Hkvs else Ht + Hkvt + h - Hs - Hkvs
            n[key][base * Dt : (base + 1) * Dt] = 0
        old = o[key].clone()
        old[: Hs * Ds] *= q_scale
        if suffix == "weight":
            n[key][old_rows[:, None], res[None, :]] = old
        else:
            n[key][old_rows] = old
    n["attn.proj.weight"].zero_()
    n["attn.proj.weight"][res[:, None], q_rows[None, :]] = o["attn.proj.weight"]

    # MLP: old units in the leading rows (llama: of the gate and of the up half).
    Is, It = src.intermediate_size, dst.intermediate_size
    halves = [(0, 0), (Is, It)] if src.family == "llama" else [(0, 0)]
    for a, b in halves:
        n["mlp.fc.weight"][b : b + Is] = 0
        n["mlp.fc.weight"][b : b + Is, :Cs] = o["mlp.fc.weight"][a : a + Is]
        if "mlp.fc.bias" in o:
            n["mlp.fc.bias"][b : b + Is] = o["mlp.fc.bias"][a : a + Is]
    n["mlp.proj.weight"].zero_()
    n["mlp.proj.weight"][:Cs, :Is] = o["mlp.proj.weight"]
    for key in ("attn.proj.bias", "mlp.proj.bias"):  # writes into the residual: old dims only
        if key in o:
            n[key].zero_()
            n[key][:Cs] = o[key]
    for name in ("norm1", "norm2"):
        _widen_norm(o, n, name, src, dst)


def _widen_norm(o: SD, n: SD, name: str, src: ModelConfig, dst: ModelConfig) -> None:
    Cs = src.n_embd
    # LayerNorm: new dims output 0 (weight and bias 0); RMSNorm: they are 0 anyway (x is 0).
    n[f"{name}.weight"].fill_(0.0 if src.family == "gpt2" else 1.0)
    n[f"{name}.weight"][:Cs] = o[f"{name}.weight"] * math.sqrt(Cs / dst.n_embd)
    if f"{name}.bias" in o:
        n[f"{name}.bias"].zero_()
        n[f"{name}.bias"][:Cs] = o[f"{name}.bias"]


def _block(sd: SD, i: int) -> SD:
    prefix = f"blocks.{i}."
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


@torch.no_grad()
def grow(model: Transformer, target: ModelConfig, *, seed: int = 0) -> Transformer:
    """A model of config `target` that starts as close to `model` as the method allows."""
    src = model.config
    _check(src, target)
    torch.manual_seed(seed)  # new heads/units/blocks get the usual init
    grown = Transformer(target)
    o, n = model.state_dict(), grown.state_dict()  # n shares storage with grown's parameters
    Cs = src.n_embd

    # embeddings, final norm, untied head: old columns, zero new columns
    for key in ("tok_emb.weight", "pos_emb.weight", "lm_head.weight"):
        if key in o:
            n[key].zero_()
            n[key][:, :Cs] = o[key]
    _widen_norm(o, n, "norm_f", src, target)

    # blocks: each old block is followed by its share of new blocks (later blocks first), each
    # new block a copy of the widened block below it with its output projections zeroed
    extra = target.n_layer - src.n_layer
    after = [
        extra // src.n_layer + (1 if i >= src.n_layer - extra % src.n_layer else 0)
        for i in range(src.n_layer)
    ]
    pos = 0
    for i in range(src.n_layer):
        widened = _block(n, pos)
        _widen_block(_block(o, i), widened, src, target)
        for j in range(1, after[i] + 1):
            for key, value in widened.items():
                is_output = key.startswith(("attn.proj.", "mlp.proj."))
                n[f"blocks.{pos + j}.{key}"].copy_(torch.zeros_like(value) if is_output else value)
        pos += 1 + after[i]
    return grown


@torch.no_grad()
def logit_difference(a: Transformer, b: Transformer, *, seed: int = 0, T: int = 32) -> float:
    """Max |logit difference| of two models on the same random tokens."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, a.config.vocab_size, (4, min(T, a.config.max_seq_len)), generator=g)
    a.eval()
    b.eval()
    return float((a(idx) - b(idx)).abs().max())
