"""Data parallel: 2 CPU processes (gloo) under torchrun compute the same losses as one process
with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def run_torchrun_and_single(
    tmp_path: Path,
    posts_file: Path,
    tokenizer_dir: Path,
    *,
    device: str = "cpu",
    fsdp: bool = False,
) -> tuple[dict[str, list[float | None]], dict[str, list[float | None]]]:
    """Two ranks of 4 rows under torchrun, then one process with the global batch of 8 rows:
    each one's per-step training and validation losses."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    ddp_out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(HERE / "ddp_worker.py"),
        str(posts_file),
        str(tokenizer_dir),
        str(ddp_out),
        "4",
        device,
        *(["fsdp"] if fsdp else []),
    ]
    proc = subprocess.run(cmd, env=env, timeout=180, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The same trainer in this process, alone, with the whole global batch (2 x 4 rows).
    from plaudit.learner import OfflineTrainConfig, StepRecord, train_offline

    records: list[StepRecord] = []
    config = json.loads((ddp_out / "run.json").read_text())["config"]
    cfg = OfflineTrainConfig(**(config | {"batch_size": 8, "fsdp": False}))
    train_offline(cfg, out=tmp_path / "single", on_step=records.append)
    single = {"loss": [r.loss for r in records], "val": [r.val_loss for r in records]}
    ddp = json.loads((ddp_out / "losses.json").read_text())
    return ddp, single


def test_two_gloo_processes_match_one(
    tmp_path: Path, posts_file: Path, tokenizer_dir: Path
) -> None:
    ddp, single = run_torchrun_and_single(tmp_path, posts_file, tokenizer_dir)
    assert len(ddp["loss"]) == len(single["loss"]) == 4
    assert ddp["loss"] == pytest.approx(single["loss"], abs=1e-4)
    assert [v for v in ddp["val"] if v] == pytest.approx([v for v in single["val"] if v], abs=1e-4)
    # Rank 0 alone wrote the checkpoint.
    assert (tmp_path / "ddp/checkpoints/step-00000004/trainer_state.pt").is_file()
