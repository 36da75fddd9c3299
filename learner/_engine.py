"""Batched generation in token ids: a preallocated KV cache, sampling, per-token logprobs.

The engine knows nothing of text (see `_generate.py`). Prompts of different lengths are
left-padded into one batch: row b's cache column c holds position c - pad[b], padding columns
are masked out, so every row computes what it would alone. Each distinct prompt is prefilled
once and its cache rows are copied to its n samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._decode import (
    DecodeLinear,
    PackedKernel,
    available_kernels,
    decode_copy,
    decode_precision,
    kernel_for_activations,
)
from ._errors import ContextLengthError, GenerationInterrupted
from ._fused_decode import FusedBlocks
from ._kv_cache import KVCache
from ._model import Transformer
from ._native import FP16_MAX, half_fits, native_gemm
from ._native import MAX_ROWS as NATIVE_MAX_ROWS

log = logging.getLogger(__name__)

# --- sampling --------------------------------------------------------------------------------


# Temperatures under this are taken as 0 (greedy).
MIN_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None  # keep the k most likely tokens (ties at the k-th kept)
    top_p: float | None = None  # keep the smallest set of most likely tokens with mass >= p
    max_new_tokens: int = 64
    stop_tokens: tuple[int, ...] = ()  # a row ends after sampling one of these (kept in it)
    seed: int | None = None  # None: a fresh random seed per call

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.temperature < MIN_TEMPERATURE:
            # logits / 1e-300 overflow to inf and the sampler would index past the vocabulary;
            # a temperature this low is greedy in all but name.
            object.__setattr__(self, "temperature", 0.0)
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in 0 .. 2**63 - 1 (torch's range), got {self.seed}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (no limit), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None (no limit), got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def _candidates(logits: Tensor, sampling: SamplingConfig) -> tuple[Tensor, Tensor | None]:
    """The allowed tokens' logits after temperature, top-k and top-p (Hugging Face's order):
    (values, None) over the whole vocabulary in id order, or (values (..., k), ids (..., k))
    for a candidate set, disallowed ones at -inf."""
    if sampling.temperature not in (0, 1):
        logits = logits / sampling.temperature
    V = logits.size(-1)
    top_k = sampling.top_k if sampling.top_k is not None and sampling.top_k < V else None
    top_p = sampling.top_p if sampling.top_p is not None and sampling.top_p < 1 else None
    if sampling.temperature == 0 or (top_k is None and top_p is None):
        return logits, None
    if top_p is None:
        assert top_k is not None
        return torch.topk(logits, top_k, dim=-1)  # (..., k) each
    # Nucleus: drop a token once the mass of the more likely tokens reaches p.
    if top_k is not None:
        logits, order = torch.topk(logits, top_k, dim=-1)  # (..., top_k)
    values, idx = _nucleus(logits, top_p)  # (..., k) each, or (..., V) and None
    if idx is None:
        return (values, None) if top_k is None else (values, order)
    return values, (idx if top_k is None else order.gather(-1, idx))


def _nucleus(logits: Tensor, top_p: float) -> tuple[Tensor, Tensor | None]:
    """Every row's top-p nucleus, others at -inf: (values, ids) over a most-likely-first
    candidate set (..., k), rows padded with -inf values (and a repeated id) to the widest
    row's k; or (values (..., V), None) in the input's order when a row is so flat that its
    nucleus could only be found among all V.

    Sorting 49k logits costs ~1.5 ms per row here, so look among each row's top 256 first,
    then 2048 for the rows whose candidates hold too little mass (all of V when they hold
    less than half of p: flat distributions, such as an untrained model's). Row by row: one
    flat row in a batch does not make the other rows sort everything. For all of V no ids are
    sorted: each row's cut-off logit comes from its sorted values alone (`_sorted_values`) and
    the nucleus is every logit at or above it (at an exact tie with the cut-off, all of the
    tied tokens)."""
    shape = logits.shape
    flat = logits.reshape(-1, shape[-1])  # (R, V)
    lse = flat.logsumexp(dim=-1, keepdim=True)  # (R, 1)
    found = _top_mass(flat, lse, top_p, min(flat.size(-1), 256))
    if found is None:
        cut = _cutoff(_sorted_values(flat), lse, top_p)  # (R, 1)
        return flat.masked_fill(flat < cut, float("-inf")).view(shape), None
    values, ids, probs = found
    mass = probs.cumsum(dim=-1)  # (R, k)
    drop = (mass - probs) >= top_p  # (R, k); tokens past the k candidates are dropped too
    out = (*shape[:-1], values.size(-1))
    return values.masked_fill(drop, float("-inf")).view(out), ids.view(out)


def _top_mass(
    logits: Tensor, lse: Tensor, top_p: float, k: int
) -> tuple[Tensor, Tensor, Tensor] | None:
    """The k most likely of each row (R, V) as (values, ids, probs), sorted, widened where they
    hold less than top_p; None when some row needs all of V."""
    V = logits.size(-1)
    if k == V:
        return None
    # k times a row's largest probability bounds what its top k can hold: a row below half of
    # p needs all of V (see below), so the top-k (0.45 ms for 8 x 8192 here) is not worth it.
    bound = (logits.amax(dim=-1) - lse.squeeze(-1)).exp() * k  # (R,)
    if bool((bound < top_p / 2).any()):
        return None
    values, ids = torch.topk(logits, k, dim=-1)  # (R, k), sorted
    probs = (values - lse).exp()  # (R, k)
    held = probs.cumsum(dim=-1)[:, -1]  # (R,) the summation order the nucleus mask uses
    short = (held < top_p).nonzero().squeeze(-1)  # rows whose nucleus may reach past k
    if short.numel() == 0:
        return values, ids, probs
    wider = min(V, 8 * k) if bool((held[short] >= top_p / 2).all()) else V
    found = _top_mass(logits[short], lse[short], top_p, wider)
    if found is None:
        return None
    v2, i2, p2 = found  # (S, k2) each
    pad = v2.size(-1) - k
    values = F.pad(values, (0, pad), value=float("-inf"))
    ids = torch.cat((ids, ids[:, :1].expand(-1, pad)), dim=-1)  # repeated id: -inf slot
    probs = F.pad(probs, (0, pad), value=0.0)
    values[short], ids[short], probs[short] = v2, i2, p2
    return values, ids, probs


def _sorted_values(logits: Tensor) -> Tensor:
    """Each row of (R, V) sorted, largest first, without gradient. On CPU numpy's sort (SIMD,
    values only): 8 x 8192 logits in 0.30 ms here against torch.sort's 2.6 ms, which also
    sorts the indices."""
    x = logits.detach()
    if x.device.type == "cpu" and x.dtype == torch.float32:
        return torch.from_numpy(np.sort(x.numpy(), axis=-1)[:, ::-1].copy())
    return torch.sort(x, dim=-1, descending=True).values


def _cutoff(sorted_values: Tensor, lse: Tensor, top_p: float) -> Tensor:
    """(R, 1): the smallest logit of each row's nucleus, from its values sorted largest first
    (R, k); the same summation as `_nucleus`'s mask."""
    probs = (sorted_values - lse.detach()).exp()  # (R, k)
    kept = ((probs.cumsum(dim=-1) - probs) < top_p).sum(dim=-1, keepdim=True)  # (R, 1), >= 1
    return sorted_values.gather(-1, kept - 1)


