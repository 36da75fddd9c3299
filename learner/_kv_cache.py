"""The KV cache the model attends over while generating: keys and values of every layer,
preallocated, with per-row left padding. Its own module because both the model (which writes
it) and the engine (which owns it) need it, and the engine imports the model."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class KVStore(Protocol):
    """What the model's forward needs of a cache: where new tokens sit, what they attend to,
    and somewhere to put each layer's keys and values."""

    def positions(self, T: int) -> Tensor: ...

    def attention_mask(self, T: int) -> Tensor | None: ...

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]: ...

    def advance(self, T: int) -> None: ...


def _attention_mask(pad: Tensor, pos: int, T: int) -> Tensor | None:
    """Boolean mask (B, 1, T, pos + T) for T new tokens after ``pos`` filled columns of rows
    left-padded by ``pad`` (B,), True = attend; None when a plain causal (fresh, unpadded) or
    unmasked (one token, unpadded) attention is exact."""
    if not bool(pad.any()) and (T == 1 or pos == 0):
        return None
    q = torch.arange(pos, pos + T, device=pad.device)[:, None]  # (T, 1)
    k = torch.arange(pos + T, device=pad.device)[None, :]  # (1, Tk)
    causal = k <= q  # (T, Tk)
    # A padding query attends to itself only, so its (unused) output is finite, not NaN.
    real = (k[None] >= pad[:, None, None]) | (k == q)[None]  # (B, T, Tk)
    return (causal[None] & real).unsqueeze(1)  # (B, 1, T, Tk)


class KVCache:
    """Keys and values of every layer, allocated up front: (n_layer, B, n_kv_head, max_len, D).

    `pos` columns are filled, the same number in every row; `pad[b]` leading columns of row b
    are padding. `update` writes a layer's new keys and values at the fill point and returns
    the filled views; the model calls `advance` once after its last layer."""

    def __init__(
        self,
        *,
        batch_size: int,
        n_layer: int,
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        assert batch_size > 0 and max_len > 0, (
            f"a KV cache needs rows and columns, got batch_size {batch_size}, max_len {max_len}"
        )
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pad = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        self.pos = 0
        self.n_layer = n_layer
        self.max_len = max_len

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def reset(self) -> None:
        self.pos = 0
        self.pad.zero_()

    def set_padding(self, pad: Tensor) -> None:
        """Declare how many leading columns of each row are padding (before any prefill)."""
        assert self.pos == 0, "set the padding of an empty cache only: call reset() first"
        assert pad.shape == self.pad.shape, f"pad must be ({self.batch_size},), got {pad.shape}"
        self.pad.copy_(pad)

    def prefill(self, other: KVCache, *, rows: Tensor) -> None:
        """Fill this (empty) cache with `other`'s rows: row b here = row rows[b] there. Used to
        prefill each distinct prompt once and copy it to its n samples."""
        assert self.pos == 0, "prefill into an empty cache only: call reset() first"
        assert other.pos <= self.max_len, (
            f"the source cache holds {other.pos} columns, this one has room for {self.max_len}"
        )
        assert rows.numel() == self.batch_size, (
            f"need one source row per row ({self.batch_size}), got {rows.numel()}"
        )
        assert self.k.shape[0::2] == other.k.shape[0::2], (
            f"caches differ in layers, heads or head_dim: "
            f"{tuple(self.k.shape)} vs {tuple(other.k.shape)}"
        )
        n = other.pos
        self.k[:, :, :, :n] = other.k[:, rows, :, :n]
        self.v[:, :, :, :n] = other.v[:, rows, :, :n]
        self.pad.copy_(other.pad[rows])
        self.pos = n

    def positions(self, T: int) -> Tensor:
        """Positions (B, T) of T tokens about to be written; padding columns clamp to 0."""
        cols = torch.arange(self.pos, self.pos + T, device=self.pad.device)  # (T,)
        return (cols[None, :] - self.pad[:, None]).clamp(min=0)  # (B, T)

    def attention_mask(self, T: int) -> Tensor | None:
        """Boolean mask (B, 1, T, pos + T) for T new tokens, True = attend; None when a plain
        causal (fresh, unpadded) or unmasked (one token, unpadded) attention is exact."""
        return _attention_mask(self.pad, self.pos, T)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, n_kv_head, T, D) of `layer` at the fill point; return the filled
        keys and values (B, n_kv_head, pos + T, D) as views (no copy)."""
        T = k.size(2)
        assert 0 <= layer < self.n_layer, f"layer {layer} out of range (cache has {self.n_layer})"
        assert self.pos + T <= self.max_len, (
            f"KV cache full: {self.pos} columns filled + {T} new > capacity {self.max_len}"
        )
        end = self.pos + T
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def keep(self, rows: Tensor) -> None:
        """Drop every row but `rows` (finished samples stop costing compute)."""
        assert rows.dim() == 1 and 0 < rows.numel() <= self.batch_size, (
            f"keep needs 1..{self.batch_size} row indices, got shape {tuple(rows.shape)}"
        )
        n = self.pos
        k = self.k.new_empty((self.n_layer, rows.numel(), *self.k.shape[2:]))
        v = self.v.new_empty((self.n_layer, rows.numel(), *self.v.shape[2:]))
        k[:, :, :, :n] = self.k[:, rows, :, :n]
        v[:, :, :, :n] = self.v[:, rows, :, :n]
        self.k, self.v, self.pad = k, v, self.pad[rows]

    def advance(self, T: int) -> None:
        assert self.pos + T <= self.max_len, (
            f"cannot advance past capacity: {self.pos} + {T} > {self.max_len}"
        )
        self.pos += T


class PromptCache:
    """Shared prompts, then the rows that continue them, with gradient: a forward over the
    distinct prompts (left-padded by ``pad``) keeps each layer's keys and values as they are
    (no buffer, no in-place write: autograd sees plain tensors); after `continue_rows`, a
    forward of the continuations attends to its own prompt's (row b continues prompt
    ``owner[b]``) and to itself. Each prompt runs once however many rows continue it."""

    def __init__(self, pad: Tensor) -> None:
        self.pad = pad  # (P,) until continue_rows, then (B,)
        self.pos = 0
        self._k: list[Tensor] = []
        self._v: list[Tensor] = []
        self._owner: Tensor | None = None

    def continue_rows(self, owner: Tensor) -> None:
        """From now on rows are continuations: row b continues prompt owner[b]."""
        assert self._owner is None and self.pos > 0, "run the prompts first, once"
        self._owner = owner
        self.pad = self.pad[owner]

    def positions(self, T: int) -> Tensor:
        cols = torch.arange(self.pos, self.pos + T, device=self.pad.device)  # (T,)
        return (cols[None, :] - self.pad[:, None]).clamp(min=0)  # (B, T)

    def attention_mask(self, T: int) -> Tensor | None:
        return _attention_mask(self.pad, self.pos, T)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self._owner is None:  # the prompts: kept for their continuations
            assert layer == len(self._k), "layers in order, once"
            self._k.append(k)
            self._v.append(v)
            return k, v
        owner = self._owner
        return (
            torch.cat((self._k[layer][owner], k), dim=2),
            torch.cat((self._v[layer][owner], v), dim=2),
        )

    def advance(self, T: int) -> None:
        self.pos += T
