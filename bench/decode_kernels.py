"""The GEMM kernels the CPU engine can decode with, on this machine: the engine's own
`DecodeLinear` unpacked (a matmul against the transposed weight) and packed with each kernel
available here (plaudit's native GEMM, MKL's packed SGEMM, oneDNN's inner product), at a few rows, over SmolLM2-135M's
shapes (30 layers of weights, cycled, so they stream from memory as in decoding); and the native
GEMM over fp16-packed weights (`native_half_packed`, half the bytes).

    python bench/decode_kernels.py --json
    python bench/decode_kernels.py --rows 1,8 --threads 2

Prints milliseconds per model-sized pass (best of the repeats) (all 30 layers' linears + the head) for each kernel,
and the CPU it ran on. The engine's choice of kernel (learner/_decode.py) rests on these."""

from __future__ import annotations

import argparse
import json
import time

import torch

from plaudit.learner._decode import DecodeLinear, available_kernels, cpuinfo_field

LAYER = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]
HEAD = (576, 49152)


def kernels(w: torch.Tensor, rows: int) -> dict[str, DecodeLinear]:
    """One layer as the engine holds it: unpacked, and packed for `rows` with each kernel."""
    out = {"matmul": DecodeLinear(w, None)}
    for kernel in available_kernels():
        out[f"{kernel}_packed"] = packed = DecodeLinear(w, None)
        packed.pack(rows, kernel)
    if "native" in available_kernels():  # fp32 activations over half-size fp16 panels
        out["native_half_packed"] = packed = DecodeLinear(w, None, weight_dtype=torch.float16)
        packed.pack(rows, "native")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1,8")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_flush_denormal(True)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shapes = [s for _ in range(a.layers) for s in LAYER] + [HEAD]
    weights = [torch.randn(o, i) * 0.02 for i, o in shapes]
    report: dict[str, object] = {
        "cpu": cpuinfo_field("model name"),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "results": {},
    }
    for rows in [int(r) for r in a.rows.split(",")]:
        per = [kernels(w, rows) for w in weights]
        xs = {i: torch.randn(rows, i) for i in {s[0] for s in shapes}}
        names = list(per[0])
        best = dict.fromkeys(names, float("inf"))
        for _ in range(a.repeats):  # alternate the kernels, keep each one's best pass
            for name in names:
                t = time.perf_counter()
                for (i, _), ks in zip(shapes, per, strict=True):
                    ks[name](xs[i])
                best[name] = min(best[name], time.perf_counter() - t)
        report["results"][str(rows)] = {k: round(v * 1e3, 2) for k, v in best.items()}  # type: ignore[index]
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['cpu']} ({report['capability']}), {report['threads']} threads")
    for rows, r in report["results"].items():  # type: ignore[attr-defined]
        print(f"  {rows} rows: " + ", ".join(f"{k} {v} ms" for k, v in r.items()))


if __name__ == "__main__":
    main()
