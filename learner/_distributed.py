"""Data-parallel set-up from the environment `torchrun` (torch.distributed.run) provides.

    torchrun --nproc-per-node 2 .venv/bin/plaudit train offline --model tiny --data posts.txt

Each process reads RANK / LOCAL_RANK / WORLD_SIZE; gloo on CPU, NCCL on CUDA (one GPU per local
rank). Every rank trains on its own slice of each step's rows; DDP averages the gradients; rank 0
alone writes checkpoints and logs. Without those variables this is a single process and nothing
here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._errors import TrainingError

if TYPE_CHECKING:
    from torch.optim import Optimizer

DeviceChoice = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(choice: DeviceChoice, *, local_rank: int = 0) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError(
                "--device cuda was asked for but torch sees no CUDA device; use --device cpu "
                "(or auto), or install a CUDA build of torch."
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(choice: DeviceChoice) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(choice, local_rank=local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sharded(info: DistInfo, fsdp: bool) -> bool:
    """Whether `wrap` shards the model: --fsdp under torchrun with more than one process."""
    return fsdp and info.enabled


def wrap(model: nn.Module, info: DistInfo, *, fsdp: bool = False) -> nn.Module:
    """DDP, or FSDP2 `fully_shard` (NCCL on GPUs, gloo on CPU), around `model`; the model
    itself when alone. Build the optimizer after this: sharding replaces the parameters."""
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # The mesh names the device: left to itself, fully_shard picks CUDA whenever a GPU
        # is visible, even for a run on the CPU.
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        for block in model.blocks:  # type: ignore[union-attr]
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when `flag` is true on any rank (so every rank stops at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


# --- state that survives a change of world size ---------------------------------------------
# Checkpoints hold whole tensors keyed by parameter name, whatever wrote them (one process,
# DDP or FSDP), so any of them resumes any run. Under FSDP each rank holds a shard: every rank
# must take part in gathering, and rank 0 receives the whole (on the CPU).


def _options(is_sharded: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True) if is_sharded else None


def model_state(model: nn.Module, *, is_sharded: bool) -> dict[str, Tensor] | None:
    """The whole model's weights gathered from the shards (None unless sharded: the model's
    own state_dict() is whole). A collective under FSDP: call it on every rank."""
    if not is_sharded:
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options(True))
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def optimizer_state(model: nn.Module, optimizer: Optimizer, *, is_sharded: bool) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name. A collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(is_sharded))


def load_optimizer_state(
    model: nn.Module, optimizer: Optimizer, state: dict[str, Any], *, is_sharded: bool
) -> None:
    """Restore what `optimizer_state` (or, before it, `optimizer.state_dict()`) saved."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if any(isinstance(k, int) for k in state.get("state", {})):  # keyed by position: older
        if is_sharded:
            raise TrainingError(
                "This checkpoint's optimizer state was written by an older plaudit, keyed by "
                "parameter position, which a sharded (--fsdp) run cannot map onto its shards; "
                "resume it once without --fsdp (one checkpoint rewrites it by name), then "
                "with --fsdp."
            )
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_options(is_sharded))
