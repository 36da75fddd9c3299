"""The daemon as a real process: the whole loop, signals, systemd notify, restarts."""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path

import pytest
import torch
from daemon_helpers import DaemonProcess, NotifySocket, query, tiny_config

from plaudit.learner import decode_kernel
from plaudit.learner._load import load_model


@pytest.fixture
def notify(tmp_path: Path) -> NotifySocket:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def count(state: Path, sql: str) -> int:
    rows = query(state, sql)
    return int(rows[0][0]) if rows else 0


def test_end_to_end_loop_tells_the_whole_story(
    tmp_path: Path, tiny_model_dir: Path, notify: NotifySocket
) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "plaudit.toml"
    cfg.write_text(tiny_config(state_dir=state, model_dir=tiny_model_dir))
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    daemon = DaemonProcess(cfg, env=env)
    try:
        daemon.wait_event("ready", timeout=90)
        # The decoding kernel is chosen (the native one built) at load, and logged.
        kernel = decode_kernel(torch.device("cpu"), torch.float32) or "matmul"
        assert daemon.wait_event("model loaded")["decode_kernel"] == kernel
        daemon.wait_for(
            lambda: (
                count(state, "SELECT COUNT(*) FROM checkpoints WHERE kind = 'online'") >= 1
                and count(state, "SELECT COUNT(*) FROM rewards") >= 3
            ),
            timeout=90,
            what="three rewards and an online policy update",
        )
        rc, took = daemon.stop()
    finally:
        daemon.kill()
    assert rc == 0, daemon.tail()
    assert took < 20

    # The offline fit ran first, on the face's history.
    offline = query(state, "SELECT status, metrics FROM training_runs WHERE kind = 'offline'")
    assert offline and offline[0][0] == "completed"
    assert json.loads(offline[0][1])["steps"] == 4

    # Each rewarded post: candidate -> chosen -> intent -> published, a snapshot per horizon,
    # a reward, and the tokens/logprobs/policy version the online update needs.
    rewarded = query(
        state,
        "SELECT p.id, p.status, p.idempotency_key, p.face_ref, t.tokens, t.logprobs, "
        "p.policy_version, r.reward FROM posts p JOIN rewards r ON r.post_id = p.id "
        "JOIN post_tokens t ON t.post_id = p.id",
    )
    assert len(rewarded) >= 3
    for post_id, status, key, ref, tokens, logprobs, version, reward in rewarded:
        assert status == "published" and key and ref
        assert len(json.loads(tokens)) == len(json.loads(logprobs)) > 0
        assert version >= 1  # generated after the offline fit
        horizons = [
            h
            for (h,) in query(
                state, "SELECT horizon_s FROM reaction_snapshots WHERE post_id = ?", (post_id,)
            )
        ]
        assert sorted(horizons) == [2.0, 4.0]
        assert -3.0 <= reward <= 3.0
    # Every cycle's other candidates are on record too, chosen or filtered with a reason.
    statuses = dict(query(state, "SELECT status, COUNT(*) FROM posts GROUP BY status"))
    assert statuses.get("candidate", 0) + statuses.get("filtered", 0) >= 3 * statuses["published"]
    # The policy was updated from those rewards and checkpointed; the checkpoint loads.
    ckpt = query(state, "SELECT path, policy_version FROM checkpoints ORDER BY id DESC LIMIT 1")[0]
    assert ckpt[1] >= 2
    assert ckpt[0] == f"checkpoints/v{ckpt[1]:06d}"  # relative: the state folder can move
    assert load_model(state / ckpt[0]).model.config.n_layer == 2
    used = count(state, "SELECT COUNT(*) FROM rewards WHERE used_in_version IS NOT NULL")
    assert used >= 2
    online = query(
        state, "SELECT metrics FROM training_runs WHERE kind = 'online' AND status = 'completed'"
    )
    assert online and json.loads(online[0][0])["steps"] >= 1

    # systemd heard READY, STATUS lines, WATCHDOG pings and STOPPING.
    fields = notify.fields()
    assert "READY=1" in fields and "STOPPING=1" in fields
    assert any(f.startswith("STATUS=running; training running") for f in fields)
    pings = notify.times_of("WATCHDOG=1")
    assert len(pings) >= 5
    assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0  # every half WATCHDOG_USEC


