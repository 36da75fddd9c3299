"""Checkpoints of the live policy: written atomically by the policy, recorded in the store,
the newest few kept."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plaudit.controller._context import LoopContext

if TYPE_CHECKING:
    from plaudit.state import Store

KEEP_CHECKPOINTS = 3
# The store value naming the checkpoint folder that holds the KL reference (the model of the
# last offline fit), which the daemon loads as the reference after a restart.
REFERENCE_KEY = "reference_checkpoint"


def reference_checkpoint(store: Store, state_dir: Path) -> Path | None:
    """The checkpoint folder that holds the KL reference (the model of the last offline fit),
    or None while the configured base model is the reference."""
    name = store.get_value(REFERENCE_KEY)
    return state_dir / "checkpoints" / name if name else None


class Checkpoints:
    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx

    @property
    def folder(self) -> Path:
        return self.ctx.state_dir / "checkpoints"

    async def save(self, *, kind: str, run_id: int | None, metrics: dict[str, Any]) -> Path:
        """Write the current policy and record it; drop all but the newest few (and the one
        holding the KL reference)."""
        ctx = self.ctx
        version = ctx.policy.version
        folder = self.folder / f"v{version:06d}"
        await ctx.worker.run("checkpoint", ctx.policy.save, folder)
        ctx.store.add_checkpoint(
            path=folder, policy_version=version, kind=kind, run_id=run_id, metrics=metrics
        )
        ctx.metrics.policy_version.set(version)
        keep = {Path(c.path) for c in ctx.store.checkpoints(limit=KEEP_CHECKPOINTS)}
        if (reference := self.reference_folder()) is not None:
            keep.add(reference)
        for old in sorted(self.folder.glob("v*")):
            if old not in keep and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        return folder

    def reference_folder(self) -> Path | None:
        return reference_checkpoint(self.ctx.store, self.ctx.state_dir)

    def mark_reference(self, folder: Path) -> None:
        """Record that ``folder`` (a checkpoint just saved) holds the KL reference."""
        self.ctx.store.set_value(REFERENCE_KEY, folder.name)
