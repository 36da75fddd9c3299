"""The controller's test loop: a real store, a real tiny policy on the one torch worker, and
the in-memory face with a rule for its audience, on a simulated clock (the `make_loop`
fixture, in conftest.py, builds them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from plaudit.controller import (
    Controller,
    ControllerConfig,
    LoopSettings,
    OnlineConfig,
    SamplingConfig,
    TorchWorker,
)
from plaudit.daemon._metrics import Metrics
from plaudit.faces import Draft, HistoricalPost, Published, Reactions, SimulatedClock
from plaudit.faces._memory import MemoryConfig, MemoryFace
from plaudit.learner import Policy
from plaudit.state import PostStatus, Store

DAY = 86400.0
HOUR = 3600.0


class AudienceFace(MemoryFace):
    """The in-memory face with an audience: a published post gets likes by a fixed rule of its
    text, so rewards vary and can be traced. It records every publish call it answered."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.publish_calls: list[tuple[str, float]] = []  # (idempotency key, clock time)

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        self.publish_calls.append((idempotency_key, self.clock.now()))
        published = await super()._publish(draft, idempotency_key=idempotency_key)
        self.set_reactions(published.ref, Reactions(likes=len(draft.text) % 7, replies=1))
        return published


def history(n: int = 40) -> list[HistoricalPost]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return [
        HistoricalPost(
            id=f"h{i}",
            text=f"history post number {i} about the weather and the sea",
            created_at=start + timedelta(hours=i),
            reactions=Reactions(likes=i % 5),
        )
        for i in range(n)
    ]


def settings(**controller: Any) -> LoopSettings:
    base: dict[str, Any] = {
        "post_interval": timedelta(hours=4),
        "post_jitter": timedelta(minutes=20),
        "daily_cap": 6,
        "candidates": 4,
        "horizons": (timedelta(hours=1), timedelta(hours=6), timedelta(hours=24)),
        "collect_interval": timedelta(minutes=10),
        "learn_interval": timedelta(minutes=30),
        "learn_min_rewards": 4,
        "offline_interval": None,
        "min_chars": 1,
    }
    return LoopSettings(
        controller=ControllerConfig(**{**base, **controller}),
        sampling=SamplingConfig(temperature=1.0, top_p=None, max_new_tokens=32),
        online=OnlineConfig(lr=1e-3, epochs=1, max_kl=None),
    )


class Loop:
    """Everything a controller needs, kept across a simulated restart."""

    def __init__(self, tmp_path: Path, model_dir: Path, loop_settings: LoopSettings) -> None:
        self.clock = SimulatedClock(start=datetime(2026, 3, 2, 8, tzinfo=UTC).timestamp())
        self.state_dir = tmp_path / "state"
        self.store = Store.open(self.state_dir, now=self.clock.now)
        self.face = AudienceFace(
            name="mem",
            config=MemoryConfig(audience=100),
            state_dir=tmp_path / "face",
            clock=self.clock,
        )
        self.face.seed(history())
        self.policy = Policy.load(model_dir, lr=1e-3, lora=loop_settings.online.lora())
        self.worker = TorchWorker()
        self.metrics = Metrics(faces=["mem"], version="test", model="tiny", process=False)
        self.settings = loop_settings

    def controller(self, seed: int = 0) -> Controller:
        return Controller(
            settings=self.settings,
            store=self.store,
            faces={"mem": self.face},
            policy=self.policy,
            worker=self.worker,
            metrics=self.metrics,
            state_dir=self.state_dir,
            clock=self.clock,
            seed=seed,
        )

    def published(self) -> list[Any]:
        return self.store.posts(face="mem", status=PostStatus.PUBLISHED, limit=10_000)

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        self.store.close()


def record_updates(ctl: Controller) -> list[list[Any]]:
    """The batches of trajectories the controller's policy updates receive, in order (each
    update still runs)."""
    policy = ctl.ctx.policy
    batches: list[list[Any]] = []
    update = policy.update

    def spy(batch: list[Any], **kwargs: Any) -> Any:
        batches.append(list(batch))
        return update(batch, **kwargs)

    policy.update = spy  # type: ignore[method-assign]
    return batches
