"""Checkpoints of the live policy: written atomically by the policy, recorded in the store,
the newest few kept, only the newest with the online optimizer's state (the others weights
only: a third of the size; with LoRA adapters only, the reference's excepted); at start-up,
the newest intact one restored (`resume_from_checkpoints`)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plaudit.controller._context import LoopContext

if TYPE_CHECKING:
    from plaudit.learner import Policy, Restored
    from plaudit.state import Checkpoint, Store

# Checkpoint folders kept (the KL reference's among them): the newest with the online
# optimizer's state, the others weights only.
KEEP_CHECKPOINTS = 3
# The store value naming the checkpoint folder that holds the KL reference (the model of the
# last offline fit), which the daemon loads as the reference after a restart.
REFERENCE_KEY = "reference_checkpoint"
# A damaged checkpoint folder is renamed so (beside the others, never pruned nor read again).
DAMAGED_PREFIX = "damaged-"


def reference_checkpoint(store: Store, state_dir: Path) -> Path | None:
    """The checkpoint folder that holds the KL reference (the model of the last offline fit),
    or None while the configured base model is the reference."""
    name = store.get_value(REFERENCE_KEY)
    return state_dir / "checkpoints" / name if name else None


@dataclass(frozen=True)
class SetAside:
    """A checkpoint found damaged at start-up."""

    checkpoint: Checkpoint
    error: str  # what is wrong with which file (the learner's message)
    moved_to: Path | None  # where its folder lies now; None: it could not be moved


@dataclass(frozen=True)
class Resumed:
    """What `resume_from_checkpoints` restored, and what it had to pass over to get there."""

    checkpoint: Checkpoint | None  # None: no intact checkpoint; the policy is the base model
    restored: Restored | None
    set_aside: list[SetAside] = field(default_factory=list)
    missing: list[Checkpoint] = field(default_factory=list)  # newer ones whose folder is gone


def resume_from_checkpoints(policy: Policy, store: Store) -> Resumed:
    """Restore the newest intact checkpoint into ``policy`` (on the torch worker).

    A damaged one (`DamagedModelError`: a file that fails its checksum, is truncated or
    unreadable, NaN or infinite weights) is marked damaged in the store and its folder renamed
    to ``damaged-<name>`` for inspection, and the one before it is tried. A recorded folder
    that is gone is passed over. Any other error propagates: a checkpoint this plaudit cannot
    read for another reason (a newer format) stops the start instead of being skipped, so no
    training is dropped by mistake. The caller returns to pending the rewards of updates newer
    than the restored version (`Store.release_rewards_after`)."""
    from plaudit.learner import DamagedModelError

    set_aside: list[SetAside] = []
    missing: list[Checkpoint] = []
    for ckpt in store.checkpoints(limit=1_000_000, intact_only=True):
        folder = Path(ckpt.path)
        if not folder.is_dir():
            missing.append(ckpt)
            continue
        try:
            restored = policy.restore(folder, version=ckpt.policy_version)
        except DamagedModelError as exc:
            moved = _move_aside(folder)
            store.mark_checkpoint_damaged(ckpt.id, reason=str(exc), path=moved or folder)
            set_aside.append(SetAside(checkpoint=ckpt, error=str(exc), moved_to=moved))
            continue
        if restored.reanchored:  # a LoRA policy took this checkpoint's weights as its base
            store.set_value(REFERENCE_KEY, folder.name)
        return Resumed(checkpoint=ckpt, restored=restored, set_aside=set_aside, missing=missing)
    return Resumed(checkpoint=None, restored=None, set_aside=set_aside, missing=missing)


def _move_aside(folder: Path) -> Path | None:
    """Rename ``folder`` to ``damaged-<name>`` (``-2``, ``-3``, ... when taken): its version's
    name is free for the next save, and the damaged files stay for whoever looks into it."""
    for n in range(1, 1000):
        target = folder.with_name(f"{DAMAGED_PREFIX}{folder.name}{f'-{n}' if n > 1 else ''}")
        if not target.exists():
            try:
                os.rename(folder, target)
            except OSError:
                return None
            return target
    return None


class Checkpoints:
    def __init__(self, ctx: LoopContext, *, keep_with: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        # Run on the worker after each checkpoint: state kept beside it (the reward model's
        # features), a cache whose failure costs time at the next start, never the checkpoint.
        self.keep_with = keep_with

    @property
    def folder(self) -> Path:
        return self.ctx.state_dir / "checkpoints"

    async def save(self, *, kind: str, run_id: int | None, metrics: dict[str, Any]) -> Path:
        """Write the current policy and record it; keep the newest few intact ones, the one
        holding the KL reference among them, and drop the optimizer state of all but this one:
        `KEEP_CHECKPOINTS` folders in all, one of them with optimizer state."""
        ctx = self.ctx
        version = ctx.policy.version
        folder = self.folder / f"v{version:06d}"
        await ctx.worker.run("checkpoint", ctx.policy.save, folder)
        ctx.store.add_checkpoint(
            path=folder, policy_version=version, kind=kind, run_id=run_id, metrics=metrics
        )
        if self.keep_with is not None:
            try:
                await ctx.worker.run("checkpoint", self.keep_with)
            except Exception as exc:
                ctx.log.warning("state kept with the checkpoint not written", error=str(exc))
        ctx.metrics.policy_version.set(version)
        newest = ctx.store.checkpoints(limit=KEEP_CHECKPOINTS, intact_only=True)
        keep = [Path(c.path).name for c in newest]  # newest first
        reference = self.reference_folder()
        if reference is not None and reference.name not in keep:
            # It must stay (a restart anchors to it), and it is a fallback like the others
            # (older: the rewards since return to pending), so it takes the oldest one's place.
            keep = [*keep[: max(1, KEEP_CHECKPOINTS - 1)], reference.name]
        # Deleting a GB is not instant: off the event loop, which keeps the watchdog ticking.
        await asyncio.to_thread(self._prune, keep=set(keep), newest=folder)
        self.measure()
        return folder

    def _prune(self, *, keep: set[str], newest: Path) -> None:
        """Remove the folders not in ``keep``; strip the kept ones but ``newest`` to weights
        only (the optimizer state is about twice the weights), and those of a LoRA policy but
        the reference's to their adapters (`strip_to_adapters`: a restart restores them onto
        the reference). An older one is restored only when every newer one is damaged; its
        optimizer then starts afresh, as after an offline fit, which loses the moment
        estimates, not any learning."""
        from plaudit.learner import DamagedModelError, drop_optimizer_state, strip_to_adapters
        from plaudit.state import StateError

        reference = self.reference_folder()
        for old in sorted(self.folder.glob("v*")):
            if not old.is_dir() or old == newest:
                continue
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
                continue
            try:
                drop_optimizer_state(old)
                if reference is None or old.name != reference.name:
                    # LoRA: adapters only; the reference's weights stay (a restart's base).
                    strip_to_adapters(old)
            except (DamagedModelError, StateError, OSError) as exc:
                # Left whole: start-up checks it, and sets it aside should it be needed.
                self.ctx.log.warning(
                    "cannot strip an older checkpoint to weights only",
                    checkpoint=str(old),
                    error=str(exc),
                )

    def measure(self) -> dict[str, int]:
        """The state folder's size by part, into the ``state_bytes`` gauge (os.scandir sums:
        about a millisecond)."""
        from plaudit.state import state_size

        sizes = state_size(self.ctx.state_dir)
        for part, size in sizes.items():
            self.ctx.metrics.state_bytes.labels(part).set(size)
        return sizes

    def reference_folder(self) -> Path | None:
        return reference_checkpoint(self.ctx.store, self.ctx.state_dir)

    def mark_reference(self, folder: Path) -> None:
        """Record that ``folder`` (a checkpoint just saved) holds the KL reference."""
        self.ctx.store.set_value(REFERENCE_KEY, folder.name)
