"""Online learning, measured: the real controller jobs on a simulated clock, methods side by side.

From one starting model, each method posts a budget of posts through a face at a realistic
cadence (12 a simulated day, rewards 24 h = 12 posts later), learning from the rewards as the
daemon does (`Controller.run_until` on a `SimulatedClock`: post, collect, learn). Every run has
a fresh state folder and a fresh face. What it reports, per method (mean and spread over seeds):

- fresh-sample reward: the audience's expected score (`SimulatedAudience.appeal`) of fresh,
  unfiltered samples of the policy at the posting settings and prompts, every `--eval-every`
  posts, at the end, and for the frozen starting policy (post 0): the learning itself;
- published reward: the face's score of the published posts (first 24, last 50): learning plus
  what the filters and the choice among candidates select;
- posts needed to reach the first method's final reward (and that over the budget);
- KL(policy || reference) on the fresh samples in nats per post and per token: the sum over a
  sample's tokens of log pi - log pi_ref, both from the full softmax at the sampling temperature
  (no top-p mask), averaged over samples; mean length, distinct-2, the share that talks like an
  assistant or echoes the prompt, the reference model's loss on the last 50 published posts;
  for an audience with topics, the share of fresh samples that name one (discovery); how many
  kinds of post they cover (the effective number of the history's 16 clusters, as the daemon
  measures its candidates: a policy narrowing onto what was rewarded);
- what became of the candidates: each filter reason's share of those sampled ("assistant"
  talk, "novelty" copies, ...) and the survivors', over the run and its first and last thirds;
- wall time, updates (policy versions) and the time the updates took.

    .venv/bin/python bench/online.py --quick --json
    .venv/bin/python bench/online.py --seeds 0,1,2 --out /tmp/online --keep /tmp/online/runs
    .venv/bin/python bench/online.py --methods reinforce,r3e5 --set r3e5.method=reinforce \\
        --set r3e5.lr=3e-5 --posts 200
    .venv/bin/python bench/online.py --model smollm2 --threads 2 --posts 300
    .venv/bin/python bench/online.py --model smollm2 --fit-steps 40 --posts 120  # as the daemon
    .venv/bin/python bench/online.py --face-config bench/audiences/water.toml   # 2nd audience

The face must offer `plaudit.faces.SimulatedAudience` (the built-in `simulated` does); the
default model is the `tiny` preset fitted on the face's history, cached under the user cache
folder; SmolLM2 is taken as shipped unless `--fit-steps` fits it first as the daemon does. Needs matplotlib for the PNG (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

import structlog
import torch
import torch.nn.functional as F

from plaudit.controller import (
    Controller,
    ControllerConfig,
    LoopSettings,
    OfflineConfig,
    OnlineConfig,
    PostPrompt,
    RewardModelConfig,
    TorchWorker,
    echo_checked,
    fit_examples,
    post_prompts,  # the posting prompts: fresh samples are prompted exactly as posts are
    talks_like_assistant,
)
from plaudit.faces import Face, SimulatedAudience, SimulatedClock, discover
from plaudit.faces.simulated._audience import words as audience_words  # as topics are read
from plaudit.learner import (
    PRESETS,
    Candidate,
    FitResult,
    OfflineTrainConfig,
    Policy,
    PostKinds,
    SamplingConfig,
    default_cache_dir,
    examples_from_texts,
    hidden_features,
    kinds_covered,
    text_features,
    train_offline,
)
from plaudit.state import Post, PostStatus, Store, atomic_folder

if TYPE_CHECKING:
    from plaudit.controller import LoopMetrics

P = ParamSpec("P")
R = TypeVar("R")

FACE_NAME = "bench"
HISTORY_LIMIT = 5000  # as many history posts as the controller reads at start
START = datetime(2026, 3, 2, 8, tzinfo=UTC)  # the simulated clock's first moment
MOVING = 50  # posts in the published-reward moving average
DISTINCT_BIGRAMS = 2000  # distinct-2 is counted on the first this-many word bigrams
REF_LOSS_POSTS = 50
EVAL_CHUNK = 50  # fresh samples per generate call (bounds memory for large models)
SURVIVED = "survived"  # a candidate no filter dropped (published, or not chosen)

# A method is a named set of settings: [online] keys, `reward_model.KEY` for the
# [reward_model] table and `controller.KEY` for [controller]; any other name is defined by
# --set NAME.key=v.
METHODS: dict[str, dict[str, Any]] = {
    # REINFORCE, moving-average baseline, no KL, the post chosen at random, final rewards only,
    # filtered candidates teaching nothing
    "reinforce": {
        "method": "reinforce",
        "reward_model.enabled": False,
        "early_rewards": False,
        "filtered_reward": None,
    },
    # plaudit's update alone (the post chosen at random, final rewards only)
    "clipped": {
        "method": "clipped",
        "reward_model.enabled": False,
        "early_rewards": False,
        "filtered_reward": None,
    },
    # plaudit as it runs: the update, the reward model and its choice of the post, every
    # candidate teaching, early rewards, filtered candidates teaching
    "plaudit": {"method": "clipped"},
}

_WORD = re.compile(r"\w+(?:'\w+)?")


# -- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitRecipe:
    """How a preset is fitted on the face's history (offline, from scratch) before the runs."""

    preset: str
    steps: int = 150
    vocab_size: int = 2048  # the history is ~110k tokens: a larger vocabulary only slows it
    batch_size: int = 16
    max_seq_len: int = 128
    seed: int = 0


@dataclass(frozen=True)
class DaemonFit:
    """How a pretrained model ('smollm2', a folder) is fine-tuned on the face's history before
    the runs when `--fit-steps` is given for it: as the daemon's first offline fit does (the
    `[offline]` table's defaults but the steps, `controller.fit_examples`: the posting
    instruction -> a history post for a chat model), so the runs start where the daemon's
    online learning starts."""

    model: str
    steps: int


@dataclass(frozen=True)
class Options:
    face_type: str
    face_config: dict[str, Any]
    model: str
    fit: FitRecipe | DaemonFit | None
    posts: int
    methods: dict[str, Method]
    seeds: list[int]
    eval_every: int
    eval_samples: int
    threads: int
    out: Path | None
    json: bool
    verbose: bool
    keep: Path | None = None


