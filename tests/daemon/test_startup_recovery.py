"""Start-up on damaged state, as the real daemon process meets it: a damaged latest checkpoint
(truncated weights, 4 KB of NaNs) falls back to the newest intact one, a zeroed database page
stops the start with the file and the fix, a killed save's temporary folder is cleared."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest
import torch
from daemon_helpers import DaemonProcess, query, tiny_config

from plaudit.learner import Policy
from plaudit.state import NewCandidate, Store, TrainingState


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def build_state(state: Path, model_dir: Path) -> list[int]:
    """Two online checkpoints, v1 (no optimizer state: an offline fit had just reset it) and v2
    (with it), and four rewards: two trained v1, two trained v2. Training is paused, so the
    daemon only starts. Returns the post ids of the rewards, v1's first."""
    policy = Policy.load(model_dir, lr=1e-3)
    with Store.open(state) as store:
        store.set_control(training=TrainingState.PAUSED)
        ids = store.add_candidates(
            face="sim", cycle_id="c", candidates=[NewCandidate(text=f"post {i}") for i in range(4)]
        )
        for pid in ids:
            store.add_reward(post_id=pid, face="sim", score=1.0, reward=0.5)
        for version in (1, 2):
            if version == 2:
                policy.optimizer  # noqa: B018 - created, so its state is saved
            policy.version = version
            folder = state / "checkpoints" / f"v{version:06d}"
            policy.save(folder)
            store.add_checkpoint(path=folder, policy_version=version, kind="online")
        store.mark_rewards_used(ids[:2], policy_version=1)
        store.mark_rewards_used(ids[2:], policy_version=2)
    return ids


