"""The state folder stays bounded (issue 18): after many online updates it holds the newest
checkpoint with the online optimizer's state and the older kept ones as weights only; the
daemon's offline fit trains the live policy in memory and writes nothing but its final
checkpoint; a leftover fit folder of an earlier plaudit is removed at start-up; the folder's
size is a gauge and a status field. A tiny policy on a simulated clock, as the controller's
other tests."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from plaudit.controller import (
    Controller,
    ControllerConfig,
    LoopSettings,
    OfflineConfig,
    OnlineConfig,
    SamplingConfig,
    TorchWorker,
    resume_from_checkpoints,
)
from plaudit.controller._checkpoints import KEEP_CHECKPOINTS
from plaudit.daemon._metrics import Metrics
from plaudit.faces import Draft, HistoricalPost, Published, Reactions, SimulatedClock
from plaudit.faces._memory import MemoryConfig, MemoryFace
from plaudit.faces.simulated import load_corpus
from plaudit.learner import Policy, verify_model_folder
from plaudit.state import STATE_PARTS, Store, state_size

HOUR = 3600.0
OPTIMIZER = "online_optimizer.pt"


class LikingFace(MemoryFace):
    """The in-memory face whose audience reacts to every post at once, by a rule of its text."""

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        published = await super()._publish(draft, idempotency_key=idempotency_key)
        self.set_reactions(published.ref, Reactions(likes=len(draft.text) % 7, replies=1))
        return published


def fast_settings(*, offline_interval: timedelta | None = None) -> LoopSettings:
    """A post an hour, its reward an hour later, an update on every reward: one update a
    simulated hour."""
    return LoopSettings(
        controller=ControllerConfig(
            post_interval=timedelta(hours=1),
            post_jitter=timedelta(0),
            daily_cap=24,
            candidates=2,
            horizons=(timedelta(hours=1),),
            collect_interval=timedelta(minutes=10),
            learn_interval=timedelta(minutes=30),
            learn_min_rewards=1,
            offline_interval=offline_interval,
            min_chars=1,
        ),
        sampling=SamplingConfig(temperature=1.0, top_p=None, max_new_tokens=32),
        online=OnlineConfig(lr=1e-3, epochs=1, max_kl=None),
        offline=OfflineConfig(max_steps=6, batch_size=8, max_seq_len=32, lr=1e-3),
    )


class Loop:
    def __init__(self, root: Path, model_dir: Path, settings: LoopSettings) -> None:
        self.clock = SimulatedClock(start=datetime(2026, 3, 2, 8, tzinfo=UTC).timestamp())
        self.state_dir = root / "state"
        self.store = Store.open(self.state_dir, now=self.clock.now)
        self.face = LikingFace(
            name="mem", config=MemoryConfig(audience=100), state_dir=root / "face", clock=self.clock
        )
        start = datetime(2025, 1, 1, tzinfo=UTC)
        self.face.seed(
            [
                HistoricalPost(
                    id=f"h{i}",
                    text=post.text,
                    created_at=start + timedelta(hours=i),
                    reactions=Reactions(likes=i % 5),
                )
                for i, post in enumerate(load_corpus()[:120])
            ]
        )
        self.policy = Policy.load(model_dir, lr=1e-3, lora=settings.online.lora())
        self.worker = TorchWorker()
        self.metrics = Metrics(faces=["mem"], version="test", model="tiny", process=False)
        self.settings = settings

    def controller(self) -> Controller:
        return Controller(
            settings=self.settings,
            store=self.store,
            faces={"mem": self.face},
            policy=self.policy,
            worker=self.worker,
            metrics=self.metrics,
            state_dir=self.state_dir,
            clock=self.clock,
        )

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        self.store.close()


@pytest.fixture
def make_loop(tmp_path: Path, post_model_dir: Path) -> Iterator[Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loops: list[Loop] = []

    def make(settings: LoopSettings) -> Loop:
        loop = Loop(tmp_path / f"loop{len(loops)}", post_model_dir, settings)
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()
    torch.set_num_threads(threads)


async def run_updates(loop: Loop, ctl: Controller, updates: int) -> None:
    target = loop.policy.version + updates
    deadline = loop.clock.now() + 4 * updates * HOUR
    while loop.policy.version < target:
        assert loop.clock.now() < deadline, f"only version {loop.policy.version} of {target}"
        await ctl.run_until(loop.clock.now() + HOUR)


def checkpoint_folders(state_dir: Path) -> list[Path]:
    return sorted(p for p in (state_dir / "checkpoints").iterdir() if p.name.startswith("v"))


async def test_many_updates_keep_one_optimizer_state_and_two_weights_only_checkpoints(
    make_loop: Any,
) -> None:
    loop = make_loop(fast_settings(offline_interval=timedelta(days=30)))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    assert await ctl.run_job("offline") == "success"  # v1: the KL reference, kept throughout
    reference = loop.state_dir / "checkpoints" / "v000001"
    sizes_seen = []
    for _ in range(4):
        await run_updates(loop, ctl, 4)
        folders = checkpoint_folders(loop.state_dir)
        newest = folders[-1]
        # Exactly the newest carries the optimizer state; the older kept ones (the reference
        # among them) are weights only, and every one still passes its checksums (rewritten
        # consistently).
        assert newest.name == f"v{loop.policy.version:06d}"
        assert [f.name for f in folders if (f / OPTIMIZER).is_file()] == [newest.name]
        assert len(folders) == KEEP_CHECKPOINTS == 3 and reference in folders
        for folder in folders:
            assert verify_model_folder(folder)
        sizes_seen.append(state_size(loop.state_dir)["checkpoints"])
    # Bounded: the checkpoints take the same room after 8 updates as after 16.
    assert max(sizes_seen[1:]) <= sizes_seen[1] * 1.01
    # The gauge says what is on disk, by part.
    measured = state_size(loop.state_dir)
    for part in STATE_PARTS:
        value = loop.metrics.registry.get_sample_value("plaudit_state_bytes", {"part": part})
        if part == "database":  # the store writes on after the last checkpoint's measure
            assert value is not None and 0 < value <= measured[part]
        else:
            assert value == measured[part], part
    assert measured["checkpoints"] > 0

    # The newest checkpoint damaged: start-up restores the one before, weights only, with the
    # optimizer starting afresh (the daemon logs "optimizer reset"), and the next update runs.
    folders = checkpoint_folders(loop.state_dir)
    weights = folders[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    restarted = Policy.load(loop.policy.source, lr=1e-3)
    resumed = resume_from_checkpoints(restarted, loop.store)
    assert resumed.checkpoint is not None and Path(resumed.checkpoint.path) == folders[-2]
    assert resumed.restored is not None and resumed.restored.checksums
    assert not resumed.restored.optimizer
    loop.policy = restarted
    again = loop.controller()
    await again.start(schedule=False)
    await run_updates(loop, again, 1)
    folders = checkpoint_folders(loop.state_dir)
    assert [f.name for f in folders if (f / OPTIMIZER).is_file()] == [folders[-1].name]


async def test_with_lora_the_older_checkpoints_are_adapters_only(
    make_loop: Any, post_model_dir: Path
) -> None:
    """The reference's checkpoint (an offline fit's) stays whole, the newest is whole with the
    adapters' optimizer state, the others hold their adapters alone; a restart the daemon's way
    (the reference loaded, then `resume_from_checkpoints`) falls back to one of those when the
    newest is damaged."""
    settings = fast_settings(offline_interval=timedelta(days=30))
    online = settings.online.model_copy(update={"lora_rank": 4, "lora_alpha": 8.0})
    loop = make_loop(settings.model_copy(update={"online": online}))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    assert await ctl.run_job("offline") == "success"  # v1: the KL reference
    reference = loop.state_dir / "checkpoints" / "v000001"
    await run_updates(loop, ctl, 6)
    folders = checkpoint_folders(loop.state_dir)
    assert len(folders) == KEEP_CHECKPOINTS and reference in folders
    whole = [f.name for f in folders if (f / "model.safetensors").is_file()]
    assert whole == [reference.name, folders[-1].name]
    assert [f.name for f in folders if (f / OPTIMIZER).is_file()] == [folders[-1].name]
    adapters_only = [f for f in folders if f.name not in whole]
    assert adapters_only and all(verify_model_folder(f) for f in folders)
    size = {f.name: sum(x.stat().st_size for x in f.iterdir()) for f in folders}
    assert all(size[f.name] < size[reference.name] / 4 for f in adapters_only)

    weights = folders[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    restarted = Policy.load(post_model_dir, lr=1e-3, with_reference=False, lora=online.lora())
    restarted.load_reference(reference)
    resumed = resume_from_checkpoints(restarted, loop.store)
    assert resumed.checkpoint is not None and Path(resumed.checkpoint.path) == adapters_only[-1]
    assert resumed.restored is not None and not resumed.restored.reanchored
    assert restarted.adapters is not None and not restarted.adapters.is_zero()


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder``: (size, mtime in ns)."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), folder)] = (st.st_size, st.st_mtime_ns)
    return out


async def test_the_offline_fit_trains_in_memory_and_writes_only_its_final_checkpoint(
    make_loop: Any,
) -> None:
    loop = make_loop(fast_settings(offline_interval=timedelta(days=30)))
    # An earlier plaudit's fit left its copy of the policy and its run folder: start-up clears it.
    scratch = loop.state_dir / "offline"
    (scratch / "run" / "checkpoints" / "step-00000006").mkdir(parents=True)
    (scratch / "run" / "checkpoints" / "step-00000006" / "model.safetensors").write_bytes(
        b"\0" * 4096
    )
    (scratch / "base").mkdir()
    ctl = loop.controller()
    await ctl.start(schedule=False)
    assert not scratch.exists()

    before = files_under(loop.state_dir)
    time.sleep(0.01)  # a later mtime for anything written from here on
    model = loop.policy.model
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert await ctl.run_job("offline") == "success"
    after = files_under(loop.state_dir)
    written = sorted(name for name, stat in after.items() if before.get(name) != stat)
    # The database and the final checkpoint; no copy of the policy, no run folder.
    database = [n for n in written if n.startswith("plaudit.sqlite3")]
    final = f"checkpoints/v{loop.policy.version:06d}/"
    assert [n for n in written if n not in database] == sorted(
        n for n in after if n.startswith(final)
    )
    assert not scratch.exists()
    # The live model itself was trained (the same object, new weights), and it is the new
    # reference; the checkpoint holds it.
    assert loop.policy.model is model and loop.policy.version == 1
    assert any(not v.equal(weights[k]) for k, v in model.state_dict().items())
    assert loop.policy.reference is not None
    for (name, a), b in zip(
        model.state_dict().items(), loop.policy.reference.state_dict().values(), strict=True
    ):
        assert a.equal(b), name
    saved = Policy.load(loop.state_dir / final)
    for (name, a), b in zip(
        saved.model.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert a.equal(b), name


async def test_the_status_reports_the_state_folder_by_part(make_loop: Any) -> None:
    from plaudit.daemon._config import Settings
    from plaudit.daemon._service import ControlService

    loop = make_loop(fast_settings())
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await run_updates(loop, ctl, 2)
    service = ControlService(
        settings=Settings.model_validate({"model": {"name": "tiny"}}),
        store=loop.store,
        controller=ctl,
        policy=loop.policy,
        worker=loop.worker,
        metrics=loop.metrics,
        state=lambda: "running",
        started_at=time.time(),
    )
    status = service.status()
    assert set(status.state_bytes) == set(STATE_PARTS)
    assert status.state_bytes == state_size(loop.state_dir)
    assert status.state_bytes["checkpoints"] > 0 and status.state_bytes["database"] > 0
    assert "state_bytes" in status.model_dump(mode="json")


def test_plaudit_status_without_a_daemon_shows_the_state_folder_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from plaudit.daemon._cli import _register, app

    _register()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    state = tmp_path / "state"
    Store.open(state).close()
    (state / "checkpoints" / "v000001").mkdir(parents=True)
    (state / "checkpoints" / "v000001" / "model.safetensors").write_bytes(b"\0" * 2_500_000)
    runner = CliRunner()
    as_json = runner.invoke(app, ["status", "--state-dir", str(state), "--json"])
    assert as_json.exit_code == 3, as_json.output
    shown = json.loads(as_json.output)["state_bytes"]
    # Measured with the store open (its -wal and -shm files then exist).
    assert shown["checkpoints"] == 2_500_000 and shown["database"] > 0
    assert set(shown) == set(STATE_PARTS)
    text = runner.invoke(app, ["status", "--state-dir", str(state)])
    (line,) = [ln for ln in text.output.splitlines() if ln.startswith("state folder")]
    assert line.split(maxsplit=2)[2].startswith(f"{state} (") and "checkpoints 2.5 MB," in line


async def test_an_older_checkpoint_that_cannot_be_stripped_is_left_whole(make_loop: Any) -> None:
    from structlog.testing import capture_logs

    loop = make_loop(fast_settings())
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await run_updates(loop, ctl, 1)
    (older,) = checkpoint_folders(loop.state_dir)
    (older / "checksums.json").write_text("{damaged", encoding="utf-8")
    with capture_logs() as logs:
        await run_updates(loop, ctl, 1)
    (warning,) = [e for e in logs if e["event"].startswith("cannot strip an older checkpoint")]
    assert warning["log_level"] == "warning" and warning["checkpoint"] == str(older)
    assert "checksums.json is damaged" in warning["error"]
    # The save itself went through; the damaged one keeps its files for start-up to judge.
    newest = checkpoint_folders(loop.state_dir)[-1]
    assert newest.name == f"v{loop.policy.version:06d}" and verify_model_folder(newest)
    assert (older / OPTIMIZER).is_file()