def parse_value(raw: str) -> Any:
    """A --set value: a TOML literal (3e-5, 2, true, "x") or, failing that, the bare string;
    `none` is None (max_kl = none turns the early stop off)."""
    if raw.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


@dataclass(frozen=True)
class Method:
    online: OnlineConfig
    reward_model: RewardModelConfig
    controller: dict[str, Any] = field(default_factory=dict)  # [controller] keys it changes

    @property
    def liked_examples(self) -> float:
        return float(self.controller.get("liked_examples", 0.0))

    def dump(self) -> dict[str, Any]:
        return {
            "online": self.online.model_dump(mode="json"),
            "reward_model": self.reward_model.model_dump(mode="json"),
            "controller": self.controller,
        }


def method_settings(names: Sequence[str], sets: Sequence[str]) -> dict[str, Method]:
    """The settings of each method: its preset, then the --set overrides."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in sets:
        key, eq, raw = item.partition("=")
        name, dot, setting = key.strip().partition(".")
        if not eq or not dot or not setting:
            raise SystemExit(f"--set {item!r}: write METHOD.KEY=VALUE, such as reinforce.lr=3e-5")
        if name not in names:
            raise SystemExit(f"--set {item!r}: {name!r} is not in --methods ({', '.join(names)})")
        overrides.setdefault(name, {})[setting] = parse_value(raw.strip())
    out = {}
    for name in names:
        if name not in METHODS and name not in overrides:
            raise SystemExit(
                f"unknown method {name!r}: use {' or '.join(METHODS)}, or define it with "
                f"--set {name}.method=clipped (and more --set {name}.KEY=VALUE)"
            )
        merged = {**METHODS.get(name, {}), **overrides.get(name, {})}
        prefix, ctl = "reward_model.", "controller."
        controller = {k[len(ctl) :]: v for k, v in merged.items() if k.startswith(ctl)}
        try:
            out[name] = Method(
                online=OnlineConfig(**{k: v for k, v in merged.items() if "." not in k}),
                reward_model=RewardModelConfig(
                    **{k[len(prefix) :]: v for k, v in merged.items() if k.startswith(prefix)}
                ),
                controller=controller,
            )
            loop_settings(out[name])  # the [controller] keys are checked here
        except ValueError as exc:
            raise SystemExit(f"method {name!r}: bad setting: {exc}") from None
        unknown = [k for k in merged if "." in k and not k.startswith((prefix, ctl))]
        if unknown:
            raise SystemExit(
                f"method {name!r}: {unknown}: only [online] keys, reward_model.KEY and "
                "controller.KEY"
            )
    return out


def read_face_config(path: Path | None, face_type: str) -> dict[str, Any]:
    """The face's table from a TOML file (its keys at the top level; a `type` key must match)."""
    if path is None:
        return {}
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"--face-config {path}: {exc}") from None
    kind = table.pop("type", face_type)
    if kind != face_type:
        raise SystemExit(f"--face-config {path} is for a {kind!r} face, --face is {face_type!r}")
    return table


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    add = parser.add_argument
    add("--face", default="simulated", help="face type (installed, with SimulatedAudience)")
    add("--face-config", type=Path, help="TOML file holding the face's table (its config keys)")
    add(
        "--model",
        default="tiny",
        help="a preset (fitted on the face's history first, cached), 'smollm2', or a model "
        "folder (both used as they are); default tiny",
    )
    add(
        "--fit-steps",
        type=int,
        help="offline fit steps on the face's history before the runs: a preset's from scratch "
        "(default 150); a pretrained model's as the daemon's first fit (default 0: as it is)",
    )
    add("--posts", type=int, default=300, help="posting budget per run (default 300)")
    add(
        "--methods",
        default="reinforce,clipped",
        help="comma-separated methods; the first is the baseline (default reinforce,clipped)",
    )
    add(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="an [online] setting of one method, such as reinforce.lr=3e-5 (repeatable)",
    )
    add("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    add(
        "--eval-every",
        type=int,
        default=50,
        help="posts between fresh-sample evaluations (default 50)",
    )
    add("--eval-samples", type=int, default=200, help="fresh samples per evaluation (default 200)")
    add(
        "--threads",
        type=int,
        help="torch threads (default 1 for presets: OpenMP threads spinning against a busy "
        "neighbour cost far more than they give a small model; else torch's default)",
    )
    add(
        "--quick",
        action="store_true",
        help="reinforce,clipped, seed 0, tiny, 120 posts, an evaluation every 40",
    )
    add("--out", type=Path, help="write results.json and online.png into this folder")
    add(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep each run's state folder (its store: every post, filter reason and reward; "
        "its checkpoints) in DIR/METHOD-SEED instead of a temporary folder",
    )
    add("--json", action="store_true", help="print the results as JSON")
    add("--verbose", action="store_true", help="log the controller's jobs (stderr)")
    a = parser.parse_args(argv)
    if a.quick:
        a.methods, a.seeds, a.model, a.posts, a.eval_every = (
            "reinforce,clipped",
            "0",
            "tiny",
            120,
            40,
        )
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    if len(set(names)) != len(names) or not names:
        raise SystemExit(f"--methods {a.methods!r}: name each method once")
    if a.posts < 1 or a.eval_every < 1 or a.eval_samples < 2:
        raise SystemExit("--posts and --eval-every must be positive, --eval-samples at least 2")
    if a.out is not None and importlib.util.find_spec("matplotlib") is None:
        # Refused before the runs, not after them: a run takes minutes to hours.
        raise SystemExit(
            f"--out {a.out} writes online.png with matplotlib, which is not installed: "
            "`.venv/bin/pip install -e '.[bench]'`, or leave --out out (--json prints the results)"
        )
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if a.keep is not None:
        # Refused before the runs: a kept run is never written over.
        taken = [
            f"{n}-{seed}" for n in names for seed in seeds if (a.keep / f"{n}-{seed}").exists()
        ]
        if taken:
            raise SystemExit(
                f"--keep {a.keep}: {', '.join(taken)} is there already (a run kept before): "
                "move it away or give another folder"
            )
    preset = a.model in PRESETS
    if a.fit_steps is not None and a.fit_steps < (1 if preset else 0):
        raise SystemExit(f"--fit-steps {a.fit_steps}: a preset needs at least 1, others 0 or more")
    fit: FitRecipe | DaemonFit | None = None
    if preset:
        fit = FitRecipe(preset=a.model, steps=150 if a.fit_steps is None else a.fit_steps)
    elif a.fit_steps:
        fit = DaemonFit(model=a.model, steps=a.fit_steps)
    return Options(
        face_type=a.face,
        face_config=read_face_config(a.face_config, a.face),
        model=a.model,
        fit=fit,
        posts=a.posts,
        methods=method_settings(names, a.set),
        seeds=seeds,
        eval_every=a.eval_every,
        eval_samples=a.eval_samples,
        threads=a.threads if a.threads is not None else (1 if preset else torch.get_num_threads()),
        out=a.out,
        json=a.json,
        verbose=a.verbose,
        keep=a.keep,
    )


