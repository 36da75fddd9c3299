"""The native sampler (_native_sample.cpp) against the tensor-op path it stands in for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plaudit.learner._engine import (
    SamplingConfig,
    sample_tokens,
    sample_tokens_torch,
    transform_logits,
)
from plaudit.learner._native import native_gemm

pytestmark = pytest.mark.skipif(native_gemm() is None, reason="no native library here")

SETTINGS = [
    SamplingConfig(temperature=0.9, top_p=0.95),
    SamplingConfig(temperature=1.0, top_p=0.5, top_k=300),
    SamplingConfig(temperature=1.3, top_k=7),
    SamplingConfig(temperature=0.7),
    SamplingConfig(temperature=0.8, top_p=0.999),
]


def peaked(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """Logits like a trained model's: a long tail far below a few likely tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 2.0
    top = torch.randint(vocab, (rows, 12), generator=g)
    return logits.scatter_add(1, top, torch.rand(rows, 12, generator=g) * 12.0)


def draw_many(
    row: torch.Tensor, sampling: SamplingConfig, n: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n draws from one row (1, V) through `sample_tokens`: their tokens and logprobs, and the
    row's log-probabilities (V,) under the distribution `transform_logits` defines."""
    logp = F.log_softmax(transform_logits(row, sampling), dim=-1)[0]
    tokens, logprobs = sample_tokens(row.expand(n, -1), sampling, torch.rand(n, 1, generator=g))
    return tokens, logprobs, logp


@pytest.mark.parametrize(
    "sampling", SETTINGS, ids=lambda s: f"T{s.temperature}k{s.top_k}p{s.top_p}"
)
def test_the_same_tokens_and_logprobs_as_the_tensor_path(sampling: SamplingConfig) -> None:
    """Where the tensor path draws over candidates most likely first (or, with neither top-k
    nor top-p, over the vocabulary in id order), the native one draws the same token for the
    same uniform, with its logprob under the distribution `transform_logits` defines."""
    native = native_gemm()
    assert native is not None
    logits = peaked(64, 3000, seed=1)
    uniform = torch.rand(64, 1, generator=torch.Generator().manual_seed(2))
    want_t, want_lp = sample_tokens_torch(logits, sampling, uniform)
    got_t, got_lp = native.sample(
        logits,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        uniform=uniform,
    )
    assert torch.equal(got_t, want_t)
    torch.testing.assert_close(got_lp, want_lp, rtol=0, atol=2e-5)
    full = F.log_softmax(transform_logits(logits, sampling), dim=-1)
    torch.testing.assert_close(got_lp, full.gather(1, got_t[:, None]).squeeze(1), rtol=0, atol=2e-5)


def test_sample_tokens_takes_the_native_path_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import plaudit.learner._engine as engine

    def refuse(*args: object) -> None:
        raise AssertionError("the tensor path ran")

    monkeypatch.setattr(engine, "sample_tokens_torch", refuse)
    tokens, _ = sample_tokens(peaked(2, 500, seed=3), SETTINGS[0], torch.rand(2, 1))
    assert tokens.shape == (2,)


@pytest.mark.parametrize("scale", [0.3, 2.0], ids=["flat", "medium"])
def test_flat_rows_follow_the_distribution(scale: float) -> None:
    """Rows so flat that the tensor path cuts the nucleus over the whole vocabulary in id
    order: the native sampler draws over it most likely first, the same distribution."""
    g = torch.Generator().manual_seed(4)
    row = torch.randn(1, 40, generator=g) * scale
    n = 60000
    tokens, logprobs, logp = draw_many(row, SamplingConfig(temperature=0.9, top_p=0.8), n, g)
    probs = logp.exp()
    freq = torch.bincount(tokens, minlength=40).float() / n
    torch.testing.assert_close(freq, probs, atol=0.006, rtol=0)
    assert bool((probs[tokens] > 0).all())
    torch.testing.assert_close(logprobs, probs.log()[tokens])


@pytest.mark.parametrize("spread", [0.0, 1e-4, 0.05], ids=["equal", "nearly", "untrained"])
def test_a_nucleus_of_thousands_is_cut_where_the_tensor_path_cuts(spread: float) -> None:
    """An untrained model's row (thousands of tokens in the nucleus, their surely-kept part
    left unsorted): every token drawn is in the tensor path's nucleus, with its logprob, and
    the nucleus's edge falls where that path's does (its least likely tokens are drawn too)."""
    g = torch.Generator().manual_seed(7)
    row = torch.randn(1, 8192, generator=g) * spread
    tokens, logprobs, logp = draw_many(row, SamplingConfig(temperature=1.0, top_p=0.95), 10000, g)
    assert bool(torch.isfinite(logp[tokens]).all())
    torch.testing.assert_close(logprobs, logp[tokens], rtol=0, atol=1e-5)
    kept = torch.isfinite(logp)
    edge = row[0][kept].min()
    assert bool((row[0][tokens] <= edge + 0.2 * spread).any())  # the edge is reached


def test_rows_drawn_alike_alone_or_in_a_batch_and_garbage_survived() -> None:
    """A row's token does not depend on the rows beside it (the rows run on several threads);
    a row of NaN or infinities gives some token of the vocabulary, not a crash; tokens masked
    to -inf are never drawn."""
    native = native_gemm()
    assert native is not None
    logits = peaked(9, 2000, seed=5)
    uniform = torch.rand(9, 1, generator=torch.Generator().manual_seed(6))
    s = SETTINGS[0]
    batch, _ = sample_tokens(logits, s, uniform)
    alone = torch.cat(
        [sample_tokens(logits[i : i + 1], s, uniform[i : i + 1])[0] for i in range(9)]
    )
    assert torch.equal(batch, alone)
    bad = torch.stack([torch.full((2000,), float("nan")), torch.full((2000,), float("inf"))])
    for setting in SETTINGS:
        tokens, _ = sample_tokens(bad, setting, torch.rand(2, 1))
        assert bool(((tokens >= 0) & (tokens < 2000)).all())
    masked = logits[:1].clone()
    masked[0, 1000:] = float("-inf")  # tokens a caller banned: never drawn
    for setting in SETTINGS:
        tokens, logprobs = sample_tokens(masked.expand(50, -1), setting, torch.rand(50, 1))
        assert bool((tokens < 1000).all()) and bool(torch.isfinite(logprobs).all())