def transform_logits(logits: Tensor, sampling: SamplingConfig) -> Tensor:
    """(..., V) logits -> logits of the distribution sampled from: divided by the temperature,
    then top-k, then top-p, by masking to -inf (the order of Hugging Face's processors; at an
    exact tie with the k-th logit, top-k keeps the lower id only). Greedy decoding
    (temperature 0) leaves them untouched: its logprobs are those of the model's own softmax.
    Differentiable, so a learner can reuse it with gradients."""
    values, ids = _candidates(logits, sampling)
    if ids is None:
        return values
    # amax, not a plain scatter: a nucleus candidate set may repeat an id in -inf padding
    # slots, and the real value must win.
    return torch.full_like(logits, float("-inf")).scatter_reduce(
        -1, ids, values, reduce="amax"
    )  # (..., V)


def sample_tokens(
    logits: Tensor, sampling: SamplingConfig, uniform: Tensor
) -> tuple[Tensor, Tensor]:
    """Sample one token per row of fp32 logits (B, V) given uniforms (B, 1) in [0, 1); return
    tokens (B,) and their logprobs (B,) under the distribution sampled from. Inverse-CDF
    sampling over the candidates only: on a 49k vocabulary `torch.multinomial` measured ~0.9
    ms per row on the development CPU. On the CPU the native sampler draws (one call, about a
    third of `sample_tokens_torch`'s time a row: _native_sample.cpp), the same distribution."""
    if sampling.temperature != 0 and logits.device.type == "cpu" and logits.dtype == torch.float32:
        native = native_gemm()
        if native is not None:
            return native.sample(
                logits,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                uniform=uniform,
            )
    return sample_tokens_torch(logits, sampling, uniform)


