"""The offline trainer: exact resume, best/patience, NaN handling, output protection, errors."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plaudit.learner._checkpoint import latest_checkpoint, load_trainer_state
from plaudit.learner._data import PackedEpochs, tokenize
from plaudit.learner._errors import CheckpointError, DataError, NonFiniteLossError, TrainingError
from plaudit.learner._model import ModelConfig, Transformer
from plaudit.learner._tokenizer import Tokenizer
from plaudit.learner._train import (
    FitResult,
    OfflineTrainConfig,
    StepRecord,
    fit,
    lr_at,
    train_offline,
)


def small_cfg(posts_file: Path, tokenizer_dir: Path, **kw: object) -> OfflineTrainConfig:
    base: dict[str, object] = dict(
        model="nano",
        data=[posts_file],
        tokenizer=tokenizer_dir,
        max_seq_len=32,
        batch_size=8,
        max_steps=14,
        eval_every=4,
        save_every=100,
        warmup_steps=2,
        samples=0,
        device="cpu",
    )
    return OfflineTrainConfig(**(base | kw))  # type: ignore[arg-type]


def cut_and_resume(cfg: OfflineTrainConfig, out: Path, *, at: int) -> tuple[FitResult, FitResult]:
    """A run stopped after step `at` (as SIGTERM stops it), then resumed to its end."""
    stop = threading.Event()

    def interrupt(rec: StepRecord) -> None:
        if rec.step == at:
            stop.set()

    part = train_offline(cfg, out=out, on_step=interrupt, stop=stop)
    assert part.reason == "interrupted" and part.steps == at
    assert latest_checkpoint(out) == out / f"checkpoints/step-{at:08d}"
    rest = train_offline(cfg, out=out, resume=True)
    assert rest.history[0].step == at + 1
    return part, rest


def test_lr_phases() -> None:
    kw = dict(lr=1.0, warmup=4, total=14, min_ratio=0.1)
    assert [lr_at(s, schedule="cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # type: ignore[arg-type]
    assert lr_at(4, schedule="cosine", **kw) == 1.0  # type: ignore[arg-type]
    assert lr_at(13, schedule="cosine", **kw) == pytest.approx(0.1)  # type: ignore[arg-type]
    assert lr_at(13, schedule="linear", **kw) == pytest.approx(0.1)  # type: ignore[arg-type]
    assert lr_at(9, schedule="linear", **kw) == pytest.approx(0.1 + 0.9 * (1 - 5 / 9))  # type: ignore[arg-type]
    assert lr_at(13, schedule="constant", **kw) == 1.0  # type: ignore[arg-type]


def test_interrupted_and_resumed_run_matches_uninterrupted(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    from train_corpus import make_posts

    posts = tmp_path / "posts.txt"
    posts.write_text("\n".join(make_posts(100, seed=1)), encoding="utf-8")
    cfg = small_cfg(posts, tokenizer_dir, max_steps=10)
    full = train_offline(cfg, out=tmp_path / "full")
    assert full.reason == "finished" and full.steps == 10
    assert full.history[4].epoch == 0 and full.history[-1].epoch >= 1, "must cross an epoch"

    part, rest = cut_and_resume(cfg, tmp_path / "cut", at=5)
    assert rest.steps == 10

    resumed = part.history + rest.history
    assert [r.loss for r in resumed] == [r.loss for r in full.history]
    assert [r.val_loss for r in resumed] == [r.val_loss for r in full.history]
    a = load_file(str(full.last_checkpoint / "model.safetensors"))  # type: ignore[operator]
    b = load_file(str(rest.last_checkpoint / "model.safetensors"))  # type: ignore[operator]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_output_is_never_overwritten_without_force(
    tmp_path: Path, posts_file: Path, tokenizer_dir: Path
) -> None:
    cfg = small_cfg(posts_file, tokenizer_dir, max_steps=1)
    train_offline(cfg, out=tmp_path / "run")
    with pytest.raises(CheckpointError, match="--force"):
        train_offline(cfg, out=tmp_path / "run")
    again = train_offline(cfg, out=tmp_path / "run", force=True)
    assert again.steps == 1
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_offline(cfg, out=tmp_path / "empty", resume=True)
    changed = small_cfg(posts_file, tokenizer_dir, max_steps=2, batch_size=4)
    with pytest.raises(CheckpointError, match="batch_size 8 -> 4"):
        train_offline(changed, out=tmp_path / "run", resume=True)


def test_best_checkpoint_and_patience(tmp_path: Path, tokenizer: Tokenizer) -> None:
    # Validation rows of uniformly random tokens: the untrained (near-uniform) model is at its
    # best on them, and learning the training data only makes it worse, so patience must stop
    # the run `patience` evaluations after the first.
    from train_corpus import make_posts

    from plaudit.learner._data import examples_from_texts

    data = tokenize(examples_from_texts(make_posts(200), source="t"), tokenizer)
    train = PackedEpochs(data=data, seq_len=16, pad_id=2, seed=0, rows_per_step=8)
    g = torch.Generator().manual_seed(0)
    val_x = torch.randint(0, tokenizer.vocab_size, (8, 16), generator=g)
    val_y = torch.randint(0, tokenizer.vocab_size, (8, 16), generator=g)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=tokenizer.vocab_size,
            n_layer=1,
            n_embd=32,
            n_head=2,
            n_kv_head=2,
            intermediate_size=64,
            max_seq_len=64,
        )
    )
    cfg = OfflineTrainConfig(
        max_steps=50,
        eval_every=1,
        patience=3,
        lr=3e-3,
        warmup_steps=0,
        samples=0,
        save_every=100,
        device="cpu",
        batch_size=8,
        max_seq_len=16,
    )
    res = fit(
        cfg=cfg, model=model, tokenizer=tokenizer, train=train, val=(val_x, val_y), run_dir=tmp_path
    )
    vals = [r.val_loss for r in res.history]
    assert all(v is not None for v in vals)
    best_step = vals.index(min(vals)) + 1  # type: ignore[type-var]
    assert res.reason == "early_stop" and res.steps == best_step + 3 < 20
    assert res.best_val_loss == min(vals)  # type: ignore[type-var]
    assert load_trainer_state(tmp_path / "best")["step"] == best_step
    assert latest_checkpoint(tmp_path) == tmp_path / f"checkpoints/step-{res.steps:08d}"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, posts_file: Path, tokenizer_dir: Path
) -> None:
    cfg = small_cfg(posts_file, tokenizer_dir, save_every=2, eval_every=100)
    holder: dict[str, torch.nn.Module] = {}

    def poison(rec: StepRecord) -> None:
        if rec.step == 3:  # a weight goes bad after step 3; step 4's loss is NaN
            ckpt = tmp_path / "run/checkpoints/step-00000002"
            holder["ok"] = ckpt  # type: ignore[assignment]

    import plaudit.learner._train as train_mod

    real_fit = train_mod.fit

    def fit_with_poison(**kw: object) -> object:
        model = kw["model"]

        def on_step(rec: StepRecord) -> None:
            poison(rec)
            if rec.step == 3:
                with torch.no_grad():
                    model.tok_emb.weight[:] = math.nan  # type: ignore[attr-defined]

        return real_fit(**(kw | {"on_step": on_step}))  # type: ignore[arg-type]

    train_mod.fit = fit_with_poison  # type: ignore[assignment]
    try:
        with pytest.raises(NonFiniteLossError) as err:
            train_offline(cfg, out=tmp_path / "run")
    finally:
        train_mod.fit = real_fit
    assert err.value.step == 4
    assert err.value.checkpoint == str(tmp_path / "run/checkpoints/step-00000002")
    assert "step-00000002" in str(err.value) and "Lower --lr" in str(err.value)
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run/checkpoints/step-00000002"
    weights = load_file(str(tmp_path / "run/checkpoints/step-00000002/model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_data_smaller_than_one_batch(tmp_path: Path, tokenizer_dir: Path) -> None:
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one post\ntwo posts\nthree posts here\n", encoding="utf-8")
    cfg = small_cfg(tiny, tokenizer_dir, val_split=0.0)
    with pytest.raises(DataError, match="smaller than one batch") as err:
        train_offline(cfg, out=tmp_path / "run")
    assert str(tiny) in str(err.value) and "--batch-size" in str(err.value)


def test_fp16_on_cpu_is_refused(tmp_path: Path, posts_file: Path, tokenizer_dir: Path) -> None:
    cfg = small_cfg(posts_file, tokenizer_dir, precision="fp16")
    with pytest.raises(TrainingError, match="--precision bf16"):
        train_offline(cfg, out=tmp_path / "run")


def test_bf16_autocast_trains(tmp_path: Path, posts_file: Path, tokenizer_dir: Path) -> None:
    cfg = small_cfg(
        posts_file,
        tokenizer_dir,
        precision="bf16",
        max_steps=3,
        grad_accum=2,
        tensorboard=tmp_path / "tb",
    )
    res = train_offline(cfg, out=tmp_path / "run")
    assert res.steps == 3 and math.isfinite(res.last_loss)
    assert res.history[0].loss > 0
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 100