# -- the loop's settings, the face, the starting model --------------------------------------


def loop_settings(method: Method) -> LoopSettings:
    """12 posts a simulated day; rewards at 24 h (12 posts later); learning every 30 min once
    4 rewards wait; no offline fit (the runs start from the fitted model)."""
    return LoopSettings(
        controller=ControllerConfig(
            post_interval=timedelta(hours=2),
            post_jitter=timedelta(minutes=20),
            daily_cap=0,
            horizons=(timedelta(hours=1), timedelta(hours=6), timedelta(hours=24)),
            learn_interval=timedelta(minutes=30),
            learn_min_rewards=4,
            offline_interval=None,
            **method.controller,
        ),
        online=method.online,
        reward_model=method.reward_model,
    )


def make_face(
    face_type: str, config: dict[str, Any], state_dir: Path, clock: SimulatedClock
) -> Face[Any]:
    """A face from the registry, on the simulated clock; refused without a SimulatedAudience."""
    face = discover(only={face_type}).create(
        name=FACE_NAME, type=face_type, config=config, state_dir=state_dir, clock=clock
    )
    if not isinstance(face, SimulatedAudience):
        raise SystemExit(
            f"The {face_type!r} face cannot score text it never published: this benchmark "
            "needs a face with a simulated audience, one that offers "
            "`async def appeal(self, texts) -> list[float]` (plaudit.faces.SimulatedAudience, "
            "see faces/README.md), such as the built-in 'simulated'."
        )
    return face


async def read_history(face: Face[Any]) -> list[str]:
    """The history texts, as the controller reads them at start."""
    return [p.text async for p in face.history(limit=HISTORY_LIMIT)]


