"""The loop with `online.lora_rank` set: updates train the adapters only, checkpoints carry
them, and a restart the daemon's way (the base model, then `resume_from_checkpoints`) takes
them back without moving the KL reference."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from loop_helpers import DAY, settings

from plaudit.controller import OnlineConfig, resume_from_checkpoints
from plaudit.learner import Policy
from plaudit.learner._lora import ADAPTERS_FILE


async def test_the_loop_learns_through_adapters_and_a_restart_takes_them_back(
    make_loop: Any, post_model_dir: Path
) -> None:
    base = settings(learn_min_rewards=2)
    online = OnlineConfig(lr=1e-2, epochs=1, max_kl=None, lora_rank=4, lora_alpha=8)
    loop = make_loop(base.model_copy(update={"online": online}))
    policy = loop.policy
    assert policy.adapters is not None
    weights = {k: v.clone() for k, v in policy.model.state_dict().items()}
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    assert policy.version > 0 and not policy.adapters.is_zero()
    assert all(torch.equal(weights[k], v) for k, v in policy.model.state_dict().items())
    assert policy.memory()["reference"] == 0  # the base weights are the reference
    ckpt = loop.store.latest_checkpoint()
    assert ckpt is not None and (Path(ckpt.path) / ADAPTERS_FILE).is_file()
    # The newest checkpoint is whole; the older ones kept are adapters only.
    kept = sorted(p for p in (loop.state_dir / "checkpoints").iterdir() if p.is_dir())
    assert len(kept) >= 2 and kept[-1].name == Path(ckpt.path).name
    assert (kept[-1] / "model.safetensors").is_file()
    assert all(not (p / "model.safetensors").exists() for p in kept[:-1])
    assert all((p / ADAPTERS_FILE).is_file() for p in kept)
    await ctl.stop(deadline=time.monotonic() + 30)

    restarted = Policy.load(post_model_dir, lr=1e-2, lora=online.lora())
    resumed = resume_from_checkpoints(restarted, loop.store)
    assert resumed.restored is not None and not resumed.restored.reanchored
    assert restarted.version == ckpt.policy_version
    assert restarted.adapters is not None and not restarted.adapters.is_zero()
    # An older one, should the newer be damaged, restores onto the same base too.
    older = Policy.load(post_model_dir, lr=1e-2, lora=online.lora())
    assert not older.restore(kept[-2], version=1).reanchored
    if ckpt.policy_version == policy.version:  # no update after the last checkpoint
        for a, b in zip(restarted.adapters.parameters(), policy.adapters.parameters(), strict=True):
            assert torch.equal(a, b)
