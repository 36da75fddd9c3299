"""LoRA for online updates (`learner/_lora.py`, `Policy(lora=...)`): adapters that compute what
their merged weights compute, a reference that is the base weights themselves (no copy), updates
that move the adapters only, generation that samples the adapted policy with the behaviour
logprobs the update sees, and checkpoints that restore it (or re-anchor when they cannot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from policy_helpers import rewarded

from plaudit.learner import (
    FitResult,
    LoRAConfig,
    OnlineUpdateConfig,
    Policy,
    SamplingConfig,
    Transformer,
)
from plaudit.learner._lora import ADAPTERS_FILE, Adapters, base_view
from plaudit.learner._online import sequence_logprobs

LORA = LoRAConfig(rank=4, alpha=8.0)
SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hidden(model: Transformer, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = model.hidden_states(idx, layers=model.config.n_layer)
    return out


def randomise(adapters: Adapters, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, _layer, _a, b in adapters.pairs():
            b.copy_(torch.randn(b.shape, generator=gen) * 0.05)


def test_adapters_compute_what_their_merged_weights_compute(tiny_model_dir: Path) -> None:
    model = Policy.load(tiny_model_dir, with_reference=False).model
    idx = torch.randint(
        0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0)
    )
    base = hidden(model, idx)
    adapters = Adapters(model, LORA)
    assert len(list(adapters.pairs())) == 4 * model.config.n_layer  # attention and MLP
    torch.testing.assert_close(hidden(model, idx), base, rtol=0, atol=0)  # B = 0: a no-op
    randomise(adapters)
    adapted = hidden(model, idx)
    assert not torch.allclose(adapted, base)
    torch.testing.assert_close(hidden(adapters.merged(model), idx), adapted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden(base_view(model), idx), base, rtol=0, atol=0)
    adapters.merge()  # folded into the base weights, the adapters zero
    assert adapters.is_zero()
    torch.testing.assert_close(hidden(model, idx), adapted, rtol=1e-5, atol=1e-5)
    adapters.remove()
    torch.testing.assert_close(hidden(model, idx), adapted, rtol=1e-5, atol=1e-5)


def test_the_reference_is_the_base_weights_and_updates_move_the_adapters_only(
    tiny_model_dir: Path,
) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    assert policy.adapters is not None and policy.reference is not None
    # The reference shares the base weights' memory: no second copy.
    for (name, w), (rname, r) in zip(
        policy.model.state_dict().items(), policy.reference.state_dict().items(), strict=True
    ):
        assert name == rname and w.data_ptr() == r.data_ptr()
    trained = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in policy.adapters.parameters()}
    assert not any(p.requires_grad for p in policy.model.parameters())
    base = {k: v.clone() for k, v in policy.model.state_dict().items()}
    batch = rewarded(policy, [1.0, -1.0, 0.5, -0.5], SAMPLING)
    stats = policy.update(batch, config=OnlineUpdateConfig(epochs=2, minibatch_size=2, max_kl=None))
    assert stats.steps == 4 and policy.version == 1
    assert all(torch.equal(base[k], v) for k, v in policy.model.state_dict().items())
    assert not policy.adapters.is_zero()
    assert stats.kl_per_post > 0  # the adapted policy against its base


def test_generation_samples_the_adapted_policy_with_its_own_logprobs(
    tiny_model_dir: Path,
) -> None:
    """The engine samples merged weights; the update scores with the hooks: one model."""
    policy = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    assert policy.adapters is not None
    randomise(policy.adapters)
    cands = policy.generate([policy.render_prompt("x")], n=4, sampling=SAMPLING)
    scored = sequence_logprobs(
        policy.model, [c.prompt_tokens for c in cands], [c.tokens for c in cands]
    )
    for c, lp in zip(cands, scored, strict=True):
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(lp), rtol=0, atol=1e-4)
    base = sequence_logprobs(
        policy.reference, [c.prompt_tokens for c in cands], [c.tokens for c in cands]
    )
    assert any(
        not torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-3)
        for a, b in zip(scored, base, strict=True)
    )


def test_a_checkpoint_restores_the_adapters_and_their_optimizer(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    policy.update(rewarded(policy, [1.0, -1.0], SAMPLING), config=OnlineUpdateConfig(max_kl=None))
    policy.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / ADAPTERS_FILE).is_file()
    again = Policy.load(tiny_model_dir, checkpoint=tmp_path / "ckpt", version=1, lr=1e-2, lora=LORA)
    assert again.adapters is not None and policy.adapters is not None
    for a, b in zip(again.adapters.parameters(), policy.adapters.parameters(), strict=True):
        assert torch.equal(a, b)
    assert (
        again.optimizer.state_dict()["state"].keys()
        == policy.optimizer.state_dict()["state"].keys()
    )
    idx = torch.randint(0, 100, (1, 8))
    torch.testing.assert_close(hidden(again.model, idx), hidden(policy.model, idx), rtol=0, atol=0)
    # The folder is a whole model too: a policy without LoRA takes its merged weights.
    plain = Policy.load(tiny_model_dir, checkpoint=tmp_path / "ckpt")
    torch.testing.assert_close(
        hidden(plain.model, idx), hidden(policy.model, idx), rtol=1e-5, atol=1e-5
    )


def test_a_checkpoint_of_full_fine_tuning_re_anchors_a_lora_policy(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    full = Policy.load(tiny_model_dir, lr=1e-2)
    full.update(rewarded(full, [1.0, -1.0], SAMPLING), config=OnlineUpdateConfig(max_kl=None))
    full.save(tmp_path / "full")
    policy = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    restored = policy.restore(tmp_path / "full", version=1)
    assert restored.reanchored and not restored.optimizer
    idx = torch.randint(0, 100, (1, 8))
    torch.testing.assert_close(hidden(policy.model, idx), hidden(full.model, idx), rtol=0, atol=0)
    assert policy.reference is not None
    torch.testing.assert_close(
        hidden(policy.reference, idx), hidden(full.model, idx), rtol=0, atol=0
    )
    # Adapters saved against another base are not applied to this one either.
    policy.update(rewarded(policy, [1.0, -1.0], SAMPLING), config=OnlineUpdateConfig(max_kl=None))
    policy.save(tmp_path / "lora")
    other = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    assert other.restore(tmp_path / "lora", version=2).reanchored


def test_reset_reference_merges_the_adapters_without_a_copy(tiny_model_dir: Path) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    assert policy.adapters is not None
    randomise(policy.adapters)
    idx = torch.randint(0, 100, (1, 8))
    before = hidden(policy.model, idx)
    old_reference = policy.reference
    policy.reset_reference()
    assert policy.adapters.is_zero() and policy.reference is not old_reference
    assert policy.reference is not None
    torch.testing.assert_close(hidden(policy.model, idx), before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden(policy.reference, idx), before, rtol=1e-5, atol=1e-5)


def fit(policy: Policy, *, steps: int, on_step: Any = None) -> FitResult:
    """A short in-memory offline fit of ``policy`` on 100 corpus posts."""
    from plaudit.faces.simulated import load_corpus
    from plaudit.learner import OfflineTrainConfig, examples_from_texts

    config = OfflineTrainConfig(
        max_steps=steps, batch_size=4, max_seq_len=32, lr=3e-3, warmup_steps=0, eval_every=1,
        val_split=0.2, samples=0,
    )  # fmt: skip
    examples = examples_from_texts([p.text for p in load_corpus()[:100]], source="corpus")
    return policy.fine_tune(config, examples=examples, on_step=on_step)


def test_an_offline_fit_trains_the_whole_policy_and_re_anchors(tiny_model_dir: Path) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    assert policy.adapters is not None
    randomise(policy.adapters)
    base = {k: v.clone() for k, v in policy.model.state_dict().items()}
    result = fit(policy, steps=3)
    assert result.steps == 3 and policy.version == 1
    assert policy.adapters.is_zero()  # merged, then the fit trained the base weights
    assert not all(torch.equal(base[k], v) for k, v in policy.model.state_dict().items())
    assert not any(p.requires_grad for p in policy.model.parameters())
    idx = torch.randint(0, 100, (1, 8))
    assert policy.reference is not None
    torch.testing.assert_close(
        hidden(policy.reference, idx), hidden(policy.model, idx), rtol=0, atol=0
    )
    # The adapters are live again for the online updates that follow.
    policy.update(rewarded(policy, [1.0, -1.0], SAMPLING), config=OnlineUpdateConfig(max_kl=None))
    assert not policy.adapters.is_zero()


def test_an_offline_fit_that_fails_puts_base_and_adapters_back(tiny_model_dir: Path) -> None:
    from plaudit.learner import NonFiniteLossError, StepRecord

    policy = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    assert policy.adapters is not None
    randomise(policy.adapters)
    base = {k: v.clone() for k, v in policy.model.state_dict().items()}
    adapters = {k: v.clone() for k, v in policy.adapters.state_dict().items()}
    reference = policy.reference

    def poison(rec: StepRecord) -> None:
        if rec.step == 2:
            with torch.no_grad():
                next(policy.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError):
        fit(policy, steps=4, on_step=poison)
    assert all(torch.equal(base[k], v) for k, v in policy.model.state_dict().items())
    assert all(torch.equal(adapters[k], v) for k, v in policy.adapters.state_dict().items())
    assert policy.reference is reference and policy.version == 0
    assert not any(p.requires_grad for p in policy.model.parameters())
    idx = torch.randint(0, 100, (1, 8))
    assert not torch.allclose(hidden(policy.model, idx), hidden(reference, idx))  # hooks back


def test_lora_holds_no_reference_copy_and_small_optimizer_state(tiny_model_dir: Path) -> None:
    full = Policy.load(tiny_model_dir, lr=1e-2)
    lora = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    for policy in (full, lora):
        policy.update(
            rewarded(policy, [1.0, -1.0], SAMPLING), config=OnlineUpdateConfig(max_kl=None)
        )
    f, m = full.memory(), lora.memory()
    assert f["weights"] == m["weights"] > 0
    assert f["reference"] == f["weights"] and m["reference"] == 0
    assert f["adapters"] == 0 and 0 < m["adapters"] < m["weights"] / 4
    # AdamW: two moments per trained value (plus a step count each)
    assert m["optimizer"] < 3 * m["adapters"] < f["optimizer"]


def test_a_damaged_adapters_file_is_refused_and_changes_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from plaudit.learner import DamagedModelError
    from plaudit.learner._load import write_checksums

    policy = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    policy.update(rewarded(policy, [1.0, -1.0], SAMPLING), config=OnlineUpdateConfig(max_kl=None))
    policy.save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / ADAPTERS_FILE).write_bytes(b"not a torch file")
    write_checksums(tmp_path / "ckpt")  # damaged before its checksums were written
    fresh = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    assert fresh.adapters is not None
    with pytest.raises(DamagedModelError, match=ADAPTERS_FILE):
        fresh.restore(tmp_path / "ckpt", version=1)
    assert fresh.adapters.is_zero() and fresh.version == 0


def test_a_checkpoint_stripped_to_its_adapters_restores_onto_its_base_only(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from plaudit.learner import DamagedModelError, strip_to_adapters, verify_model_folder

    policy = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    policy.update(rewarded(policy, [1.0, -1.0], SAMPLING), config=OnlineUpdateConfig(max_kl=None))
    folder = tmp_path / "v000001"
    policy.save(folder)
    whole = sum(f.stat().st_size for f in folder.iterdir())
    freed = strip_to_adapters(folder)
    assert freed > whole / 2 and not (folder / "model.safetensors").exists()
    assert not (folder / "online_optimizer.pt").exists() and verify_model_folder(folder)
    again = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    restored = again.restore(folder, version=1)
    assert not restored.reanchored and not restored.optimizer and again.version == 1
    assert again.adapters is not None and policy.adapters is not None
    for a, b in zip(again.adapters.parameters(), policy.adapters.parameters(), strict=True):
        assert torch.equal(a, b)
    # Without LoRA, or on another base, it cannot be used: refused, the policy as it was.
    with pytest.raises(DamagedModelError, match="adapters only"):
        Policy.load(tiny_model_dir).restore(folder, version=1)
    other = Policy.load(tiny_model_dir, lr=1e-2, lora=LORA)
    assert other.adapters is not None
    with torch.no_grad():  # another base: one adapted layer's weights differ
        next(other.adapters.pairs())[1].weight.add_(1.0)
    with pytest.raises(DamagedModelError, match="another base"):
        other.restore(folder, version=1)
    assert other.version == 0
    # A checkpoint of full fine-tuning is left whole.
    full = Policy.load(tiny_model_dir)
    full.save(tmp_path / "full")
    assert strip_to_adapters(tmp_path / "full") == 0
    assert (tmp_path / "full" / "model.safetensors").is_file()
