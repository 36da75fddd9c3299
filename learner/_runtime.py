"""Process-wide torch settings, applied once by the CLI and the daemon at start."""

from __future__ import annotations

import torch


def configure_torch() -> None:
    """Flush denormals to zero: without it fp32 training measured 3-8x slower on the
    development CPU. Idempotent; call it once at start."""
    torch.set_flush_denormal(True)
