"""Run by torchrun from test_train_ddp.py: trains with `train_offline` and writes the per-step
losses (rank 0) to OUT/losses.json. Not a test module itself.

    ddp_worker.py POSTS TOKENIZER OUT BATCH [DEVICE [fsdp]]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from plaudit.learner import OfflineTrainConfig, StepRecord, train_offline


def main() -> None:
    posts, tokenizer, out, batch = (
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        Path(sys.argv[3]),
        int(sys.argv[4]),
    )
    device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
    fsdp = sys.argv[6:7] == ["fsdp"]
    cfg = OfflineTrainConfig(
        model="nano",
        data=[posts],
        tokenizer=tokenizer,
        max_seq_len=32,
        batch_size=batch,
        grad_accum=2,
        max_steps=4,
        eval_every=2,
        save_every=100,
        warmup_steps=1,
        samples=0,
        device=device,  # type: ignore[arg-type]
        fsdp=fsdp,
    )
    records: list[StepRecord] = []
    train_offline(cfg, out=out, on_step=records.append)
    import os

    import torch.distributed as dist  # noqa: F401  (initialised and torn down by train_offline)

    if os.environ.get("RANK", "0") == "0":
        (out / "losses.json").write_text(
            json.dumps({"loss": [r.loss for r in records], "val": [r.val_loss for r in records]})
        )


if __name__ == "__main__":
    main()
