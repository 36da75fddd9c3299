"""Every benchmark in one run, one results page: bench/RESULTS.md.

Each benchmark runs as its own process (its `--json` output is read back), one after the other,
so they do not share the machine. The page names the machine, the commit, each command, its
wall time, every ratio it reported (plaudit's figure over its peer's, measured in the same run)
and its whole JSON.

    .venv/bin/python bench/all.py                    # everything (about an hour on 2 cores)
    .venv/bin/python bench/all.py --only online_update,startup --out /tmp/RESULTS.md
    .venv/bin/python bench/all.py --quick            # fewer repeats, smaller models
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


BENCHES = (
    Bench(
        "generate",
        "generation, plaudit's engine against transformers generate() (tokens/s)",
        ("generate.py", "--json", "--repeats", "3"),
        ("generate.py", "--json", "--repeats", "1", "--models", "small"),
    ),
    Bench(
        "decode_bf16",
        "SmolLM2 decoding from bf16 weights against fp32, and the drift between them",
        ("decode_bf16.py", "--json"),
        ("decode_bf16.py", "--json", "--repeats", "1", "--prompts", "10"),
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

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
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


def run(bench: Bench, quick: bool) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / (bench.quick_args if quick else bench.args)[0])]
    argv += list((bench.quick_args if quick else bench.args)[1:])
    command = " ".join(["python", f"bench/{argv[1].rsplit('/', 1)[-1]}", *argv[2:]])
    script = HERE / argv[1]
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


def page(info: dict[str, Any], runs: dict[str, dict[str, Any]], quick: bool) -> str:
    lines = [
        "# plaudit: benchmark results",
        "",
        f"Written by `python bench/all.py{' --quick' if quick else ''}` on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, every benchmark in one run, one "
        "after the other. Each ratio is plaudit's figure over its peer's, both measured in the "
        "same process or alternating in the same run (see each benchmark's docstring for what "
        "the peer is).",
        "",
        "| machine | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in info.items() if v is not None]
    for bench in BENCHES:
        if bench.name not in runs:
            continue
        r = runs[bench.name]
        lines += ["", f"## {bench.name}: {bench.what}", "", f"`{r['command']}`"]
        if "seconds" in r:
            lines[-1] += f" ({r['seconds']} s)"
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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--only", default="", help="comma-separated names: " + ", ".join(b.name for b in BENCHES)
    )
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller models")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    only = {x for x in args.only.split(",") if x}
    unknown = only - {b.name for b in BENCHES}
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; known: {[b.name for b in BENCHES]}")
    info = machine()
    runs: dict[str, dict[str, Any]] = {}
    for bench in BENCHES:
        if only and bench.name not in only:
            continue
        print(f"{bench.name} ...", file=sys.stderr, flush=True)
        runs[bench.name] = run(bench, args.quick)
        status = "failed" if "error" in runs[bench.name] else "done"
        print(f"  {status} in {runs[bench.name].get('seconds', 0)} s", file=sys.stderr)
        args.out.write_text(page(info, runs, args.quick))  # a page after each, should one hang
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
