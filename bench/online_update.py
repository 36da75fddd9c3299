"""One online update, timed against its floor.

The floor is what any policy-gradient update on the same posts must do: ``epochs`` x (one
forward-backward over the rewarded posts' tokens + an AdamW step) and one forward over them (the
proximal logprobs), as lean as plaudit's passes (the head at the completion positions only, a
prompt that posts share run once), measured beside plaudit's update in the same process,
alternating. plaudit's
time is the whole `policy_update` call: the reference's head (or its pass), the KL penalty,
the drift check after each epoch (on the probe of recent samples the daemon passes, or on the
batch), any scaling back of the move into the budget and the snapshot that puts a failed
update back. The reference's forward over a post runs once, when the daemon's post cycle
samples it (`Policy.remember_reference`): the sides start from that state (untimed), and
"posts new to the reference" from none of it (a restarted daemon's first update);
`remember_reference_cycle_s` is what it costs a post cycle. The
probe is built as the daemon's: the newest
candidates, ``--candidates`` of them after each prompt (a post cycle's), so that their passes
run each prompt once as the daemon's do. ``--batch-per-prompt 8`` builds the batch the same
way: rewarded posts with their cycles' other candidates (`online.candidates_weight`), whose
minibatches run each prompt once too.

With ``--lora RANK`` (8 by default; 0: not run) the same update of a second policy that trains
LoRA adapters (`online.lora_rank`) is timed beside them, and both policies' memory is reported
(`Policy.memory`: weights, the KL reference beyond them, adapters, optimizer moments).

The posts are real: prompts as the controller writes them (two history posts of the simulated
face's corpus each), completions sampled by the model itself at the posting settings.

    .venv/bin/python bench/online_update.py --model smollm2 --json
    .venv/bin/python bench/online_update.py --model tiny --posts 8 --probe 32 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from plaudit.controller import post_prompts
from plaudit.faces.simulated import load_corpus
from plaudit.learner import (
    LoRAConfig,
    OnlineUpdateConfig,
    Policy,
    PromptCache,
    SamplingConfig,
    Trajectory,
    configure_torch,
    default_cache_dir,
)


def policy_for(model: str, lora: LoRAConfig | None = None) -> Policy:
    """SmolLM2 (its cached conversion), a model folder, or ``tiny``: the `tiny` preset that
    bench/online.py fitted on the simulated face's history (run it once first)."""
    if model == "tiny":
        fitted = sorted((default_cache_dir() / "bench-online").glob("simulated-tiny-*/model"))
        if not fitted:
            raise SystemExit("no fitted tiny model: run `bench/online.py --quick` once first")
        return Policy.load(fitted[-1], lr=1e-5, lora=lora)
    return Policy.load(model, lr=1e-5, lora=lora)


