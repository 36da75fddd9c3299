"""The inference copy of a model: `decode_copy` snapshots a `Transformer` with every linear
layer as a `DecodeLinear` (weights copied, and packed for batched decoding), its weights
optionally rounded to fp16 for the native kernel's half-size panels (`decode_precision`)."""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._model import Transformer
from ._native import MAX_ROWS as NATIVE_MAX_ROWS
from ._native import _cpu_flags, half_round, native_gemm, native_gemm_unavailable

PackedKernel = Literal["native", "mkl", "onednn"]
KERNEL_ENV = "PLAUDIT_DECODE_KERNEL"


def available_kernels() -> list[PackedKernel]:
    """The packed fp32 GEMMs here: plaudit's own (`_native.py`, where it builds), and this
    torch's MKL packed SGEMM and oneDNN inner product over a reordered weight (the two Inductor
    uses for frozen CPU linears)."""
    found: list[PackedKernel] = ["native"] if native_gemm() is not None else []
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
    """The packed GEMM for fp32 decoding on this CPU: plaudit's native one wherever it builds
    (with it, a llama-family model decodes a step in one native call: `_fused_decode.py`),
    else MKL's on Intel, oneDNN's elsewhere. SmolLM2, decoding steps after the first token,
    medians of 5 alternating runs (a throwaway script timing `Engine.stream`, 2 threads, 48 new
    tokens): on the 2-core Xeon (AVX-512, AMX) native fused 53.2 tokens/s against MKL 35.6 at 1
    row, 206.8 against 168.9 at 8 rows (native unfused: 35.1, 164.1). Before the fused step,
    `bench/decode_kernels.py` (30 layers + head): on the Xeon at 8 rows MKL 33.0 ms, oneDNN
    42.5, plain matmul 39.2; on an AMD EPYC (AVX2), where MKL runs slower code paths, native
    57.0 ms, oneDNN 66.4, MKL 122.4, matmul 139.2 at 8 rows; native 34.6, oneDNN 57.0, matmul
    58.5 at 1 row. A fixed rule, not a timing at start-up, so a seed gives the same samples on
    every run of a machine. PLAUDIT_DECODE_KERNEL=native|mkl|onednn|none overrides it."""
    choice = os.environ.get(KERNEL_ENV, "").strip().lower()
    if choice == "none":
        return None
    found = available_kernels()
    if choice:
        if choice not in found:
            why = native_gemm_unavailable() if choice == "native" else None
            raise ValueError(
                f"{KERNEL_ENV}={choice!r}: "
                + (f"{why}. " if why else "")
                + f"Available here: {found or 'no packed kernel'}; use one of those or 'none' "
                "(or unset it)."
            )
        return choice  # type: ignore[return-value]
    preferred: list[PackedKernel] = (
        ["native", "mkl", "onednn"] if _cpu_vendor() == "GenuineIntel" else ["native", "onednn"]
    )
    for kernel in preferred:
        if kernel in found:
            return kernel
    return found[0] if found else None


