"""Older checkpoints stripped to weights only (`drop_optimizer_state`), crash-safely and with
their checksums kept consistent; the policy's in-memory offline fit (`Policy.fine_tune`): the
best weights by validation kept, all-or-nothing on failure, a stop before the first step a
no-op."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from plaudit.faces.simulated import load_corpus
from plaudit.learner import (
    DamagedModelError,
    Example,
    NonFiniteLossError,
    OfflineTrainConfig,
    Policy,
    StepRecord,
    drop_optimizer_state,
    examples_from_texts,
    verify_model_folder,
)
from plaudit.learner._policy import OPTIMIZER_FILE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def saved_with_optimizer(model_dir: Path, folder: Path) -> Policy:
    policy = Policy.load(model_dir, lr=1e-3)
    policy.optimizer.state_dict()  # created, so save writes its state
    for p in policy.model.parameters():  # moments to save: one step's worth
        p.grad = torch.ones_like(p)
    policy.optimizer.step()
    policy.save(folder)
    assert (folder / OPTIMIZER_FILE).is_file()
    return policy


def listed(folder: Path) -> set[str]:
    return set(json.loads((folder / "checksums.json").read_text())["files"])


def test_a_stripped_checkpoint_is_weights_only_and_still_checks_and_restores(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "v000002"
    saved_with_optimizer(tiny_model_dir, folder)
    size = (folder / OPTIMIZER_FILE).stat().st_size
    assert drop_optimizer_state(folder) == size
    assert not (folder / OPTIMIZER_FILE).exists()
    assert OPTIMIZER_FILE not in listed(folder)
    assert listed(folder) == {p.name for p in folder.iterdir()} - {"checksums.json"}
    assert verify_model_folder(folder)
    restored = Policy.load(tiny_model_dir).restore(folder, version=2)
    assert restored.checksums and not restored.optimizer
    assert drop_optimizer_state(folder) == 0  # already weights only


def test_a_crash_between_the_listing_and_the_unlink_leaves_a_loadable_checkpoint(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "v000002"
    saved_with_optimizer(tiny_model_dir, folder)

    def killed(self: Path, missing_ok: bool = False) -> None:
        raise OSError(5, "killed mid-strip")

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(OSError, match="killed"):
        drop_optimizer_state(folder)
    monkeypatch.undo()
    # The listing no longer names the file, which is still there: the folder checks, and its
    # restore treats the unlisted optimizer state as gone (it is no longer covered by a
    # checksum), so the optimizer starts afresh.
    assert (folder / OPTIMIZER_FILE).is_file() and OPTIMIZER_FILE not in listed(folder)
    assert verify_model_folder(folder)
    restored = Policy.load(tiny_model_dir).restore(folder, version=2)
    assert restored.checksums and not restored.optimizer
    # The next strip finishes the job.
    assert drop_optimizer_state(folder) > 0
    assert not (folder / OPTIMIZER_FILE).exists() and verify_model_folder(folder)


def test_a_crash_while_the_listing_is_written_leaves_the_checkpoint_whole(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "v000002"
    saved_with_optimizer(tiny_model_dir, folder)
    before = (folder / "checksums.json").read_bytes()

    def killed(src: object, dst: object) -> None:
        raise OSError(5, "killed before the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(Exception, match="killed before the rename"):
        drop_optimizer_state(folder)
    monkeypatch.undo()
    assert (folder / "checksums.json").read_bytes() == before
    restored = Policy.load(tiny_model_dir).restore(folder, version=2)
    assert restored.checksums and restored.optimizer


def test_a_checkpoint_saved_before_checksums_is_stripped_too(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "v000002"
    saved_with_optimizer(tiny_model_dir, folder)
    (folder / "checksums.json").unlink()
    assert drop_optimizer_state(folder) > 0
    assert not (folder / OPTIMIZER_FILE).exists()
    assert not Policy.load(tiny_model_dir).restore(folder, version=2).optimizer


def test_a_damaged_listing_is_not_rewritten(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "v000002"
    saved_with_optimizer(tiny_model_dir, folder)
    (folder / "checksums.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DamagedModelError, match=r"checksums\.json is damaged"):
        drop_optimizer_state(folder)
    assert (folder / OPTIMIZER_FILE).is_file()
    assert (folder / "checksums.json").read_text(encoding="utf-8") == "{not json"


# -- the in-memory offline fit ----------------------------------------------------------------


def fit_config(**kw: object) -> OfflineTrainConfig:
    base: dict[str, object] = {
        "max_steps": 8,
        "batch_size": 4,
        "max_seq_len": 32,
        "lr": 3e-3,
        "warmup_steps": 0,
        "eval_every": 1,
        "val_split": 0.2,
        "samples": 0,
    }
    return OfflineTrainConfig(**(base | kw))  # type: ignore[arg-type]


def corpus_examples() -> list[Example]:
    return examples_from_texts([p.text for p in load_corpus()[:200]], source="corpus")


def weights_of(policy: Policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_fine_tune_keeps_the_best_weights_by_validation_and_writes_nothing(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    policy = Policy.load(tiny_model_dir, lr=1e-3)
    model = policy.model
    at_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_step(rec: StepRecord) -> None:
        at_step[rec.step] = weights_of(policy)
        if rec.step == 3:  # from here on the fit gets worse: the best stays at or before 3
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))

    result = policy.fine_tune(fit_config(), examples=corpus_examples(), on_step=on_step)
    assert result.steps == 8 and result.run_dir is None and result.best_dir is None
    losses = {r.step: r.val_loss for r in result.history}
    best = min(losses, key=lambda s: losses[s] or float("inf"))
    assert best <= 3 and losses[best] == result.best_val_loss
    assert policy.model is model and same(weights_of(policy), at_step[best])
    assert not same(weights_of(policy), at_step[8])
    assert policy.version == 1 and policy.reference is not None
    assert same({k: v.clone() for k, v in policy.reference.state_dict().items()}, at_step[best])
    assert not model.training
    assert list(tmp_path.iterdir()) == []  # no run folder, no checkpoint


def test_fine_tune_that_fails_puts_the_weights_back(tiny_model_dir: Path) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-3)
    before = weights_of(policy)
    reference = policy.reference

    def poison(rec: StepRecord) -> None:
        if rec.step == 2:
            with torch.no_grad():
                next(policy.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="at step 3") as err:
        policy.fine_tune(fit_config(), examples=corpus_examples(), on_step=poison)
    assert "checkpoint" not in str(err.value)  # in memory: none to point to
    assert same(weights_of(policy), before)
    assert policy.version == 0 and policy.reference is reference


def test_fine_tune_stopped_before_its_first_step_changes_nothing(tiny_model_dir: Path) -> None:
    import threading

    policy = Policy.load(tiny_model_dir, lr=1e-3)
    before = weights_of(policy)
    reference = policy.reference
    stop = threading.Event()
    stop.set()
    result = policy.fine_tune(fit_config(), examples=corpus_examples(), stop=stop)
    assert result.steps == 0 and result.reason == "interrupted"
    assert same(weights_of(policy), before)
    assert policy.version == 0 and policy.reference is reference


def test_generation_between_the_fits_micro_batches_changes_nothing(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon samples posts between an offline fit's micro-batches (its worker's step
    boundary): every micro-batch gets the call, generation works there, and the fit's weights
    end as they would without it."""
    from plaudit.learner import SamplingConfig

    monkeypatch.chdir(tmp_path)
    finals = []
    for hook in (False, True):
        torch.manual_seed(0)
        policy = Policy.load(tiny_model_dir, lr=1e-3)
        calls: list[int] = []

        def between(policy: Policy = policy, calls: list[int] = calls) -> None:
            calls.append(1)
            if len(calls) == 3:
                out = policy.generate(
                    ["hello"], n=2, sampling=SamplingConfig(max_new_tokens=4, seed=1)
                )
                assert len(out) == 2

        result = policy.fine_tune(
            fit_config(grad_accum=2),
            examples=corpus_examples(),
            between_steps=between if hook else None,
        )
        if hook:
            assert len(calls) == result.steps * 2 + 2  # two micro-batches a step, and set-up
        finals.append(weights_of(policy))
    assert same(finals[0], finals[1])