def trajectories(policy: Policy, n: int, seed: int, *, per_prompt: int = 1) -> list[Trajectory]:
    """``n`` posts sampled by the policy at the default posting settings, advantages in ±1,
    ``per_prompt`` of them after each prompt (a post cycle's candidates share theirs)."""
    rng = random.Random(seed)
    history = [p.text for p in load_corpus()]
    sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=60, seed=seed)
    prompts = [
        p.render(policy, room=sampling.max_new_tokens)
        for p in post_prompts(history=history, n=-(-n // per_prompt), max_chars=280, rng=rng)
    ]
    out = []
    for c in policy.generate(prompts, n=per_prompt, sampling=sampling)[:n]:
        out.append(
            Trajectory(
                prompt=c.prompt_tokens,
                completion=c.tokens,
                behaviour_logprobs=c.logprobs,
                advantage=rng.uniform(-1, 1),
                temperature=1.0,
                policy_version=0,
            )
        )
    return out


def floor(policy: Policy, batch: Sequence[Trajectory], epochs: int) -> None:
    """epochs x (forward-backward + AdamW step) and one forward over the batch's tokens, done
    as lean as plaudit's own passes (else the ratio flatters it): the head and the loss at the
    completion positions only, and posts that share a prompt (a cycle's candidates) run it
    once in every pass."""
    model = policy.model
    head = model.tok_emb.weight if model.lm_head is None else model.lm_head.weight
    distinct: dict[tuple[int, ...], int] = {}
    owner = [distinct.setdefault(tuple(t.prompt), len(distinct)) for t in batch]
    # As plaudit's passes do: only where it computes fewer positions.
    tail = max(len(t.completion) for t in batch)
    plain = max(len(t.prompt) + len(t.completion) for t in batch) - 1
    shared = (
        min(len(t.prompt) for t in batch) > 1
        and len(distinct) * (max(len(p) for p in distinct) - 1) + len(batch) * tail
        < len(batch) * plain
    )
    # Shared: the distinct prompts (but their last token) left-padded, then each post's last
    # prompt token and completion; else each post whole. Right-padded; the loss at the
    # positions that predict a completion token.
    seqs = [list(t.prompt[-1:] if shared else t.prompt) + list(t.completion) for t in batch]
    T = max(len(s) for s in seqs) - 1
    idx = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, (t, s) in enumerate(zip(batch, seqs, strict=True)):
        idx[i, : len(s) - 1] = torch.tensor(s[:-1])
        mask[i, len(s) - 1 - len(t.completion) : len(s) - 1] = True
    targets = torch.tensor([tok for t in batch for tok in t.completion])
    Tp = max(len(p) for p in distinct) - 1
    prompts = torch.zeros(len(distinct), Tp, dtype=torch.long)
    pad = torch.zeros(len(distinct), dtype=torch.long)
    for i, p in enumerate(distinct):
        pad[i] = Tp - (len(p) - 1)
        prompts[i, int(pad[i]) :] = torch.tensor(p[:-1])
    layers = model.config.n_layer

    def loss() -> torch.Tensor:
        cache = None
        if shared:
            cache = PromptCache(pad)
            model.hidden_states(prompts, layers=layers, kv_cache=cache)
            cache.continue_rows(torch.tensor(owner))
        h = model.hidden_states(idx, layers=layers, kv_cache=cache)
        logits = F.linear(model.norm_f(h[mask]), head)
        return F.cross_entropy(logits.float(), targets)

    with torch.no_grad():
        loss()
    opt = policy.optimizer
    for _ in range(epochs):
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()


def posting_latency(
    policy: Policy, batch: list[Trajectory], probe: list[Trajectory], epochs: int
) -> dict[str, float]:
    """How long a job submitted to the torch worker with `run_soon` (as a post cycle's
    generation is) waits while an update runs there: submitted every 50 ms through the update,
    its wait is measured from submission to its start on the worker."""
    from plaudit.controller import TorchWorker

    config = OnlineUpdateConfig(epochs=epochs, max_kl=1e9, kl_coef=0.05)
    worker = TorchWorker()

    async def go() -> tuple[list[float], float, int]:
        t0 = time.perf_counter()
        update = asyncio.ensure_future(
            worker.run(
                "learn",
                policy.update,
                batch,
                config=config,
                probe=probe,
                between_steps=worker.step_boundary,
            )
        )
        waits: list[float] = []
        while not update.done():
            submitted = time.perf_counter()
            started = await worker.run_soon("generate", time.perf_counter)
            if not update.done():
                waits.append(started - submitted)
            await asyncio.sleep(0.05)
        stats = await update
        return waits, time.perf_counter() - t0, stats.steps

    try:
        waits, seconds, steps = asyncio.run(go())
    finally:
        worker.shutdown(wait=True)
    return {
        "wait_max_s": round(max(waits, default=0.0), 4),
        "wait_median_s": round(statistics.median(waits) if waits else 0.0, 4),
        "waits": len(waits),
        "update_s": round(seconds, 4),
        "step_s": round(seconds / max(steps, 1), 4),
    }


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2, a model folder, or tiny")
    ap.add_argument("--posts", type=int, default=8, help="rewarded posts in the update")
    ap.add_argument("--probe", type=int, default=32, help="recent samples the drift is measured on")
    ap.add_argument(
        "--candidates", type=int, default=8, help="the probe's posts per prompt (a cycle's)"
    )
    ap.add_argument(
        "--batch-per-prompt",
        type=int,
        default=1,
        help="the batch's posts per prompt (1: rewarded posts; 8: as with candidates teaching)",
    )
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--lora", type=int, default=8, help="LoRA rank of a side timed too (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    configure_torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = policy_for(args.model)
    batch = trajectories(policy, args.posts, seed=1, per_prompt=args.batch_per_prompt)
    # The probe as the daemon's: the newest candidates, each cycle's sharing a prompt.
    probe = (
        trajectories(policy, args.probe, seed=2, per_prompt=args.candidates) if args.probe else []
    )
    snapshot = {k: v.clone() for k, v in policy.model.state_dict().items()}

    def remember(p: Policy) -> None:
        """What the daemon's post cycles did when these posts were sampled."""
        for posts in (batch, probe):
            p.remember_reference([t.prompt for t in posts], [t.completion for t in posts])

    def plaudit(p: Policy, measured: list[Trajectory]) -> Callable[[], object]:
        # max_kl far away: every step is taken and checked, none undone (the timed path).
        config = OnlineUpdateConfig(epochs=args.epochs, max_kl=1e9, kl_coef=0.05)
        return lambda: p.update(batch, config=config, probe=measured)

    sides: dict[str, Callable[[], object]] = {
        "floor": lambda: floor(policy, batch, args.epochs),
        f"plaudit (probe {len(probe)})": plaudit(policy, probe),
        f"plaudit (probe {len(probe)}, posts new to the reference)": plaudit(policy, probe),
        "plaudit (batch measured)": plaudit(policy, []),
    }
    adapted = policy_for(args.model, LoRAConfig(rank=args.lora)) if args.lora else None
    if adapted is not None:
        sides[f"plaudit LoRA r{args.lora} (probe {len(probe)})"] = plaudit(adapted, probe)

    def prepare(name: str) -> None:
        """Untimed, before each side: the reference's work on the posts as the daemon has it
        when it updates (remembered when its post cycles sampled them), or none."""
        for p in (policy, adapted):
            if p is not None:
                p.reference_cache.clear()
                if "new to the reference" not in name:
                    remember(p)

    def reset() -> None:
        policy.model.load_state_dict(snapshot)
        if adapted is not None:
            assert adapted.adapters is not None
            adapted.adapters.zero()

    times: dict[str, list[float]] = {k: [] for k in sides}
    for name, fn in sides.items():  # warm-up: allocator, packed weights, optimizer state
        prepare(name)
        fn()
        reset()
    for _ in range(args.repeats):
        for name, fn in sides.items():
            prepare(name)
            times[name].append(timed(fn))
            reset()
    # What remembering the reference costs a post cycle: its candidates, after one prompt.
    cycle = probe[: args.candidates]
    remembering = []
    for _ in range(args.repeats):
        policy.reference_cache.clear()
        remembering.append(
            timed(
                lambda: policy.remember_reference(
                    [t.prompt for t in cycle], [t.completion for t in cycle]
                )
            )
        )
    medians = {k: statistics.median(v) for k, v in times.items()}
    latency = posting_latency(policy, batch, probe, args.epochs)
    policy.model.load_state_dict(snapshot)
    tokens = sum(len(t.prompt) + len(t.completion) for t in batch)
    result: dict[str, Any] = {
        "model": args.model,
        "posts": len(batch),
        "probe": len(probe),
        "probe_prompts": len({tuple(t.prompt) for t in probe}),
        "batch_prompts": len({tuple(t.prompt) for t in batch}),
        "epochs": args.epochs,
        "tokens": tokens,
        "completion_tokens": sum(len(t.completion) for t in batch),
        "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 4) for k, v in medians.items()},
        "ratio_to_floor": {k: round(v / medians["floor"], 3) for k, v in medians.items()},
        "runs": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "posting_latency": latency,
        # Per post cycle, outside the update: the reference over its candidates.
        "remember_reference_cycle_s": round(statistics.median(remembering), 4),
        "memory_mb": {
            name: {k: round(v / 2**20, 1) for k, v in p.memory().items()}
            for name, p in (("full", policy), ("lora", adapted))
            if p is not None
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}: {len(batch)} posts ({tokens} tokens), epochs {args.epochs}")
        for k, v in medians.items():
            print(f"  {k:28s} {v:8.3f} s  {v / medians['floor']:5.2f}x floor")
        print(
            f"  the reference over a post cycle's {len(cycle)} candidates, when it samples them: "
            f"{result['remember_reference_cycle_s']:.3f} s"
        )
        for name, mem in result["memory_mb"].items():
            print(f"  memory, {name}: " + ", ".join(f"{k} {v:.0f} MB" for k, v in mem.items()))
        print(
            f"  a generation submitted during the update waited {latency['wait_max_s']:.3f} s "
            f"at most (median {latency['wait_median_s']:.3f} s); the update's steps took "
            f"{latency['step_s']:.3f} s each, the whole update {latency['update_s']:.3f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
