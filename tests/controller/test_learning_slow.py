"""Online learning works (slow): on the simulated face and a simulated clock, plaudit's default
online method raises the audience's expected score of fresh samples of the policy above that of
the frozen starting policy, within its KL budget, for every one of five seeds.

It has a marker of its own (`learning`; 6 to 16 minutes on 2 cores by the processor, with the
first fit of the `tiny` preset: the figures at its time limit below; the seeds run two at a
time, each in a process of its own) and `.ci/run` runs it after the `slow` tests:
`pytest -m learning tests/controller/test_learning_slow.py`.

A run is reproducible on one machine since 2026-12-05: the clipped update's minibatch order
came from torch's global generator, which every process seeds at random, so each run drew
another trajectory (REINFORCE, one minibatch, was reproducible). CI failed that way at 96
posts, seed 1 z -0.34 (0.0688 -> 0.0668), where the same code had passed here; on the same
2-core AMD EPYC the next run gave z +2.93. The order is now drawn from the policy version.
Measured then (AMD EPYC, the sampler of e8c35ae), z per seed:

- 96 posts: +3.40, **+2.93**, +4.76, +4.73, +3.60 (KL 2.85-4.11; every run the same);
- 144 posts: +6.68, +5.32, +5.94, +5.33, +3.97 (KL 2.89-4.46); with another minibatch order
  (the version plus 7919, standing in for another machine's rounding) **+2.36**, +4.32, +6.34,
  +5.07, +3.74: seed 0 pulled back by 0.63 on a probe whose upper end read 5.7, its KL from
  3.4 to 1.8 nats per post and its reward from 0.0806 to 0.0751;
- 192 posts (as now): +7.81, +5.28, +7.14, +6.52, +6.19 (KL 3.22-4.19; 88 updates, 116-123 s
  a seed, 353 s in all); with the other order +4.52, **+0.35**, +5.87, +5.71, +5.25: seed 1
  spent 3.3 nats on moves the audience did not reward (0.0688 -> 0.0708).

With filtered candidates teaching (`online.filtered_reward`, on by default since 2026-12-06:
a candidate filtered as talk or as a copy joins the update with a low reward), the test failed
on a 2-core Intel Xeon: z +4.95, +5.71, +6.75, +3.24, **+2.68** (fresh 0.0895, 0.0969, 0.1066,
0.0780, 0.0785; KL 2.02, 3.90, 3.57, 2.79, 3.29), against +7.45, +4.94, +5.40, +6.42, +4.96
without (0.1074, 0.0918, 0.0953, 0.0987, 0.0931; KL 4.21, 2.43, 3.49, 4.07, 3.98) on the same
machine the same day: a mean 0.0074 lower, about one standard error of the difference, and
the trajectory of each seed another. The test keeps it off, as it keeps the reward model's
choice off: it is about the update.

Since the `tiny` preset writes each post after two history posts given as the posts before it
(no chat template: the examples as its context, 2026-12-06; before, it wrote from BOS alone),
the same machine: z +5.57, +5.24, +7.05, +6.07, +7.01 (fresh 0.0630 -> 0.0982, 0.0644 ->
0.0954, 0.0635 -> 0.1040, 0.0592 -> 0.0949, 0.0611 -> 0.1046; KL 3.92, 3.10, 3.84, 2.20, 4.40;
211-248 s a seed beside a SmolLM2 benchmark run, 680 s in all).

So every seed passes on this machine, and the trajectory depends on the order of the
minibatches (on another processor, on the float rounding): the claim "for every seed" rests
on the trajectory a machine draws. Figures of earlier versions, when runs drew a new
trajectory each time:

Since the fused decoding step (which changed generation's float rounding, so every run below
it drew other samples), the update as then, 96 posts, 1 thread:

- 2026-12-04, 2-core Intel Xeon, two runs: z +4.92, +6.93, +7.63, +4.21, +4.92 (KL 4.13-4.64)
  and z +4.58, +6.94, +8.56, +4.29, +5.10 (KL 4.29-4.65);
- 2026-12-04, 2-core AMD EPYC: z +5.44, +5.91, +5.10, +6.02, +6.06, KL 4.27, 4.56, 3.13, 4.76,
  3.69 (19-40 updates, 62-75 s a seed; 525 s in all with the fit); again with the probe's
  passes running each shared prompt once (other float rounding): z +5.24, +5.84, +5.10, +5.03,
  +6.79, KL 4.08, 4.55, 3.13, 4.63, 4.50 (385 s, the fit cached); with the training
  minibatches sharing prompts too, the seeds two at a time (8f8fa93): z +6.45, +5.82, +5.10,
  +5.06, +3.97, KL 4.88, 4.55, 3.13, 4.62, 3.83 (66-85 s a seed; 217 s in all, the fit cached).

How it got there. Measured 2026-12-02 (AMD EPYC,
1 thread, 2 cores shared), KL exact over the vocabulary along 200 fresh samples, nats per post:

- the drift bound measured on the 32 newest candidates, importance-weighted for the update's
  own move and bounded at its upper 95% end (as now), lr 1e-4: z = +4.41, +5.95, +3.65, +4.99,
  +5.37 with KL 4.90, 4.38, 4.43, 4.88, 5.01: seed 4 is 0.01 over the budget (before early
  rewards existed);
- with PPO's adaptive KL weight on top (doubling above 3/4 of the budget, tried and removed):
  z -0.21, +2.56, +2.05, +3.36, +0.26, KL 0.98-2.68: it throttles learning far below the budget;
- the same bound on the point estimate: z +6.43, +4.15, +5.45, +6.30, +5.89, KL 5.63, 5.14,
  5.92, 5.19, 5.88; on 16 candidates, unweighted: KL 6.09, 4.95, 5.84, 5.45, 6.13;
- measured on the rewarded batch instead (stale prefixes), lr 5e-5: z +2.84, +6.71, +6.17,
  +7.54, +6.16, KL (sampled-token estimate) 2.97, 4.02, 2.43, 5.08, 3.92; at the default lr
  1e-5 (sized for SmolLM2) z = 2.50, 1.24, 3.00, 3.21, -0.16.

Measured 2026-12-03 on the 2-core Intel Xeon (1 thread, the other core busy), the bound as
above, lr 1e-4: with early rewards (the default since): z -0.26, +3.88, +6.42, +2.84, +1.62,
KL 4.06, 5.08, 5.23, 5.08, 4.34 (10-28 updates); without them (as the figures above): z +3.59,
+5.15, +5.59, +2.77, +1.79, KL 5.002, 4.98, 4.79, 4.42, 4.77 (7-16 updates). Two seeds short
of z 3 either way; the fresh samples' KL ends up to 5% over the budget the 32-post probe held.
A probe of up to 64 posts (lr 1e-4, early rewards): seeds 1 and 2 ended exactly as with 32
(their probes never held more), the others z +2.13, +4.46, +0.64, KL 4.65, 5.74, 3.43. At
lr 5e-5 (early rewards, the probe as now), now the test's: z +4.25, +6.85, +9.03, +3.61,
+3.23, KL 4.83, 4.91, 4.99, 5.049, 3.13 (18-40 updates): every seed beats the start, one
ends 1% over the budget.

With a pull-back (an update that starts over the budget first scales the policy's move from
the reference back inside it), same machine and lr. Triggered by the upper end of the probe's
interval (8 of 72 updates pulled back, factors 0.77-0.97): z +3.70, +5.72, +5.35, +3.95,
+2.87, KL 4.24, 4.25, 3.98, 3.66, 2.98. Triggered by the estimate itself (as now): z +4.83,
+6.52, +7.83, +4.14, **+2.83**, KL 3.80, 4.22, 4.47, 4.33, 2.97 (23-40 updates). The budget
holds in every seed either way; seed 4 falls short of z 3 (+2.83, +2.87, +3.23 in the three
runs at this lr), well inside the budget. Run again after the choice correction (which does
not enter here: the test chooses uniformly, weight 1): z +6.68, +6.27, +5.64, +3.67, **+2.85**,
KL 4.57, 4.11, 4.50, 4.29, 2.97.

It runs the core of `bench/online.py` (imported by path): the `tiny` preset fitted on the
face's history (cached in the user cache folder, so only the first run pays for the fit), then
per seed the controller's real jobs (post, collect, learn) through a budget of posts at 12 a
simulated day, rewards 24 h later. The fresh samples are scored with the face's `appeal()`, so
what is measured is the learning itself, not the filters or the choice among candidates."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from bench_helpers import load_bench

from plaudit.controller import OnlineConfig, RewardModelConfig

SEEDS = (0, 1, 2, 3, 4)
POSTS = 192  # 16 simulated days; the first rewards arrive after 12 posts
SAMPLES = 200  # fresh samples at the start and at the end
Z_GOAL = 3.0
LR = 5e-5  # swept: 1e-4 and 5e-5 (the docstring's figures)
# plaudit's update (the clipped method, its defaults) at a learning rate sized for the tiny
# preset (the default 1e-5 is sized for SmolLM2), the post chosen at random, filtered
# candidates teaching nothing: the test is about the update, apart from the reward model's
# choice and from what the filters add to the batch (the docstring's figures with it).
ONLINE = OnlineConfig(lr=LR, filtered_reward=None)


def run_seed(seed: int, model: Path, state_dir: Path) -> Any:
    """One seed's run (a `RunResult`) in a process of its own, 1 torch thread: a tiny model's
    OpenMP threads spin against the neighbour for less than they give."""
    import torch

    torch.set_num_threads(1)
    bench = load_bench()
    settings = bench.loop_settings(bench.Method(ONLINE, RewardModelConfig(enabled=False)))
    return asyncio.run(
        bench.run_one(
            method=ONLINE.method,
            settings=settings,
            seed=seed,
            model=model,
            face_type="simulated",
            face_config={},
            posts=POSTS,
            eval_every=POSTS,
            eval_samples=SAMPLES,
            state_dir=state_dir,
            threads=1,
        )
    )


@pytest.mark.learning
# 966 s on a 2-core Intel Xeon (2026-12-07, the fit uncached; 269-296 s a seed, and seed 0
# alone 117 s updating, 59 s generating, 48 s evaluating of 269 s); CI's machine of 2026-12-06
# was about 1.5x slower and the run was cut at the 1200 s this limit used to be.
@pytest.mark.timeout(2400)
def test_online_updates_raise_the_expected_score_of_fresh_samples(tmp_path: Path) -> None:
    import torch

    bench = load_bench()
    assert ONLINE.max_kl is not None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the fit, once (cached): the seeds' processes load it
        model = bench.starting_model("simulated", {}, "tiny", bench.FitRecipe(preset="tiny"))
    finally:
        torch.set_num_threads(threads)
    # The seeds run two at a time, each in a fresh process (spawned: no torch state forked);
    # a seed's run is the same alone or beside another.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1), mp_context=spawn) as pool:
        runs = list(
            pool.map(run_seed, SEEDS, [model] * len(SEEDS), [tmp_path / f"seed-{s}" for s in SEEDS])
        )
    # Every seed is reported before any is judged.
    zs = [bench.z_score(r.evals[0], r.evals[-1]) for r in runs]
    report = "\n".join(
        f"seed {r.seed}: {r.evals[0].reward:.4f} -> {r.evals[-1].reward:.4f} (z {z:+.2f}), "
        f"KL {r.evals[-1].kl_post:.3f} nats/post (budget {ONLINE.max_kl}; sampled-token "
        f"estimate {r.evals[-1].kl_post_sampled:.3f}), "
        f"{r.updates} updates, {r.wall_s:.0f} s (updating {r.update_s:.0f} s, generating "
        f"{r.generate_s:.0f} s, evaluating {r.eval_s:.0f} s)"
        for r, z in zip(runs, zs, strict=True)
    )
    print(report)
    assert all(r.updates > 0 for r in runs), f"a run made no update:\n{report}"
    assert all(r.evals[-1].kl_post <= ONLINE.max_kl for r in runs), f"past the KL budget:\n{report}"
    assert all(z > Z_GOAL for z in zs), f"fresh samples not better by {Z_GOAL} SE:\n{report}"