def fit_cache_dir(
    face_type: str, face_config: dict[str, Any], recipe: FitRecipe | DaemonFit
) -> Path:
    """Where the fitted starting model is cached: keyed by face type, config and recipe."""
    key = json.dumps([face_type, face_config, asdict(recipe)], sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = recipe.preset if isinstance(recipe, FitRecipe) else Path(recipe.model).name
    return default_cache_dir() / "bench-online" / f"{face_type}-{name}-{digest}"


def starting_model(
    face_type: str,
    face_config: dict[str, Any],
    model: str,
    fit: FitRecipe | DaemonFit | None,
    log: Callable[[str], None] = lambda _m: None,
) -> Path | str:
    """The model every run starts from: fitted on the face's history as `fit` says (cached; a
    second call reuses it), else `model` itself ('smollm2' or a folder, as it is)."""
    if fit is None:
        return model
    cached = fit_cache_dir(face_type, face_config, fit)
    if (cached / "model").is_dir():
        log(f"starting model: {cached} (cached)")
        return cached / "model"
    with tempfile.TemporaryDirectory(prefix="plaudit-bench-fit-") as tmp:
        clock = SimulatedClock(start=START.timestamp())
        face = make_face(face_type, face_config, Path(tmp) / "face", clock)
        texts = asyncio.run(read_history(face))
        max_chars = face.limits.max_length
        asyncio.run(face.aclose())
        t0 = time.perf_counter()
        if isinstance(fit, DaemonFit):
            result, write_model, extra = daemon_fit(fit, texts, max_chars, log)
        else:
            result, write_model, extra = preset_fit(fit, texts, Path(tmp) / "run", log)
        with atomic_folder(cached, replace=True) as folder:
            write_model(folder / "model")
            info = {
                "face": face_type,
                "face_config": face_config,
                "recipe": asdict(fit),
                "history_posts": len(texts),
                **extra,
                "steps": result.steps,
                "last_loss": result.last_loss,
                "val_loss": result.best_val_loss,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            (folder / "fit.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    log(f"fitted in {info['seconds']} s, validation loss {result.best_val_loss}: {cached}")
    return cached / "model"


# A fit's result, how to write its model folder, and what else its record says.
Fitted = tuple[FitResult, Callable[[Path], object], dict[str, Any]]


def preset_fit(fit: FitRecipe, texts: list[str], run: Path, log: Callable[[str], None]) -> Fitted:
    """Train the preset `fit.preset` from scratch on the history `texts` (a tokenizer built from
    them), in the run folder `run`; its best checkpoint is the model."""
    cfg = OfflineTrainConfig(
        model=fit.preset,
        vocab_size=fit.vocab_size,
        max_steps=fit.steps,
        epochs=10**6,  # max_steps decides
        batch_size=fit.batch_size,
        max_seq_len=fit.max_seq_len,
        seed=fit.seed,
        eval_every=fit.steps,
        save_every=10**9,
        samples=0,
        device="cpu",
    )
    log(f"fitting {fit.preset} on {len(texts)} history posts ({fit.steps} steps) ...")
    result = train_offline(
        cfg, out=run, extra_examples=examples_from_texts(texts, source="face-history")
    )
    best = result.best_dir or result.last_checkpoint
    assert best is not None, "a fit that ran steps leaves a checkpoint"
    return result, lambda folder: shutil.copytree(best, folder), {}


def daemon_fit(
    fit: DaemonFit, texts: list[str], max_chars: int, log: Callable[[str], None]
) -> Fitted:
    """Fine-tune `fit.model` on the history `texts` as the daemon's first offline fit does
    (`Policy.fine_tune` with the `[offline]` defaults, validation halfway and at the end, the
    best weights kept)."""
    policy = Policy.load(fit.model, device="cpu")
    examples = fit_examples([(texts, max_chars)], chat=policy.tokenizer.chat_template is not None)
    cfg = OfflineConfig().train_config(
        model=fit.model,
        max_steps=fit.steps,
        eval_every=max(1, fit.steps // 2),
        samples=0,
        device="cpu",
    )
    log(f"fitting {fit.model} on {len(texts)} history posts as the daemon does ({fit.steps} steps)")
    result = policy.fine_tune(cfg, examples=examples)
    extra = {"config": cfg.model_dump(mode="json"), "format": examples[0].fmt}
    return result, policy.save, extra


# -- measuring -----------------------------------------------------------------------------


class TimedWorker(TorchWorker):
    """The controller's torch worker, adding up the real seconds of each kind of call
    ("generate", "learn", ...), so the time the updates took is measured where they run."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)

    async def run(self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        t0 = time.perf_counter()
        try:
            return await super().run(name, fn, *args, **kwargs)
        finally:
            self.seconds[name] += time.perf_counter() - t0

    async def run_soon(
        self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        t0 = time.perf_counter()
        try:
            return await super().run_soon(name, fn, *args, **kwargs)
        finally:
            self.seconds[name] += time.perf_counter() - t0


class _Discarded:
    """A metric series that records nothing; any call or attribute (labels, inc, set,
    observe, ...) gives the series back."""

    def __getattr__(self, _name: str) -> _Discarded:
        return self

    def __call__(self, *_args: object, **_kwargs: object) -> _Discarded:
        return self


class DiscardedMetrics:
    """The controller's metrics (`LoopMetrics`), discarded: the bench reads its figures from
    the store, the face and the policy, and whatever series the controller adds still work."""

    def __getattr__(self, _name: str) -> _Discarded:
        return _Discarded()


def fresh_kl(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    temperature: float,
    chunk: int = 16,
) -> tuple[list[float], list[float]]:
    """Per sample, KL(model || reference) summed over its completion positions: exact over
    the vocabulary (the full softmax at `temperature`), and the sampled-token estimate."""
    exact: list[float] = []
    sampled: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(pairs), chunk):
            part = pairs[start : start + chunk]
            idx, rows = _completion_rows(part)
            device = next(model.parameters()).device
            idx = idx.to(device)
            logp = F.log_softmax(model(idx).float() / temperature, dim=-1)
            ref = F.log_softmax(reference(idx).float() / temperature, dim=-1)
            for i, (r, c) in enumerate(zip(rows, (c for _, c in part), strict=True)):
                if not c:
                    exact.append(0.0)
                    sampled.append(0.0)
                    continue
                lp, rp = logp[i, r], ref[i, r]  # (n, V)
                exact.append(float((lp.exp() * (lp - rp)).sum()))
                t = torch.tensor(list(c), dtype=torch.long, device=device)[:, None]
                sampled.append(float((lp.gather(1, t) - rp.gather(1, t)).sum()))
    return exact, sampled


def _completion_rows(
    part: Sequence[tuple[Sequence[int], Sequence[int]]],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The padded inputs (B, T) and, per pair, the rows whose logits predict its completion."""
    seqs = [list(p) + list(c) for p, c in part]
    width = max(len(s) for s in seqs) - 1
    idx = torch.zeros(len(seqs), max(width, 1), dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, : len(s) - 1] = torch.tensor(s[:-1], dtype=torch.long)
    rows = [torch.arange(len(p) - 1, len(p) - 1 + len(c)) for p, c in part]
    return idx, rows


def completion_logprobs(
    model: torch.nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    temperature: float,
    chunk: int = 16,
) -> list[torch.Tensor]:
    """Per-token logprobs of each completion after its prompt, from the full softmax of the
    logits divided by `temperature` (no top-k/top-p mask)."""
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(pairs), chunk):
            part = pairs[start : start + chunk]
            seqs = [list(p) + list(c) for p, c in part]
            width = max(len(s) for s in seqs) - 1
            idx = torch.zeros(len(seqs), max(width, 1), dtype=torch.long)
            for i, s in enumerate(seqs):
                idx[i, : len(s) - 1] = torch.tensor(s[:-1], dtype=torch.long)
            device = next(model.parameters()).device
            logits = model(idx.to(device)).float() / temperature
            logp = F.log_softmax(logits, dim=-1)
            for i, (p, c) in enumerate(part):
                if not c:
                    out.append(torch.zeros(0))
                    continue
                rows = torch.arange(len(p) - 1, len(p) - 1 + len(c), device=device)
                targets = torch.tensor(list(c), dtype=torch.long, device=device)
                out.append(logp[i, rows, targets].cpu())
    return out


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_2(texts: Sequence[str], limit: int = DISTINCT_BIGRAMS) -> tuple[float, int]:
    """Distinct word bigrams among the first `limit` bigrams of `texts` (in order), and how
    many bigrams that was (fewer than `limit` when the samples are short)."""
    bigrams = itertools.islice(
        (pair for t in texts for pair in itertools.pairwise(words(t))), limit
    )
    seen = list(bigrams)
    return (len(set(seen)) / len(seen) if seen else 0.0), len(seen)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, se


@dataclass(frozen=True)
class FreshEval:
    """Fresh, unfiltered samples of the policy at one point of a run."""

    posts: int  # posts published before it
    version: int  # the policy version sampled
    reward: float  # the audience's expected score, mean over samples
    reward_se: float
    # KL(pi || pi_ref) in nats per sample: exact over the vocabulary at each position of the
    # sample (both at the sampling temperature, no top-p mask), summed over its tokens: the
    # quantity `online.max_kl` bounds
    kl_post: float
    kl_token: float  # the same per token
    # the single-sample estimate, log pi - log pi_ref of the sampled tokens summed: along
    # top-p-truncated samples it leans to high-probability tokens, so it reads higher
    kl_post_sampled: float
    tokens: float  # mean completion length
    chars: float
    distinct_2: float
    bigrams: int
    assistant: float  # share that talks like an assistant or echoes the prompt
    samples: int
    # share that names one of the audience's topic words (its `topics`; None without any):
    # how much of the content an audience rewards the policy writes about
    topic: float | None = None
    # how many kinds of post the samples cover: the effective number of the history's 16
    # clusters on the reference's features (`PostKinds`, as the daemon measures its
    # candidates; the history's own is about 15.5 on `tiny`); None for a history too small
    kinds: float | None = None


def sample_fresh(
    policy: Policy, asked: Sequence[PostPrompt], settings: LoopSettings, seed: int
) -> list[Candidate]:
    """One sample of the policy per posting prompt, prompted and sampled as posting does,
    `EVAL_CHUNK` prompts a generate call (each chunk its own seed, from ``seed``)."""
    s = settings.sampling
    prompts = [p.render(policy, room=s.max_new_tokens) for p in asked]
    cands: list[Candidate] = []
    for i, start in enumerate(range(0, len(prompts), EVAL_CHUNK)):
        sampling = SamplingConfig(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_new_tokens=s.max_new_tokens,
            seed=seed * 1000 + i,
        )
        cands += policy.generate(prompts[start : start + EVAL_CHUNK], n=1, sampling=sampling)
    return cands


async def evaluate_fresh(
    *,
    policy: Policy,
    face: Face[Any],
    worker: TorchWorker,
    history: Sequence[str],
    settings: LoopSettings,
    samples: int,
    seed: int,
    posts: int,
    scores: Sequence[float] = (),
    topics: Collection[str] = (),
    kinds: PostKinds | None = None,
) -> FreshEval:
    """Sample as posting does (its prompts, sampling settings, the cut at a sentence end), but
    keep every sample, and score them with the face's `appeal`. The same prompts and sampling
    seed at every point of a run (common random numbers: differences are the policy's)."""
    assert isinstance(face, SimulatedAudience)
    asked = post_prompts(
        history=history,
        n=samples,
        max_chars=face.limits.max_length,
        rng=random.Random(seed),
        scores=scores,
        liked_share=settings.controller.liked_examples,
    )
    temperature = settings.sampling.temperature or 1.0

    def sample_and_measure() -> tuple[
        list[Candidate], list[float], list[float], list[int], float | None
    ]:
        cands = sample_fresh(policy, asked, settings, seed)
        pairs = [(c.prompt_tokens, c.tokens) for c in cands]
        assert policy.reference is not None, "the policy is loaded with its KL reference"
        kl, kl_sampled = fresh_kl(policy.model, policy.reference, pairs, temperature=temperature)
        covered = None
        if kinds is not None:
            feats = text_features(policy.reference, policy.tokenizer, [c.text for c in cands])
            covered = kinds_covered(kinds.assign(hidden_features(feats)))
        return cands, kl, kl_sampled, [len(c.tokens) for c in cands], covered

    cands, kl, kl_sampled, lengths, covered = await worker.run("eval", sample_and_measure)
    scores = await face.appeal([c.text for c in cands])
    reward, reward_se = mean_se(scores)
    d2, bigrams = distinct_2([c.text for c in cands])
    return FreshEval(
        posts=posts,
        version=policy.version,
        reward=reward,
        reward_se=reward_se,
        kl_post=statistics.fmean(kl),
        kl_token=sum(kl) / max(sum(lengths), 1),
        kl_post_sampled=statistics.fmean(kl_sampled),
        tokens=statistics.fmean(lengths),
        chars=statistics.fmean(len(c.text) for c in cands),
        distinct_2=d2,
        bigrams=bigrams,
        assistant=statistics.fmean(
            talks_like_assistant(c.text, echo_checked(policy, c.prompt)) for c in cands
        ),
        samples=len(cands),
        topic=(
            statistics.fmean(bool(topic_words & set(audience_words(c.text))) for c in cands)
            if (topic_words := {t.lower() for t in topics})
            else None
        ),
        kinds=covered,
    )


def history_kinds(policy: Policy, history: Sequence[str]) -> PostKinds | None:
    """The kinds of post of ``history``, clustered on the reference's features as the
    daemon's reward model clusters a face's history."""
    assert policy.reference is not None, "the policy is loaded with its KL reference"
    return PostKinds.fit(
        hidden_features(text_features(policy.reference, policy.tokenizer, history))
    )


# -- one run -------------------------------------------------------------------------------


@dataclass
class RunResult:
    method: str
    seed: int
    evals: list[FreshEval]
    published: list[float]  # the face's score of each published post, in order
    ref_loss_last: float  # reference model's per-token loss on the last published posts
    updates: int
    update_s: float
    generate_s: float
    eval_s: float
    wall_s: float
    outcomes: dict[str, int] = field(default_factory=dict)  # "kind:outcome" -> jobs
    memory: dict[str, int] = field(default_factory=dict)  # `Policy.memory` at the end
    # every candidate's fate in the order sampled: its filter reason ("assistant", "novelty",
    # ...) or `SURVIVED`
    candidates: list[str] = field(default_factory=list)
    # the history's kinds of post the fresh samples were counted in (None: too small a history)
    post_kinds: PostKinds | None = None


def candidate_fates(store: Store) -> list[str]:
    """Every candidate's fate, in the order sampled (the store keeps every post's row and filter
    reason; only old token lists go)."""
    return [fate(p) for p in store.posts(face=FACE_NAME, limit=2**62, newest_first=False)]


def fate(post: Post) -> str:
    return (post.filter_reason or "filtered") if post.status is PostStatus.FILTERED else SURVIVED


async def run_one(
    *,
    method: str,
    settings: LoopSettings,
    seed: int,
    model: Path | str,
    face_type: str,
    face_config: dict[str, Any],
    posts: int,
    eval_every: int,
    eval_samples: int,
    state_dir: Path,
    threads: int,
    start_eval: FreshEval | None = None,
    post_kinds: PostKinds | None = None,
) -> RunResult:
    """One method, one seed: a fresh store and face, the controller's jobs on a simulated clock
    until `posts` posts are published, fresh samples evaluated on the way. `start_eval` (the
    frozen starting policy's, the same for every method of a seed) is measured when None."""
    t_start = time.perf_counter()
    clock = SimulatedClock(start=START.timestamp())
    store = Store.open(state_dir / "state", now=clock.now)
    face = make_face(face_type, face_config, state_dir / "face", clock)
    worker = TimedWorker()
    # Set on the worker thread too: torch's thread count is not shared by every thread.
    await worker.run("threads", torch.set_num_threads, threads)
    policy = await worker.run(
        "load", Policy.load, model, lr=settings.online.lr, lora=settings.online.lora()
    )
    ctl = Controller(
        settings=settings,
        store=store,
        faces={FACE_NAME: face},
        policy=policy,
        worker=worker,
        metrics=cast("LoopMetrics", DiscardedMetrics()),
        state_dir=state_dir / "state",
        clock=clock,
        seed=seed,
    )
    try:
        history = await read_history(face)
        # Every method fits the same kinds (one reference, one history): fitted once, by the
        # first run, and handed to the others (`RunResult.post_kinds`).
        if post_kinds is None:
            post_kinds = await worker.run("eval", history_kinds, policy, history)
        await ctl.start(schedule=False)
        first_version = policy.version

        async def evaluate(n: int) -> FreshEval:
            return await evaluate_fresh(
                policy=policy,
                face=face,
                worker=worker,
                history=history,
                settings=settings,
                samples=eval_samples,
                seed=seed,
                posts=n,
                scores=ctl.ctx.faces[FACE_NAME].history_scores,
                topics=tuple(face_config.get("topics", {})),
                kinds=post_kinds,
            )

        evals = [start_eval if start_eval is not None else await evaluate(0)]
        published = 0
        outcomes: Counter[str] = Counter()
        # A run where nothing gets published for days is broken, not slow: stop it.
        give_up = clock.now() + (posts / 12 * 4 + 7) * 86400
        while published < posts:
            job = ctl.next_job()
            if job is None or job[1] > give_up:
                raise RuntimeError(
                    f"{method} seed {seed}: {published} of {posts} posts published by "
                    f"{datetime.fromtimestamp(clock.now(), UTC):%Y-%m-%d}; outcomes {dict(outcomes)}"
                )
            counts = await ctl.run_until(job[1])
            for kind, by_outcome in counts.items():
                for outcome, n in by_outcome.items():
                    outcomes[f"{kind}:{outcome}"] += n
            before = published
            published += counts.get("post", {}).get("success", 0)
            if published // eval_every > before // eval_every and published < posts:
                evals.append(await evaluate(published))
        evals.append(await evaluate(published))

        posted = store.posts(
            face=FACE_NAME, status=PostStatus.PUBLISHED, limit=published, newest_first=False
        )
        # Each post scored once every horizon has passed for the last one: what the reward of
        # the controller reads, at least (a face's counts only grow).
        clock.advance(max(h.total_seconds() for h in settings.controller.horizons))
        snaps = await face.reactions([p.face_ref for p in posted if p.face_ref is not None])
        scores = [face.score(s) for s in snaps if s.found]
        last = posted[-REF_LOSS_POSTS:]
        assert policy.reference is not None
        ref_lp = await worker.run(
            "ref_loss",
            completion_logprobs,
            policy.reference,
            [(p.prompt_tokens, p.tokens) for p in last],
            temperature=1.0,
        )
        n_tok = sum(len(lp) for lp in ref_lp)
        ref_loss = -sum(float(lp.sum()) for lp in ref_lp) / max(n_tok, 1)
        return RunResult(
            method=method,
            seed=seed,
            evals=evals,
            published=scores,
            ref_loss_last=ref_loss,
            updates=policy.version - first_version,
            update_s=worker.seconds["learn"],
            generate_s=worker.seconds["generate"],
            eval_s=worker.seconds["eval"],
            wall_s=time.perf_counter() - t_start,
            outcomes=dict(outcomes),
            memory=await worker.run("memory", policy.memory),
            candidates=candidate_fates(store),
            post_kinds=post_kinds,
        )
    finally:
        await ctl.stop(deadline=time.monotonic() + 60)
        worker.shutdown(wait=True)
        await face.aclose()
        store.close()


# -- summary -------------------------------------------------------------------------------


def moving_average(values: Sequence[float], window: int = MOVING) -> list[float]:
    """Trailing means over `window` values, from the window-th value on."""
    return [statistics.fmean(values[i - window : i]) for i in range(window, len(values) + 1)]


def reached_at(xs: Sequence[int], ys: Sequence[float], target: float) -> int | None:
    """The first x from which y stays at or above `target` to the end (None: never)."""
    at = None
    for x, y in zip(xs, ys, strict=True):
        if y < target:
            at = None
        elif at is None:
            at = x
    return at


def spread(values: Sequence[float]) -> float:
    """The standard deviation over seeds (0 with one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def final_value(key: str) -> Callable[[RunResult], float]:
    """A figure of a run's last fresh-sample evaluation."""
    return lambda r: float(getattr(r.evals[-1], key))


def start_value(key: str) -> Callable[[RunResult], float]:
    """A figure of a run's first fresh-sample evaluation (the frozen start)."""
    return lambda r: float(getattr(r.evals[0], key))


def over_seeds(runs: Sequence[RunResult], get: Callable[[RunResult], float]) -> dict[str, float]:
    values = [get(r) for r in runs]
    return {"mean": statistics.fmean(values), "spread": spread(values)}


def summarise(runs: dict[str, list[RunResult]], posts: int) -> dict[str, Any]:
    """Per method: mean and spread over seeds of every figure, and the posts needed to reach
    the baseline's (the first method's) final reward."""
    baseline = next(iter(runs))

    def fresh_curve(rs: list[RunResult]) -> tuple[list[int], list[float]]:
        xs = [e.posts for e in rs[0].evals]
        return xs, [statistics.fmean(r.evals[i].reward for r in rs) for i in range(len(xs))]

    def published_ma(rs: list[RunResult]) -> list[float]:
        n = min(len(r.published) for r in rs)
        return [statistics.fmean(r.published[i] for r in rs) for i in range(n)]

    base_fresh = fresh_curve(runs[baseline])[1][-1]
    base_ma = moving_average(published_ma(runs[baseline]))
    base_published = base_ma[-1] if base_ma else math.nan
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        xs, ys = fresh_curve(rs)
        ma = moving_average(published_ma(rs))
        fresh_at = reached_at(xs, ys, base_fresh)
        pub_at = reached_at(list(range(MOVING, MOVING + len(ma))), ma, base_published)

        start, final = rs[0].evals[0], [r.evals[-1] for r in rs]
        out[name] = {
            "fresh": {
                "posts": xs,
                "reward": ys,
                "reward_spread": [spread([r.evals[i].reward for r in rs]) for i in range(len(xs))],
                "reward_se": [
                    statistics.fmean(r.evals[i].reward_se for r in rs) for i in range(len(xs))
                ],
                "kl_post": [
                    statistics.fmean(r.evals[i].kl_post for r in rs) for i in range(len(xs))
                ],
                "kl_post_spread": [
                    spread([r.evals[i].kl_post for r in rs]) for i in range(len(xs))
                ],
                "start_reward": statistics.fmean(r.evals[0].reward for r in rs),
                # the frozen start's samples, to read the final ones against (shorter? less
                # varied?)
                "start": {
                    key: over_seeds(rs, start_value(key))
                    for key in ("tokens", "chars", "distinct_2", "assistant", "kinds")
                    if getattr(rs[0].evals[0], key) is not None  # kinds: a history to cluster
                },
                # the share of fresh samples naming a topic word, at each evaluation
                **(
                    {
                        "topic": [
                            statistics.fmean(r.evals[i].topic or 0 for r in rs)
                            for i in range(len(xs))
                        ]
                    }
                    if rs[0].evals[0].topic is not None
                    else {}
                ),
                "final": {
                    key: over_seeds(rs, final_value(key))
                    for key in (
                        "reward",
                        "reward_se",
                        "kl_post",
                        "kl_token",
                        "kl_post_sampled",
                        "tokens",
                        "chars",
                        "distinct_2",
                        "assistant",
                        "topic",
                        "kinds",
                    )
                    # topic: audiences with topics; kinds: a history large enough to cluster
                    if getattr(rs[0].evals[-1], key) is not None
                },
                "z_vs_start": [round(z_score(r.evals[0], r.evals[-1]), 2) for r in rs],
                # Each seed's own end, in `seeds` order (the means above hide the worst one).
                "final_by_seed": [
                    {
                        "reward": round(r.evals[-1].reward, 4),
                        "kl_post": round(r.evals[-1].kl_post, 3),
                        "tokens": round(r.evals[-1].tokens, 1),
                        "start_tokens": round(r.evals[0].tokens, 1),
                        "distinct_2": round(r.evals[-1].distinct_2, 3),
                    }
                    for r in rs
                ],
                "bigrams": [e.bigrams for e in final],
                "samples": start.samples,
            },
            "published": {
                "first_24": over_seeds(rs, lambda r: statistics.fmean(r.published[:24])),
                f"last_{MOVING}": over_seeds(rs, lambda r: statistics.fmean(r.published[-MOVING:])),
                "moving_average": ma,
                "posts": len(rs[0].published),
            },
            "posts_needed": {"fresh": fresh_at, "published": pub_at},
            "posts_ratio": {
                "fresh": None if fresh_at is None else round(fresh_at / posts, 3),
                "published": None if pub_at is None else round(pub_at / posts, 3),
            },
            "ref_loss_last_50": over_seeds(rs, lambda r: r.ref_loss_last),
            "updates": over_seeds(rs, lambda r: r.updates),
            "update_s": over_seeds(rs, lambda r: r.update_s),
            "generate_s": over_seeds(rs, lambda r: r.generate_s),
            "eval_s": over_seeds(rs, lambda r: r.eval_s),
            "wall_s": over_seeds(rs, lambda r: r.wall_s),
            # MB the learner holds at the end: weights, the KL reference beyond them, LoRA's
            # adapters, the optimizer's moments
            "memory_mb": {k: round(v / 2**20, 1) for k, v in rs[0].memory.items()},
            "seeds": [r.seed for r in rs],
            "outcomes": [r.outcomes for r in rs],
            "candidates": candidate_shares(rs),
        }
    return {"baseline": baseline, "methods": out}


def candidate_shares(rs: Sequence[RunResult]) -> dict[str, Any]:
    """What became of the candidates, as shares of those sampled (mean over seeds): all of a
    run's, its first third's and its last third's (in the order sampled), so that talk or
    copies the filters had to throw away show falling or rising as the policy learns."""

    def shares(fates: Sequence[str]) -> dict[str, float]:
        n = max(len(fates), 1)
        return {k: v / n for k, v in Counter(fates).items()}

    def mean_shares(parts: list[dict[str, float]]) -> dict[str, float]:
        keys = sorted({k for part in parts for k in part})
        return {k: round(statistics.fmean(part.get(k, 0.0) for part in parts), 4) for k in keys}

    def third(r: RunResult, which: int) -> list[str]:
        k = len(r.candidates) // 3
        return r.candidates[:k] if which == 0 else r.candidates[len(r.candidates) - k :]

    return {
        "sampled": over_seeds(rs, lambda r: len(r.candidates)),
        "all": mean_shares([shares(r.candidates) for r in rs]),
        "first_third": mean_shares([shares(third(r, 0)) for r in rs]),
        "last_third": mean_shares([shares(third(r, 2)) for r in rs]),
    }


def z_score(start: FreshEval, end: FreshEval) -> float:
    """How many standard errors the end's fresh-sample reward is above the start's."""
    return (end.reward - start.reward) / math.hypot(start.reward_se, end.reward_se)


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    """Two panels: fresh-sample reward against posts, KL per post against posts (mean, and the
    spread over seeds shaded; with one seed, the standard error of the reward)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for name, m in summary["methods"].items():
        f = m["fresh"]
        xs = f["posts"]
        band = f["reward_spread"] if len(m["seeds"]) > 1 else f["reward_se"]
        (line,) = left.plot(xs, f["reward"], marker="o", label=name)
        lo = [y - b for y, b in zip(f["reward"], band, strict=True)]
        hi = [y + b for y, b in zip(f["reward"], band, strict=True)]
        left.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
        right.plot(xs, f["kl_post"], marker="o", color=line.get_color(), label=name)
        klo = [y - b for y, b in zip(f["kl_post"], f["kl_post_spread"], strict=True)]
        khi = [y + b for y, b in zip(f["kl_post"], f["kl_post_spread"], strict=True)]
        right.fill_between(xs, klo, khi, color=line.get_color(), alpha=0.2)
    left.set(xlabel="posts published", ylabel="expected score of fresh samples", title="reward")
    right.set(xlabel="posts published", ylabel="nats per post", title="KL(policy || reference)")
    left.legend()
    band = (
        "spread over seeds"
        if len(next(iter(summary["methods"].values()))["seeds"]) > 1
        else ("standard error of the reward")
    )
    fig.suptitle(f"{title} (shaded: {band})", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def configure_logging(verbose: bool) -> None:
    """The controller's logs to stderr (stdout is for the results), warnings only by default."""
    level = logging.INFO if verbose else logging.WARNING
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.dev.ConsoleRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logging(opts.verbose)
    torch.set_num_threads(opts.threads)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    model = starting_model(opts.face_type, opts.face_config, opts.model, opts.fit, log=say)
    prepare_s = time.perf_counter() - t0
    runs: dict[str, list[RunResult]] = {name: [] for name in opts.methods}
    starts: dict[tuple[int, float], FreshEval] = {}
    kinds: PostKinds | None = None  # the history's, fitted by the first run
    with contextlib.ExitStack() as stack:
        if opts.keep is not None:
            opts.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(opts.keep)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="plaudit-bench-online-"))
        for seed in opts.seeds:
            for name, method in opts.methods.items():
                say(f"{name} seed {seed}: {opts.posts} posts ...")
                result = asyncio.run(
                    run_one(
                        method=name,
                        settings=loop_settings(method),
                        seed=seed,
                        model=model,
                        face_type=opts.face_type,
                        face_config=opts.face_config,
                        posts=opts.posts,
                        eval_every=opts.eval_every,
                        eval_samples=opts.eval_samples,
                        state_dir=Path(tmp) / f"{name}-{seed}",
                        threads=opts.threads,
                        # the same prompts, the same frozen start (prompts with liked
                        # examples are a start of their own)
                        start_eval=starts.get((seed, method.liked_examples)),
                        post_kinds=kinds,
                    )
                )
                starts.setdefault((seed, method.liked_examples), result.evals[0])
                kinds = kinds or result.post_kinds
                runs[name].append(result)
                e0, e1 = result.evals[0], result.evals[-1]
                say(
                    f"  fresh reward {e0.reward:.4f} -> {e1.reward:.4f} "
                    f"(z {z_score(e0, e1):+.2f}), KL {e1.kl_post:.3f} nats/post, "
                    f"{result.updates} updates, {result.wall_s:.0f} s"
                    + (
                        f", topic {e0.topic:.3f} -> {e1.topic:.3f}"
                        if e0.topic is not None and e1.topic is not None
                        else ""
                    )
                    + (
                        f", kinds of post {e0.kinds:.1f} -> {e1.kinds:.1f}"
                        if e0.kinds is not None and e1.kinds is not None
                        else ""
                    )
                )
                say(f"  candidates (first third -> last third): {fates_line(result)}")
    summary = summarise(runs, opts.posts)
    for name, method in opts.methods.items():
        # Choosing the published post among candidates is a drift of its own (published
        # posts only; fresh samples are unselected): it counts in the budget.
        m = summary["methods"][name]
        m["selection_kl"] = round(loop_settings(method).selection_kl(), 4)
        m["kl_post_with_selection"] = round(
            m["fresh"]["final"]["kl_post"]["mean"] + m["selection_kl"], 4
        )
    results = {
        "config": {
            "face": opts.face_type,
            "face_config": opts.face_config,
            "model": opts.model,
            "starting_model": str(model),
            "fit": asdict(opts.fit) if opts.fit else None,
            "posts": opts.posts,
            "seeds": opts.seeds,
            "eval_every": opts.eval_every,
            "eval_samples": opts.eval_samples,
            "threads": opts.threads,
            "methods": {n: m.dump() for n, m in opts.methods.items()},
            "loop": LoopSettings().controller.model_dump(mode="json"),
            "sampling": LoopSettings().sampling.model_dump(mode="json"),
            "kl": "kl_post: per fresh sample, the exact KL(pi || pi_ref) over the vocabulary at "
            "each of its positions, summed (full softmax at the sampling temperature for both, "
            "no top-p mask; the unit of online.max_kl); kl_post_sampled: log pi - log pi_ref of "
            "the sampled tokens, summed; per token: over all tokens",
            "reward": "fresh: the face's appeal() (expected score) of unfiltered samples; "
            "published: the face's score() one last horizon after the last post",
            "torch": torch.__version__,
        },
        **summary,
        "prepare_s": round(prepare_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if opts.out is not None:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        title = (
            f"{opts.face_type} face, {opts.model}, {opts.posts} posts, seeds "
            f"{','.join(map(str, opts.seeds))}, {opts.eval_samples} fresh samples per point"
        )
        plot(summary, opts.out / "online.png", title)
        say(f"wrote {opts.out / 'results.json'} and {opts.out / 'online.png'}")
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(summary)
    return 0


def fates_line(result: RunResult) -> str:
    """Each fate's share of a run's candidates, its first third's against its last third's."""
    c = candidate_shares([result])
    first, last = c["first_third"], c["last_third"]
    keys = sorted({*first, *last}, key=lambda k: (k != SURVIVED, k))
    return ", ".join(f"{k} {first.get(k, 0):.0%} -> {last.get(k, 0):.0%}" for k in keys)


def print_table(summary: dict[str, Any]) -> None:
    cols = "method  start  final(fresh)  pub first24  pub last50  KL/post  KL/tok  updates  posts_ratio(fresh/pub)"
    print(cols)
    for name, m in summary["methods"].items():
        f, fin, p = m["fresh"], m["fresh"]["final"], m["published"]
        ratio = m["posts_ratio"]
        print(
            f"{name:10s} {f['start_reward']:.4f}  {fin['reward']['mean']:.4f}±{fin['reward_se']['mean']:.4f}"
            f"  {p['first_24']['mean']:.4f}  {p[f'last_{MOVING}']['mean']:.4f}"
            f"  {fin['kl_post']['mean']:.3f}  {fin['kl_token']['mean']:.4f}"
            f"  {m['updates']['mean']:.0f}  {ratio['fresh']}/{ratio['published']}"
        )


if __name__ == "__main__":
    sys.exit(main())
