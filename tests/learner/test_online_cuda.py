"""The online update on a CUDA device: its shared-prompt passes and a whole update agree with
the same on the CPU.

Marked `gpu` (left out of the default run); on a machine with a GPU: `pytest -m gpu`."""

from __future__ import annotations

import copy

import pytest
import torch
from test_online import batch_for, shared_prompt_batch, tiny

from plaudit.learner._online import OnlineUpdateConfig, _Posts, policy_update

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("cuda_full_fp32"),
]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_shared_prompt_passes_on_cuda_equal_the_cpu() -> None:
    """Prompts run once per set (keys and values kept on the GPU), every post's logprobs, KL
    and entropy as on the CPU."""
    batch = shared_prompt_batch()
    got = {}
    for device in (CPU, CUDA):
        model, reference = tiny(0).to(device), tiny(1).to(device)
        posts = _Posts(batch, reference, None, device, 8)
        assert posts.chunks[0].prefix is not None  # 3 distinct prompts among 6 posts
        got[device.type] = posts.measure(model)
    cpu, cuda = got["cpu"], got["cuda"]
    for a, b in zip(cpu.logprobs, cuda.logprobs, strict=True):
        assert torch.allclose(a, b.cpu(), atol=1e-5)
    assert cpu.kl_posts is not None and cuda.kl_posts is not None
    assert torch.allclose(cpu.kl_posts, cuda.kl_posts.cpu(), atol=1e-5)
    assert cuda.entropy == pytest.approx(cpu.entropy, abs=1e-5)


def test_a_whole_update_on_cuda_follows_the_cpu() -> None:
    """Epochs of minibatches with the KL penalty and the clip: the same steps, statistics and
    weights (to fp32 rounding) as on the CPU."""
    start = tiny(0)
    batch = batch_for(start, [2.0, -1.0, 1.5, -2.5], temperature=0.8, shift=0.05)
    cfg = OnlineUpdateConfig(epochs=3, minibatch_size=2, kl_coef=0.05, max_kl=10.0)
    stats, weights = {}, {}
    for device in (CPU, CUDA):
        model = copy.deepcopy(start).to(device)
        reference = copy.deepcopy(start).to(device).requires_grad_(False)
        opt = model.configure_optimizer(lr=1e-3, weight_decay=0.0)
        torch.manual_seed(0)  # the minibatches' order
        stats[device.type] = policy_update(
            model=model, reference=reference, optimizer=opt, batch=batch, config=cfg
        )
        weights[device.type] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    cpu, cuda = stats["cpu"], stats["cuda"]
    assert cuda.steps == cpu.steps == 6 and cuda.stop_reason == cpu.stop_reason
    assert cuda.kl == pytest.approx(cpu.kl, rel=1e-3, abs=1e-6)
    assert cuda.entropy == pytest.approx(cpu.entropy, rel=1e-4)
    assert cuda.loss == pytest.approx(cpu.loss, rel=1e-3, abs=1e-5)
    moved = max(
        float((weights["cpu"][k] - start.state_dict()[k]).abs().max()) for k in weights["cpu"]
    )
    assert moved > 1e-4  # the update did move the weights
    for k, w in weights["cpu"].items():
        assert torch.allclose(weights["cuda"][k], w, atol=1e-5, rtol=1e-4), k
