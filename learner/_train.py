"""Offline training: supervised next-token training on a data set, nanoGPT `train.py` style.

`train_offline(config, out=...)` does the set-up (data, tokenizer, model, run folder) and calls
`fit`, which is one straight loop: per step it takes the step's rows, runs grad-accum
micro-batches, clips, steps AdamW at the learning rate of `lr_at(step)`, and now and then
evaluates, saves the best model, writes a checkpoint and reports a `StepRecord`.

`train_in_memory(config, model=...)` runs the same loop on a model the caller holds (the
daemon's live policy) without a run folder: no checkpoint is written, and the best model is a
CPU copy of its weights in the result (`FitResult.best_weights`).

Exact resume: the data order of an epoch is a function of (seed, epoch), the learning rate a
function of the step, and the checkpoint holds the optimizer, the RNG states and the data
position, so an interrupted and resumed run computes the same losses as an uninterrupted one.

Loss normalisation: each step's loss is the sum of token losses over the whole global batch
divided by the number of trained targets in it, so grad-accum and data-parallel runs compute the
same loss and gradient as one process with the whole batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import platform
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from . import _checkpoint as ckpt
from . import _data
from . import _distributed as distributed
from ._errors import (
    CheckpointError,
    DataError,
    NonFiniteLossError,
    TrainingError,
    TrainingMemoryError,
)
from ._step_record import StepRecord

if TYPE_CHECKING:
    from ._model import Transformer
    from ._tokenizer import Tokenizer

Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "linear", "constant"]
Log = Callable[..., None]
# Keep freed large blocks in the heap while training on CPU (see _heap_keeps_large_blocks).
_KEEP_HEAP = True

# Knobs that change which rows a step sees or how the loss is normalised: a resumed run must
# keep them, or it would not continue the same run. The rows per process (batch_size) may
# change with the number of processes as long as the global batch (batch_size x processes)
# stays: checkpoints are whole, whoever wrote them (_check_resume_compatible).
_RESUME_FIXED = (
    "grad_accum",
    "max_seq_len",
    "seed",
    "val_split",
    "format",
    "chat_template",
)


class OfflineTrainConfig(BaseModel):
    """Every knob of offline training. The CLI fills it from flags and the daemon from its
    config file's `[train]` section; it does no I/O itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # What to train: a preset (nano ... xxl) trains from scratch; anything else is a model spec
    # for load_model ("smollm2", a Hugging Face folder, a .gguf, a plaudit model or run folder).
    model: str = "smollm2"
    data: list[Path] = Field(default_factory=list)
    format: _data.FormatChoice = "auto"
    face: str | None = None  # train on this face's history too
    # From scratch: take the tokenizer from this folder instead of training one on the data.
    tokenizer: Path | None = None
    build_tokenizer: bool = False
    vocab_size: int = Field(default=8192, ge=259)
    val_split: float = Field(default=0.05, ge=0.0, lt=1.0)
    # Conversations in the tokenizer's chat template (an instruct model's own format); auto:
    # when the tokenizer has one. Plain text never uses it.
    chat_template: Literal["auto", "on", "off"] = "auto"

    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, ge=1)  # stops earlier than `epochs` if smaller
    # None: 1e-3 from scratch, 5e-5 fine-tuning (the guides' recommendations).
    lr: float | None = Field(default=None, gt=0.0)
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)  # decay floor, share of lr
    warmup_steps: int | None = Field(default=None, ge=0)  # None: 5% of the steps, at most 500
    lr_schedule: Schedule = "cosine"
    weight_decay: float = Field(default=0.1, ge=0.0)
    batch_size: int = Field(default=16, ge=1)  # rows per micro-batch (per process)
    grad_accum: int = Field(default=1, ge=1)
    max_seq_len: int = Field(default=256, ge=8)
    # Rows of whole examples (a response never cut from its prompt) or a stream cut at fixed
    # intervals; auto: whole examples when the data has prompts (`_data.Packing`).
    packing: _data.Packing = "auto"
    grad_clip: float = Field(default=1.0, ge=0.0)  # 0 turns clipping off
    precision: Precision = "fp32"
    seed: int = 1337
    device: distributed.DeviceChoice = "auto"
    compile: bool = False
    fsdp: bool = False  # shard the model over GPUs (torchrun + CUDA only)

    eval_every: int = Field(default=100, ge=1)  # steps; also at the end
    eval_batches: int | None = Field(default=None, ge=1)  # None: the whole validation set
    save_every: int = Field(default=500, ge=1)  # steps; also at the end and on stop
    keep: int = Field(default=3, ge=1)
    patience: int | None = Field(default=None, ge=1)  # evaluations without improvement
    log_every: int = Field(default=10, ge=1)
    samples: int = Field(default=3, ge=0)  # fixed prompts sampled at each evaluation
    sample_tokens: int = Field(default=40, ge=1)
    tensorboard: Path | None = None


