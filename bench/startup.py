"""Start-up: `plaudit generate --model smollm2 --max-new-tokens 1` as a whole process, against
a peer that does the least such a command must: start Python, import torch, load the cached
SmolLM2 weights (the same safetensors file) and run one forward over the prompt's tokens.

Runs alternate (plaudit, peer, plaudit, ...) so a loaded machine slows both alike; prints each
side's median wall time and the ratio (the goal: at most 1.5), and `plaudit models`. The
converted weights must be cached already (any `plaudit generate --model smollm2` does it).

    .venv/bin/python bench/startup.py [--runs 5] [--tree DIR] [--before DIR]

`--tree DIR` runs plaudit from another source tree with the same layout, through this venv's
editable install; `--before DIR` times that tree's plaudit beside this one's, in the same
alternation (a before/after: `git archive HEAD | tar -x -C DIR`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from plaudit.learner import default_cache_dir
from plaudit.learner._load import SMOLLM2_SHA256

# The peer: a llama forward in plain torch over SmolLM2's weights (its state-dict names are
# plaudit's, learner/_model.py), two prompt tokens, the last position's logits.
PEER = """
import json, sys
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
folder = sys.argv[1]
cfg = json.load(open(folder + "/plaudit_model.json"))["config"]
w = load_file(folder + "/model.safetensors")
H, Hkv, C = cfg["n_head"], cfg["n_kv_head"], cfg["n_embd"]
D = C // H
idx = torch.tensor([[1, 6004]])  # "hi" after BOS, as plaudit generate encodes it
T = idx.size(1)
inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, D, 2).float() / D)
ang = torch.outer(torch.arange(T).float(), inv)
cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
def rope(x):
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat((-x2, x1), -1) * sin
def norm(x, name):
    return F.rms_norm(x, (C,), w[name], cfg["norm_eps"])
with torch.inference_mode():
    x = w["tok_emb.weight"][idx]
    for i in range(cfg["n_layer"]):
        b = f"blocks.{i}."
        q, k, v = F.linear(norm(x, b + "norm1.weight"), w[b + "attn.qkv.weight"]).split(
            [H * D, Hkv * D, Hkv * D], -1)
        q = rope(q.view(1, T, H, D).transpose(1, 2))
        k = rope(k.view(1, T, Hkv, D).transpose(1, 2))
        v = v.view(1, T, Hkv, D).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + F.linear(y.transpose(1, 2).reshape(1, T, C), w[b + "attn.proj.weight"])
        gate, up = F.linear(norm(x, b + "norm2.weight"), w[b + "mlp.fc.weight"]).chunk(2, -1)
        x = x + F.linear(F.silu(gate) * up, w[b + "mlp.proj.weight"])
    logits = F.linear(norm(x, "norm_f.weight")[:, -1], w["tok_emb.weight"])
print(int(logits.argmax()))
"""

# plaudit's entry point, from --tree when given (the editable install's finder maps
# plaudit.<folder> to the source folders; pointing it elsewhere runs that tree).
LAUNCH = """
import sys
import __editable___plaudit_0_1_0_finder as finder
tree = sys.argv.pop(1)
if tree:
    finder.MAPPING.update({k: tree + "/" + k.split(".")[1] for k in finder.MAPPING})
from plaudit.daemon._cli import main
sys.argv[0] = "plaudit"
main()
"""


GENERATE = ["generate", "--model", "smollm2", "--max-new-tokens", "1", "--prompt", "hi"]


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tree", default="", help="run plaudit from this source tree")
    parser.add_argument("--before", default="", help="also time plaudit from this tree")
    args = parser.parse_args()
    cached = default_cache_dir() / f"gguf-{SMOLLM2_SHA256}"
    if not (cached / "model.safetensors").is_file():
        sys.exit(f"no cached SmolLM2 in {cached}: run `plaudit generate --prompt hi` once first")
    plaudit = [sys.executable, "-c", LAUNCH, args.tree]
    sides = {
        "plaudit generate": [*plaudit, *GENERATE],
        "peer (torch, load, forward)": [sys.executable, "-c", PEER, str(cached)],
        "plaudit models": [*plaudit, "models"],
    }
    if args.before:  # the same commands from another tree, in the same alternation
        before = [sys.executable, "-c", LAUNCH, args.before]
        sides["before: plaudit generate"] = [*before, *GENERATE]
        sides["before: plaudit models"] = [*before, "models"]
    for cmd in sides.values():  # warm the page cache, the native kernel's build, ...
        wall(cmd)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.runs):
        for name, cmd in sides.items():
            times[name].append(wall(cmd))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        runs = " ".join(f"{t:.2f}" for t in ts)
        print(f"{name:<30} median {medians[name]:6.2f} s   ({runs})")
    ratio = medians["plaudit generate"] / medians["peer (torch, load, forward)"]
    print(f"generate / peer: {ratio:.2f} (goal: at most 1.5)")
    if args.before:
        ratio = medians["before: plaudit generate"] / medians["peer (torch, load, forward)"]
        print(f"before: generate / peer: {ratio:.2f}")


if __name__ == "__main__":
    main()
