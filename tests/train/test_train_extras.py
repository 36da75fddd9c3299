"""TensorBoard event files and the out-of-memory message."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from plaudit.learner import StepRecord
from plaudit.learner._data import PackedEpochs, examples_from_texts, tokenize
from plaudit.learner._errors import TrainingMemoryError
from plaudit.learner._model import ModelConfig, Transformer
from plaudit.learner._tensorboard import ScalarWriter, _masked_crc, crc32c
from plaudit.learner._tokenizer import Tokenizer
from plaudit.learner._train import OfflineTrainConfig, fit


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue check value


def _records(path: Path) -> list[bytes]:
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == _masked_crc(data[i : i + 8])
        payload = data[i + 12 : i + 12 + n]
        assert struct.unpack("<I", data[i + 12 + n : i + 16 + n])[0] == _masked_crc(payload)
        out.append(payload)
        i += 16 + n
    return out


def test_event_file_frames_scalars(tmp_path: Path) -> None:
    writer = ScalarWriter(tmp_path)
    rec = StepRecord(
        step=3,
        epoch=0,
        loss=1.5,
        lr=1e-3,
        grad_norm=0.5,
        tokens_per_s=100.0,
        tokens=10,
        elapsed_s=1.0,
        val_loss=1.25,
    )
    writer.scalars(3, rec)
    writer.close()
    first, second = _records(writer.path)
    assert b"brain.Event:2" in first
    assert b"train/loss" in second and b"val/loss" in second
    # simple_value is field 2 (fixed32) right after the tag: find train/loss's float.
    at = second.index(b"train/loss") + len(b"train/loss")
    assert second[at] == (2 << 3 | 5) and struct.unpack("<f", second[at + 1 : at + 5])[0] == 1.5
    assert second[0] == (1 << 3 | 1) and second[9:11] == bytes([2 << 3, 3])  # wall_time; step 3


class _OutOfMemory(Transformer):
    """A model whose forward fails the way an exhausted CUDA allocator does."""

    def forward(self, idx: Tensor, **kw: object) -> Tensor:  # type: ignore[override]
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_says_what_to_reduce(tmp_path: Path, tokenizer: Tokenizer) -> None:
    data = tokenize(examples_from_texts(["a b c d e f g"] * 40, source="t"), tokenizer)
    train = PackedEpochs(data=data, seq_len=8, pad_id=2, seed=0, rows_per_step=4)
    model = _OutOfMemory(
        ModelConfig(
            vocab_size=tokenizer.vocab_size,
            n_layer=1,
            n_embd=16,
            n_head=2,
            n_kv_head=2,
            intermediate_size=32,
        )
    )
    cfg = OfflineTrainConfig(batch_size=4, max_seq_len=8, max_steps=2, samples=0, device="cpu")
    with pytest.raises(TrainingMemoryError) as err:
        fit(cfg=cfg, model=model, tokenizer=tokenizer, train=train, val=None, run_dir=tmp_path)
    message = str(err.value)
    assert "step 1" in message and "micro-batch 4 x 8" in message
    assert "Reduce --batch-size" in message and "--max-seq-len" in message


def test_tensorboard_reads_the_event_file(tmp_path: Path) -> None:
    """TensorBoard's own reader (the one `tensorboard --logdir` uses) loads the scalars."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    writer = ScalarWriter(tmp_path)
    for step, loss in [(1, 2.5), (2, 2.0), (3, 1.75)]:
        rec = StepRecord(
            step=step, epoch=0, loss=loss, lr=1e-3 * step, grad_norm=0.5, tokens_per_s=100.0,
            tokens=10 * step, elapsed_s=1.0, val_loss=loss + 0.25 if step == 3 else None,
        )  # fmt: skip
        writer.scalars(step, rec)
    writer.close()
    events = accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {
        "train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss"
    }  # fmt: skip
    loss = events.Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 2.5), (2, 2.0), (3, 1.75)]
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [(3, 2.0)]
    assert events.Scalars("train/lr")[1].value == pytest.approx(2e-3)


_UNDER_A_MEMORY_LIMIT = """
import resource, sys
import torch  # mapped before the limit is set
status = open("/proc/self/status").read().split("VmSize:")[1]
vm = int(status.split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1536 << 20), resource.RLIM_INFINITY))
from plaudit.daemon._cli import main
sys.argv = ["plaudit", *sys.argv[1:]]
main()
"""


def test_a_real_out_of_memory_says_what_to_reduce(tmp_path: Path, tokenizer_dir: Path) -> None:
    """A real allocator failure (the process limited to 1.5 GiB more address space, a `small`
    model at 64 x 256 tokens needing several GiB of activations) ends with the message, not a
    traceback, and writes no half checkpoint."""
    from train_corpus import make_posts

    data = tmp_path / "posts.txt"
    data.write_text("\n".join(make_posts(3000)) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", "offline", "--model", "small", "--data", str(data), "--tokenizer",
            str(tokenizer_dir), "--batch-size", "64", "--max-seq-len", "256", "--max-steps",
            "2", "--samples", "0", "--out", str(out), "--device", "cpu"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _UNDER_A_MEMORY_LIMIT, *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Out of memory at step 1 with micro-batch 64 x 256" in done.stderr, done.stderr[-2000:]
    assert "Reduce --batch-size" in done.stderr and "Traceback" not in done.stderr
    assert not list(out.glob("checkpoints/step-*"))
