"""Policy calls the controller makes on its insides: adopting an offline fit's weights, saving
itself as one atomic folder, and a KL reference that survives a restart (`save_reference`,
`Policy.load(..., reference=...)`)."""

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


def test_adopt_takes_weights_resets_reference_and_bumps_version(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    policy = Policy.load(model_dir(tmp_path / "base", tokenizer, seed=0), version=4)
    assert policy.device == "cpu"
    old_optimizer = policy.optimizer
    fitted = model_dir(tmp_path / "fitted", tokenizer, seed=1)
    assert policy.adopt(fitted) == 5 and policy.version == 5
    expected = Policy.load(fitted).model
    assert same_weights(policy.model, expected)
    assert policy.reference is not None and same_weights(policy.reference, expected)
    assert policy.optimizer is not old_optimizer  # its moments belonged to the old anchor


def test_adopt_refuses_another_architecture_and_changes_nothing(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    policy = Policy.load(model_dir(tmp_path / "base", tokenizer, seed=0))
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    wider = model_dir(tmp_path / "wider", tokenizer, seed=1, n_embd=64)
    with pytest.raises(ModelLoadError, match="another architecture"):
        policy.adopt(wider)
    assert policy.version == 0
    assert all(torch.equal(before[k], v) for k, v in policy.model.state_dict().items())


def test_save_writes_model_and_optimizer_as_one_folder(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    base = model_dir(tmp_path / "base", tokenizer, seed=0)
    policy = Policy.load(base, lr=1e-4)
    policy.optimizer  # noqa: B018 - created, so its state is saved
    policy.save(tmp_path / "ckpt")
    policy.save(tmp_path / "ckpt")  # replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ckpt"]
    assert (tmp_path / "ckpt" / "online_optimizer.pt").is_file()
    again = Policy.load(base, checkpoint=tmp_path / "ckpt")
    assert same_weights(again.model, policy.model)


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