def sample_tokens_torch(
    logits: Tensor, sampling: SamplingConfig, uniform: Tensor
) -> tuple[Tensor, Tensor]:
    """`sample_tokens` in tensor ops (any device and dtype): the candidates of
    `_candidates` (most likely first, or the whole vocabulary in id order), their
    log-softmax, the first CDF entry above the uniform times the total."""
    if sampling.temperature == 0:
        tokens = logits.argmax(dim=-1)  # (B,)
        logp = F.log_softmax(logits, dim=-1)  # (B, V)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    values, ids = _candidates(logits, sampling)  # (B, k), (B, k) or None
    logp = F.log_softmax(values, dim=-1)  # (B, k)
    cdf = logp.exp().cumsum(dim=-1)  # (B, k)
    total = cdf[:, -1:]  # (B, 1), 1 up to rounding
    u = uniform * total  # (B, 1)
    # u < total strictly, so the first cdf entry above u is a token of positive probability.
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    pick = torch.searchsorted(cdf, u, right=True)  # (B, 1) index into the candidates
    tokens = pick if ids is None else ids.gather(-1, pick)  # (B, 1)
    return tokens.squeeze(-1), logp.gather(-1, pick).squeeze(-1)


# --- the engine ------------------------------------------------------------------------------


@dataclass
class Sample:
    prompt_index: int
    tokens: list[int]  # the new tokens (a stop token that ended the sample included)
    logprobs: list[float]  # per token, under the distribution sampled from
    finished: bool  # ended on a stop token (False: max_new_tokens or the context ran out)


@dataclass
class Step:
    """One column of a stream: a token per row (row = prompt_index * n + j)."""

    tokens: Tensor  # (B,) long; 0 where not sampled
    logprobs: Tensor  # (B,) fp32; 0 where not sampled
    sampled: Tensor  # (B,) bool: the row sampled this step (False once it has ended)
    stopped: Tensor  # (B,) bool: the row ended on a stop token at this step


