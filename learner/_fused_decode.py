"""One decoding step of a llama-family model in one native call (`_native_layers.cpp`): every
block's norms, projections, RoPE, cache write, attention and SwiGLU for the step's rows, on
the weights the native GEMM packed. The engine uses it where it applies (`FusedBlocks.build`)
and the model's own forward elsewhere.

Why: the ops around a block's four GEMMs cost a few microseconds of dispatch each in eager
PyTorch whatever their size, about 4 ms a token for SmolLM2 at one row; the fused step leaves
the embedding lookup, the final norm, the head and sampling to PyTorch (bench/decode_half.py
measures both paths)."""

from __future__ import annotations

import ctypes
import os
from typing import cast

import torch
from torch import Tensor, nn

from ._decode import DecodeLinear
from ._kv_cache import KVCache
from ._model import Block, RMSNorm, Transformer
from ._native import native_gemm

FUSED_ENV = "PLAUDIT_FUSED_DECODE"  # "0": decode through the model's forward (for comparison)


def _blocks(model: Transformer) -> list[Block]:
    return [cast("Block", block) for block in model.blocks]


def _linears(block: Block) -> tuple[nn.Module, ...]:
    """A block's four projections, in the order the native step takes them."""
    return (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj)


def _norms(block: Block) -> tuple[RMSNorm, RMSNorm]:
    assert isinstance(block.norm1, RMSNorm) and isinstance(block.norm2, RMSNorm)
    return block.norm1, block.norm2


class FusedBlocks:
    """The packed weights of a decode copy's blocks, gathered for `plaudit_decode_blocks`."""

    def __init__(self, model: Transformer, *, half_run: int) -> None:
        cfg = model.config
        self.model = model
        self.half_run = half_run  # 0: fp32 panels; fp16 ones in runs of this many
        self.dims = (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim)
        self.intermediate = cfg.intermediate_size
        weights: list[int] = []
        norms: list[int] = []
        for block in _blocks(model):
            for linear in _linears(block):
                assert isinstance(linear, DecodeLinear) and linear.packed is not None
                weights.append(linear.packed.data_ptr())
            norms += [norm.weight.data_ptr() for norm in _norms(block)]
        self._weights = (ctypes.c_void_p * len(weights))(*weights)
        self._norms = (ctypes.c_void_p * len(norms))(*norms)
        self.eps = _norms(_blocks(model)[0])[0].eps
        self._scratch = torch.empty(0)

    @classmethod
    def build(cls, model: Transformer, kernel: str | None) -> FusedBlocks | None:
        """The fused step for a decode copy whose linear layers the native kernel packed, when
        the model is one it computes: llama family, no biases, fp32 activations on the CPU,
        one packed dtype and layout throughout. None otherwise (or with PLAUDIT_FUSED_DECODE=0)."""
        cfg = model.config
        if os.environ.get(FUSED_ENV, "").strip() == "0" or kernel != "native":
            return None
        if native_gemm() is None or cfg.family != "llama" or cfg.bias:
            return None
        if cfg.n_head * cfg.head_dim != cfg.n_embd or cfg.n_head % cfg.n_kv_head:
            return None
        layouts: set[tuple[torch.dtype, int]] = set()
        for block in _blocks(model):
            for norm in (block.norm1, block.norm2):
                if not isinstance(norm, RMSNorm) or norm.weight.dtype != torch.float32:
                    return None
            for linear in _linears(block):
                if not isinstance(linear, DecodeLinear) or linear.packed is None:
                    return None
                if linear.kernel != "native" or linear.bias is not None:
                    return None
                layouts.add((linear.packed.dtype, linear.run))
        if model.tok_emb.weight.dtype != torch.float32 or model.tok_emb.weight.is_cuda:
            return None
        if len(layouts) != 1:
            return None
        ((dtype, run),) = layouts
        return cls(model, half_run=run if dtype == torch.float16 else 0)

    def step(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """Logits (A, V) fp32 of the next token for rows whose last tokens are ``tokens`` (A,),
        the cache's rows (its keys and values at the fill column written, then advanced)."""
        model = self.model
        L, C, H, Hkv, D = self.dims
        A = tokens.numel()
        assert cache.batch_size == A and cache.k.dtype == torch.float32, (
            f"the cache holds {cache.batch_size} rows of {cache.k.dtype}; the step has {A} fp32"
        )
        assert cache.pos < cache.max_len, f"KV cache full: {cache.pos} columns of {cache.max_len}"
        x = model.tok_emb(tokens).contiguous()  # (A, C)
        pos = cache.positions(1)[:, 0]  # (A,)
        cos = model.rope_cos[pos].contiguous()  # (A, D)
        sin = model.rope_sin[pos].contiguous()  # (A, D), rotate_half's sign folded in
        pad = cache.pad.contiguous()
        need = A * (2 * C + (H + 2 * Hkv) * D + 3 * self.intermediate + H * cache.max_len) + D
        if self._scratch.numel() < need:
            self._scratch = torch.empty(need)
        native = native_gemm()
        assert native is not None
        native.decode_blocks(
            x.data_ptr(), A, L, C, H, Hkv, D, self.intermediate, self._weights, self.half_run,
            self._norms, self.eps, cos.data_ptr(), sin.data_ptr(), cache.k.data_ptr(),
            cache.v.data_ptr(), cache.max_len, cache.pos, pad.data_ptr(),
            self._scratch.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        cache.advance(1)
        head = model.lm_head
        assert head is not None  # a decode copy always has one
        logits: Tensor = head(model.norm_f(x))
        return logits.float()  # (A, V)
