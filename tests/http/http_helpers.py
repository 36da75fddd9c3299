"""Helpers for the HTTP tests: the seeded store, the loop's settings, tool lookup.

The tests run the daemon's real ``ControlService`` over a real ``Controller`` (scheduled on the
wall clock, as in the daemon), a tiny model's ``Policy``, a real ``Store`` and the daemon's
``Metrics``; only the daemon process around them is missing (tests/http/test_daemon_http.py
covers that)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from plaudit.controller import Controller, TorchWorker
from plaudit.daemon._config import Settings
from plaudit.daemon._http import HttpServer, build_app, serve
from plaudit.daemon._metrics import Metrics
from plaudit.daemon._service import ControlService
from plaudit.faces import discover
from plaudit.learner import Policy
from plaudit.state import NewCandidate, Snapshot, Store

TOKEN = "test-token-0123456789abcdef"
FACES = {"sim": "simulated", "journal": "file"}
# Offline fits read at most this many posts of a face's history: 16 steps an epoch at batch 4.
OFFLINE_POSTS = 64

POSTS = [
    ("sim", "Sunny morning, fresh coffee and a good book. Perfect start!", 12, 3, 0.8),
    ("sim", "Traffic again. Why is every road closed on the same day?", 2, 0, -0.9),
    ("journal", "Shipped a small fix today; the tests are green and so am I.", 7, 1, 0.3),
    ("sim", "Rain all week. The cat refuses to go outside and so do I.", 5, 2, 0.1),
]


def require_tool(name: str) -> str:
    """The tool's path; skip when it is missing on a developer machine, fail in CI."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path:
        return path
    message = f"{name} is not installed (Debian package: apt-get install -y {name})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI must have it (.ci/run installs it)")
    pytest.skip(message)


def seed_store(store: Store) -> None:
    """A few published posts with reaction snapshots and rewards, and metric history."""
    now = time.time()
    for i, (face, text, likes, reposts, reward) in enumerate(POSTS):
        (pid,) = store.add_candidates(
            face=face,
            cycle_id=f"c{i}",
            candidates=[NewCandidate(text=text, tokens=[1, 2, 3], logprobs=[-1.0, -0.5, -0.2])],
        )
        store.choose(pid)
        store.record_intent(pid, idempotency_key=f"k{i}")
        published = now - 3600 * (len(POSTS) - i)
        store.mark_published(
            pid, ref=f"ref{i}", url=f"https://example.test/{i}", published_at=published
        )
        store.add_snapshot(
            Snapshot(
                post_id=pid,
                horizon_s=3600,
                found=True,
                likes=likes,
                reposts=reposts,
                replies=1,
                quotes=0,
                extra={},
                audience=100,
                read_at=published + 3600,
            )
        )
        store.add_reward(post_id=pid, face=face, score=likes / 100, reward=reward)
    for k in range(30):
        values = {"loss": 3.0 * 0.95**k, "reward": 0.1 * k - 1.0, "kl": 0.002 * k}
        if k < 10:  # an offline run came first
            values["offline_loss"] = 4.0 - 0.1 * k
        store.record_metrics(values, ts=now - 60 * (30 - k))


def loop_settings(model_dir: Path) -> Settings:
    """The daemon's settings for the tests: the jobs that would change the seeded store on
    their own (posting, collecting, online learning, periodic offline fits) are not due
    within a test; offline fits run when a test asks for one, on a little history."""
    return Settings.model_validate(
        {
            "model": {"name": str(model_dir)},
            "sampling": {"max_new_tokens": 24},
            "controller": {
                "post_interval": "1d",
                "post_jitter": "0s",
                "horizons": ["1d"],
                "collect_interval": "1h",
                "learn_interval": "1h",
                "learn_min_rewards": 1000,
                "offline_interval": None,
                "offline_max_posts": OFFLINE_POSTS,
            },
            "offline": {"max_steps": 4, "epochs": 1, "batch_size": 4, "max_seq_len": 32},
            "faces": {name: {"type": kind} for name, kind in FACES.items()},
        }
    )


@asynccontextmanager
async def running_control(
    settings: Settings, store: Store, metrics: Metrics, model_dir: Path, tmp_path: Path
) -> AsyncIterator[ControlService]:
    """The daemon's ControlService over a started Controller on these settings, as
    `plaudit run` builds them, stopped in the daemon's shutdown order on exit."""
    registry = discover(only=set(FACES.values()))
    faces = {
        name: registry.create(
            name=name,
            type=spec.type,
            config=spec.face_options(),
            state_dir=tmp_path / "faces" / name,
        )
        for name, spec in settings.faces.items()
    }
    worker = TorchWorker()
    policy = Policy.load(model_dir, lr=settings.online.lr)
    controller = Controller(
        settings=settings,
        store=store,
        faces=faces,
        policy=policy,
        worker=worker,
        metrics=metrics,
        state_dir=tmp_path / "state",
        seed=0,
    )
    control = store.control()
    metrics.set_training(running=control.training.value == "running", mode=control.mode.value)
    await controller.start()
    yield ControlService(
        settings=settings,
        store=store,
        controller=controller,
        policy=policy,
        worker=worker,
        metrics=metrics,
        state=lambda: "running",
        started_at=time.time(),
    )
    # The daemon's shutdown order: jobs (training stops at its next step), torch, faces.
    await controller.stop(deadline=time.monotonic() + 30)
    worker.shutdown(wait=True)
    for face in faces.values():
        await face.aclose()


def first_fit_settings(model_dir: Path) -> Settings:
    """The tests' settings with periodic offline fits on (so the first one runs at start and
    posting waits for it) and a fit long enough to still run while the test looks at it."""
    settings = loop_settings(model_dir)
    return settings.model_copy(
        update={
            "controller": settings.controller.model_copy(
                update={"offline_interval": timedelta(hours=1)}
            ),
            "offline": settings.offline.model_copy(update={"max_steps": 100_000, "epochs": 1000}),
        }
    )


@asynccontextmanager
async def serving(
    settings: Settings, store: Store, metrics: Metrics, model_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[ControlService, HttpServer]]:
    """`running_control` on these settings, and the HTTP API and page in front of it."""
    async with running_control(settings, store, metrics, model_dir, tmp_path) as service:
        srv = await serve(
            build_app(control=service, metrics=metrics, token=TOKEN), host="127.0.0.1", port=0
        )
        try:
            yield service, srv
        finally:
            await srv.stop()


def hold(store: Store, face: str, text: str, *, predicted: float | None = None) -> int:
    """A candidate of ``face`` put straight into the approval queue (status awaiting)."""
    (pid,) = store.add_candidates(
        face=face,
        cycle_id=f"held-{text[:10]}",
        candidates=[
            NewCandidate(
                text=text,
                tokens=[1, 2, 3],
                logprobs=[-1.0, -0.5, -0.2],
                predicted_reward=predicted,
            )
        ],
    )
    store.choose(pid)
    store.hold(pid)
    return pid
