"""The offline trainer on a CUDA device: fp32 agrees with the CPU, bf16 and fp16 (with its
grad scaler) train, and an interrupted run resumes where it stopped.

Marked `gpu` (left out of the default run); on a machine with a GPU: `pytest -m gpu`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_trainer import cut_and_resume, small_cfg

from plaudit.learner._checkpoint import load_trainer_state
from plaudit.learner._train import train_offline

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("cuda_full_fp32"),
]


def test_cuda_fp32_follows_the_cpu_run(
    tmp_path: Path, posts_file: Path, tokenizer_dir: Path
) -> None:
    cpu = train_offline(small_cfg(posts_file, tokenizer_dir, max_steps=6), out=tmp_path / "cpu")
    gpu = train_offline(
        small_cfg(posts_file, tokenizer_dir, max_steps=6, device="cuda"), out=tmp_path / "gpu"
    )
    assert [r.loss for r in gpu.history] == pytest.approx([r.loss for r in cpu.history], abs=2e-3)
    assert gpu.best_val_loss == pytest.approx(cpu.best_val_loss, abs=2e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cuda(
    tmp_path: Path, posts_file: Path, tokenizer_dir: Path, precision: str
) -> None:
    cfg = small_cfg(
        posts_file, tokenizer_dir, device="cuda", precision=precision, max_steps=30, epochs=50,
        lr=3e-3, grad_accum=2,
    )  # fmt: skip
    res = train_offline(cfg, out=tmp_path / "run")
    losses = [r.loss for r in res.history]
    assert res.steps == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    state = load_trainer_state(res.last_checkpoint)  # type: ignore[arg-type]
    if precision == "fp16":  # the grad scaler's state travels with the checkpoint
        assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    else:
        assert state["scaler"] is None


def test_resume_on_cuda_continues_the_run(
    tmp_path: Path, posts_file: Path, tokenizer_dir: Path
) -> None:
    cfg = small_cfg(posts_file, tokenizer_dir, device="cuda", max_steps=10)
    full = train_offline(cfg, out=tmp_path / "full")
    part, rest = cut_and_resume(cfg, tmp_path / "cut", at=5)
    assert rest.steps == 10
    # CUDA's kernels may sum in another order from run to run: equal to float noise, not bits.
    resumed = [r.loss for r in part.history + rest.history]
    assert resumed == pytest.approx([r.loss for r in full.history], abs=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs 2 GPUs")
def test_two_nccl_processes_match_one(
    tmp_path: Path, posts_file: Path, tokenizer_dir: Path
) -> None:
    from test_train_ddp import run_torchrun_and_single

    ddp, single = run_torchrun_and_single(tmp_path, posts_file, tokenizer_dir, device="cuda")
    assert ddp["loss"] == pytest.approx(single["loss"], abs=1e-3)