def damage(weights: Path, how: str) -> None:
    with weights.open("r+b") as f:
        if how == "truncated":
            f.truncate(weights.stat().st_size // 2)
        else:  # 4 KB of float32 NaNs inside the tensor data, as a bad block would leave
            (header,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + header + 256)
            f.write(b"\xff" * 4096)


def run_until_ready(cfg: Path) -> DaemonProcess:
    daemon = DaemonProcess(cfg)
    try:
        daemon.wait_event("ready", timeout=90)
        rc, _ = daemon.stop()
    finally:
        daemon.kill()
    assert rc == 0, daemon.tail()
    return daemon


@pytest.mark.parametrize("how", ["truncated", "nan"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
    tmp_path: Path, tiny_model_dir: Path, how: str
) -> None:
    state = tmp_path / "state"
    ids = build_state(state, tiny_model_dir)
    damage(state / "checkpoints" / "v000002" / "model.safetensors", how)
    # A save killed mid-way left its temporary folder (pid 2**22 + 1 is past any pid_max).
    stale = state / "checkpoints" / f".tmp-v000003-{2**22 + 1}-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    cfg = tmp_path / "plaudit.toml"
    cfg.write_text(tiny_config(state_dir=state, model_dir=tiny_model_dir))

    daemon = run_until_ready(cfg)

    bad = daemon.wait_event("checkpoint damaged; falling back to an older one", timeout=1)
    assert bad["level"] == "error"
    assert bad["checkpoint"] == str(state / "checkpoints" / "v000002")
    assert "model.safetensors" in bad["error"]
    assert ("truncated" if how == "truncated" else "checksum") in bad["error"]
    assert bad["moved_to"] == str(state / "checkpoints" / "damaged-v000002")
    loaded = daemon.wait_event("model loaded", timeout=1)
    assert loaded["policy_version"] == 1
    assert loaded["source"] == str(state / "checkpoints" / "v000001")
    assert daemon.wait_event("optimizer reset", timeout=1)["checkpoint"].endswith("v000001")
    released = daemon.wait_event(
        "rewards of updates lost since the last checkpoint return to pending", timeout=1
    )
    assert released["rewards"] == 2
    removed = daemon.wait_event("stale temporary files removed", timeout=1)
    assert removed["removed"] == [str(stale)]
    assert not stale.exists()

    # In the store: v2 is marked damaged (moved aside, kept for inspection), its rewards train
    # again, v1's stay used; the policy version is v1's.
    rows = query(state, "SELECT policy_version, path, damaged FROM checkpoints ORDER BY id")
    assert [(v, p, d is not None) for v, p, d in rows] == [
        (1, "checkpoints/v000001", False),
        (2, "checkpoints/damaged-v000002", True),
    ]
    assert (state / "checkpoints" / "damaged-v000002" / "model.safetensors").is_file()
    used = dict(query(state, "SELECT post_id, used_in_version FROM rewards"))
    assert used == {ids[0]: 1, ids[1]: 1, ids[2]: None, ids[3]: None}

    # The next start finds v1 at once: nothing more is damaged, nothing more is released.
    again = run_until_ready(cfg)
    assert not [e for e in again.events if e.get("level") == "error"], again.tail()
    assert again.wait_event("model loaded", timeout=1)["policy_version"] == 1


def test_a_zeroed_database_page_stops_the_start_with_the_file_and_the_fix(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    state = tmp_path / "state"
    with Store.open(state) as store:
        for i in range(40):  # a few pages of posts
            store.add_candidates(
                face="sim", cycle_id=str(i), candidates=[NewCandidate(text="x" * 2000)]
            )
    db = state / "plaudit.sqlite3"
    page = 4096
    assert db.stat().st_size >= 20 * page
    conn = sqlite3.connect(db)  # a leaf of the posts table (where it lies moves with the schema)
    leaf = conn.execute(
        "SELECT MIN(pageno) FROM dbstat WHERE name = 'posts' AND pagetype = 'leaf'"
    ).fetchone()[0]
    conn.close()
    with db.open("r+b") as f:
        f.seek((leaf - 1) * page)
        f.write(bytes(page))
    cfg = tmp_path / "plaudit.toml"
    cfg.write_text(tiny_config(state_dir=state, model_dir=tiny_model_dir))
    daemon = DaemonProcess(cfg)
    try:
        rc = daemon.proc.wait(timeout=90)
        daemon._reader.join(timeout=5)
    finally:
        daemon.kill()
    out = "".join(daemon.lines)
    assert rc == 1, out
    assert "Traceback" not in out and '"ready"' not in out, out
    line = next(x for x in daemon.lines if x.startswith("plaudit: "))
    assert str(db) in line and "is damaged" in line and "plaudit state restore" in line, line


def test_resume_passes_over_missing_and_damaged_checkpoints_and_stops_on_other_errors(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """What start-up's `resume_from_checkpoints` restores, in process."""
    import json

    from plaudit.controller import resume_from_checkpoints
    from plaudit.learner import DamagedModelError, ModelLoadError
    from plaudit.learner._load import write_checksums

    state = tmp_path / "state"
    build_state(state, tiny_model_dir)
    checkpoints = state / "checkpoints"
    with Store.open(state) as store:
        store.add_checkpoint(path=checkpoints / "v000003", policy_version=3, kind="online")
        damage(checkpoints / "v000002" / "model.safetensors", "truncated")
        policy = Policy.load(tiny_model_dir, lr=1e-3)
        resumed = resume_from_checkpoints(policy, store)
        assert resumed.checkpoint is not None and resumed.checkpoint.policy_version == 1
        assert [c.policy_version for c in resumed.missing] == [3]  # recorded, folder gone
        [bad] = resumed.set_aside
        assert bad.checkpoint.policy_version == 2 and "truncated" in bad.error
        assert bad.moved_to == checkpoints / "damaged-v000002"
        assert policy.version == 1 and policy.source == str(checkpoints / "v000001")

        # v1 damaged as well: nothing intact is left, the base model stays at version 0.
        damage(checkpoints / "v000001" / "model.safetensors", "nan")
        policy = Policy.load(tiny_model_dir, lr=1e-3)
        resumed = resume_from_checkpoints(policy, store)
        assert resumed.checkpoint is None and policy.version == 0
        assert sorted(p.name for p in checkpoints.iterdir()) == [
            "damaged-v000001",
            "damaged-v000002",
        ]

        # A folder this plaudit cannot read for another reason (a newer format, checksums
        # intact) is not damage: the error stops the start, nothing is set aside.
        policy.version = 4
        policy.save(checkpoints / "v000004")
        manifest = checkpoints / "v000004" / "plaudit_model.json"
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": 99}))
        write_checksums(checkpoints / "v000004")
        store.add_checkpoint(path=checkpoints / "v000004", policy_version=4, kind="online")
        with pytest.raises(ModelLoadError, match="version 99") as caught:
            resume_from_checkpoints(Policy.load(tiny_model_dir), store)
        assert not isinstance(caught.value, DamagedModelError)
        assert (checkpoints / "v000004").is_dir()
        assert store.latest_checkpoint() is not None
