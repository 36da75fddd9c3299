"""Growing a model: depth growth is an exact identity; Llama width growth is exact to float
rounding (norm statistics kept, RoPE frequencies kept); GPT-2 width growth is measured."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from plaudit.learner._errors import TrainingError
from plaudit.learner._grow import grow, logit_difference, target_config
from plaudit.learner._model import PRESETS, Transformer


def trained_like(family: str) -> Transformer:
    """A nano model with every weight moved off its init (norms included)."""
    torch.manual_seed(0)
    cfg = replace(
        PRESETS["nano"],
        vocab_size=300,
        max_seq_len=64,
        family=family,  # type: ignore[arg-type]
        bias=family == "gpt2",
    )
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_depth_growth_leaves_logits_unchanged(family: str) -> None:
    model = trained_like(family)
    grown = grow(model, replace(model.config, n_layer=5))
    assert len(grown.blocks) == 5
    idx = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.eval()(idx), grown.eval()(idx))
    # The new blocks are real blocks: they get gradients and change the output after a step.
    loss = grown.train()(idx).logsumexp(-1).mean()
    loss.backward()
    assert all(b.attn.proj.weight.grad.abs().sum() > 0 for b in grown.blocks)  # type: ignore[union-attr]


@pytest.mark.parametrize("size", ["micro", "tiny"])  # same head_dim; doubled head_dim
def test_llama_width_growth_is_exact_to_rounding(size: str) -> None:
    model = trained_like("llama")
    grown = grow(model, target_config(model.config, size))
    assert grown.config.n_embd > model.config.n_embd
    assert logit_difference(model, grown) < 1e-4


def test_gpt2_width_growth_is_close_and_reported() -> None:
    model = trained_like("gpt2")
    grown = grow(model, target_config(model.config, "micro"))
    diff = logit_difference(model, grown)
    assert 0 < diff < 1.0  # LayerNorm's mean shift: close, not exact (see _grow docstring)


def test_shrinking_is_refused() -> None:
    model = trained_like("llama")
    with pytest.raises(TrainingError, match="smaller"):
        grow(model, replace(model.config, n_layer=1))
    with pytest.raises(TrainingError, match="Unknown size"):
        target_config(model.config, "huge")
