"""The generation engine against the naive full-recompute path, with tiny random models."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from plaudit.learner._decode import DecodeLinear, available_kernels
from plaudit.learner._engine import (
    Engine,
    KVCache,
    SamplingConfig,
    _nucleus,
    sample_tokens,
    transform_logits,
)
from plaudit.learner._errors import ContextLengthError
from plaudit.learner._model import ModelConfig, Transformer
from plaudit.learner._native import half_round, native_gemm

CONFIGS = {
    "gpt2": ModelConfig(
        family="gpt2", vocab_size=71, max_seq_len=48, n_layer=2, n_head=4, n_kv_head=4,
        n_embd=32, intermediate_size=128, bias=True,
    ),
    "llama-gqa": ModelConfig(
        family="llama", vocab_size=71, max_seq_len=48, n_layer=2, n_head=4, n_kv_head=2,
        n_embd=32, intermediate_size=48, tie_embeddings=False, rope_theta=500.0,
    ),
}  # fmt: skip


def make_model(name: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(CONFIGS[name]).eval()
    # Larger weights than the 0.02 init, so the distributions are far from uniform.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model


def prompts_for(seed: int, lengths: list[int], vocab: int = 71) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def reference_transform(logits: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """Hugging Face's processors, written out naively: temperature, top-k, top-p."""
    if s.temperature == 0:
        return logits
    logits = logits / s.temperature
    if s.top_k is not None:
        kth = torch.sort(logits, descending=True).values[..., s.top_k - 1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p is not None:
        asc, order = torch.sort(logits, descending=False)
        cum = asc.softmax(-1).cumsum(-1)
        remove = cum <= 1 - s.top_p
        remove[..., -1] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def naive_greedy(model: Transformer, prompt: list[int], steps: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_logits_equal_full_forward_ragged_batch(name: str) -> None:
    """Left-padded ragged rows, prefilled then decoded one token at a time, give every step
    the logits of a full forward pass over that row alone."""
    model = make_model(name)
    cfg = model.config
    prompts = prompts_for(1, [5, 9, 1])
    T0, steps = 9, 6
    cache = KVCache(
        batch_size=3, n_layer=cfg.n_layer, n_kv_head=cfg.n_kv_head, head_dim=cfg.head_dim,
        max_len=T0 + steps,
    )  # fmt: skip
    idx = torch.zeros(3, T0, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, T0 - len(p) :] = torch.tensor(p)
    cache.set_padding(torch.tensor([T0 - len(p) for p in prompts]))
    new = torch.randint(0, cfg.vocab_size, (3, steps), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = [model(idx, kv_cache=cache)[:, -1]]
        for t in range(steps):
            got.append(model(new[:, t : t + 1], kv_cache=cache)[:, -1])
        for i, p in enumerate(prompts):
            full = model(torch.tensor([p + new[i].tolist()]))[0]  # (len + steps, V)
            want = full[len(p) - 1 :]
            torch.testing.assert_close(torch.stack([g[i] for g in got]), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_matches_naive_recompute_and_batching(name: str) -> None:
    model = make_model(name)
    engine = Engine(model=model)
    prompts = prompts_for(3, [4, 11, 7])
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)
    batched = engine.generate(prompts, sampling=greedy)
    for i, p in enumerate(prompts):
        alone = engine.generate([p], sampling=greedy)[0]
        assert batched[i].prompt_index == i
        assert batched[i].tokens == alone.tokens == naive_greedy(model, p, 10)
        torch.testing.assert_close(
            torch.tensor(batched[i].logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(temperature=0, max_new_tokens=8),
        SamplingConfig(temperature=1.0, max_new_tokens=8),
        SamplingConfig(temperature=0.7, top_k=10, max_new_tokens=8),
        SamplingConfig(temperature=1.3, top_p=0.8, max_new_tokens=8),
        SamplingConfig(temperature=0.9, top_k=20, top_p=0.9, max_new_tokens=8),
    ],
    ids=["greedy", "plain", "top_k", "top_p", "top_k+top_p"],
)
def test_logprobs_equal_fresh_forward(name: str, sampling: SamplingConfig) -> None:
    model = make_model(name)
    engine = Engine(model=model)
    prompts = prompts_for(4, [3, 8])
    samples = engine.generate(prompts, n=3, sampling=dataclasses.replace(sampling, seed=11))
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1]
    for s in samples:
        p = prompts[s.prompt_index]
        with torch.no_grad():
            logits = model(torch.tensor([p + s.tokens]))[0, len(p) - 1 : -1]
        want = F.log_softmax(reference_transform(logits, sampling), -1)
        want = want.gather(-1, torch.tensor(s.tokens)[:, None]).squeeze(-1)
        assert torch.isfinite(want).all(), "sampled a token outside the allowed set"
        torch.testing.assert_close(torch.tensor(s.logprobs), want, atol=1e-4, rtol=0)
        again = engine.logprobs(p, s.tokens, sampling=sampling)
        torch.testing.assert_close(again, want, atol=1e-4, rtol=0)


def test_same_seed_same_samples_other_seed_differs() -> None:
    engine = Engine(model=make_model("llama-gqa"))
    prompts = prompts_for(5, [3, 6])
    s = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=7)
    a = engine.generate(prompts, n=4, sampling=s)
    b = engine.generate(prompts, n=4, sampling=s)
    c = engine.generate(prompts, n=4, sampling=dataclasses.replace(s, seed=8))
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in c]
    assert len({tuple(x.tokens) for x in a[:4]}) > 1, "the n samples of a prompt differ"


