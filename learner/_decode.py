"""The inference copy of a model: `decode_copy` snapshots a `Transformer` with every linear
layer as a `DecodeLinear` (weights transposed, and MKL-packed for batched decoding)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._model import Transformer


def mkl_packing() -> bool:
    """MKL's packed SGEMM (the kernel Inductor uses for frozen fp32 CPU linears) is present."""
    return bool(torch._C.has_mkl) and hasattr(torch.ops.mkl, "_mkl_linear")


class DecodeLinear(nn.Module):
    """A linear layer for inference whose weight is stored transposed, (in, out), contiguous:
    MKL multiplies a few rows by it 2-4x faster than by the (out, in) layout of `nn.Linear`
    (measured here at 8 rows by 576 x 1728; 1 row: equal or faster).

    `pack(rows)` adds an MKL-packed copy of the weight for inputs of exactly `rows` rows: at
    2-16 rows the packed SGEMM streams the weights ~1.5x faster than `x @ weight_t` (SmolLM2's
    30 layers + head at 8 rows, weights cold: 30.7 vs 45.2 ms) and gives the same bits. It
    costs a second copy of the weight (about twice its size), so the engine packs only for
    batched decoding and only fp32 on CPU."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.packed_rows = 0  # 0: not packed
        self.packed: Tensor | None = None

    def pack(self, rows: int) -> None:
        if rows == self.packed_rows:
            return
        self.packed = None  # free the old packing before making the new one
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight_t.t(), rows)
        self.packed_rows = rows

    def forward(self, x: Tensor) -> Tensor:
        if self.packed is not None and x.numel() == self.packed_rows * x.size(-1):
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
