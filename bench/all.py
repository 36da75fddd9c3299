"""Every benchmark in one run, one results page: bench/RESULTS.md.

Each benchmark runs as its own process (its `--json` output is read back), one after the other,
so they do not share the machine. The page names the machine, the commit, each command, its
wall time, every ratio it reported (plaudit's figure over its peer's, measured in the same run)
and its whole JSON. Beside the page, RESULTS.json keeps every section with the machine and date
it was measured on.

The `cuda_*` benchmarks need a CUDA GPU. Where torch sees none they are skipped, and the page
keeps their last section from RESULTS.json, marked with the machine and date it came from. A run
on a GPU machine adds them to the page with `--add`:

    .venv/bin/python bench/all.py                    # everything (about an hour on 2 cores)
    .venv/bin/python bench/all.py --only online_update,startup --out /tmp/RESULTS.md
    .venv/bin/python bench/all.py --quick            # fewer repeats, smaller models
    PLAUDIT_COMMIT=abc1234 python bench/all.py --only cuda_train,cuda_generate --out /tmp/gpu/RESULTS.md
    .venv/bin/python bench/all.py --add /tmp/gpu/RESULTS.json   # into this page; runs nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Bench:
    name: str
    what: str  # one line: what it measures against what
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    cuda: bool = False  # needs a CUDA GPU


CUDA_TRAIN = [
    "train.py",
    "--json",
    "--device",
    "cuda",
    "--models",
    "medium",
    "--precision",
    "bf16",
    "--batch",
    "32",
    "--seq-len",
    "1024",
]
# The 8 rewarded posts with their cycles' 56 other candidates, each cycle sharing a prompt.
WITH_CANDIDATES = ("--batch-per-prompt", "8", "--posts", "64", "--lora", "0")
CUDA_GENERATE = ["generate.py", "--json", "--device", "cuda", "--models", "medium", "--bf16"]

BENCHES = (
    Bench(
        "generate",
        "generation, plaudit's engine against transformers generate() (tokens/s)",
        ("generate.py", "--json", "--repeats", "3"),
        ("generate.py", "--json", "--repeats", "1", "--models", "small"),
    ),
    Bench(
        "decode_half",
        "SmolLM2 decoding from half-size (fp16) weights against fp32, and the drift between them",
        ("decode_half.py", "--json"),
        ("decode_half.py", "--json", "--repeats", "1", "--prompts", "10"),
    ),
    Bench(
        "train",
        "offline training, plaudit's trainer against the Hugging Face Trainer (tokens/s)",
        ("train.py", "--json", "--models", "tiny", "small", "smollm2", "--repeats", "3"),
        ("train.py", "--json", "--models", "tiny", "--repeats", "1", "--no-compile"),
    ),
    Bench(
        "online_update",
        "one online update on 8 rewarded posts against its floor (seconds)",
        ("online_update.py", "--json", "--model", "smollm2"),
        ("online_update.py", "--json", "--model", "tiny", "--repeats", "1"),
    ),
    Bench(
        "online_update_candidates",
        "one online update on 8 rewarded posts with their cycles' candidates (the daemon's "
        "default with a trusted reward model: 64 posts, 8 minibatches an epoch) against its "
        "floor (seconds)",
        ("online_update.py", "--json", "--model", "smollm2", *WITH_CANDIDATES, "--repeats", "2"),
        ("online_update.py", "--json", "--model", "tiny", *WITH_CANDIDATES, "--repeats", "1"),
    ),
    Bench(
        "startup",
        "`plaudit generate` as a whole process against a bare load-and-forward script",
        ("startup.py", "--runs", "5"),
        ("startup.py", "--runs", "1"),
    ),
    Bench(
        "store_scale",
        "the store's queries at 1M posts and 5M reaction snapshots (ms)",
        ("store_scale.py", "scale", "--runs", "7"),
        ("store_scale.py", "scale", "--posts", "100000", "--runs", "3"),
    ),
    Bench(
        "store_month",
        "the database after a month at the default cadence, with and without pruning",
        ("store_scale.py", "month"),
        ("store_scale.py", "month"),
    ),
    Bench(
        "generation_latency",
        "a playground sample during an offline fit against the same sample idle",
        ("generation_latency.py", "--model", "smollm2", "--json"),
        ("generation_latency.py", "--model", "tiny", "--json"),
    ),
    Bench(
        "online",
        "learning on the simulated clock: fresh-sample reward, REINFORCE against plaudit",
        ("online.py", "--quick", "--json"),
        ("online.py", "--quick", "--json"),
    ),
    Bench(
        "cuda_train",
        "GPU: offline training of `medium` in bf16 against the HF Trainer (tokens/s), and MFU",
        (*CUDA_TRAIN, "--warmup", "3", "--steps", "20", "--repeats", "2"),
        (*CUDA_TRAIN, "--steps", "5", "--repeats", "1", "--no-compile"),
        cuda=True,
    ),
    Bench(
        "cuda_generate",
        "GPU: generation at batch 1 and 32, plaudit's engine against transformers (tokens/s)",
        (*CUDA_GENERATE, "--batches", "1,32", "--tokens", "128", "--repeats", "3"),
        (*CUDA_GENERATE, "--batches", "32", "--tokens", "64", "--repeats", "1"),
        cuda=True,
    ),
)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except FileNotFoundError:  # no git
        commit, dirty = "", ""
    # A copy of the tree whose .git is missing or stale (a lent GPU machine's) names it by hand.
    commit = os.environ.get("PLAUDIT_COMMIT") or commit or "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def ratios(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every figure whose key says it is a ratio, with its path in the JSON."""
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if "ratio" in str(key) and isinstance(item, dict):  # {name: ratio, ...}
                yield from ((f"{sub}.{k}", v) for k, v in item.items() if not isinstance(v, dict))
            elif "ratio" in str(key) and not isinstance(item, list):
                yield sub, item
            else:
                yield from ratios(item, sub)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from ratios(item, f"{path}[{i}]")


