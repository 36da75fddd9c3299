"""What one optimizer step reports: built by the training loop, read by its callbacks and the
TensorBoard writer (its own module so the writer need not import the loop)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step, as reported to `on_step` (val_loss only on evaluation steps)."""

    step: int  # steps done, 1-based
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    tokens: int  # input tokens seen so far
    elapsed_s: float
    val_loss: float | None = None
    samples: tuple[str, ...] = ()
