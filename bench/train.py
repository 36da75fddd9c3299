"""Training throughput: plaudit's offline trainer versus a Hugging Face `Trainer`, measured in
one run on the same model (plaudit's weights exported with export_hf), the same packed rows of
the tweets corpus, batch, sequence length and precision; plaudit's trainer under `torch.compile`
(`plaudit train --compile`) beside them unless `--no-compile`.

    .venv/bin/python bench/train.py --json                 # tiny, small and SmolLM2
    .venv/bin/python bench/train.py --models small --steps 20 --precision bf16
    python bench/train.py --device cuda --models small medium --precision bf16 --batch 16
    .venv/bin/python bench/train.py --models small --repeats 1 --profile   # what bounds it

tokens/s counts input tokens (batch x seq_len) per optimizer step over the timed steps (the
first `--warmup` steps of each are not timed; the compiled run's first steps include its
compilation, so they are warm-up too); the runners alternate `--repeats` times and the ratio is
that of their medians. Needs `transformers` and `accelerate`.

On CUDA each runner's model FLOPs utilisation is reported too (`mfu_ratio`): 6 x the parameters that
multiply (the tied head counted as a matrix product) + 12 x layers x width x sequence length
(attention, as PaLM and nanoGPT count it) FLOPs per token, over the GPU's dense bf16 peak (its
datasheet figure where known) and over a large bf16 matrix product measured in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch


def tweets() -> list[str]:
    import gzip
    import html
    import importlib.util

    spec = importlib.util.find_spec("plaudit.faces.simulated")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "tweets_GroundTruth.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [html.unescape(line.rstrip("\n").split("\t", 2)[2]) for line in f]


def build(name: str) -> tuple[Any, Any]:
    from plaudit.learner import PRESETS, Tokenizer, Transformer, load_model

    if name == "smollm2":
        loaded = load_model("smollm2", cache_dir=Path(tempfile.gettempdir()) / "plaudit-bench")
        return loaded.model, loaded.tokenizer
    tok = Tokenizer.train_bpe(tweets(), vocab_size=8192)
    torch.manual_seed(0)
    return Transformer(replace(PRESETS[name], vocab_size=tok.vocab_size)), tok


def rows(tokenizer: Any, *, seq_len: int, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    from plaudit.learner._data import examples_from_texts, pack, tokenize

    data = tokenize(examples_from_texts(tweets(), source="tweets"), tokenizer)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    x, y = pack(data, range(len(data)), seq_len=seq_len, pad_id=pad)
    return x[:n_rows], y[:n_rows]


def bench_plaudit(
    model: Any, tokenizer: Any, x: torch.Tensor, y: torch.Tensor, a: Any, *, compile: bool = False
) -> float:
    from plaudit.learner import OfflineTrainConfig, fit
    from plaudit.learner._data import PackedEpochs, TokenizedSet

    # PackedEpochs over pre-cut rows: one "example" per row of seq_len + 1 tokens.
    ids = [torch.cat([r, r[-1:]]).numpy() for r in x]
    data = TokenizedSet(
        ids=ids, trained=[torch.ones(len(i), dtype=torch.bool).numpy() for i in ids]
    )
    train = PackedEpochs(data=data, seq_len=a.seq_len, pad_id=0, seed=0, rows_per_step=a.batch)
    cfg = OfflineTrainConfig(
        max_steps=a.warmup + a.steps,
        epochs=1000,
        lr=1e-4,
        warmup_steps=0,
        batch_size=a.batch,
        max_seq_len=a.seq_len,
        precision=a.precision,
        eval_every=10**9,
        save_every=10**9,
        samples=0,
        device=a.device,
        compile=compile,
    )
    with tempfile.TemporaryDirectory() as run_dir:
        res = fit(
            cfg=cfg, model=model, tokenizer=tokenizer, train=train, val=None, run_dir=Path(run_dir)
        )
    timed = res.history[a.warmup :]
    seconds = sum(a.batch * a.seq_len / r.tokens_per_s for r in timed)
    return len(timed) * a.batch * a.seq_len / seconds


def train_flops_per_token(model: Any, seq_len: int) -> float:
    """Forward and backward FLOPs per token (PaLM appendix B; nanoGPT's estimate_mfu)."""
    c = model.config
    n = model.num_params(exclude_embeddings=True)
    if c.tie_embeddings:
        n += model.tok_emb.weight.numel()  # the tied head is still a matrix product per token
    return 6.0 * n + 12.0 * c.n_layer * c.n_embd * seq_len


# Dense bf16 matrix peaks from the vendors' datasheets (FLOP/s, no sparsity), by device name.
DATASHEET_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def measured_matmul_flops(n: int = 8192, repeats: int = 10) -> float:
    """A large bf16 matrix product's rate on this GPU, timed with CUDA events (random data)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times)


def profile_run(label: str, run: Callable[[], float], a: Any) -> None:
    """One more run of a framework under torch.profiler: the operators by self time, then every
    matrix multiply by shape with its GFLOPS and the share of the run they took, to stderr.
    That share bounds the ratio: two frameworks running the same GEMMs at the same speed differ
    only in the rest."""
    from torch.profiler import ProfilerActivity, profile

    cuda = a.device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    print(f"\n# profile: {label}", file=sys.stderr)
    with profile(activities=activities, record_shapes=True) as prof:
        run()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=15), file=sys.stderr)
    if cuda:
        return
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in ("aten::mm", "aten::addmm") and e.self_cpu_time_total > 0:
            shapes = [s for s in e.input_shapes if len(s) == 2]
            (m, k), (_, n) = shapes[-2], shapes[-1]  # addmm: (bias, a, b)
            gflops = 2 * m * k * n * e.count / (e.self_cpu_time_total * 1e3)
            rows.append((e.self_cpu_time_total, e.count, f"({m}, {k}) @ ({k}, {n})", gflops))
    mm = sum(r[0] for r in rows)
    print(
        f"{label}: matrix multiplies {mm / 1e3:.0f} ms of {total / 1e3:.0f} ms ({mm / total:.1%})",
        file=sys.stderr,
    )
    for us, count, shape, gflops in sorted(rows, reverse=True):
        print(f"  {us / 1e3:8.1f} ms {count:4d}x {shape:28s} {gflops:6.1f} GFLOPS", file=sys.stderr)


def bench_hf(model: Any, tokenizer: Any, x: torch.Tensor, a: Any) -> float:
    from transformers import (
        AutoModelForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from plaudit.learner import export_hf

    class Timer(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, *args: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *args: Any, **kw: Any) -> None:
            if a.device == "cuda":
                torch.cuda.synchronize()  # a step's queued GPU work is part of its time
            self.times.append(time.perf_counter() - self.t0)

    class Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return x.size(0)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": x[i], "labels": x[i]}

    with tempfile.TemporaryDirectory() as tmp:
        export_hf(Path(tmp) / "hf", model=model, tokenizer=tokenizer)
        hf_model = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.float32)
        args = TrainingArguments(
            output_dir=str(Path(tmp) / "out"),
            per_device_train_batch_size=a.batch,
            max_steps=a.warmup + a.steps,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            weight_decay=0.1,
            max_grad_norm=1.0,
            bf16=a.precision == "bf16",
            fp16=a.precision == "fp16",
            save_strategy="no",
            report_to=[],
            logging_strategy="no",
            use_cpu=a.device == "cpu",
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )
        timer = Timer()
        trainer = Trainer(model=hf_model, args=args, train_dataset=Rows(), callbacks=[timer])
        with contextlib.redirect_stdout(sys.stderr):  # it prints a summary dict; keep --json clean
            trainer.train()
    timed = timer.times[a.warmup :]
    return len(timed) * a.batch * a.seq_len / sum(timed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "small", "smollm2"])
    p.add_argument("--steps", type=int, default=8, help="timed steps per framework")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs; medians compared")
    p.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the torch.compile run"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", action="store_true", help="profile one more run of each")
    a = p.parse_args()
    torch.set_flush_denormal(True)
    results: dict[str, Any] = {
        "batch": a.batch,
        "seq_len": a.seq_len,
        "precision": a.precision,
        "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
        "steps": a.steps,
        "threads": torch.get_num_threads(),
        "models": {},
    }
    peaks: dict[str, float] = {}
    if a.device == "cuda":
        name = torch.cuda.get_device_name()
        datasheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
        if datasheet is not None:
            peaks["datasheet"] = datasheet
        peaks["measured_matmul"] = measured_matmul_flops()
        results["bf16_peak_tflops"] = {k: round(v / 1e12, 1) for k, v in peaks.items()}
    for name in a.models:
        model, tok = build(name)
        x, y = rows(tok, seq_len=a.seq_len, n_rows=a.batch * (a.warmup + a.steps))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        runners: dict[str, Callable[[], float]] = {
            "hf_trainer": partial(bench_hf, model, tok, x, a),
            "plaudit": partial(bench_plaudit, model, tok, x, y, a),
        }
        if a.compile:
            runners["plaudit_compiled"] = partial(bench_plaudit, model, tok, x, y, a, compile=True)
        # Alternate the runners and compare medians: on a shared machine the load changes from
        # one run to the next, and alternating spreads it over all of them alike.
        runs: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(a.repeats):
            for label, run in runners.items():
                model.load_state_dict(state)  # HF exports the untouched weights first
                runs[label].append(run())
        if a.profile:
            for label, run in runners.items():
                model.load_state_dict(state)
                profile_run(f"{label} {name}", run, a)
        med = {k: statistics.median(v) for k, v in runs.items()}
        hf = med["hf_trainer"]
        r: dict[str, Any] = {"params": model.num_params()}
        for label in runners:
            r[f"{label}_tokens_per_s"] = round(med[label], 1)
            r[f"{label}_runs"] = [round(v, 1) for v in runs[label]]
        r["ratio"] = round(med["plaudit"] / hf, 3) if hf > 0 and math.isfinite(hf) else None
        if a.compile:
            r["compiled_ratio"] = round(med["plaudit_compiled"] / hf, 3) if hf > 0 else None
        if peaks:
            per_token = train_flops_per_token(model, a.seq_len)
            r["train_flops_per_token"] = per_token
            r["tflops"] = {k: round(med[k] * per_token / 1e12, 1) for k in runners}
            # "mfu_ratio": each runner's model FLOPs over a peak (keys name runner and peak).
            r["mfu_ratio"] = {
                f"{k} / {peak}": round(med[k] * per_token / flops, 3)
                for peak, flops in peaks.items()
                for k in runners
            }
        results["models"][name] = r
        if not a.json:
            compiled = (
                f", compiled {med['plaudit_compiled']:,.0f} tok/s ({r['compiled_ratio']})"
                if a.compile
                else ""
            )
            print(
                f"{name}: plaudit {med['plaudit']:,.0f} tok/s, HF Trainer {hf:,.0f} tok/s, "
                f"ratio {r['ratio']}{compiled} (medians of {a.repeats})",
                flush=True,
            )
            for key, mfu in r.get("mfu_ratio", {}).items():
                print(f"  MFU {key}: {mfu:.1%}", flush=True)
    if a.json:
        json.dump(results, sys.stdout, indent=2)
        print()


if __name__ == "__main__":
    main()