def command_of(bench: Bench, quick: bool) -> str:
    args = bench.quick_args if quick else bench.args
    return " ".join(["python", f"bench/{args[0]}", *args[1:]])


def run(bench: Bench, quick: bool) -> dict[str, Any]:
    args = bench.quick_args if quick else bench.args
    script = HERE / args[0]
    argv = [sys.executable, str(script), *args[1:]]
    command = command_of(bench, quick)
    if not script.exists():
        return {"command": command, "error": f"{script.name} is not in bench/"}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"command": command, "seconds": round(seconds, 1)}
    if proc.returncode != 0:
        out["error"] = f"exit {proc.returncode}: " + proc.stderr.strip()[-2000:]
        return out
    text = proc.stdout
    start = text.find("{")  # some print a line or two before their JSON
    try:
        out["result"] = json.loads(text[start:]) if start >= 0 else None
    except (ValueError, json.JSONDecodeError):
        out["result"] = None
    if out["result"] is None:  # a benchmark that prints a table: kept as it printed it
        out["text"] = text.strip()
    return out


def differs(machine: dict[str, Any], header: dict[str, Any]) -> str | None:
    """A section measured apart from the page's run: one line naming where and when."""
    if machine == header:
        return None
    cuda = f", {machine['cuda']}" if machine.get("cuda") else ""
    return (
        f"Measured apart from the rest of the page: {machine.get('date', '?')} on "
        f"{machine.get('cpu')} ({machine.get('cores')} cores{cuda}), torch {machine.get('torch')}, "
        f"commit {machine.get('commit')}."
    )


def page(results: dict[str, Any]) -> str:
    header = results["machine"]
    lines = [
        "# plaudit: benchmark results",
        "",
        f"Written by `python bench/all.py{' --quick' if results['quick'] else ''}` on "
        f"{header['date']}, every benchmark in one run, one after the other (a section measured "
        "elsewhere, on a GPU say, names its machine and date). Each ratio is plaudit's figure "
        "over its peer's, both measured in the same process or alternating in the same run (see "
        "each benchmark's docstring for what the peer is).",
        "",
        "| machine | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in header.items() if v is not None and k != "date"]
    runs = results["runs"]
    for bench in BENCHES:
        if bench.name not in runs:
            continue
        r = runs[bench.name]
        lines += ["", f"## {bench.name}: {bench.what}", ""]
        apart = differs(r.get("machine", header), header)
        if apart:
            lines += [apart, ""]
        lines += [f"`{r['command']}`"]
        if "seconds" in r:
            lines[-1] += f" ({r['seconds']} s)"
        if "skipped" in r:
            lines += ["", f"Skipped: {r['skipped']}"]
            continue
        if "error" in r:
            lines += ["", f"Failed: {r['error']}"]
            continue
        if r["result"] is None:
            lines += ["", "```", r["text"], "```"]
            continue
        found = list(ratios(r["result"]))
        if found:
            lines += ["", "| figure | ratio |", "|---|---|"]
            lines += [f"| {k} | {v} |" for k, v in found]
        lines += [
            "",
            "<details><summary>all figures (JSON)</summary>",
            "",
            "```json",
            json.dumps(r["result"], indent=1),
            "```",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> None:
    out.write_text(page(results))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(
            f"{path} does not exist: give the RESULTS.json written beside a page"
        ) from None
    except json.JSONDecodeError as e:
        raise SystemExit(
            f"{path} is not JSON ({e}): give the RESULTS.json written beside a page"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
        raise SystemExit(f"{path} has no 'runs': it is not a RESULTS.json written by bench/all.py")
    return data


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only", default="", help="comma-separated names: " + ", ".join(b.name for b in BENCHES)
    )
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller models")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the sections of the benchmarks not run now from the page's RESULTS.json",
    )
    ap.add_argument(
        "--add",
        type=Path,
        action="append",
        default=[],
        metavar="RESULTS.json",
        help="put another run's sections (a GPU machine's, say) into this page; runs nothing",
    )
    args = ap.parse_args(argv)
    only = {x for x in args.only.split(",") if x}
    unknown = only - {b.name for b in BENCHES}
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; known: {[b.name for b in BENCHES]}")
    sidecar = args.out.with_suffix(".json")
    earlier = load(sidecar) if sidecar.exists() else None
    if args.add:
        if earlier is None:
            ap.error(f"--add puts sections into an existing page, and {sidecar} does not exist")
        for path in args.add:
            earlier["runs"].update(load(path)["runs"])
        write(earlier, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    info = machine()
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results: dict[str, Any] = {"machine": info, "quick": args.quick, "runs": {}}
    kept = earlier["runs"] if earlier is not None else {}
    if args.keep:
        results["runs"].update(kept)
    for bench in BENCHES:
        if only and bench.name not in only:
            continue
        if bench.cuda and info["cuda"] is None:  # torch sees no CUDA device
            if bench.name in kept:  # measured on a GPU machine before: keep it, marked so
                results["runs"][bench.name] = kept[bench.name]
            else:
                results["runs"][bench.name] = {
                    "command": command_of(bench, args.quick),
                    "skipped": "torch sees no CUDA device here",
                }
            continue
        print(f"{bench.name} ...", file=sys.stderr, flush=True)
        record = run(bench, args.quick)
        record["machine"] = dict(info)
        results["runs"][bench.name] = record
        status = "failed" if "error" in record else "done"
        print(f"  {status} in {record.get('seconds', 0)} s", file=sys.stderr)
        write(results, args.out)  # a page after each, should one hang
    write(results, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in results["runs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