def test_stop_tokens_end_rows() -> None:
    engine = Engine(model=make_model("gpt2"))
    prompts = prompts_for(6, [5, 2, 8])
    free = engine.generate(prompts, n=2, sampling=SamplingConfig(max_new_tokens=15, seed=3))
    stop = free[0].tokens[4]  # a token row 0 samples at step 5
    s = SamplingConfig(max_new_tokens=15, seed=3, stop_tokens=(stop,))
    for f, x in zip(free, engine.generate(prompts, n=2, sampling=s), strict=True):
        if stop in f.tokens:
            cut = f.tokens.index(stop) + 1
            assert x.finished and x.tokens == f.tokens[:cut] and len(x.logprobs) == cut
        else:
            assert not x.finished and x.tokens == f.tokens
    # Rows that ended early no longer compute, yet the others go on as before.
    assert any(len(x.tokens) == 15 for x in free)


def test_stream_columns_and_masks() -> None:
    engine = Engine(model=make_model("llama-gqa"))
    prompts = prompts_for(7, [3, 4])
    s = SamplingConfig(temperature=0, max_new_tokens=6)
    first = engine.generate(prompts, sampling=s)
    stop = first[0].tokens[1]
    cols = list(engine.stream(prompts, sampling=dataclasses.replace(s, stop_tokens=(stop,))))
    sampled = torch.stack([c.sampled for c in cols])  # (steps, B)
    assert sampled[:, 0].tolist() == [True, True] + [False] * (len(cols) - 2)
    assert cols[1].stopped[0] and cols[1].tokens[0] == stop
    assert sampled[:, 1].sum() == len(cols) and len(cols) >= 2


def test_generation_stops_at_the_context() -> None:
    engine = Engine(model=make_model("gpt2"))
    ctx = engine.config.max_seq_len
    prompts = prompts_for(8, [ctx - 3, 5])
    out = engine.generate(prompts, sampling=SamplingConfig(max_new_tokens=10, seed=0))
    assert [len(x.tokens) for x in out] == [3, 10]
    assert not out[0].finished
    with pytest.raises(ContextLengthError, match=f"prompt 1 has {ctx} tokens"):
        engine.generate(prompts_for(8, [3, ctx]), sampling=SamplingConfig())
    with pytest.raises(ContextLengthError, match="more than the model's context"):
        engine.logprobs([1] * (ctx - 2), [1, 2, 3])


