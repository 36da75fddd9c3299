"""The most any policy could gain at each drift budget: the yardstick for bench/online.py.

Among all policies within KL K of the starting one, the one with the highest expected reward
is the start tilted by its reward, pi(y) = pi_0(y) exp(lam r(y)) / Z with lam set so that
KL(pi || pi_0) = K (the Donsker-Varadhan bound: no policy at KL K gains more). Here the tilt
is taken over many fresh samples of the starting policy, drawn as bench/online.py draws its
fresh samples (the posting prompts and settings) and scored by the audience's noise-free
expected score (`SimulatedAudience.appeal`): the best gain a learner told the true reward of
every text could reach at each budget. Two approximations, in opposite directions: the tilt
is over the joint of prompt and text (a policy must keep each prompt's own distribution, so
the true bound is lower), and over a finite sample (texts never drawn could score higher, so
the true bound is higher; `ess`, the tilt's effective sample size, says how far to trust a
budget's figure).

    .venv/bin/python bench/kl_frontier.py --json
    .venv/bin/python bench/kl_frontier.py --results /tmp/online/results.json

With `--results` (a bench/online.py results file from the same face and model) each method's
gain over the start on fresh samples is set against the frontier at its own final KL: the
share of the best reachable gain it reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from plaudit.controller import post_prompts
from plaudit.learner import Policy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import online  # the sibling benchmark: its face, starting model and settings

BUDGETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)  # nats per post


@dataclass(frozen=True)
class FrontierPoint:
    kl: float  # nats per post
    gain: float  # the tilted policy's expected reward minus the start's
    lam: float  # the tilt's inverse temperature
    ess: float  # its effective sample size: 1 / sum of squared weights


def tilt(rewards: torch.Tensor, lam: float) -> FrontierPoint:
    """The start's samples reweighted by exp(lam r): its KL to them, its gain, its ESS."""
    w = torch.softmax(lam * rewards, 0)
    kl = float(torch.special.xlogy(w, w * len(rewards)).sum())
    gain = float((w * rewards).sum() - rewards.mean())
    return FrontierPoint(kl=kl, gain=gain, lam=lam, ess=float(1.0 / (w**2).sum()))


def frontier_at(rewards: Sequence[float], budget: float) -> FrontierPoint:
    """The tilt of ``rewards`` (the start's samples) whose KL is ``budget``, by bisection on
    lam (KL grows with lam); the whole tilt when even its sharpest cannot spend the budget."""
    if len(rewards) < 2:
        raise ValueError("the frontier needs 2 or more scored samples")
    if budget <= 0:
        return tilt(torch.tensor(list(rewards), dtype=torch.float64), 0.0)
    r = torch.tensor(list(rewards), dtype=torch.float64)
    spread = float(r.max() - r.min())
    if spread == 0:
        return tilt(r, 0.0)
    # KL is at most log N (all the weight on the best sample): lam = 50 log N / spread is past it.
    lo, hi = 0.0, 50 * math.log(len(r)) / spread
    for _ in range(100):
        mid = (lo + hi) / 2
        if tilt(r, mid).kl < budget:
            lo = mid
        else:
            hi = mid
    return tilt(r, lo)


async def start_rewards(opts: online.Options, samples: int, seed: int) -> tuple[list[float], str]:
    """``samples`` fresh samples of the starting policy, prompted and sampled as posting does,
    and the audience's expected score of each."""
    model = online.starting_model(opts.face_type, opts.face_config, opts.model, opts.fit)
    settings = online.loop_settings(next(iter(opts.methods.values())))
    with tempfile.TemporaryDirectory(prefix="plaudit-bench-frontier-") as tmp:
        clock = online.SimulatedClock(start=online.START.timestamp())
        face = online.make_face(opts.face_type, opts.face_config, Path(tmp) / "face", clock)
        try:
            history = await online.read_history(face)
            policy = Policy.load(model, lr=settings.online.lr)
            asked = post_prompts(
                history=history,
                n=samples,
                max_chars=face.limits.max_length,
                rng=random.Random(seed),
            )
            cands = online.sample_fresh(policy, asked, settings, seed)
            assert isinstance(face, online.SimulatedAudience)
            return await face.appeal([c.text for c in cands]), str(model)
        finally:
            await face.aclose()


def shares(results: dict[str, Any], rewards: Sequence[float]) -> dict[str, Any]:
    """Each method's fresh-sample gain against the frontier at its own final KL."""
    out = {}
    for name, m in results["methods"].items():
        fresh = m["fresh"]
        gain = fresh["final"]["reward"]["mean"] - fresh["start_reward"]
        kl = fresh["final"]["kl_post"]["mean"]
        best = frontier_at(rewards, kl)
        out[name] = {
            "kl_post": round(kl, 3),
            "gain": round(gain, 4),
            "frontier_gain": round(best.gain, 4),
            "share_of_frontier": round(gain / best.gain, 3) if best.gain > 0 else None,
            "gain_per_root_nat": round(gain / math.sqrt(kl), 4) if kl > 0 else None,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--face", default="simulated", help="face type (default simulated)")
    ap.add_argument("--face-config", type=Path, help="TOML file holding the face's table")
    ap.add_argument("--model", default="tiny", help="as bench/online.py's --model")
    ap.add_argument("--samples", type=int, default=4000, help="fresh samples (default 4000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--results", type=Path, help="a bench/online.py results.json to set against it")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.samples < 2:
        raise SystemExit("--samples must be at least 2")
    argv_online = ["--face", a.face, "--model", a.model, "--methods", "plaudit"]
    if a.face_config is not None:
        argv_online += ["--face-config", str(a.face_config)]
    opts = online.parse_args(argv_online)
    torch.set_num_threads(a.threads or opts.threads)
    results = json.loads(a.results.read_text()) if a.results is not None else None
    t0 = time.perf_counter()
    rewards, model = asyncio.run(start_rewards(opts, a.samples, a.seed))
    mean = sum(rewards) / len(rewards)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
    points = [frontier_at(rewards, k) for k in BUDGETS]
    out: dict[str, Any] = {
        "face": a.face,
        "model": model,
        "samples": len(rewards),
        "start_reward": round(mean, 4),
        "start_reward_sd": round(sd, 4),
        "frontier": [
            {k: round(v, 4) if k != "ess" else round(v) for k, v in asdict(p).items()}
            for p in points
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if results is not None:
        out["methods"] = shares(results, rewards)
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"start: {mean:.4f} (sd {sd:.4f}) over {len(rewards)} fresh samples of {model}")
    print("KL nats/post  best gain  per root nat  ess")
    for p in points:
        print(f"{p.kl:12.2f}  {p.gain:9.4f}  {p.gain / math.sqrt(p.kl):12.4f}  {p.ess:4.0f}")
    for name, m in out.get("methods", {}).items():
        print(
            f"{name}: gain {m['gain']:.4f} at KL {m['kl_post']:.2f}, the frontier there "
            f"{m['frontier_gain']:.4f}: {m['share_of_frontier']:.1%} of it"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
