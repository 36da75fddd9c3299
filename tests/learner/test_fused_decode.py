"""The fused decoding step (learner/_fused_decode.py, learner/_native_layers.cpp) against the
model's own forward: same tokens, same logprobs up to float rounding, and where it applies."""

from __future__ import annotations

import pytest
import torch

from plaudit.learner._engine import Engine, KVCache, SamplingConfig
from plaudit.learner._fused_decode import FUSED_ENV, FusedBlocks
from plaudit.learner._model import ModelConfig, Transformer
from plaudit.learner._native import native_gemm, native_gemm_unavailable

pytestmark = pytest.mark.skipif(
    native_gemm() is None, reason=f"no native GEMM here: {native_gemm_unavailable()}"
)

# GQA (3 query heads per key/value head); head_dim 12 and an odd intermediate size exercise
# the kernels' tails past whole vectors (and an odd K).
CONFIG = ModelConfig(
    family="llama", vocab_size=97, max_seq_len=64, n_layer=3, n_head=6, n_kv_head=2,
    n_embd=72, intermediate_size=101, tie_embeddings=True, rope_theta=500.0,
)  # fmt: skip


def make_model(config: ModelConfig = CONFIG, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():  # larger weights than the init: distributions far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(6)
    return model


def engine(model: Transformer, weight_dtype: torch.dtype) -> Engine:
    e = Engine(model=model, dtype=torch.float32, weight_dtype=weight_dtype)
    e.kernel = "native"
    return e


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float16])
def test_fused_decoding_samples_what_the_forward_samples(
    weight_dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left-padded prompts of different lengths, several samples each, rows ending at
    different steps (the cache's rows dropped): the same tokens and logprobs both ways."""
    e = engine(make_model(), weight_dtype)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (5, 1, 13)]
    free = SamplingConfig(temperature=1.0, max_new_tokens=24, seed=2)
    calls: list[int] = []  # rows of each fused step
    real = FusedBlocks.step

    def counted(self: FusedBlocks, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        calls.append(tokens.numel())
        return real(self, tokens, cache)

    monkeypatch.setattr(FusedBlocks, "step", counted)
    monkeypatch.setenv(FUSED_ENV, "0")
    plain = e.generate(prompts, n=2, sampling=free)
    stops = tuple({s.tokens[3] for s in plain[:-1]} - set(plain[-1].tokens))
    for sampling in (free, SamplingConfig(temperature=1.0, max_new_tokens=24, seed=2,
                                          stop_tokens=stops)):  # fmt: skip
        monkeypatch.setenv(FUSED_ENV, "0")
        want = e.generate(prompts, n=2, sampling=sampling)
        monkeypatch.setenv(FUSED_ENV, "1")
        calls.clear()
        got = e.generate(prompts, n=2, sampling=sampling)
        # Every row at every step without stop tokens; fewer as rows end with them.
        assert calls and (calls[-1] < 6 if sampling.stop_tokens else set(calls) == {6})
        assert [s.tokens for s in got] == [s.tokens for s in want]
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(
                torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=2e-5
            )
    assert any(s.finished for s in want) and not all(s.finished for s in want)


def test_a_fused_step_gives_the_forward_logits_and_cache() -> None:
    """One step straight: the logits and the keys and values written equal the forward's."""
    model = make_model()
    e = engine(model, torch.float32)
    e._pack(2)
    fused = FusedBlocks.build(e.model, e.kernel)
    assert fused is not None and fused.half_run == 0
    caches = []
    for _ in range(2):
        cache = KVCache(batch_size=2, n_layer=3, n_kv_head=2, head_dim=12, max_len=20)
        cache.set_padding(torch.tensor([3, 0]))
        with torch.inference_mode():
            e.model(torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(4)),
                    kv_cache=cache)  # fmt: skip
        caches.append(cache)
    tokens = torch.tensor([5, 60])
    with torch.inference_mode():
        want = e.model(tokens[:, None], kv_cache=caches[0])[:, -1]
        got = fused.step(tokens, caches[1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert caches[0].pos == caches[1].pos == 10
    torch.testing.assert_close(caches[1].k[:, :, :, :10], caches[0].k[:, :, :, :10])
    torch.testing.assert_close(caches[1].v[:, :, :, :10], caches[0].v[:, :, :, :10])


def test_where_the_fused_step_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama without biases, packed by the native kernel; not gpt2, biases, another kernel,
    or PLAUDIT_FUSED_DECODE=0."""
    e = engine(make_model(), torch.float16)
    e._pack(1)
    built = FusedBlocks.build(e.model, "native")
    native = native_gemm()
    assert native is not None and built is not None and built.half_run == native.half_run
    e._pack(8)  # fp16 panels laid out anew for 8 rows
    built = FusedBlocks.build(e.model, "native")
    assert built is not None and built.half_run == 1
    assert FusedBlocks.build(e.model, "mkl") is None
    monkeypatch.setenv(FUSED_ENV, "0")
    assert FusedBlocks.build(e.model, "native") is None
    monkeypatch.delenv(FUSED_ENV)
    for other in (
        ModelConfig(family="gpt2", vocab_size=97, max_seq_len=64, n_layer=2, n_head=4,
                    n_kv_head=4, n_embd=32, intermediate_size=64, bias=True),
        ModelConfig(family="llama", vocab_size=97, max_seq_len=64, n_layer=2, n_head=4,
                    n_kv_head=2, n_embd=32, intermediate_size=64, bias=True),
    ):  # fmt: skip
        e = engine(make_model(other), torch.float32)
        e._pack(1)
        assert FusedBlocks.build(e.model, "native") is None