def test_bad_inputs_are_named() -> None:
    engine = Engine(model=make_model("gpt2"))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1], []], sampling=SamplingConfig())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([[1, 71]], sampling=SamplingConfig())
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplingConfig(temperature=-1)


def test_inverse_cdf_sampling_follows_the_distribution() -> None:
    logits = torch.tensor([2.0, 0.5, -1.0, 1.0, -8.0, 0.0])
    s = SamplingConfig(temperature=1.0, top_p=0.9)
    probs = F.softmax(reference_transform(logits, s), -1)
    assert probs[4] == 0 and probs[2] == 0  # outside the nucleus
    uniform = torch.rand(40000, 1, generator=torch.Generator().manual_seed(0))
    tokens, logprobs = sample_tokens(logits.expand(40000, -1), s, uniform)
    freq = torch.bincount(tokens, minlength=6).float() / 40000
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
    torch.testing.assert_close(logprobs, probs.log()[tokens])


def test_top_k_one_is_greedy() -> None:
    engine = Engine(model=make_model("llama-gqa"))
    prompts = prompts_for(9, [4])
    a = engine.generate(prompts, sampling=SamplingConfig(temperature=0, max_new_tokens=8))
    b = engine.generate(prompts, sampling=SamplingConfig(top_k=1, max_new_tokens=8, seed=1))
    assert a[0].tokens == b[0].tokens
    assert all(lp == 0.0 for lp in b[0].logprobs)  # one allowed token: probability 1


