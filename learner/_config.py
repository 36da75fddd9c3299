"""The model's configuration and the size presets, without torch: what `plaudit models` lists
needs no tensors, and the parameter count follows from the shapes (learner/_model.py, whose
state-dict names the docstring there lists)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["PRESETS", "Family", "ModelConfig"]

Family = Literal["gpt2", "llama"]


@dataclass
class ModelConfig:
    family: Family = "llama"
    vocab_size: int = 8192
    max_seq_len: int = 1024
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4  # < n_head means grouped-query attention (llama only)
    n_embd: int = 256
    intermediate_size: int = 1024  # MLP hidden width (gpt2: usually 4 * n_embd)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0  # llama only
    tie_embeddings: bool = True
    bias: bool = False  # gpt2: True (linear and LayerNorm biases); llama: linear biases only

    def __post_init__(self) -> None:
        if self.family not in ("gpt2", "llama"):
            raise ValueError(f"unknown model family {self.family!r}: use 'gpt2' or 'llama'")
        for name in ("vocab_size", "max_seq_len", "n_layer", "n_head", "n_kv_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model config {name} must be a positive integer, got {value!r}")
        if self.intermediate_size <= 0:
            raise ValueError(
                f"model config intermediate_size must be positive, got {self.intermediate_size}"
            )
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: "
                "pick sizes where n_embd = n_head * head_dim"
            )
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}: "
                "each key/value head must serve the same number of query heads"
            )
        if self.family == "gpt2" and self.n_kv_head != self.n_head:
            raise ValueError(
                f"gpt2 has no grouped-query attention: set n_kv_head = n_head ({self.n_head})"
            )
        if self.family == "llama" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def num_params(self, *, exclude_embeddings: bool = False) -> int:
        """`Transformer(self).num_params()` from the shapes alone (no tensors, no torch)."""
        C, mlp, hd = self.n_embd, self.intermediate_size, self.head_dim
        gpt2 = self.family == "gpt2"
        norm = C * (2 if gpt2 and self.bias else 1)  # LayerNorm's bias with gpt2's biases
        qkv = C * (self.n_head + 2 * self.n_kv_head) * hd
        fc_out = mlp if gpt2 else 2 * mlp  # llama: [gate; up]
        linears = qkv + C * C + C * fc_out + mlp * C
        if self.bias:
            linears += (self.n_head + 2 * self.n_kv_head) * hd + C + fc_out + C
        embeddings = self.vocab_size * C + (self.max_seq_len * C if gpt2 else 0)
        head = 0 if self.tie_embeddings else self.vocab_size * C
        body = self.n_layer * (2 * norm + linears) + norm + head
        return body if exclude_embeddings else body + embeddings

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


def _preset(**kw: Any) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=8192, tie_embeddings=True, **kw)


# Llama-family sizes for training from scratch; parameter counts at vocab 8192 (tied head):
# nano 1.6M, micro 3.3M, tiny 7.2M, small 26.7M, medium 85.9M, large 214M, xl 486M, xxl 805M.
# Training replaces vocab_size with the trained tokenizer's.
PRESETS: dict[str, ModelConfig] = {
    "nano": _preset(n_layer=2, n_head=4, n_kv_head=4, n_embd=128, intermediate_size=512),
    "micro": _preset(n_layer=4, n_head=6, n_kv_head=6, n_embd=192, intermediate_size=512),
    "tiny": _preset(n_layer=6, n_head=4, n_kv_head=4, n_embd=256, intermediate_size=768),
    "small": _preset(n_layer=8, n_head=8, n_kv_head=8, n_embd=512, intermediate_size=1152),
    "medium": _preset(n_layer=12, n_head=12, n_kv_head=12, n_embd=768, intermediate_size=1856),
    "large": _preset(n_layer=16, n_head=16, n_kv_head=16, n_embd=1024, intermediate_size=2816),
    "xl": _preset(n_layer=24, n_head=20, n_kv_head=20, n_embd=1280, intermediate_size=3456),
    "xxl": _preset(n_layer=28, n_head=24, n_kv_head=24, n_embd=1536, intermediate_size=4096),
}