class Engine:
    """Generates from a `Transformer` in batches with a KV cache.

    Runs under `torch.inference_mode`, on a snapshot of the model's weights taken when the
    engine is built (`decode_copy`, in the given device and dtype): after changing the
    weights, build a new engine (it takes a fraction of a second). With ``snapshot=False``
    the linear layers read the model's own fp32 weights, not a copy: for a caller that drops
    the engine before they change (`generate_text`), one copy of the weights fewer per
    engine. A row ends on a stop token,
    after `max_new_tokens`, or when its sequence fills the model's context (prompt + new
    tokens = max_seq_len).

    `dtype` is the precision asked for; `decode_precision` turns bfloat16 on a CPU without AMX
    into fp32 activations over fp16 weights (`self.dtype` is then fp32, `self.weight_dtype`
    fp16; fp32 weights, with a warning, for a model with a weight beyond fp16's range).
    `weight_dtype` given sets the weights' dtype by hand (fp16 under fp32 activations,
    or `dtype` itself). Either way the logits are fp32 and every logprob the engine returns
    is computed from the very logits its token was sampled from."""

    def __init__(
        self,
        *,
        model: Transformer,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        weight_dtype: torch.dtype | None = None,
        snapshot: bool = True,
    ) -> None:
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        asked = dtype if dtype is not None else param.dtype
        if weight_dtype is None:
            self.dtype, self.weight_dtype = decode_precision(self.device, asked)
        else:
            ok = weight_dtype == asked or (asked, weight_dtype) == (torch.float32, torch.float16)
            if not ok:
                raise ValueError(
                    f"weight_dtype {weight_dtype} with dtype {asked}: give float16 weights "
                    "with float32 activations, or the weights in the activations' dtype"
                )
            self.dtype, self.weight_dtype = asked, weight_dtype
        if (self.dtype, self.weight_dtype) == (torch.float32, torch.float16):
            beyond = [n for n, w in model.named_parameters() if w.dim() > 1 and not half_fits(w)]
            if beyond and weight_dtype is not None:
                raise ValueError(
                    f"{beyond[0]} has values beyond fp16's range (+-{FP16_MAX:g}): decode this "
                    "model with float32 weights"
                )
            if beyond:
                log.warning(
                    "%s has values beyond fp16's range: decoding with float32 weights", beyond[0]
                )
                self.weight_dtype = torch.float32
        self.model = decode_copy(
            model,
            device=self.device,
            dtype=self.dtype,
            weight_dtype=self.weight_dtype,
            copy=snapshot,
        )
        self.config = model.config
        # fp32 decoding on CPU multiplies by packed weights (see DecodeLinear).
        self.kernel: PackedKernel | None = kernel_for_activations(self.device, self.dtype)

    def _pack(self, rows: int) -> PackedKernel | None:
        """Pack every linear layer for decoding `rows` rows at once; the kernel it packed for,
        or None when packing is not worth it. Torch's packed kernels beat the plain matmul
        from 2 to 32 rows; the native one serves 1 to 12 rows whatever it was packed for (so
        it is packed once), and oneDNN's takes over above that."""
        kernel = self.kernel
        if kernel == "native" and rows > NATIVE_MAX_ROWS:
            kernel = "onednn" if "onednn" in available_kernels() else None
        if kernel is None or (kernel != "native" and not 2 <= rows <= 32):
            return None
        for module in self.model.modules():
            if isinstance(module, DecodeLinear):
                module.pack(rows, kernel)
        return kernel

    def _check_prompts(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        if len(prompts) == 0:
            raise ValueError("no prompts given: pass at least one prompt of token ids")
        V, ctx = self.config.vocab_size, self.config.max_seq_len
        checked = []
        for i, prompt in enumerate(prompts):
            ids = [int(t) for t in prompt]
            if not ids:
                raise ValueError(
                    f"prompt {i} is empty: give at least one token (for example the BOS token)"
                )
            if min(ids) < 0 or max(ids) >= V:
                raise ValueError(
                    f"prompt {i} has token ids outside the vocabulary [0, {V}): "
                    "encode it with the model's own tokenizer"
                )
            if len(ids) >= ctx:
                raise ContextLengthError(
                    f"prompt {i} has {len(ids)} tokens but the model's context is {ctx} "
                    f"tokens, which leaves no room to generate: shorten the prompt to at most "
                    f"{ctx - 1} tokens"
                )
            checked.append(ids)
        return checked

    def _generator(self, seed: int | None) -> torch.Generator:
        g = torch.Generator(device=self.device)
        if seed is None:
            g.seed()
        else:
            g.manual_seed(seed)
        return g

    def _new_cache(self, *, batch_size: int, max_len: int) -> KVCache:
        cfg = self.config
        return KVCache(
            batch_size=batch_size,
            n_layer=cfg.n_layer,
            n_kv_head=cfg.n_kv_head,
            head_dim=cfg.head_dim,
            max_len=max_len,
            device=self.device,
            dtype=self.dtype,
        )

    def stream(
        self, prompts: Sequence[Sequence[int]], *, n: int = 1, sampling: SamplingConfig
    ) -> Iterator[Step]:
        """Yield one `Step` (a column of B = len(prompts) * n tokens) per generated position,
        until every row has ended."""
        if n < 1:
            raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
        checked = self._check_prompts(prompts)
        generator = self._generator(sampling.seed)
        with torch.inference_mode():
            yield from self._stream(checked, n, sampling, generator)

    def _stream(
        self,
        prompts: list[list[int]],
        n: int,
        sampling: SamplingConfig,
        generator: torch.Generator,
    ) -> Iterator[Step]:
        P, B, dev = len(prompts), len(prompts) * n, self.device
        lengths = torch.tensor([len(p) for p in prompts], device=dev)  # (P,)
        T0 = int(lengths.max())
        # 1) Prefill each distinct prompt once, left-padded into one batch.
        idx = torch.zeros(P, T0, dtype=torch.long, device=dev)  # (P, T0)
        for i, p in enumerate(prompts):
            idx[i, T0 - len(p) :] = torch.tensor(p, device=dev)
        budget = (self.config.max_seq_len - lengths).clamp(max=sampling.max_new_tokens)  # (P,)
        steps = int(budget.max())
        # Packed weights for B rows (serving the prefill's P x T0 rows too where they can);
        # none when no step decodes (one new token: the prefill's logits give it).
        kernel = self._pack(B) if steps > 1 else None
        fused = FusedBlocks.build(self.model, kernel)  # None: the model's forward decodes
        prefill = self._new_cache(batch_size=P, max_len=T0)
        prefill.set_padding(T0 - lengths)
        logits = self.model(idx, kv_cache=prefill, last_only=True)[:, -1]  # (P, V)
        # 2) Copy each prompt's cache rows to its n samples; decode them together.
        rows = torch.arange(P, device=dev).repeat_interleave(n)  # (B,)
        cache = self._new_cache(batch_size=B, max_len=T0 + steps - 1)
        cache.prefill(prefill, rows=rows)
        del prefill
        logits = logits[rows]  # (B, V)
        budget = budget[rows]  # (B,)
        live = torch.arange(B, device=dev)  # (A,) the rows still generating
        stop = torch.tensor(sampling.stop_tokens, dtype=torch.long, device=dev)
        # MKL's packing serves exactly B rows, so with it every step decodes all B rows (ended
        # rows are fed a dummy token and ignored): packed GEMM at B rows beats unpacked at
        # fewer, and repacking for each new row count would cost more than it saves; a last
        # single row goes unpacked. The native and oneDNN kernels serve any count: ended rows
        # are dropped.
        all_rows = kernel == "mkl"
        feed = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) the next input tokens
        for step in range(steps):
            # Uniforms drawn for all B rows, so a row's samples do not depend on which other
            # rows have ended.
            uniform = torch.rand(B, 1, generator=generator, device=dev)[live]  # (A, 1)
            tokens, logprobs = sample_tokens(logits, sampling, uniform)  # (A,), (A,)
            stopped = torch.isin(tokens, stop)  # (A,)
            col = Step(
                tokens=torch.zeros(B, dtype=torch.long, device=dev).index_copy_(0, live, tokens),
                logprobs=torch.zeros(B, device=dev).index_copy_(0, live, logprobs),
                sampled=torch.zeros(B, dtype=torch.bool, device=dev).index_fill_(0, live, True),
                stopped=torch.zeros(B, dtype=torch.bool, device=dev).index_copy_(0, live, stopped),
            )
            yield col
            ended = stopped | (budget[live] <= step + 1)  # (A,)
            if bool(ended.all()):
                return
            if bool(ended.any()):
                keep = (~ended).nonzero().squeeze(-1)  # (A',)
                if all_rows and keep.numel() == 1:
                    cache.keep(live[keep])
                    all_rows = False
                elif not all_rows:
                    cache.keep(keep)
                live, tokens = live[keep], tokens[keep]
            if all_rows:
                feed.index_copy_(0, live, tokens)
                logits = self.model(feed[:, None], kv_cache=cache)[live, -1]  # (A, V)
            elif fused is not None:
                logits = fused.step(tokens, cache)  # (A, V)
            else:
                logits = self.model(tokens[:, None], kv_cache=cache)[:, -1]  # (A, V)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int = 1,
        sampling: SamplingConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Sample]:
        """n samples per prompt, ordered by prompt then sample. ``should_stop`` is asked
        between decoding steps; when it says yes, `GenerationInterrupted` is raised (a daemon
        shutting down does not wait for a long batch to finish)."""
        B = len(prompts) * n
        tokens: list[list[int]] = [[] for _ in range(B)]
        logprobs: list[list[float]] = [[] for _ in range(B)]
        finished = [False] * B
        for col in self.stream(prompts, n=n, sampling=sampling):
            if should_stop is not None and should_stop():
                raise GenerationInterrupted("generation was interrupted before it finished")
            rows = col.sampled.nonzero().squeeze(-1).tolist()
            toks, lps = col.tokens.tolist(), col.logprobs.tolist()
            for r in rows:
                tokens[r].append(toks[r])
                logprobs[r].append(lps[r])
            for r in col.stopped.nonzero().squeeze(-1).tolist():
                finished[r] = True
        return [
            Sample(
                prompt_index=r // n, tokens=tokens[r], logprobs=logprobs[r], finished=finished[r]
            )
            for r in range(B)
        ]

    def logprobs(
        self,
        prompt: Sequence[int],
        completion: Sequence[int],
        *,
        sampling: SamplingConfig | None = None,
    ) -> Tensor:
        """Per-token logprobs (len(completion),) fp32 of `completion` after `prompt`, under the
        distribution `sampling` samples from (None or greedy: the model's own softmax)."""
        (ids,) = self._check_prompts([list(prompt)])
        comp = [int(t) for t in completion]
        if not comp:
            return torch.zeros(0)
        total = len(ids) + len(comp)
        if total > self.config.max_seq_len:
            raise ContextLengthError(
                f"prompt ({len(ids)}) + completion ({len(comp)}) = {total} tokens is more than "
                f"the model's context of {self.config.max_seq_len}: shorten one of them"
            )
        if min(comp) < 0 or max(comp) >= self.config.vocab_size:
            raise ValueError(
                f"completion has token ids outside the vocabulary [0, {self.config.vocab_size})"
            )
        seq = torch.tensor([ids + comp[:-1]], device=self.device)  # (1, T)
        with torch.inference_mode():
            logits = self.model(seq)[0, len(ids) - 1 :]  # (len(comp), V)
            if sampling is not None:
                logits = transform_logits(logits, sampling)
            logp = F.log_softmax(logits, dim=-1)
            target = torch.tensor(comp, device=self.device)[:, None]  # (len(comp), 1)
            return logp.gather(-1, target).squeeze(-1).cpu()