def test_bf16_engine_works_on_a_copy() -> None:
    model = make_model("llama-gqa")
    engine = Engine(model=model, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.float32
    out = engine.generate(prompts_for(10, [5]), n=2, sampling=SamplingConfig(max_new_tokens=5))
    assert all(len(x.tokens) == 5 and all(lp <= 0 for lp in x.logprobs) for x in out)


def test_kv_cache_guards_against_misuse() -> None:
    cache = KVCache(batch_size=2, n_layer=1, n_kv_head=1, head_dim=4, max_len=3)
    kv = torch.zeros(2, 1, 2, 4)
    cache.update(0, kv, kv)
    cache.advance(2)
    with pytest.raises(AssertionError, match="KV cache full"):
        cache.update(0, kv, kv)
    with pytest.raises(AssertionError, match="empty cache"):
        cache.set_padding(torch.zeros(2, dtype=torch.long))
    cache.reset()
    assert cache.pos == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # numpy's sort, torch's
@pytest.mark.parametrize("scale", [0.5, 3.0, 30.0], ids=["flat", "medium", "peaked"])
def test_top_p_candidates_match_a_full_sort(scale: float, dtype: torch.dtype) -> None:
    """The nucleus found among the top candidates (growing them when they hold too little
    mass, cutting at a threshold over all of them when a row is flat) is the one a full sort
    finds, on a vocabulary larger than the first candidate set."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 5000, generator=g) * scale).to(dtype)
    for s in [
        SamplingConfig(temperature=0.8, top_p=0.95),
        SamplingConfig(temperature=1.0, top_p=0.5, top_k=3000),
    ]:
        got = transform_logits(logits, s)
        want = reference_transform(logits, s)
        assert torch.equal(got.isinf(), want.isinf())
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kernel", ["native", "mkl", "onednn"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_packed_decoding_equals_unpacked(name: str, kernel: str) -> None:
    """Batched decoding through packed weights (ended rows still fed, then a last single row
    unpacked) samples the same tokens with the same logprobs as the plain path."""
    if kernel not in available_kernels():
        pytest.skip(f"this torch has no {kernel} packed GEMM")
    model = make_model(name)
    packed, plain = Engine(model=model), Engine(model=model)
    packed.kernel, plain.kernel = kernel, None  # type: ignore[assignment]
    prompts = prompts_for(9, [4, 7, 2])
    free = plain.generate(prompts, n=3, sampling=SamplingConfig(max_new_tokens=14, seed=1))
    # Stop tokens that end rows at different steps, leaving one row to go on alone.
    stops = tuple({x.tokens[2] for x in free[:-1]} - set(free[-1].tokens))
    for s in (
        SamplingConfig(max_new_tokens=14, seed=1),
        SamplingConfig(max_new_tokens=14, seed=1, stop_tokens=stops),
    ):
        a, b = packed.generate(prompts, n=3, sampling=s), plain.generate(prompts, n=3, sampling=s)
        assert [x.tokens for x in a] == [x.tokens for x in b]
        assert [x.finished for x in a] == [x.finished for x in b]
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs))
    assert any(
        isinstance(m, DecodeLinear) and m.packed_rows == 9 and m.kernel == kernel
        for m in packed.model.modules()
    )
    assert any(x.finished for x in b) and not all(x.finished for x in b)


@pytest.mark.parametrize("kernel", ["native", "mkl", "onednn"])
def test_packed_weight_serves_the_rows_its_kernel_can(
    kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MKL's packing serves exactly the rows it was made for, oneDNN's any count from 2 (a
    prefill's too), the native one 1 to 12 rows; all give x @ W.T up to rounding, and every
    other input goes unpacked."""
    if kernel not in available_kernels():
        pytest.skip(f"no {kernel} packed GEMM here")
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    layer = DecodeLinear(w, b)
    layer.pack(8, kernel)  # type: ignore[arg-type]
    native = native_gemm()
    native_rows: list[int] = []
    if native is not None:
        real = native.linear
        monkeypatch.setattr(
            native,
            "linear",
            lambda x, *a: native_rows.append(x.numel() // x.size(-1)) or real(x, *a),
        )
    calls: list[str] = []
    for rows in (1, 3, 8, 12, 20):
        x = torch.randn(rows, 1, 32, generator=g)
        with torch.profiler.profile() as prof:
            y = layer(x)
        calls += [e.name for e in prof.events() if e.name.startswith(("mkl::", "mkldnn::"))]
        torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    if kernel == "native":
        assert calls == [] and native_rows == [1, 3, 8, 12], (calls, native_rows)
    else:
        op = "mkl::_mkl_linear" if kernel == "mkl" else "mkldnn::_linear_pointwise"
        assert calls == ([op] if kernel == "mkl" else [op] * 4), calls
        assert native_rows == []


def test_top_p_rows_of_different_nucleus_sizes_in_one_batch() -> None:
    """Rows whose nuclei differ in size in one batch (candidate sets padded to the largest;
    with a flat row, every row cut at a threshold over the whole vocabulary) give each row
    the nucleus a full sort gives, with the gradient of the kept logits."""
    g = torch.Generator().manual_seed(3)
    scales = torch.tensor([[40.0], [6.0], [1.0], [0.05]])
    s = SamplingConfig(temperature=0.9, top_p=0.9)
    for n_rows, width in [(2, 256), (4, 6000)]:  # 6000: one row needs all, so all rows do
        base = (torch.randn(n_rows, 6000, generator=g) * scales[:n_rows]).requires_grad_(True)
        values, ids = _nucleus(base.detach() / s.temperature, 0.9)
        assert values.size(-1) == width and (ids is None) == (width == 6000)
        got, want = transform_logits(base, s), reference_transform(base, s)
        assert torch.equal(got.isinf(), want.isinf())
        kept = (~got.isinf()).sum(-1)
        assert (kept[1:] > kept[:-1]).all(), kept
        torch.testing.assert_close(got[~got.isinf()], want[~want.isinf()])
        w = torch.randn(n_rows, 6000, generator=g)
        (g1,) = torch.autograd.grad(got.masked_fill(got.isinf(), 0).mul(w).sum(), base)
        (g2,) = torch.autograd.grad(want.masked_fill(want.isinf(), 0).mul(w).sum(), base)
        torch.testing.assert_close(g1, g2)


def test_packed_kernel_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The native one wherever it builds, else MKL's on Intel and oneDNN's elsewhere
    (`packed_kernel`'s figures); the variable overrides."""
    from plaudit.learner import _decode

    found = available_kernels()
    for vendor, want in (
        ("GenuineIntel", ["native", "mkl", "onednn"]),
        ("AuthenticAMD", ["native", "onednn"]),
    ):
        monkeypatch.setattr(_decode, "_cpu_vendor", lambda v=vendor: v)
        _decode.packed_kernel.cache_clear()
        usable = [k for k in want if k in found] or found
        assert _decode.packed_kernel() == usable[0]
    monkeypatch.setenv(_decode.KERNEL_ENV, "none")
    _decode.packed_kernel.cache_clear()
    assert _decode.packed_kernel() is None
    monkeypatch.setenv(_decode.KERNEL_ENV, "cublas")
    _decode.packed_kernel.cache_clear()
    with pytest.raises(ValueError, match="PLAUDIT_DECODE_KERNEL='cublas'"):
        _decode.packed_kernel()
    monkeypatch.delenv(_decode.KERNEL_ENV)
    _decode.packed_kernel.cache_clear()


def half_weights(model: Transformer) -> Transformer:
    """A copy of `model` whose linear layers' weights (the tied head's too) are rounded to fp16:
    the model an engine with fp16 weights decodes with."""
    out = Transformer(model.config).eval()
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        for module in out.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(half_round(module.weight))
        if out.lm_head is None:  # tied: the head multiplies by the embedding's rounded values
            out.lm_head = torch.nn.Linear(out.config.n_embd, out.config.vocab_size, bias=False)
            out.lm_head.weight.copy_(half_round(out.tok_emb.weight))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(temperature=0, max_new_tokens=8),
        SamplingConfig(temperature=0.9, top_p=0.9, max_new_tokens=8),
    ],
    ids=["greedy", "top_p"],
)
def test_half_weight_logprobs_are_those_of_the_logits_sampled(
    name: str, sampling: SamplingConfig
) -> None:
    """With fp16 weights (the native kernel's half-size panels where it builds), the behaviour
    logprobs are those of the fp16-weight model the tokens were sampled from, the same in
    prefill, packed decoding and `Engine.logprobs`; not those of the fp32 model."""
    model = make_model(name)
    engine = Engine(model=model, dtype=torch.float32, weight_dtype=torch.float16)
    assert engine.dtype == torch.float32 and engine.weight_dtype == torch.float16
    if native_gemm() is not None:
        engine.kernel = "native"
    rounded = half_weights(model)
    prompts = prompts_for(5, [3, 9])
    samples = engine.generate(prompts, n=3, sampling=dataclasses.replace(sampling, seed=4))
    drift = []
    for s in samples:
        p = prompts[s.prompt_index]
        seq = torch.tensor([p + s.tokens])
        with torch.no_grad():
            logits = rounded(seq)[0, len(p) - 1 : -1]
            fp32 = model(seq)[0, len(p) - 1 : -1]
        target = torch.tensor(s.tokens)[:, None]
        want = F.log_softmax(reference_transform(logits, sampling), -1).gather(-1, target)
        torch.testing.assert_close(torch.tensor(s.logprobs), want.squeeze(-1), atol=1e-4, rtol=0)
        again = engine.logprobs(p, s.tokens, sampling=sampling)
        torch.testing.assert_close(again, want.squeeze(-1), atol=1e-4, rtol=0)
        other = F.log_softmax(reference_transform(fp32, sampling), -1).gather(-1, target)
        drift.append((other - want).abs().max().item())
    assert max(drift) > 1e-4, "the fp16-weight logprobs should differ from fp32's"
    if sampling.temperature == 0:
        for s in samples:
            assert s.tokens == naive_greedy(rounded, prompts[s.prompt_index], 8)
    if engine.kernel == "native":
        assert any(
            isinstance(m, DecodeLinear) and m.packed is not None and m.packed.dtype == torch.float16
            for m in engine.model.modules()
        )


def test_bfloat16_means_half_weights_on_a_cpu_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """dtype=bfloat16 on a CPU whose packed kernel is the native one and that has no AMX: fp32
    activations over fp16 weights; with AMX, another kernel, or on CUDA: bf16 throughout."""
    from plaudit.learner import _decode

    if native_gemm() is None:
        pytest.skip("no native GEMM here")
    cpu, bf16, fp32, fp16 = torch.device("cpu"), torch.bfloat16, torch.float32, torch.float16
    monkeypatch.setattr(_decode, "_cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(_decode, "_cpu_flags", lambda: {"avx2", "fma"})
    _decode.packed_kernel.cache_clear()
    try:
        assert _decode.decode_precision(cpu, bf16) == (fp32, fp16)
        assert _decode.decode_precision(cpu, fp32) == (fp32, fp32)
        assert _decode.decode_precision(torch.device("cuda"), bf16) == (bf16, bf16)
        assert _decode.decode_kernel(cpu, bf16) == "native"
        engine = Engine(model=make_model("llama-gqa"), dtype=bf16)
        assert (engine.dtype, engine.weight_dtype, engine.kernel) == (fp32, fp16, "native")
        # bf16 throughout asked by hand: torch's kernels, not the native (fp32-only) one.
        by_hand = Engine(model=make_model("llama-gqa"), dtype=bf16, weight_dtype=bf16)
        assert (by_hand.dtype, by_hand.weight_dtype, by_hand.kernel) == (bf16, bf16, None)
        out = by_hand.generate(prompts_for(2, [4]), sampling=SamplingConfig(max_new_tokens=3))
        assert len(out[0].tokens) == 3
        monkeypatch.setattr(_decode, "_cpu_flags", lambda: {"avx2", "fma", "amx_bf16"})
        assert _decode.decode_precision(cpu, bf16) == (bf16, bf16)
        assert _decode.decode_kernel(cpu, bf16) is None
        monkeypatch.setattr(_decode, "_cpu_flags", lambda: {"avx2", "fma"})
        monkeypatch.setenv(_decode.KERNEL_ENV, "none")
        _decode.packed_kernel.cache_clear()
        assert _decode.decode_precision(cpu, bf16) == (bf16, bf16)
    finally:
        _decode.packed_kernel.cache_clear()
    with pytest.raises(ValueError, match="give float16 weights with float32 activations"):
        Engine(model=make_model("llama-gqa"), dtype=bf16, weight_dtype=fp32)


def test_a_weight_beyond_fp16s_range_keeps_fp32_weights(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Half-size weights chosen for the machine fall back to fp32 weights, with a warning, for
    a model whose weights fp16 cannot hold; asked for by hand, they are refused."""
    from plaudit.learner import _engine

    model = make_model("llama-gqa")
    with torch.no_grad():
        model.blocks[1].mlp.fc.weight[0, 0] = 1e5
    monkeypatch.setattr(
        _engine, "decode_precision", lambda device, dtype: (torch.float32, torch.float16)
    )
    engine = Engine(model=model, dtype=torch.bfloat16)
    assert (engine.dtype, engine.weight_dtype) == (torch.float32, torch.float32)
    assert "blocks.1.mlp.fc.weight has values beyond fp16's range" in caplog.text
    out = engine.generate(prompts_for(2, [4]), sampling=SamplingConfig(max_new_tokens=3))
    assert len(out[0].tokens) == 3
    with pytest.raises(
        ValueError, match=r"blocks\.1\.mlp\.fc\.weight has values beyond fp16.s range"
    ):
        Engine(model=model, dtype=torch.float32, weight_dtype=torch.float16)