def test_signals_pause_resume_reload_and_stop_during_training(
    tmp_path: Path, tiny_model_dir: Path, notify: NotifySocket
) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "plaudit.toml"
    # An offline fit long enough to send signals into.
    cfg.write_text(tiny_config(state_dir=state, model_dir=tiny_model_dir, offline_steps=100_000))
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    offline_steps = "SELECT COUNT(*) FROM metric_points WHERE name = 'offline_loss'"
    daemon = DaemonProcess(cfg, env=env)
    try:
        daemon.wait_event("ready", timeout=90)
        daemon.wait_for(
            lambda: count(state, offline_steps) >= 3, timeout=60, what="offline training steps"
        )
        # The watchdog keeps arriving while a training step runs in the worker.
        t0 = time.monotonic()
        time.sleep(2.5)
        assert len([t for t in notify.times_of("WATCHDOG=1") if t > t0]) >= 3

        # SIGUSR2: pause. The running fit stops at a step boundary and leaves a checkpoint.
        daemon.send(signal.SIGUSR2)
        daemon.wait_event("training paused", timeout=30)
        daemon.wait_for(
            lambda: (
                query(state, "SELECT status FROM training_runs WHERE kind='offline'")
                == [("interrupted",)]
            ),
            timeout=60,
            what="the offline run to stop",
        )
        assert query(state, "SELECT value FROM control WHERE key = 'training'") == [("paused",)]
        steps = count(state, offline_steps)
        time.sleep(1.5)
        assert count(state, offline_steps) == steps  # paused means no training
        published = count(state, "SELECT COUNT(*) FROM posts WHERE status = 'published'")
        daemon.wait_for(
            lambda: (
                count(state, "SELECT COUNT(*) FROM posts WHERE status = 'published'") > published
            ),
            timeout=30,
            what="posting to go on while training is paused",
        )

        # SIGHUP with a broken file keeps the old config; with a valid one applies it.
        good = cfg.read_text()
        cfg.write_text(good.replace('post_interval = "1500ms"', 'post_interval = "soon"'))
        mark = len(daemon.events)
        daemon.send(signal.SIGHUP)
        failed = daemon.wait_event("reload failed; keeping the running configuration", after=mark)
        assert "post_interval" in failed["error"]
        cfg.write_text(good.replace('post_interval = "1500ms"', 'post_interval = "2s"'))
        mark = len(daemon.events)
        daemon.send(signal.SIGHUP)
        daemon.wait_event("configuration reloaded", after=mark)
        assert "RELOADING=1" in notify.fields()

        # SIGUSR1: resume, persisted.
        daemon.send(signal.SIGUSR1)
        daemon.wait_event("training started")
        assert query(state, "SELECT value FROM control WHERE key = 'training'") == [("running",)]
        daemon.send(signal.SIGUSR2)
        daemon.wait_event("training paused", after=mark)
        time.sleep(1.0)
        runs = count(state, "SELECT COUNT(*) FROM training_runs WHERE kind = 'offline'")
        rc, _ = daemon.stop()
        assert rc == 0, daemon.tail()
    finally:
        daemon.kill()

    # After a restart, what was paused stays paused.
    daemon = DaemonProcess(cfg, env=env)
    try:
        daemon.wait_event("ready", timeout=90)
        time.sleep(1.0)
        assert query(state, "SELECT value FROM control WHERE key = 'training'") == [("paused",)]
        # No training started while paused.
        assert count(state, "SELECT COUNT(*) FROM training_runs WHERE kind = 'offline'") == runs
        # Resume: the offline fit (never completed) starts again; SIGTERM lands mid-training.
        mark = len(daemon.events)
        before = count(state, offline_steps)
        daemon.send(signal.SIGUSR1)
        daemon.wait_event("training started", after=mark)
        # Resuming picks the never-finished offline fit up again; SIGTERM lands mid-training.
        daemon.wait_for(
            lambda: (
                count(state, "SELECT COUNT(*) FROM training_runs WHERE kind='offline'") == runs + 1
                and count(state, offline_steps) > before + 2
            ),
            timeout=60,
            what="the offline fit to run again",
        )
        rc, took = daemon.stop(timeout=40)
    finally:
        daemon.kill()
    assert rc == 0, daemon.tail()
    assert took < 20  # shutdown_timeout
    offline_runs = query(
        state, "SELECT id, status FROM training_runs WHERE kind = 'offline' ORDER BY id"
    )
    assert {status for _, status in offline_runs} == {"interrupted"}, daemon.tail(60)
    ckpt = query(state, "SELECT path, run_id FROM checkpoints ORDER BY id DESC LIMIT 1")[0]
    assert ckpt[1] == offline_runs[-1][0]  # the interrupted run left a usable checkpoint
    assert load_model(state / ckpt[0]).model.config.vocab_size > 0


