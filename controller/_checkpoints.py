"""Checkpoints of the live policy: written atomically by the policy, recorded in the store,
the newest few kept."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from plaudit.controller._context import LoopContext

KEEP_CHECKPOINTS = 3


class Checkpoints:
    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx

    @property
    def folder(self) -> Path:
        return self.ctx.state_dir / "checkpoints"

    async def save(self, *, kind: str, run_id: int | None, metrics: dict[str, Any]) -> Path:
        """Write the current policy and record it; drop all but the newest few."""
        ctx = self.ctx
        version = ctx.policy.version
        folder = self.folder / f"v{version:06d}"
        await ctx.worker.run("checkpoint", ctx.policy.save, folder)
        ctx.store.add_checkpoint(
            path=folder, policy_version=version, kind=kind, run_id=run_id, metrics=metrics
        )
        ctx.metrics.policy_version.set(version)
        keep = {Path(c.path) for c in ctx.store.checkpoints(limit=KEEP_CHECKPOINTS)}
        for old in sorted(self.folder.glob("v*")):
            if old not in keep and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return folder
