"""The inference copy of a model: `decode_copy` snapshots a `Transformer` with every linear
layer as a `DecodeLinear` (weights transposed, and packed for batched decoding)."""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch
from torch import Tensor, nn

from ._model import Transformer

PackedKernel = Literal["mkl", "onednn"]
KERNEL_ENV = "PLAUDIT_DECODE_KERNEL"


def available_kernels() -> list[PackedKernel]:
    """The packed fp32 GEMMs this torch has: MKL's packed SGEMM and oneDNN's inner product
    over a reordered weight (the two Inductor uses for frozen CPU linears)."""
    found: list[PackedKernel] = []
    if torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear"):
        found.append("mkl")
    if torch._C._has_mkldnn and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        found.append("onednn")
    return found


def cpuinfo_field(key: str) -> str:
    """A field of the first CPU in /proc/cpuinfo ("vendor_id", "model name"), or "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return "unknown"


def _cpu_vendor() -> str:
    return cpuinfo_field("vendor_id")


@functools.cache
def packed_kernel() -> PackedKernel | None:
    """The packed GEMM for batched fp32 decoding on this CPU: MKL's on Intel, oneDNN's
    elsewhere. `bench/decode_kernels.py` (SmolLM2's 30 layers + head, 8 rows, 2 threads):
    on a Xeon (AVX-512) MKL 33.0 ms, oneDNN 42.5, plain matmul 39.2; on an AMD EPYC (AVX2),
    where MKL runs slower code paths, oneDNN 70.6, MKL 108.0, matmul 119.6. A fixed rule, not
    a timing at start-up, so a seed gives the same samples on every run of a machine.
    PLAUDIT_DECODE_KERNEL=mkl|onednn|none overrides it."""
    found = available_kernels()
    choice = os.environ.get(KERNEL_ENV, "").strip().lower()
    if choice == "none":
        return None
    if choice:
        if choice not in found:
            raise ValueError(
                f"{KERNEL_ENV}={choice!r}: this torch offers {found or 'no packed kernel'}; "
                f"use one of those or 'none' (or unset it)."
            )
        return choice  # type: ignore[return-value]
    preferred: PackedKernel = "mkl" if _cpu_vendor() == "GenuineIntel" else "onednn"
    return preferred if preferred in found else (found[0] if found else None)


class DecodeLinear(nn.Module):
    """A linear layer for inference whose weight is stored transposed, (in, out), contiguous:
    MKL multiplies a few rows by it 2-4x faster than by the (out, in) layout of `nn.Linear`
    (measured on a Xeon at 8 rows by 576 x 1728; 1 row: equal or faster).

    `pack(rows, kernel)` adds a packed copy of the weight (see `packed_kernel` for which kernel
    and what it gains). MKL's serves inputs of exactly `rows` rows and gives the same bits as
    `x @ weight_t`; oneDNN's serves any number of rows from 2 up (`rows` only guides its
    layout) and sums in another order (float rounding apart): on the AMD EPYC, small's 32
    layers took 11.0 ms packed against 22.7 unpacked at 8 rows, 51.8 against 59.1 at 96 rows
    (a prefill), 9.7 against 9.1 at 1 row, so a single row stays unpacked. It costs a second
    copy of the weight, so the engine packs only for batched decoding and only fp32 on CPU."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.packed_rows = 0  # 0: not packed
        self.packed: Tensor | None = None
        self.kernel: PackedKernel = "mkl"

    def pack(self, rows: int, kernel: PackedKernel) -> None:
        if rows == self.packed_rows and kernel == self.kernel:
            return
        self.packed = None  # free the old packing before making the new one
        weight = self.weight_t.t()  # (out, in), the layout both reorders take
        if kernel == "mkl":
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
        else:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        self.packed_rows, self.kernel = rows, kernel

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            rows = x.numel() // x.size(-1)
            if self.kernel == "onednn" and rows > 1:
                return torch.ops.mkldnn._linear_pointwise(  # type: ignore[no-any-return]
                    x, self.packed, self.bias, "none", [None], ""
                )
            if self.kernel == "mkl" and rows == self.packed_rows:
                return torch.ops.mkl._mkl_linear(  # type: ignore[no-any-return]
                    x, self.packed, self.weight_t.t(), self.bias, self.packed_rows
                )
        if self.bias is None:
            return x @ self.weight_t  # (..., out)
        y = torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight_t)  # (N, out)
        return y.view(*x.shape[:-1], -1)  # (..., out)


def decode_copy(model: Transformer, *, device: torch.device, dtype: torch.dtype) -> Transformer:
    """An inference copy of `model` with every linear layer (the tied head too) as a
    `DecodeLinear`; norms and embeddings share the model's tensors when device and dtype match.
    Same arithmetic, so the same logits up to float rounding."""
    with torch.device("meta"):
        fast = Transformer(model.config)
    state = {k: v.detach().to(device=device, dtype=dtype) for k, v in model.state_dict().items()}
    fast.load_state_dict(state, strict=True, assign=True)
    for name, buf in model.named_buffers():  # RoPE tables: derived, not in the state dict
        setattr(fast, name, buf.to(device=device))
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, DecodeLinear(child.weight, child.bias))
    if fast.lm_head is None:
        fast.lm_head = DecodeLinear(fast.tok_emb.weight, None)
    return fast.eval().requires_grad_(False)
