"""Data parallel: 2 CPU processes (gloo) under torchrun compute the same losses as one process
with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def test_fsdp_on_two_gloo_processes_matches_one_and_resumes_alone(
    tmp_path: Path, posts_file: Path, tokenizer_dir: Path
) -> None:
    """--fsdp shards parameters, gradients and optimizer state over the ranks (FSDP2 over gloo
    here; NCCL on GPUs): the same losses as one process, and checkpoints that hold the whole
    model and a name-keyed optimizer state, so a single process resumes them."""
    from safetensors.torch import load_file

    from plaudit.learner import OfflineTrainConfig, train_offline
    from plaudit.learner._errors import CheckpointError

    ddp, single = run_torchrun_and_single(tmp_path, posts_file, tokenizer_dir, fsdp=True)
    assert ddp["loss"] == pytest.approx(single["loss"], abs=1e-4)
    assert [v for v in ddp["val"] if v] == pytest.approx([v for v in single["val"] if v], abs=1e-4)
    ckpt = tmp_path / "ddp/checkpoints/step-00000004"
    sharded, alone = (
        load_file(str(ckpt / "model.safetensors")),
        load_file(str(tmp_path / "single/checkpoints/step-00000004/model.safetensors")),
    )
    assert sharded.keys() == alone.keys()
    for k in alone:  # whole tensors, not one rank's shard
        assert sharded[k].shape == alone[k].shape, k
        torch.testing.assert_close(sharded[k], alone[k], atol=1e-5, rtol=0)

    config = json.loads((tmp_path / "ddp/run.json").read_text())["config"]
    with pytest.raises(CheckpointError, match="global batch 4 x 2 processes -> 4 x 1"):
        train_offline(
            OfflineTrainConfig(**(config | {"fsdp": False, "max_steps": 6})),
            out=tmp_path / "ddp",
            resume=True,
        )
    cfg = OfflineTrainConfig(**(config | {"batch_size": 8, "fsdp": False, "max_steps": 6}))
    resumed = train_offline(cfg, out=tmp_path / "ddp", resume=True)
    assert resumed.history[0].step == 5 and resumed.steps == 6
    cont = train_offline(cfg, out=tmp_path / "single", resume=True)
    assert [r.loss for r in resumed.history] == pytest.approx(
        [r.loss for r in cont.history], abs=1e-4
    )