def decode_precision(device: torch.device, dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(activations, weights): the dtypes an engine asked for `dtype` decodes with here.

    bfloat16 (half precision, asked for speed) on a CPU whose packed kernel is the native one
    (not Intel's default, see `packed_kernel`) and that has no AMX: fp32 activations over fp16
    weights in the native kernel, which streams half the bytes per token of fp32 (SmolLM2's
    batch-1 decoding is bound by them). The weights are fp16 there, not bf16: the same bytes,
    a rounding error 8x smaller, and faster to widen (learner/_native.py; bench/decode_half.py
    measures the speed and the drift against fp32, bench/RESULTS.md). torch's own bf16
    (bf16 activations too) decoded at 0.92x fp32 on the AMD EPYC. On a Xeon with AMX, AMX's
    bf16 prefill is why torch's bf16 stays (whole calls at batch 8: 179.7 tokens/s against
    134.8 for half-size weights in the native kernel and 131.5 for fp32, medians of 5, when
    those weights were bf16). Everywhere else (CUDA, AMX, another kernel chosen by
    PLAUDIT_DECODE_KERNEL) `dtype` for both, as before."""
    if (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and "amx_bf16" not in _cpu_flags()
        and packed_kernel() == "native"
    ):
        return torch.float32, torch.float16
    return dtype, dtype


def decode_kernel(device: torch.device, dtype: torch.dtype) -> PackedKernel | None:
    """The packed GEMM an engine asked for this device and dtype decodes with (fp32
    activations on CPU only, which bfloat16 can mean: `decode_precision`; None: plain
    matmuls). Building the native one happens here, on the first call."""
    return kernel_for_activations(device, decode_precision(device, dtype)[0])


def kernel_for_activations(device: torch.device, dtype: torch.dtype) -> PackedKernel | None:
    """The packed GEMM for activations of `dtype` (already resolved by `decode_precision`)."""
    return packed_kernel() if device.type == "cpu" and dtype == torch.float32 else None


class DecodeLinear(nn.Module):
    """A linear layer for inference: its own contiguous copy of the weight, (out, in) as
    `nn.Linear` keeps it (a straight copy, not a transpose: building an engine is one memcpy of
    the weights, and the packings read this layout).

    `pack(rows, kernel)` adds a packed copy of the weight (see `packed_kernel` for which kernel
    and what it gains), at the cost of a second copy of the weight. Which inputs it serves:
    - native: any input of 1 to 12 rows (`rows` only guides the layout of fp16 panels); a
      row's result has the same bits whatever the other rows are;
    - MKL: inputs of exactly `rows` rows;
    - oneDNN: any input of 2 rows or more (`rows` only guides its layout); on the AMD EPYC,
      small's 32 layers took 11.0 ms packed against 22.7 unpacked at 8 rows, 51.8 against
      59.1 at 96 rows (a prefill), 9.7 against 9.1 at 1 row, so a single row stays unpacked.
    The packed kernels sum in another order than `F.linear` (float rounding apart); every other
    input goes unpacked (`F.linear`: on the 2-core Xeon over SmolLM2's 121 weights, a
    throwaway timing, best of 3, 1.06x, 0.79x, 1.17x and 1.08x the time of the transposed
    layout kept before at 1, 2, 8 and 110 rows, without its 0.14 s transpose per engine).

    With `weight_dtype=torch.float16` (fp32 weights only) `weight` holds the weight rounded
    to fp16 (in fp32) and the native kernel packs it as fp16: every path, packed or not,
    multiplies by the same fp16 values, so prefill, decoding and `Engine.logprobs` are one
    model, and the native kernel streams half the bytes. With `copy=False` (fp32 weights) the
    layer multiplies by ``weight`` itself, for a caller that drops it before that changes."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        *,
        weight_dtype: torch.dtype | None = None,
        copy: bool = True,
    ) -> None:
        super().__init__()
        w = weight.detach()
        self.weight_dtype = w.dtype if weight_dtype is None else weight_dtype
        if self.weight_dtype != w.dtype:
            assert (w.dtype, self.weight_dtype) == (torch.float32, torch.float16), (
                f"weights in {self.weight_dtype} go with fp32 activations, not {w.dtype}"
            )
            w = half_round(w).contiguous()
        elif copy:  # a snapshot: the model's own weight may change after the engine is built
            w = w.clone(memory_format=torch.contiguous_format)
        else:
            w = w.contiguous()
        self.weight = nn.Parameter(w, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.packed_rows = 0  # 0: not packed
        self.packed: Tensor | None = None
        self.kernel: PackedKernel = "mkl"
        self.run = 1  # native fp16 panels: how many interleaved in a run

    def pack(self, rows: int, kernel: PackedKernel) -> None:
        native = native_gemm() if kernel == "native" else None
        # fp16 panels are laid out for the row count (`NativeGemm.half_run_for`); fp32 ones
        # serve every count alike.
        run = native.half_run_for(rows) if native and self.weight_dtype == torch.float16 else 1
        if (
            self.packed is not None
            and kernel == self.kernel
            and (rows == self.packed_rows or (kernel == "native" and run == self.run))
        ):
            self.packed_rows = rows
            return
        self.packed = None  # free the old packing before making the new one
        if kernel == "native":
            assert native is not None, native_gemm_unavailable()
            self.packed = native.pack(self.weight.t(), dtype=self.weight_dtype, run=run)
        elif kernel == "mkl":
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)
        else:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, rows)
        self.packed_rows, self.kernel, self.run = rows, kernel, run

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            rows = x.numel() // x.size(-1)
            if self.kernel == "native" and rows <= NATIVE_MAX_ROWS:
                native = native_gemm()
                assert native is not None  # it packed this weight
                y = native.linear(x, self.packed, self.weight.size(0))
                return y if self.bias is None else y.add_(self.bias)
            if self.kernel == "onednn" and rows > 1:
                return torch.ops.mkldnn._linear_pointwise(  # type: ignore[no-any-return]
                    x, self.packed, self.bias, "none", [None], ""
                )
            if self.kernel == "mkl" and rows == self.packed_rows:
                return torch.ops.mkl._mkl_linear(  # type: ignore[no-any-return]
                    x, self.packed, self.weight, self.bias, self.packed_rows
                )
        return F.linear(x, self.weight, self.bias)  # (..., out)


def decode_copy(
    model: Transformer,
    *,
    device: torch.device,
    dtype: torch.dtype,
    weight_dtype: torch.dtype | None = None,
    copy: bool = True,
) -> Transformer:
    """An inference copy of `model` with every linear layer (the tied head too) as a
    `DecodeLinear`; norms and embeddings share the model's tensors when device and dtype match.
    Same arithmetic, so the same logits up to float rounding; with `weight_dtype=float16`
    (`dtype` fp32) the linear layers' weights are rounded to fp16 (norms and the embedding
    lookup stay fp32). `copy=False`: the linear layers share the model's weights too where
    device and dtype match (no copy; the caller drops the copy before the weights change)."""
    fast = Transformer.uninitialised(model.config)  # every parameter is assigned below
    state = {k: v.detach().to(device=device, dtype=dtype) for k, v in model.state_dict().items()}
    fast.load_state_dict(state, strict=True, assign=True)
    for name, buf in model.named_buffers():  # RoPE tables: derived, not in the state dict
        setattr(fast, name, buf.to(device=device))
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(
                    module,
                    name,
                    DecodeLinear(child.weight, child.bias, weight_dtype=weight_dtype, copy=copy),
                )
    if fast.lm_head is None:
        fast.lm_head = DecodeLinear(fast.tok_emb.weight, None, weight_dtype=weight_dtype, copy=copy)
    return fast.eval().requires_grad_(False)