def test_second_sigint_exits_at_once_and_state_stays_consistent(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "plaudit.toml"
    cfg.write_text(tiny_config(state_dir=state, model_dir=tiny_model_dir, offline_steps=100_000))
    daemon = DaemonProcess(cfg)
    try:
        daemon.wait_event("ready", timeout=90)
        daemon.wait_for(
            lambda: count(state, "SELECT COUNT(*) FROM metric_points") >= 2,
            timeout=60,
            what="training to run",
        )
        t0 = time.monotonic()
        daemon.send(signal.SIGINT)
        daemon.wait_event("stop requested")
        daemon.send(signal.SIGINT)
        rc = daemon.proc.wait(timeout=10)
        took = time.monotonic() - t0
    finally:
        daemon.kill()
    assert rc == 128 + signal.SIGINT
    assert took < 5
    assert "second stop signal, exiting now" in "".join(daemon.lines)
    assert query(state, "PRAGMA integrity_check") == [("ok",)]
    # The next start takes over the stale pid file and marks the cut-off run interrupted.
    daemon = DaemonProcess(cfg)
    try:
        daemon.wait_event(
            "stale pid file found; the previous daemon did not stop cleanly", timeout=90
        )
        daemon.wait_event("ready", timeout=90)
        assert daemon.wait_event("training runs interrupted by the last stop")["runs"] == 1
        rc, _ = daemon.stop()
    finally:
        daemon.kill()
    assert rc == 0


def _broken_plugin(folder: Path) -> dict[str, str]:
    """A distribution whose `plaudit.faces` entry point cannot be imported."""
    dist = folder / "broken_face-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-face\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[plaudit.faces]\nbroken = no_such_module_xyz:Face\n")
    return {"PYTHONPATH": str(folder)}


def test_a_broken_plugin_does_not_take_the_daemon_down(
    tmp_path: Path, tiny_model_dir: Path, notify: NotifySocket
) -> None:
    env = {**_broken_plugin(tmp_path / "site"), "NOTIFY_SOCKET": str(notify.path)}
    state = tmp_path / "state"
    cfg = tmp_path / "plaudit.toml"
    cfg.write_text(
        tiny_config(
            state_dir=state, model_dir=tiny_model_dir, extra='[faces.bad]\ntype = "broken"\n'
        )
    )
    daemon = DaemonProcess(cfg, env=env)
    try:
        failed = daemon.wait_event("face unavailable: its plugin failed to load", timeout=60)
        assert failed["face"] == "bad" and "no_such_module_xyz" in failed["error"]
        assert daemon.wait_event("ready", timeout=90)["faces"] == ["sim"]
        rc, _ = daemon.stop()
    finally:
        daemon.kill()
    assert rc == 0

    # With no usable face left, start-up fails with one clear line and never reports READY.
    notify.messages.clear()
    only_bad = tiny_config(state_dir=state, model_dir=tiny_model_dir).split("[faces.sim]")[0]
    cfg.write_text(only_bad + '[faces.bad]\ntype = "broken"\n')
    daemon = DaemonProcess(cfg, env=env)
    try:
        rc = daemon.proc.wait(timeout=60)
        daemon._reader.join(timeout=5)
    finally:
        daemon.kill()
    assert rc == 1
    assert "plaudit: no usable face: every configured face failed to load" in "".join(daemon.lines)
    assert "READY=1" not in notify.fields()


def test_a_decode_kernel_this_host_lacks_stops_the_start_with_the_reason(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    cfg = tmp_path / "plaudit.toml"
    cfg.write_text(tiny_config(state_dir=tmp_path / "state", model_dir=tiny_model_dir))
    daemon = DaemonProcess(cfg, env={"PLAUDIT_DECODE_KERNEL": "cublas"})
    try:
        rc = daemon.proc.wait(timeout=90)
        daemon._reader.join(timeout=5)
    finally:
        daemon.kill()
    assert rc == 1, daemon.tail()
    out = "".join(daemon.lines)
    assert "plaudit: PLAUDIT_DECODE_KERNEL='cublas'" in out and "Traceback" not in out, out
