"""Generation speed: plaudit's engine against `transformers` `generate()` (KV cache on).

Both run in one process on the same weights (the plaudit model exported to a temporary Hugging
Face folder and loaded with `from_pretrained`), the same prompts and sampling settings, the
same number of new tokens (no early stop), at batch 1 and batch 8. Runs alternate between the
two and the best of `--repeats` counts, so a busy machine hurts both alike. A greedy run checks
that both produce the same tokens, i.e. that the comparison is between equal models.

    python bench/generate.py --json
    python bench/generate.py --models smollm2 --batches 8 --profile
    python bench/generate.py --device cuda --models small,medium --batches 1,32 --bf16

`--bf16` times `Engine(dtype=torch.bfloat16)` as the daemon builds it: on a CPU without AMX
whose decoding kernel is plaudit's native one, fp32 activations over fp16 weights
(`decode_precision`; the report's `plaudit_bf16_dtypes` says which). bench/decode_half.py
compares that with fp32 in detail.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from plaudit.learner import (
    PRESETS,
    Engine,
    SamplingConfig,
    Tokenizer,
    Transformer,
    configure_torch,
    default_cache_dir,
    export_hf,
    load_model,
)

PROMPTS = [
    "Write a short post about your morning coffee.",
    "Three things I learned this week:",
    "Hot take: the best programming language is",
    "Just finished a long run and",
    "Reminder to everyone who is stressed about exams today: you have got this, and",
    "The weather here is",
    "New blog post! In it I explain why small models",
    "What is your favourite book and why?",
    # Batch 1 and 8 use the eight above; batch 32 (the GPU's) these too.
    "Unpopular opinion: pineapple on pizza is",
    "My cat just knocked a glass off the table and",
    "Today I finally fixed the bug that",
    "If you could live in any city for a year, which one",
    "The best advice I ever got from a teacher was",
    "Weekend plans:",
    "I tried baking bread for the first time and",
    "Things nobody tells you about moving abroad:",
    "Just watched the season finale and",
    "A small thing that made my day:",
    "Why does every meeting",
    "Learning to play the guitar at forty is",
    "Public service announcement:",
    "Our team shipped the new release today, and",
    "Is it just me, or",
    "The train was late again this morning, so",
    "Here is a thread about the history of",
    "Five minutes into the concert and",
    "Spring cleaning update:",
    "The most underrated board game is",
    "I asked my grandmother for her secret recipe and",
    "First day at the new job:",
    "Can we talk about how good",
    "Late night thought:",
]


def build(name: str) -> tuple[Transformer, Tokenizer, str]:
    if name == "smollm2":
        loaded = load_model("smollm2", cache_dir=default_cache_dir())
        return loaded.model, loaded.tokenizer, loaded.source
    if name in PRESETS:
        torch.manual_seed(0)
        model = Transformer(PRESETS[name]).eval()  # random init: speed does not need training
        tokenizer = Tokenizer.train_bpe(PROMPTS * 4, vocab_size=400)
        return model, tokenizer, f"preset {name} (random init)"
    raise SystemExit(f"unknown model {name!r}: use smollm2 or a preset ({', '.join(PRESETS)})")


def timed(fn: Callable[[], object]) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()  # the GPU's queued work counts too
    return time.perf_counter() - t


def best_of(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Alternate the runs (one warm-up each), return each one's times."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(fn())
    return times


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model, tok, source = build(name)
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(Path(tmp) / "hf", model=model, tokenizer=tok)
        hf = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32)
        hf = hf.to(args.device).eval()
        hf_bf16 = None
        if args.bf16:
            hf_bf16 = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.bfloat16)
            hf_bf16 = hf_bf16.to(args.device).eval()
    prompts = [tok.encode(p, add_bos=tok.add_bos_token) for p in PROMPTS]
    engine = Engine(model=model, device=args.device)
    bf16 = Engine(model=model, device=args.device, dtype=torch.bfloat16) if args.bf16 else None
    pad = tok.pad_id if tok.pad_id is not None else 0
    N = args.tokens

    def hf_generate(
        batch: list[list[int]], *, greedy: bool, n_new: int, model: Any = hf
    ) -> list[list[int]]:
        T = max(len(p) for p in batch)  # left padding, as transformers wants for decoders
        ids = torch.tensor([[pad] * (T - len(p)) + p for p in batch], device=args.device)
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in batch], device=args.device)
        kw: dict[str, Any] = dict(do_sample=False)
        if not greedy:
            kw = dict(do_sample=True, temperature=args.temperature, top_k=0, top_p=args.top_p)
            kw["top_p"] = args.top_p if args.top_p is not None else 1.0
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                pad_token_id=pad, use_cache=True, **kw,
            )  # fmt: skip
        assert out.shape[1] == T + n_new
        return [row[T:].tolist() for row in out]

    # Same model? Greedy continuations agree (fp32 both; a rare near-tie could differ).
    check = prompts[:2]
    greedy = SamplingConfig(temperature=0, max_new_tokens=16)
    ours = [s.tokens for s in engine.generate(check, sampling=greedy)]
    theirs = [hf_generate([p], greedy=True, n_new=16)[0] for p in check]
    result: dict[str, Any] = {
        "model": name,
        "source": source,
        "params": model.num_params(),
        "greedy_tokens_equal": ours == theirs,
        "batches": {},
    }
    if bf16 is not None:  # bfloat16 may mean fp32 activations over bf16 weights here
        result["plaudit_bf16_dtypes"] = {
            "activations": str(bf16.dtype),
            "weights": str(bf16.weight_dtype),
            "kernel": bf16.kernel or "matmul",
        }
    sampling = SamplingConfig(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=N, seed=0
    )
    for B in args.batches:
        batch = prompts[:B]
        runs: dict[str, Callable[[], float]] = {
            "plaudit": lambda b=batch: timed(lambda: engine.generate(b, sampling=sampling)),
            "transformers": lambda b=batch: timed(lambda: hf_generate(b, greedy=False, n_new=N)),
        }
        if bf16 is not None and hf_bf16 is not None:
            runs["plaudit_bf16"] = lambda b=batch, e=bf16: timed(
                lambda: e.generate(b, sampling=sampling)
            )
            runs["transformers_bf16"] = lambda b=batch, m=hf_bf16: timed(
                lambda: hf_generate(b, greedy=False, n_new=N, model=m)
            )
        times = best_of(runs, args.repeats)
        tps = {k: B * N / min(v) for k, v in times.items()}
        row: dict[str, Any] = {
            "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
            "ratio": round(tps["plaudit"] / tps["transformers"], 2),
            "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        }
        if bf16 is not None:
            # bf16 against transformers fp32 (the reference) and against transformers bf16.
            row["ratio_bf16"] = round(tps["plaudit_bf16"] / tps["transformers"], 2)
            row["ratio_bf16_vs_bf16"] = round(tps["plaudit_bf16"] / tps["transformers_bf16"], 2)
        result["batches"][str(B)] = row
        if args.profile:
            profile(engine, batch, sampling, f"{name} batch {B}")
    return result


def profile(engine: Engine, batch: list[list[int]], sampling: SamplingConfig, title: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = engine.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        engine.generate(batch, sampling=sampling)
        if cuda:
            torch.cuda.synchronize()
    print(f"\n# profile: {title}", file=sys.stderr)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=15)
    print(table, file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--models", default="smollm2,small", help="comma-separated")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per sample")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each, best counts")
    p.add_argument("--temperature", type=float, default=0.9, help="daemon default 0.9")
    p.add_argument("--top-p", type=float, default=0.95, help="daemon default 0.95")
    p.add_argument("--bf16", action="store_true", help="also time plaudit in bfloat16")
    p.add_argument("--profile", action="store_true", help="torch.profiler table to stderr")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="both run there")
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    assert max(args.batches) <= len(PROMPTS), f"at most {len(PROMPTS)} prompts"
    configure_torch()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "load_average_1min_at_start": round(load, 2),
        "new_tokens": args.tokens,
        "sampling": {"temperature": args.temperature, "top_p": args.top_p},
        "results": [bench_model(m, args) for m in args.models.split(",")],
    }
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"torch {report['torch']}, {report['threads']} threads, load {load:.1f}, "
        f"{args.tokens} new tokens, temperature {args.temperature}, top_p {args.top_p}"
    )
    for r in report["results"]:
        print(f"{r['model']} ({r['params'] / 1e6:.1f}M, greedy equal: {r['greedy_tokens_equal']})")
        for B, row in r["batches"].items():
            tps = row["tokens_per_s"]
            extra = ""
            if args.bf16:
                extra = (
                    f"; bf16: plaudit {tps['plaudit_bf16']}, transformers "
                    f"{tps['transformers_bf16']} ({row['ratio_bf16_vs_bf16']}x; "
                    f"{row['ratio_bf16']}x transformers fp32)"
                )
            print(
                f"  batch {B}: plaudit {tps['plaudit']} tok/s, transformers "
                f"{tps['transformers']} tok/s, ratio {row['ratio']}x{extra}"
            )


if __name__ == "__main__":
    main()