@dataclass
class FitResult:
    run_dir: Path | None  # None: trained in memory (`train_in_memory`)
    steps: int
    reason: Literal["finished", "early_stop", "interrupted"]
    last_loss: float
    best_val_loss: float | None
    best_dir: Path | None
    last_checkpoint: Path | None
    history: list[StepRecord] = field(default_factory=list)
    # In memory only: a CPU copy of the weights at the lowest validation loss (None: no
    # evaluation ran, or none improved on the start).
    best_weights: dict[str, Tensor] | None = None


# --- learning rate --------------------------------------------------------------------------


def lr_at(
    step: int, *, lr: float, warmup: int, total: int, schedule: Schedule, min_ratio: float
) -> float:
    """Learning rate of optimizer step `step` (0-based)."""
    # 1) linear warmup from lr/warmup to lr
    if step < warmup:
        return lr * (step + 1) / warmup
    # 2) constant: stay at lr
    if schedule == "constant":
        return lr
    # 3) decay from lr to min_ratio * lr at the last step, along a cosine or a line
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return lr * (min_ratio + coeff * (1.0 - min_ratio))


# --- pieces of the loop ---------------------------------------------------------------------


def _autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_precision(precision: Precision, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError(
            "--precision fp16 needs a CUDA device (its gradient scaler is CUDA-only); on CPU "
            "use --precision bf16 (fast on CPUs with AMX/AVX-512 BF16) or fp32."
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("This GPU has no bf16 support; use --precision fp16 or fp32.")


def _is_oom(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def _oom_message(cfg: OfflineTrainConfig, step: int) -> str:
    return (
        f"Out of memory at step {step} with micro-batch {cfg.batch_size} x {cfg.max_seq_len} "
        f"tokens ({cfg.precision}). Reduce --batch-size (raise --grad-accum by the same factor "
        f"to keep the batch), reduce --max-seq-len, use --precision bf16, or pick a smaller "
        f"--model."
    )


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    precision: Precision,
    dist: distributed.DistInfo,
    max_batches: int | None = None,
) -> float:
    """Mean loss per trained target over validation rows x, y (R, T), split across ranks."""
    was_training = model.training
    model.eval()
    device = dist.device
    rows = range(dist.rank * batch_size, x.size(0), batch_size * dist.world_size)
    if max_batches is not None:
        rows = rows[:max_batches]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (loss sum, targets)
    for lo in rows:
        xb = x[lo : lo + batch_size].to(device)
        yb = y[lo : lo + batch_size].to(device)
        with _autocast(precision, device):
            loss = model(xb, targets=yb)  # summed token loss; the logits never materialised
        total += torch.stack([loss.double(), (yb != _data.IGNORE_INDEX).sum().double()])
    distributed.all_reduce_sum(total, dist)
    model.train(was_training)
    return float(total[0] / total[1].clamp(min=1))


def _heap_keeps_large_blocks() -> Callable[[], None]:
    """Let glibc keep freed large blocks for reuse while training; returns the undo.

    glibc hands every allocation over its mmap threshold (at most 32 MiB) straight back to the
    kernel on free, so each step maps its big tensors (the loss chunk's logits, vocabulary-sized
    gradients) afresh and page-faults them in, zero-filled: ~1.4 us per 4 KiB page on this
    CPU, ~100 ms a step for SmolLM2. The undo sets the values glibc's own adjustment settles
    on (mmap above 32 MiB, trim above 64 MiB)."""
    if not (_KEEP_HEAP and sys.platform == "linux" and platform.libc_ver()[0] == "glibc"):
        return lambda: None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return lambda: None
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 2 << 30)

    def undo() -> None:
        mallopt(m_mmap_threshold, 32 << 20)
        mallopt(m_trim_threshold, 64 << 20)

    return undo


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuplify(x: Any) -> Any:
    # random.setstate wants tuples; a weights_only round trip can hand back lists.
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


@dataclass
class ResumeState:
    step: int
    trainer_state: dict[str, Any]


class _Progress:
    """tqdm bar on a terminal, a log line every `log_every` steps otherwise."""

    def __init__(self, *, total: int, start: int, log: Log, log_every: int, enabled: bool):
        self.log, self.log_every = log, log_every
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.enabled = enabled

    def update(self, rec: StepRecord) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{rec.loss:.3f}", tok_s=f"{rec.tokens_per_s:,.0f}")
        elif rec.step % self.log_every == 0 or rec.val_loss is not None:
            self.log(
                "train step",
                step=rec.step,
                epoch=rec.epoch,
                loss=round(rec.loss, 4),
                lr=f"{rec.lr:.3g}",
                grad_norm=round(rec.grad_norm, 3),
                throughput=f"{rec.tokens_per_s:,.0f} tok/s",
                val_loss=None if rec.val_loss is None else round(rec.val_loss, 4),
            )

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _null_log(event: str, **kw: Any) -> None:
    pass


# --- the loop -------------------------------------------------------------------------------


def fit(
    *,
    cfg: OfflineTrainConfig,
    model: Transformer,
    tokenizer: Tokenizer,
    train: _data.PackedEpochs,
    val: tuple[Tensor, Tensor] | None,
    run_dir: Path | None,
    dist: distributed.DistInfo | None = None,
    resume: ResumeState | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    stop: threading.Event | None = None,
    log: Log = _null_log,
    sample_prompts: list[str] | None = None,
    fine_tune: bool = False,
    between_micro_batches: Callable[[], object] | None = None,
    start_step: int = 0,
) -> FitResult:
    """Train `model` on `train` until the epochs or max_steps run out, patience is exhausted,
    or `stop` is set (checked between steps; a checkpoint is written before returning). With
    `run_dir` None nothing is written: the best weights are kept as a CPU copy instead.
    `between_micro_batches` is called after each micro-batch's backward, where no graph is in
    flight (only accumulated gradients): a daemon generates there, so a post or a playground
    sample waits one micro-batch, not the whole fit. It may use the model for inference (eval
    mode); training mode is set again after it. `start_step` (without `resume`) starts the
    loop there: the data order and the learning rate pick up where a stopped fit of the same
    config left off (the optimizer's moments start afresh)."""
    dist = dist or distributed.DistInfo(device=distributed.pick_device(cfg.device))
    device = dist.device
    check_precision(cfg.precision, device)
    torch.set_flush_denormal(True)  # fp32 training measured 3-8x faster on the dev CPU

    # 1) schedule: steps, learning rate, warmup
    steps_per_epoch = train.steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    base_lr = cfg.lr if cfg.lr is not None else (5e-5 if fine_tune else 1e-3)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(500, total // 20)

    def lr_of(step: int) -> float:
        return lr_at(
            step,
            lr=base_lr,
            warmup=warmup,
            total=total,
            schedule=cfg.lr_schedule,
            min_ratio=cfg.min_lr_ratio,
        )

    # 2) model, optimizer, scaler on the device; state from the checkpoint when resuming
    model.to(device)
    model.train()
    # Wrap first: FSDP replaces the parameters with shards, which the optimizer must hold.
    trained_model: nn.Module = distributed.wrap(model, dist, fsdp=cfg.fsdp)
    is_sharded = distributed.sharded(dist, cfg.fsdp)
    optimizer = model.configure_optimizer(lr=base_lr, weight_decay=cfg.weight_decay)
    scaler = _grad_scaler(cfg.precision, is_sharded)
    step, best_val, bad_evals, tokens_seen = start_step, math.inf, 0, 0
    if resume is not None:
        st = resume.trainer_state
        distributed.load_optimizer_state(model, optimizer, st["optimizer"], is_sharded=is_sharded)
        if st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        _set_rng_state(st["rng"], device)
        step, tokens_seen = int(st["step"]), int(st["tokens_seen"])
        best_val, bad_evals = float(st["best_val_loss"]), int(st["bad_evals"])
    if cfg.compile:
        trained_model = torch.compile(trained_model)  # type: ignore[assignment]

    B, A, W, T = cfg.batch_size, cfg.grad_accum, dist.world_size, cfg.max_seq_len
    last_ckpt: Path | None = None if run_dir is None else ckpt.latest_checkpoint(run_dir)
    best_dir: Path | None = None
    if run_dir is not None and (run_dir / "best").is_dir():
        best_dir = run_dir / "best"
    best_weights: dict[str, Tensor] | None = None
    history: list[StepRecord] = []
    writer = _tensorboard(cfg, dist)
    progress = _Progress(
        total=total, start=step, log=log, log_every=cfg.log_every, enabled=dist.is_main
    )

    def state_dict_at(step: int) -> dict[str, Any]:
        """The trainer's state; a collective under FSDP (it gathers the optimizer's shards)."""
        return {
            "version": 1,
            "step": step,
            "epoch": step // steps_per_epoch,
            "index": step % steps_per_epoch,
            "optimizer": distributed.optimizer_state(model, optimizer, is_sharded=is_sharded),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": _rng_state(device),
            "lr_schedule": {"lr": base_lr, "warmup": warmup, "total": total},
            "best_val_loss": best_val,
            "bad_evals": bad_evals,
            "tokens_seen": tokens_seen,
            "world_size": W,
            "fine_tune": fine_tune,
            "config": cfg.model_dump(mode="json"),
        }

    def snapshot(step: int) -> tuple[dict[str, Tensor] | None, dict[str, Any]]:
        """Whole weights (None: the model's own) and trainer state for rank 0 to write. Every
        rank calls it: under FSDP both are gathered from the shards."""
        weights = distributed.model_state(model, is_sharded=is_sharded)
        state = state_dict_at(step) if dist.is_main or is_sharded else {}
        return weights, state

    def last_good() -> str:
        if run_dir is None:  # in memory: nothing on disk to point to
            return ""
        return f" The last good checkpoint is {last_ckpt or 'not written yet'}."

    def save(step: int) -> None:
        nonlocal last_ckpt
        if run_dir is None:
            return
        weights, state = snapshot(step)
        if dist.is_main:
            last_ckpt = ckpt.save_checkpoint(
                run_dir,
                step=step,
                model=model,
                tokenizer=tokenizer,
                state=state,
                keep=cfg.keep,
                weights=weights,
            )
            log("checkpoint", step=step, path=str(last_ckpt))
        distributed.barrier(dist)

    reason: Literal["finished", "early_stop", "interrupted"] = "finished"
    loss_value = math.nan
    t_start = time.perf_counter()
    t_last = t_start
    undo_heap = _heap_keeps_large_blocks() if device.type == "cpu" else (lambda: None)
    if between_micro_batches is not None:  # the set-up above can take as long as a step
        between_micro_batches()
        trained_model.train()
    try:
        # 3) the loop: one optimizer step per iteration
        while step < total:
            if distributed.any_rank(stop is not None and stop.is_set(), dist):
                reason = "interrupted"
                break
            epoch, index = divmod(step, steps_per_epoch)
            x, y = train.step_rows(epoch, index)  # (A*W*B, T) each
            x = x.view(A, W, B, T)[:, dist.rank]  # (A, B, T): this rank's micro-batches
            y_all = y
            y = y.view(A, W, B, T)[:, dist.rank]  # (A, B, T)
            n_targets = int((y_all != _data.IGNORE_INDEX).sum())  # whole global step
            lr = lr_of(step)
            for group in optimizer.param_groups:
                group["lr"] = lr

            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            try:
                for micro in range(A):
                    xb, yb = x[micro].to(device), y[micro].to(device)
                    sync = micro == A - 1 or not isinstance(
                        trained_model, nn.parallel.DistributedDataParallel
                    )
                    no_sync = (
                        contextlib.nullcontext() if sync else trained_model.no_sync()  # type: ignore[operator]
                    )
                    with no_sync:
                        with _autocast(cfg.precision, device):
                            # Summed token loss from the fused, chunked head + cross-entropy
                            # (the (B*T, V) logits are never materialised).
                            micro_sum = trained_model(xb, targets=yb)
                        # DDP averages gradients over W ranks; scale back to a global mean.
                        loss = micro_sum * (W / max(1, n_targets))
                        scaled: Tensor = scaler.scale(loss)
                        scaled.backward()  # type: ignore[no-untyped-call]
                    loss_sum += micro_sum.detach().double()
                    if between_micro_batches is not None:
                        del micro_sum, loss, scaled  # nothing of the graph outlives the call
                        between_micro_batches()
                        trained_model.train()
                distributed.all_reduce_sum(loss_sum, dist)
                loss_value = float(loss_sum) / max(1, n_targets)
                if not math.isfinite(loss_value):
                    optimizer.zero_grad(set_to_none=True)
                    raise NonFiniteLossError(
                        f"The loss became {loss_value} at step {step + 1}; the weights were not "
                        f"updated by it.{last_good()} Lower --lr, raise --warmup-steps, "
                        f"use --grad-clip, or use fp32/bf16 instead of fp16.",
                        step=step + 1,
                        checkpoint=None if last_ckpt is None else str(last_ckpt),
                    )
                scaler.unscale_(optimizer)
                norm = nn.utils.clip_grad_norm_(
                    model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf
                )
                # Under FSDP the norm is a DTensor over the shards: its whole value.
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                if not math.isfinite(grad_norm) and not scaler.is_enabled():
                    optimizer.zero_grad(set_to_none=True)
                    raise NonFiniteLossError(
                        f"The gradient norm became {grad_norm} at step {step + 1}; the weights "
                        f"were not updated.{last_good()} Lower --lr or set --grad-clip.",
                        step=step + 1,
                        checkpoint=None if last_ckpt is None else str(last_ckpt),
                    )
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if _is_oom(e):
                    raise TrainingMemoryError(_oom_message(cfg, step + 1)) from e
                raise
            step += 1
            tokens_seen += A * W * B * T
            now = time.perf_counter()
            rec = StepRecord(
                step=step,
                epoch=epoch,
                loss=loss_value,
                lr=lr,
                grad_norm=grad_norm,
                tokens_per_s=A * W * B * T / max(1e-9, now - t_last),
                tokens=tokens_seen,
                elapsed_s=now - t_start,
            )

            # 4) evaluate, keep the best, stop early when it no longer improves
            if val is not None and (step % cfg.eval_every == 0 or step == total):
                val_loss = evaluate_loss(
                    trained_model,
                    *val,
                    batch_size=B,
                    precision=cfg.precision,
                    dist=dist,
                    max_batches=cfg.eval_batches,
                )
                samples = _samples(model, tokenizer, sample_prompts, cfg, dist)
                rec = replace(rec, val_loss=val_loss, samples=samples)
                if val_loss < best_val:
                    best_val, bad_evals = val_loss, 0
                    if run_dir is None:
                        best_weights = _copy_weights(model, into=best_weights)
                    else:
                        weights, state = snapshot(step)
                        if dist.is_main:
                            best_dir = ckpt.save_best(
                                run_dir,
                                model=model,
                                tokenizer=tokenizer,
                                state=state,
                                weights=weights,
                            )
                        distributed.barrier(dist)
                else:
                    bad_evals += 1
                for s in samples:
                    progress.write(f"sample: {s!r}")
                    if progress.bar is None and dist.is_main:
                        log("sample", step=step, text=s)
                if cfg.patience is not None and bad_evals >= cfg.patience:
                    reason = "early_stop"
            history.append(rec)
            progress.update(rec)
            if writer is not None:
                writer.scalars(step, rec)
            if on_step is not None:
                on_step(rec)
            t_last = time.perf_counter()  # eval, checkpoints, callbacks are not training time

            # 5) checkpoint
            if step % cfg.save_every == 0 or step == total or reason == "early_stop":
                save(step)
                t_last = time.perf_counter()
            if reason == "early_stop":
                log("early stop", step=step, patience=cfg.patience, best_val_loss=best_val)
                break
        if reason == "interrupted" and (
            last_ckpt is None or not last_ckpt.name.endswith(f"{step:08d}")
        ):
            save(step)
    finally:
        undo_heap()
        progress.close()
        if writer is not None:
            writer.close()
    return FitResult(
        run_dir=run_dir,
        steps=step,
        reason=reason,
        last_loss=loss_value,
        best_val_loss=None if math.isinf(best_val) else best_val,
        best_dir=best_dir,
        last_checkpoint=last_ckpt,
        history=history,
        best_weights=best_weights,
    )


def _copy_weights(model: nn.Module, *, into: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """A CPU copy of the model's weights, written over ``into`` when given (the previous best:
    same names and shapes), so a fit keeps one such copy however often it improves."""
    with torch.no_grad():
        if into is None:
            return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        for k, v in model.state_dict().items():
            into[k].copy_(v)
        return into


def _grad_scaler(precision: Precision, is_sharded: bool) -> torch.amp.GradScaler:
    """fp16's loss scaler (a no-op otherwise). Sharded gradients need the FSDP variant: it
    agrees on skipping a step across ranks, each of which sees only its shard's infs."""
    if precision == "fp16" and is_sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler("cuda")
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")


def _samples(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: list[str] | None,
    cfg: OfflineTrainConfig,
    dist: distributed.DistInfo,
) -> tuple[str, ...]:
    """A few samples from fixed prompts with a fixed seed, so evaluations compare like with like."""
    if not prompts or cfg.samples == 0 or not dist.is_main or cfg.fsdp:
        return ()
    from ._generate import sample_continuations

    was_training = model.training
    model.eval()
    chosen = prompts[: cfg.samples]
    out = sample_continuations(
        model, tokenizer, chosen, max_new_tokens=cfg.sample_tokens, seed=cfg.seed
    )
    model.train(was_training)
    return tuple(f"{p}|{c}" for p, c in zip(chosen, out, strict=True))


def _tensorboard(cfg: OfflineTrainConfig, dist: distributed.DistInfo) -> Any:
    if cfg.tensorboard is None or not dist.is_main:
        return None
    from ._tensorboard import ScalarWriter

    return ScalarWriter(cfg.tensorboard)


# --- set-up ---------------------------------------------------------------------------------


def use_chat_template(choice: Literal["auto", "on", "off"], tokenizer: Tokenizer) -> bool:
    if choice == "on" and tokenizer.chat_template is None:
        raise TrainingError(
            "--chat-template on, but this tokenizer has no chat template; use --chat-template "
            "off (the file's own Q:/A: or User:/Assistant: layout) or a model that has one."
        )
    return choice == "on" or (choice == "auto" and tokenizer.chat_template is not None)


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    chat: bool  # conversations rendered with the chat template
    train: _data.TokenizedSet
    val: _data.TokenizedSet
    train_examples: list[_data.Example]
    val_examples: list[_data.Example]
    stats: _data.DataStats


def read_examples(
    cfg: OfflineTrainConfig, *, extra: list[_data.Example] | None = None
) -> tuple[list[_data.Example], list[_data.FileInfo], int]:
    """All examples of the --data files (and a face's history), deduplicated:
    (examples, per-file info, count before dedupe)."""
    examples: list[_data.Example] = []
    files: list[_data.FileInfo] = []
    for path in cfg.data:
        found, info = _data.read_file(path, cfg.format)
        examples += found
        files.append(info)
    if extra:
        examples += extra
        files.append(
            _data.FileInfo(path=extra[0].source.split("#")[0], fmt="text", examples=len(extra))
        )
    if not examples:
        raise DataError(
            "No training data: pass --data FILE (several times for several files) or --face NAME."
        )
    return _data.dedupe(examples), files, len(examples)


def prepare_data(
    cfg: OfflineTrainConfig,
    *,
    tokenizer: Tokenizer | None,
    extra: list[_data.Example] | None = None,
) -> PreparedData:
    """Read, dedupe, split and tokenize; trains a BPE tokenizer on the training split when
    `tokenizer` is None."""
    examples, files, n_read = read_examples(cfg, extra=extra)
    train_ex, val_ex = _data.split_validation(examples, cfg.val_split)
    if tokenizer is None:
        from ._tokenizer import Tokenizer

        texts = ["".join(t for t, _ in ex.segments()) for ex in train_ex]
        tokenizer = Tokenizer.train_bpe(texts, vocab_size=cfg.vocab_size)
    chat = use_chat_template(cfg.chat_template, tokenizer)
    train_set = _data.tokenize(train_ex, tokenizer, chat_template=chat)
    val_set = _data.tokenize(val_ex, tokenizer, chat_template=chat)
    stats = _data.compute_stats(
        files=files, n_before_dedupe=n_read, train=train_set, val=val_set, seq_len=cfg.max_seq_len
    )
    return PreparedData(
        tokenizer=tokenizer,
        chat=chat,
        train=train_set,
        val=val_set,
        train_examples=train_ex,
        val_examples=val_ex,
        stats=stats,
    )


def _check_resume_compatible(state: dict[str, Any], cfg: OfflineTrainConfig, world: int) -> None:
    saved, now = state["config"], cfg.model_dump(mode="json")
    changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in _RESUME_FIXED if saved.get(k) != now[k]]
    saved_world = int(state.get("world_size", 1))
    if saved_world == world and saved["batch_size"] != now["batch_size"]:
        changed.append(f"batch_size {saved['batch_size']!r} -> {now['batch_size']!r}")
    elif saved["batch_size"] * saved_world != now["batch_size"] * world:
        changed.append(
            f"global batch {saved['batch_size']} x {saved_world} processes -> "
            f"{now['batch_size']} x {world}"
        )
    if changed:
        raise CheckpointError(
            f"Cannot resume exactly: {', '.join(changed)} changed since the checkpoint; use the "
            f"checkpoint's values (with other process counts, a --batch-size that keeps "
            f"batch-size x processes), or start a new run (--force, or another --out)."
        )


def train_offline(
    cfg: OfflineTrainConfig,
    *,
    out: Path,
    resume: bool = False,
    force: bool = False,
    extra_examples: list[_data.Example] | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    stop: threading.Event | None = None,
    log: Log = _null_log,
) -> FitResult:
    """Train from scratch (cfg.model a preset) or fine-tune (any other spec) into run folder
    `out`. An existing `out` is resumed with `resume`, replaced with `force`, else refused."""
    from ._load import default_cache_dir, load_model
    from ._model import PRESETS, Transformer
    from ._tokenizer import Tokenizer

    torch.set_flush_denormal(True)
    dist = distributed.setup(cfg.device)
    try:
        check_precision(cfg.precision, dist.device)
        has_content = out.exists() and any(out.iterdir())
        latest = ckpt.latest_checkpoint(out) if has_content else None
        distributed.barrier(dist)  # every rank has looked before rank 0 writes anything
        if resume:
            if latest is None:
                raise CheckpointError(
                    f"--resume: no checkpoint in {out}; start the run without --resume (or "
                    f"point --out at the run to resume)."
                )
        elif has_content:
            if not force:
                raise CheckpointError(
                    f"The output folder {out} already holds a run; pass --resume to continue it, "
                    f"--force to replace it, or choose another --out."
                )
            if dist.is_main:
                import shutil

                shutil.rmtree(out)
            distributed.barrier(dist)
        out.mkdir(parents=True, exist_ok=True)

        state: dict[str, Any] | None = None
        fine_tune = cfg.model not in PRESETS
        if latest is not None and resume:
            state = ckpt.load_trainer_state(latest)
            _check_resume_compatible(state, cfg, dist.world_size)
            fine_tune = bool(state.get("fine_tune", fine_tune))
            loaded = load_model(str(latest), device="cpu")
            model, tokenizer = loaded.model, loaded.tokenizer
            data = prepare_data(cfg, tokenizer=tokenizer, extra=extra_examples)
        elif not fine_tune:
            if cfg.tokenizer is not None and cfg.build_tokenizer:
                raise TrainingError("Pass either --tokenizer DIR or --build-tokenizer, not both.")
            tok = Tokenizer.from_dir(cfg.tokenizer) if cfg.tokenizer is not None else None
            data = prepare_data(cfg, tokenizer=tok, extra=extra_examples)
            tokenizer = data.tokenizer
            preset = PRESETS[cfg.model]
            torch.manual_seed(cfg.seed)
            model = Transformer(
                replace(
                    preset,
                    vocab_size=tokenizer.vocab_size,
                    max_seq_len=max(preset.max_seq_len, cfg.max_seq_len),
                )
            )
        else:
            if cfg.build_tokenizer:
                raise TrainingError(
                    f"--build-tokenizer trains a new vocabulary, which a pretrained model "
                    f"({cfg.model}) cannot use; it applies to presets ({', '.join(PRESETS)})."
                )
            spec = ckpt.resolve_model_dir(cfg.model) or cfg.model
            loaded = load_model(str(spec), cache_dir=default_cache_dir(), device="cpu")
            model, tokenizer = loaded.model, loaded.tokenizer
            data = prepare_data(cfg, tokenizer=tokenizer, extra=extra_examples)
        rows = _loop_rows(cfg, model=model, data=data, dist=dist)
        for line in data.stats.lines():
            log("data", detail=line)
        if dist.is_main:
            log(
                "model",
                spec=cfg.model,
                params=model.num_params(),
                config=model.config.to_dict(),
                fine_tune=fine_tune,
            )
        if dist.is_main and state is None:
            import json

            (out / "run.json").write_text(
                json.dumps(
                    {"config": cfg.model_dump(mode="json"), "stats": asdict(data.stats)}, indent=2
                )
                + "\n"
            )
        return fit(
            cfg=cfg,
            model=model,
            tokenizer=tokenizer,
            train=rows.train,
            val=rows.val,
            run_dir=out,
            dist=dist,
            resume=None
            if state is None
            else ResumeState(step=int(state["step"]), trainer_state=state),
            on_step=on_step,
            stop=stop,
            log=log if dist.is_main else _null_log,
            sample_prompts=rows.sample_prompts,
            fine_tune=fine_tune,
        )
    finally:
        distributed.teardown(dist)


def train_in_memory(
    cfg: OfflineTrainConfig,
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    extra_examples: list[_data.Example] | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    stop: threading.Event | None = None,
    log: Log = _null_log,
    between_micro_batches: Callable[[], object] | None = None,
    start_step: int = 0,
) -> FitResult:
    """Fine-tune `model` in place on cfg.data (and `extra_examples`) with `tokenizer`, on the
    device it lives on, writing nothing to disk: the loop of `train_offline` without a run
    folder (cfg.model, save_every, keep and resume do not apply; one process;
    `between_micro_batches` and `start_step` as `fit` says). The model ends
    with the last step's weights; `FitResult.best_weights` holds a CPU copy of the best ones by
    validation loss, when an evaluation improved. An exception leaves the weights as the last
    completed step made them: a caller that must not keep them holds a copy of its own."""
    device = next(model.parameters()).device
    cfg = cfg.model_copy(update={"device": device.type, "fsdp": False})
    torch.set_flush_denormal(True)
    dist = distributed.DistInfo(device=device)
    check_precision(cfg.precision, device)
    data = prepare_data(cfg, tokenizer=tokenizer, extra=extra_examples)
    if between_micro_batches is not None:  # tokenizing a long history takes a while
        between_micro_batches()
    rows = _loop_rows(cfg, model=model, data=data, dist=dist)
    for line in data.stats.lines():
        log("data", detail=line)
    return fit(
        cfg=cfg,
        model=model,
        tokenizer=tokenizer,
        train=rows.train,
        val=rows.val,
        run_dir=None,
        dist=dist,
        on_step=on_step,
        stop=stop,
        log=log,
        sample_prompts=rows.sample_prompts,
        fine_tune=True,
        between_micro_batches=between_micro_batches,
        start_step=start_step,
    )


@dataclass
class _LoopRows:
    train: _data.PackedEpochs
    val: tuple[Tensor, Tensor] | None
    sample_prompts: list[str]


def _loop_rows(
    cfg: OfflineTrainConfig,
    *,
    model: Transformer,
    data: PreparedData,
    dist: distributed.DistInfo,
) -> _LoopRows:
    """The rows `fit` trains and evaluates on, packed to cfg.max_seq_len; a data set smaller
    than one step, or a sequence length past the model's context, is an error."""
    if cfg.max_seq_len > model.config.max_seq_len:
        raise TrainingError(
            f"--max-seq-len {cfg.max_seq_len} is longer than the model's context "
            f"({model.config.max_seq_len}); use at most {model.config.max_seq_len}."
        )
    tokenizer = data.tokenizer
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    assert pad_id is not None  # tokenize() already required an EOS
    whole = _data.whole_examples(cfg.packing, data.train_examples + data.val_examples)
    train = _data.PackedEpochs(
        data=data.train,
        seq_len=cfg.max_seq_len,
        pad_id=pad_id,
        seed=cfg.seed,
        rows_per_step=cfg.batch_size * cfg.grad_accum * dist.world_size,
        whole=whole,
    )
    if train.steps_per_epoch == 0:
        files = ", ".join(f"{f.path} ({f.examples} examples)" for f in data.stats.files)
        raise DataError(
            f"The training data is smaller than one batch: {data.train.num_tokens} tokens make "
            f"{train.rows_per_epoch} rows of {cfg.max_seq_len}, and one step needs "
            f"{train.rows_per_step} (batch {cfg.batch_size} x grad-accum {cfg.grad_accum} x "
            f"{dist.world_size} processes). Files: {files}. Add data, or lower --batch-size, "
            f"--grad-accum or --max-seq-len.",
            path=data.stats.files[0].path if len(data.stats.files) == 1 else None,
        )
    val = None
    if len(data.val):
        val = _data.pack_rows(
            data.val, range(len(data.val)), seq_len=cfg.max_seq_len, pad_id=pad_id, whole=whole
        )
    prompts = _data.sample_prompts(
        data.val_examples, cfg.samples, tokenizer=tokenizer if data.chat else None
    )
    return _LoopRows(train=train, val=val, sample_prompts=prompts)
