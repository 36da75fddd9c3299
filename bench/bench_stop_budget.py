"""How long a graceful stop can take at worst: the training step in flight plus a checkpoint.

deploy/plaudit.service sets TimeoutStopSec= from these figures. The model is SmolLM2-135M's
shape (the embedded default, random weights: time does not depend on the values); the step is
an offline batch at the config defaults (batch_size 8, max_seq_len 128) with fused AdamW; the
checkpoint is weights plus optimizer state, written and fsynced the way an atomic checkpoint is.

    .venv/bin/python bench/bench_stop_budget.py [--steps 3] [--dir /var/lib/plaudit]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from plaudit.learner import ModelConfig, Transformer, configure_torch

SMOLLM2_135M = ModelConfig(
    family="llama",
    vocab_size=49152,
    max_seq_len=2048,
    n_layer=30,
    n_head=9,
    n_kv_head=3,
    n_embd=576,
    intermediate_size=1536,
    rope_theta=100000.0,
    tie_embeddings=True,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the checkpoint")
    args = parser.parse_args()

    configure_torch()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Transformer(SMOLLM2_135M)
    opt = model.configure_optimizer(lr=5e-5, weight_decay=0.0)
    n_params = model.num_params()
    threads = torch.get_num_threads()
    print(f"model: SmolLM2-135M shape, {n_params / 1e6:.1f}M params, torch threads {threads}")

    idx = torch.randint(0, SMOLLM2_135M.vocab_size, (args.batch, args.seq + 1), generator=gen)
    times = []
    for _ in range(args.steps + 1):  # the first step warms up allocators and kernels
        t0 = time.perf_counter()
        logits = model(idx[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    steps = times[1:]
    print(
        f"training step (batch {args.batch} x {args.seq} tokens): "
        f"mean {sum(steps) / len(steps):.2f} s, max {max(steps):.2f} s over {len(steps)} steps"
    )

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "checkpoint.pt"
        t0 = time.perf_counter()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
        elapsed = time.perf_counter() - t0
        size = path.stat().st_size
    print(f"checkpoint (weights + AdamW state): {size / 1e9:.2f} GB in {elapsed:.2f} s")
    print(f"worst graceful stop here: {max(steps) + elapsed:.1f} s (one step + one checkpoint)")


if __name__ == "__main__":
    main()
