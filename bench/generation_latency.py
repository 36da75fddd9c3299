"""How long a playground sample takes while an offline fit holds the torch worker, against the
same sample on an idle worker.

The daemon runs generation (`TorchWorker.run_soon`) at the fit's micro-batch boundaries, so a
sample should wait at most one micro-batch: the goal is a latency during the fit of at most
2x the idle latency plus one micro-batch. Both are measured in one process on the same model,
the fit in memory on the live weights as the daemon's is (`Policy.fine_tune`).

    .venv/bin/python bench/generation_latency.py --model tiny --json
    .venv/bin/python bench/generation_latency.py --model smollm2 --samples 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from online_update import policy_for  # bench/: tiny, smollm2 or a folder, as it loads them

from plaudit.controller import TOPICLESS, TorchWorker
from plaudit.faces.simulated import load_corpus
from plaudit.learner import (
    OfflineTrainConfig,
    Policy,
    SamplingConfig,
    configure_torch,
    examples_from_texts,
)


async def measure(policy: Policy, args: argparse.Namespace) -> dict[str, Any]:
    worker = TorchWorker()
    prompt = policy.render_prompt(TOPICLESS.format(max_chars=280))
    sampling = SamplingConfig(max_new_tokens=args.tokens, seed=0)

    async def sample() -> float:
        t0 = time.perf_counter()
        await worker.run_soon("playground", policy.generate, [prompt], n=2, sampling=sampling)
        return time.perf_counter() - t0

    try:
        await sample()  # warm-up
        idle = [await sample() for _ in range(args.samples)]
        cfg = OfflineTrainConfig(
            max_steps=args.steps,
            batch_size=args.batch,
            grad_accum=args.grad_accum,
            max_seq_len=args.seq_len,
            warmup_steps=0,
            eval_every=10**6,
            samples=0,
            val_split=0.0,
        )
        examples = examples_from_texts([p.text for p in load_corpus()[:2000]], source="corpus")
        micro: list[float] = []
        last = [time.perf_counter()]

        def boundary() -> None:
            now = time.perf_counter()
            micro.append(now - last[0])
            worker.step_boundary()
            last[0] = time.perf_counter()

        t0 = time.perf_counter()
        fit = asyncio.ensure_future(
            worker.run("offline", policy.fine_tune, cfg, examples=examples, between_steps=boundary)
        )
        busy: list[float] = []
        while not fit.done() and len(busy) < args.samples:
            await asyncio.sleep(0.2)
            latency = await sample()
            if not fit.done():
                busy.append(latency)
        await fit
        fit_s = time.perf_counter() - t0
    finally:
        worker.shutdown(wait=True)
    idle_s = statistics.median(idle)
    micro_s = statistics.median(micro[1:] or micro)  # the first includes data preparation
    worst = max(busy) if busy else float("nan")
    bound = 2 * idle_s + micro_s
    return {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "idle_s": [round(x, 3) for x in idle],
        "during_fit_s": [round(x, 3) for x in busy],
        "micro_batch_s": round(micro_s, 3),
        "fit_s": round(fit_s, 2),
        "idle_median_s": round(idle_s, 3),
        "during_fit_max_s": round(worst, 3),
        "goal_s": round(bound, 3),
        "ratio_to_idle": round(statistics.median(busy) / idle_s, 2) if busy else None,
        "ratio_to_goal": round(worst / bound, 2) if busy else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (bench/online.py's), smollm2, a folder")
    ap.add_argument("--samples", type=int, default=5, help="samples idle and during the fit")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40, help="fit steps (long enough to sample in)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    configure_torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = asyncio.run(measure(policy_for(args.model), args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{args.model}: idle {result['idle_median_s']} s, during the fit up to "
            f"{result['during_fit_max_s']} s (median {result['ratio_to_idle']}x idle); "
            f"a micro-batch {result['micro_batch_s']} s; goal 2 x idle + one micro-batch = "
            f"{result['goal_s']} s ({result['ratio_to_goal']}x the goal)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
