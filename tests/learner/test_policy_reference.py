"""The KL reference survives a restart: `Policy.save_reference` and
`Policy.load(..., reference=...)`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plaudit.learner import ModelConfig, ModelLoadError, Policy, Tokenizer, Transformer, save_model

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "coffee in the morning"] * 20


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(TEXTS, vocab_size=300)


def model_dir(path: Path, tokenizer: Tokenizer, *, seed: int, n_embd: int = 32) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, max_seq_len=32, n_layer=1, n_head=2, n_kv_head=1,
        n_embd=n_embd, intermediate_size=64,
    )  # fmt: skip
    save_model(path, model=Transformer(cfg), tokenizer=tokenizer)
    return path


def same_weights(a: torch.nn.Module | None, b: torch.nn.Module | None) -> bool:
    assert a is not None and b is not None
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_reference_survives_a_restart(tokenizer: Tokenizer, tmp_path: Path) -> None:
    """An offline fit's anchor is saved with `save_reference` and loaded instead of the base
    model's by `Policy.load(..., reference=...)`."""
    base = model_dir(tmp_path / "base", tokenizer, seed=0)
    policy = Policy.load(base)
    policy.adopt(model_dir(tmp_path / "fitted", tokenizer, seed=1))  # anchored to the fit
    policy.save(tmp_path / "ckpt")
    policy.save_reference(tmp_path / "reference")
    policy.save_reference(tmp_path / "reference")  # replaces it
    again = Policy.load(base, checkpoint=tmp_path / "ckpt", reference=tmp_path / "reference")
    assert same_weights(again.reference, policy.reference)
    assert not same_weights(again.reference, Policy.load(base).model)
    assert again.reference is not None
    assert not any(p.requires_grad for p in again.reference.parameters())
    assert same_weights(again.model, policy.model)
    # A checkpoint folder serves as a reference folder too.
    assert same_weights(Policy.load(base, reference=tmp_path / "ckpt").reference, policy.model)
    # Without `reference` a restart anchors to the base model, as before.
    plain = Policy.load(base)
    assert same_weights(plain.reference, plain.model)


def test_a_reference_of_another_architecture_is_refused(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    base = model_dir(tmp_path / "base", tokenizer, seed=0)
    wider = model_dir(tmp_path / "wider", tokenizer, seed=1, n_embd=64)
    with pytest.raises(ModelLoadError, match="another architecture"):
        Policy.load(base, reference=wider)
    with pytest.raises(ValueError, match="no reference"):
        Policy.load(base, with_reference=False).save_reference(tmp_path / "ref")
