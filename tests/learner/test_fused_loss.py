"""The fused, chunked head + cross-entropy (`linear_cross_entropy`, `model(idx, targets=...)`)
against the plain path F.cross_entropy(model(idx)): same loss, same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plaudit.learner import _model
from plaudit.learner._model import IGNORE_INDEX, ModelConfig, Transformer, linear_cross_entropy


def tiny(family: str, *, tie: bool) -> ModelConfig:
    if family == "gpt2":
        return ModelConfig(
            family="gpt2",
            vocab_size=97,
            max_seq_len=32,
            n_layer=2,
            n_head=4,
            n_kv_head=4,
            n_embd=32,
            intermediate_size=128,
            bias=True,
            tie_embeddings=tie,
        )
    return ModelConfig(
        family="llama",
        vocab_size=97,
        max_seq_len=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        intermediate_size=48,
        tie_embeddings=tie,
    )


def batch(vocab: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (3, 24), generator=g)
    y = torch.randint(0, vocab, (3, 24), generator=g)
    y[0, :5] = IGNORE_INDEX  # a prompt
    y[2, 17:] = IGNORE_INDEX  # padding
    return x, y


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 24])  # one row's minimum chunks, one chunk
def test_matches_cross_entropy_over_chunks(
    chunk_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_model, "_CE_CHUNK_BYTES", chunk_bytes)
    g = torch.Generator().manual_seed(1)
    # C = 4: chunks of 2 C = 8 rows, so 37 rows take 5 chunks (the last one short).
    h = torch.randn(37, 4, generator=g, requires_grad=True)
    w = torch.randn(29, 4, generator=g, requires_grad=True)
    t = torch.randint(0, 29, (37,), generator=g)
    t[[0, 9, 36]] = IGNORE_INDEX
    ref = F.cross_entropy(F.linear(h, w), t, reduction="sum")
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    out = linear_cross_entropy(h, w, t)
    gh, gw = torch.autograd.grad(out * 0.3, (h, w))  # backward scales by the incoming grad
    assert abs((out - ref).item()) <= 1e-5 * abs(ref.item())
    assert rel(gh, 0.3 * gh_ref) < 1e-5 and rel(gw, 0.3 * gw_ref) < 1e-5
    assert gh[[0, 9, 36]].abs().max() == 0  # ignored rows get no gradient


@pytest.mark.parametrize(("family", "tie"), [("llama", True), ("llama", False), ("gpt2", True)])
def test_model_loss_and_every_gradient_match_plain_path(family: str, tie: bool) -> None:
    torch.manual_seed(0)
    model = Transformer(tiny(family, tie=tie))
    x, y = batch(model.config.vocab_size)
    ref = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum")
    ref.backward()  # type: ignore[no-untyped-call]
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    loss = model(x, targets=y)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs((loss - ref).item()) <= 1e-5 * abs(ref.item())
    names = {n for n, _ in model.named_parameters()}
    assert set(want) == names  # every parameter, the head included
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype, n
        assert rel(p.grad, want[n]) < 1e-5, (n, rel(p.grad, want[n]))


def test_no_grad_computes_only_the_loss() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny("llama", tie=False))
    x, y = batch(model.config.vocab_size, seed=3)
    with torch.no_grad():
        ref = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum")
        loss = model(x, targets=y)
    assert not loss.requires_grad and loss.grad_fn is None
    assert abs((loss - ref).item()) <= 1e-5 * abs(ref.item())


def test_bf16_autocast_is_close_to_the_plain_autocast_path() -> None:
    torch.manual_seed(0)
    model = Transformer(tiny("llama", tie=True))
    x, y = batch(model.config.vocab_size, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    ref = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
    ref.backward()  # type: ignore[no-untyped-call]
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, targets=y)
    loss.backward()
    assert loss.dtype == torch.float32
    assert abs((loss - ref).item()) <= 1e-2 * abs(ref.item())
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, n
        assert rel(p.grad, want[n]) < 5e-2, (n, rel(p.grad, want[n]))


def test_second_backward_through_it_is_refused() -> None:
    h = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(11, 4, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.randint(0, 11, (6,)))
    loss.backward(retain_graph=True)  # type: ignore[no-untyped-call]
    with pytest.raises(RuntimeError, match="one backward pass per forward"):
        loss.backward()  # type: ignore[no-untyped-call]


def test_ignore_index_is_the_data_pipelines() -> None:
    from plaudit.learner import _data

    assert IGNORE_INDEX == _data.IGNORE_INDEX  # the targets the trainer masks are skipped here
