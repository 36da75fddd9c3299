"""SmolLM2 decoding from half-size (fp16) weights against fp32, on the CPU, in one process.

Two engines over the same model: fp32 (the engine's default kernel here) and fp32 activations
over fp16 weights (the native kernel's half-size panels; `Engine(weight_dtype=float16)`, what
`dtype=bfloat16` gives on a CPU without AMX).
Reports:
- speed: batch 1 and batch 8 decoding, tokens per second of the decoding steps (the prefill
  and the first token left out) and of the whole call, the two engines alternating, the median
  of `--repeats`, and the half / fp32 ratio;
- at batch 8, the GFLOP/s of the linear layers (2 x their weights x tokens; attention left
  out) against the machine's FMA peak: threads x GHz (/proc/cpuinfo "cpu MHz", the clock the
  kernel reports, not a turbo clock) x 2 FMA units x 8 fp32 lanes x 2 flops;
- drift on `--prompts` real-ish prompts (posting instructions over the simulated face's corpus,
  rendered with SmolLM2's chat template): greedy continuations of `--tokens` tokens (ending
  at the tokenizer's stop tokens) equal or not, and the mean absolute difference between the
  two engines' logprobs of the fp32 greedy tokens;
- with `--torch-bf16`, torch's bf16 engine (bf16 activations too) timed alongside;
- that each engine's returned logprobs are those of the logits it sampled from (greedy tokens
  rescored by the same engine's full forward pass; float rounding apart).

    python bench/decode_half.py --json
    python bench/decode_half.py --repeats 9 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from typing import Any

import torch

from plaudit.controller import SYSTEM, post_prompts
from plaudit.faces.simulated import load_corpus
from plaudit.learner import (
    Engine,
    Sample,
    SamplingConfig,
    configure_torch,
    default_cache_dir,
    load_model,
)
from plaudit.learner._decode import DecodeLinear, cpuinfo_field
from plaudit.learner._generate import encode_prompts


def decode_times(
    engine: Engine, prompts: list[list[int]], sampling: SamplingConfig
) -> tuple[float, float]:
    """(seconds of the decoding steps after the first token, seconds of the whole call)."""
    t0 = time.perf_counter()
    first = None
    for _ in engine.stream(prompts, sampling=sampling):
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return end - first, end - t0


def linear_weights(engine: Engine) -> int:
    return sum(m.weight.numel() for m in engine.model.modules() if isinstance(m, DecodeLinear))


def speed(
    engines: dict[str, Engine], prompts: list[list[int]], batch: int, args: argparse.Namespace
) -> dict[str, Any]:
    N = args.tokens
    sampling = SamplingConfig(temperature=0.9, top_p=0.95, max_new_tokens=N, seed=0)
    rows = prompts[:batch]
    for e in engines.values():  # warm-up: packing, first-call costs
        decode_times(e, rows, sampling)
    decode: dict[str, list[float]] = {k: [] for k in engines}
    whole: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(args.repeats):  # alternate, so load on the machine hurts both alike
        for k, e in engines.items():
            d, w = decode_times(e, rows, sampling)
            decode[k].append(d)
            whole[k].append(w)
    out: dict[str, Any] = {
        "decode_tokens_per_s": {
            k: round(batch * (N - 1) / statistics.median(v), 1) for k, v in decode.items()
        },
        "call_tokens_per_s": {
            k: round(batch * N / statistics.median(v), 1) for k, v in whole.items()
        },
        "decode_seconds": {k: [round(t, 3) for t in v] for k, v in decode.items()},
    }
    d = out["decode_tokens_per_s"]
    out["ratio_decode_half_over_fp32"] = round(d["half_weights"] / d["fp32"], 2)
    c = out["call_tokens_per_s"]
    out["ratio_call_half_over_fp32"] = round(c["half_weights"] / c["fp32"], 2)
    return out


def drift(
    engines: dict[str, Engine], prompts: list[list[int]], stops: tuple[int, ...], N: int
) -> dict[str, Any]:
    greedy = SamplingConfig(temperature=0, max_new_tokens=N, stop_tokens=stops)
    samples: dict[str, list[Sample]] = {k: [] for k in engines}
    for i in range(0, len(prompts), 10):  # batches of 10, the same for both engines
        for k, e in engines.items():
            samples[k] += e.generate(prompts[i : i + 10], sampling=greedy)
    ref, half = samples["fp32"], samples["half_weights"]
    equal = sum(a.tokens == b.tokens for a, b in zip(ref, half, strict=True))
    diffs, self_diffs = [], []
    for p, s32, s16 in zip(prompts, ref, half, strict=True):
        lp32 = engines["fp32"].logprobs(p, s32.tokens)  # fp32's greedy tokens under both
        lp16 = engines["half_weights"].logprobs(p, s32.tokens)
        diffs += (lp32 - lp16).abs().tolist()
        # The behaviour logprobs each engine returned, against its own rescoring.
        self_diffs += (lp32 - torch.tensor(s32.logprobs)).abs().tolist()
        rescored = engines["half_weights"].logprobs(p, s16.tokens)
        self_diffs += (rescored - torch.tensor(s16.logprobs)).abs().tolist()
    first_diverged = [
        next((j for j, (x, y) in enumerate(zip(a.tokens, b.tokens, strict=False)) if x != y), None)
        for a, b in zip(ref, half, strict=True)
        if a.tokens != b.tokens
    ]
    return {
        "prompts": len(prompts),
        "greedy_equal": equal,
        "diverged_at_token": first_diverged,
        "greedy_tokens_scored": len(diffs),
        "mean_abs_logprob_diff": round(statistics.fmean(diffs), 5),
        "max_abs_logprob_diff": round(max(diffs), 4),
        "behaviour_logprob_vs_rescore_max_abs": round(max(self_diffs), 6),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-drift", action="store_true")
    p.add_argument(
        "--torch-bf16", action="store_true", help="also time torch's bf16 engine (bf16 throughout)"
    )
    args = p.parse_args()
    configure_torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("smollm2", cache_dir=default_cache_dir())
    model, tok = loaded.model, loaded.tokenizer
    history = [post.text for post in load_corpus()]
    asked = post_prompts(history=history, n=args.prompts, max_chars=280, rng=random.Random(0))
    prompts = encode_prompts(
        tok,
        messages=[
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p.instruction}]
            for p in asked
        ],
    )
    engines = {
        "fp32": Engine(model=model, dtype=torch.float32, weight_dtype=torch.float32),
        "half_weights": Engine(model=model, dtype=torch.float32, weight_dtype=torch.float16),
    }
    timed = dict(engines)
    if args.torch_bf16:  # what "bfloat16" meant before: bf16 activations and torch's kernels
        timed["torch_bf16"] = Engine(model=model, dtype=torch.bfloat16, weight_dtype=torch.bfloat16)
    threads = torch.get_num_threads()
    mhz = float(cpuinfo_field("cpu MHz")) if cpuinfo_field("cpu MHz") != "unknown" else 0.0
    peak = threads * mhz / 1e3 * 2 * 8 * 2  # GFLOP/s
    report: dict[str, Any] = {
        "cpu": cpuinfo_field("model name"),
        "cpu_mhz_proc_cpuinfo": mhz,
        "threads": threads,
        "torch": torch.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "kernels": {k: e.kernel for k, e in timed.items()},
        "prompt_tokens": {
            "min": min(map(len, prompts)),
            "median": statistics.median(map(len, prompts)),
            "max": max(map(len, prompts)),
        },
        "new_tokens": args.tokens,
        "speed": {},
    }
    flops_per_token = 2 * linear_weights(engines["fp32"])
    for batch in (1, 8):
        row = speed(timed, prompts, batch, args)
        if batch == 8:
            gflops = {
                k: round(v * flops_per_token / 1e9, 1)
                for k, v in row["decode_tokens_per_s"].items()
            }
            row["linear_gflops"] = gflops
            row["fma_peak_gflops"] = round(peak, 1)
            row["share_of_peak"] = {k: round(v / peak, 3) for k, v in gflops.items()}
        report["speed"][str(batch)] = row
    if not args.skip_drift:
        report["drift"] = drift(engines, prompts, tok.stop_ids, args.tokens)
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['cpu']}, {threads} threads, {mhz:.0f} MHz, kernels {report['kernels']}")
    for batch, row in report["speed"].items():
        print(
            f"  batch {batch}: decode tok/s {row['decode_tokens_per_s']} "
            f"(half/fp32 {row['ratio_decode_half_over_fp32']}x); whole call "
            f"{row['call_tokens_per_s']} ({row['ratio_call_half_over_fp32']}x)"
            + (f"; share of FMA peak {row['share_of_peak']}" if "share_of_peak" in row else "")
        )
    if "drift" in report:
        d = report["drift"]
        print(
            f"  greedy equal on {d['greedy_equal']}/{d['prompts']} prompts, mean |logprob "
            f"diff| {d['mean_abs_logprob_diff']}, behaviour vs rescored "
            f"{d['behaviour_logprob_vs_rescore_max_abs']}"
        )


if __name__ == "__main__":
    main()
