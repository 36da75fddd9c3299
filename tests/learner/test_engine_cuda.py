"""The generation engine on a CUDA device: the same checks as test_engine.py's, on the GPU.

Marked `gpu` (left out of the default run); on a machine with a GPU: `pytest -m gpu`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_engine import CONFIGS, make_model, prompts_for, reference_transform

from plaudit.learner._engine import Engine, KVCache, SamplingConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("cuda_full_fp32"),
]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_logits_equal_full_forward_on_cuda(name: str) -> None:
    model = make_model(name).to(CUDA)
    cfg = model.config
    prompts = prompts_for(1, [5, 9, 1])
    T0, steps = 9, 6
    cache = KVCache(
        batch_size=3, n_layer=cfg.n_layer, n_kv_head=cfg.n_kv_head, head_dim=cfg.head_dim,
        max_len=T0 + steps, device=CUDA,
    )  # fmt: skip
    idx = torch.zeros(3, T0, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, T0 - len(p) :] = torch.tensor(p)
    cache.set_padding(torch.tensor([T0 - len(p) for p in prompts], device=CUDA))
    new = torch.randint(0, cfg.vocab_size, (3, steps), generator=torch.Generator().manual_seed(2))
    idx, new = idx.to(CUDA), new.to(CUDA)
    with torch.no_grad():
        got = [model(idx, kv_cache=cache)[:, -1]]
        for t in range(steps):
            got.append(model(new[:, t : t + 1], kv_cache=cache)[:, -1])
        for i, p in enumerate(prompts):
            full = model(torch.tensor([p + new[i].tolist()], device=CUDA))[0]
            want = full[len(p) - 1 :]
            torch.testing.assert_close(torch.stack([g[i] for g in got]), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(temperature=1.0, max_new_tokens=8),
        SamplingConfig(temperature=0.9, top_k=20, top_p=0.9, max_new_tokens=8),
        SamplingConfig(temperature=1.3, top_p=0.8, max_new_tokens=8),
    ],
    ids=["plain", "top_k+top_p", "top_p"],
)
def test_logprobs_equal_fresh_forward_on_cuda(name: str, sampling: SamplingConfig) -> None:
    model = make_model(name).to(CUDA)
    engine = Engine(model=model)
    assert engine.device.type == "cuda" and engine.kernel is None
    prompts = prompts_for(4, [3, 8])
    samples = engine.generate(prompts, n=3, sampling=dataclasses.replace(sampling, seed=11))
    for s in samples:
        p = prompts[s.prompt_index]
        with torch.no_grad():
            logits = model(torch.tensor([p + s.tokens], device=CUDA))[0, len(p) - 1 : -1]
        want = F.log_softmax(reference_transform(logits, sampling), -1)
        want = want.gather(-1, torch.tensor(s.tokens, device=CUDA)[:, None]).squeeze(-1).cpu()
        assert torch.isfinite(want).all(), "sampled a token outside the allowed set"
        torch.testing.assert_close(torch.tensor(s.logprobs), want, atol=1e-4, rtol=0)
    again = engine.generate(prompts, n=3, sampling=dataclasses.replace(sampling, seed=11))
    assert [s.tokens for s in again] == [s.tokens for s in samples], "same seed, same samples"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cuda_greedy_equals_cpu_greedy(name: str) -> None:
    model = make_model(name)
    prompts = prompts_for(3, [4, 11, 7])
    greedy = SamplingConfig(temperature=0, max_new_tokens=10)
    on_cpu = Engine(model=model).generate(prompts, sampling=greedy)
    on_gpu = Engine(model=model, device=CUDA).generate(prompts, sampling=greedy)
    assert [s.tokens for s in on_gpu] == [s.tokens for s in on_cpu]
    for a, b in zip(on_gpu, on_cpu, strict=True):
        torch.testing.assert_close(
            torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0
        )


def test_bf16_engine_on_cuda_samples_from_its_own_distribution() -> None:
    model = make_model("llama-gqa")
    engine = Engine(model=model, device=CUDA, dtype=torch.bfloat16)
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3)
    samples = engine.generate(prompts_for(5, [6, 2]), n=2, sampling=sampling)
    assert all(len(s.tokens) == 8 and all(lp <= 0 for lp in s.logprobs) for s in samples)
    for s in samples:  # the logprobs it reports are those of a fresh bf16 scoring pass
        p = prompts_for(5, [6, 2])[s.prompt_index]
        again = engine.logprobs(p, s.tokens, sampling=sampling).cpu()
        # bf16 keeps 8 bits of mantissa: the cached and the recomputed logits differ by
        # its rounding (~0.4% of logits of tens here), no more.
        torch.testing.assert_close(again, torch.tensor(s.logprobs), atol=5e-2, rtol=1e-2)
    assert next(model.parameters()).device.type == "cpu", "the engine works on a copy"
