"""Read a llama-architecture GGUF file (llama.cpp's format) into a plaudit config and state dict.

What differs from a Hugging Face checkpoint, and is undone here:
- tensors may be quantised (Q4_1, Q8_0, ...): `gguf.quants.dequantize` gives fp32 back;
- llama.cpp's converter permutes the rows of Q and K within each head (it pairs rotary
  dimensions (i, i + d/2) as adjacent rows, where HF keeps the two halves apart): `_unpermute`;
- there is no `output.weight` when the head shares the embedding (tied);
- the config lives in metadata keys `llama.*`, the tokenizer in `tokenizer.*` (see
  `Tokenizer.from_gguf`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from ._errors import ModelLoadError
from ._model import ModelConfig

__all__ = ["gguf_config", "gguf_field", "gguf_state_dict", "open_gguf"]

_MISSING: Any = object()


def open_gguf(path: Path) -> gguf.GGUFReader:
    """Open `path` as a GGUF file (memory-mapped; nothing is dequantised yet)."""
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist; check the path.")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {e}") from e


def gguf_field(reader: gguf.GGUFReader, key: str, default: Any = _MISSING) -> Any:
    """The value of metadata `key`: a str, int, float, bool or a list of those. Without a
    default, a missing key raises ModelLoadError."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise ModelLoadError(
                f"The GGUF file has no metadata key {key!r}; it was not written by a llama.cpp "
                f"converter plaudit understands (re-convert it with convert_hf_to_gguf.py)."
            )
        return default

    def value(index: int, kind: gguf.GGUFValueType) -> Any:
        part = field.parts[index]
        if kind == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        return part[0].item()

    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [value(i, field.types[-1]) for i in field.data]
    return value(field.data[0], field.types[0])


def gguf_config(reader: gguf.GGUFReader) -> ModelConfig:
    """A ModelConfig from the `llama.*` metadata. Only the llama architecture is supported."""
    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise ModelLoadError(
            f"The GGUF architecture is {arch!r}; plaudit imports only 'llama' GGUF files "
            f"(Llama, SmolLM, Mistral-style). Convert the model to a Hugging Face folder of the "
            f"GPT-2 or Llama family instead."
        )
    scaling = gguf_field(reader, "llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear") or (
        scaling == "linear" and gguf_field(reader, "llama.rope.scaling.factor", 1.0) != 1.0
    ):
        raise ModelLoadError(
            f"The GGUF uses RoPE scaling {scaling!r}, which plaudit's model does not implement; "
            f"use a model without RoPE scaling."
        )
    n_embd = int(gguf_field(reader, "llama.embedding_length"))
    n_head = int(gguf_field(reader, "llama.attention.head_count"))
    n_kv_head = int(gguf_field(reader, "llama.attention.head_count_kv", n_head))
    head_dim = n_embd // n_head
    for key in ("llama.attention.key_length", "llama.rope.dimension_count"):
        found = gguf_field(reader, key, head_dim)
        if found != head_dim:
            raise ModelLoadError(
                f"GGUF {key}={found} differs from embedding_length / head_count = {head_dim}; "
                f"plaudit's model needs full-width rotary heads of size n_embd // n_head."
            )
    tokens = gguf_field(reader, "tokenizer.ggml.tokens", [])
    vocab_size = int(gguf_field(reader, "llama.vocab_size", len(tokens)))
    if vocab_size == 0:
        vocab_size = int(_tensor(reader, "token_embd.weight").shape[1])
    return ModelConfig(
        family="llama",
        vocab_size=vocab_size,
        max_seq_len=int(gguf_field(reader, "llama.context_length")),
        n_layer=int(gguf_field(reader, "llama.block_count")),
        n_head=n_head,
        n_kv_head=n_kv_head,
        n_embd=n_embd,
        intermediate_size=int(gguf_field(reader, "llama.feed_forward_length")),
        norm_eps=_f32(gguf_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=_f32(gguf_field(reader, "llama.rope.freq_base", 10000.0)),
        tie_embeddings=_find(reader, "output.weight") is None,
        bias=False,
    )


def gguf_state_dict(reader: gguf.GGUFReader, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Dequantised fp32 tensors of the file under plaudit's state-dict names."""
    head_dim = config.n_embd // config.n_head
    known = {"token_embd.weight", "output_norm.weight", "output.weight"}

    def get(name: str) -> torch.Tensor:
        known.add(name)
        return _dequantize(reader, name)

    sd: dict[str, torch.Tensor] = {
        "tok_emb.weight": get("token_embd.weight"),
        "norm_f.weight": get("output_norm.weight"),
    }
    if not config.tie_embeddings:
        sd["lm_head.weight"] = get("output.weight")
    for i in range(config.n_layer):
        p, b = f"blk.{i}.", f"blocks.{i}."
        q = _unpermute(get(p + "attn_q.weight"), config.n_head, head_dim)
        k = _unpermute(get(p + "attn_k.weight"), config.n_kv_head, head_dim)
        v = get(p + "attn_v.weight")
        sd[b + "attn.qkv.weight"] = torch.cat([q, k, v], dim=0)
        sd[b + "attn.proj.weight"] = get(p + "attn_output.weight")
        sd[b + "mlp.fc.weight"] = torch.cat(
            [get(p + "ffn_gate.weight"), get(p + "ffn_up.weight")], dim=0
        )
        sd[b + "mlp.proj.weight"] = get(p + "ffn_down.weight")
        sd[b + "norm1.weight"] = get(p + "attn_norm.weight")
        sd[b + "norm2.weight"] = get(p + "ffn_norm.weight")
    extra = sorted(t.name for t in reader.tensors if t.name not in known)
    if extra:
        raise ModelLoadError(
            f"The GGUF has tensors plaudit's llama model has no place for: {', '.join(extra[:5])}"
            f"{' ...' if len(extra) > 5 else ''} (biases, RoPE frequency factors or experts are "
            f"not supported); use a plain Llama-family model."
        )
    return sd


def _f32(value: float) -> float:
    """GGUF stores these as float32: 1e-5 reads back as 9.99999974e-06. Take the shortest decimal
    that is the same float32 (what the config said), so configs compare equal after a round trip."""
    return float(str(np.float32(value)))


def _find(reader: gguf.GGUFReader, name: str) -> Any:
    for t in reader.tensors:
        if t.name == name:
            return t
    return None


def _tensor(reader: gguf.GGUFReader, name: str) -> Any:
    t = _find(reader, name)
    if t is None:
        raise ModelLoadError(
            f"The GGUF has no tensor {name!r}; the file is incomplete or not a llama model."
        )
    return t


def _dequantize(reader: gguf.GGUFReader, name: str) -> torch.Tensor:
    t = _tensor(reader, name)
    try:
        array = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError as e:
        raise ModelLoadError(
            f"GGUF tensor {name!r} is of type {t.tensor_type.name}, which the gguf package "
            f"cannot dequantise; re-quantise the model to Q8_0, Q4_0/Q4_1, Q5_0/Q5_1, F16 or F32."
        ) from e
    # GGUF lists dimensions innermost first; numpy's order is the reverse.
    shape = tuple(int(n) for n in reversed(t.shape))
    array = np.ascontiguousarray(array, dtype=np.float32).reshape(shape)
    if not array.flags.writeable:  # F32 tensors are views of the read-only memory map
        array = array.copy()
    return torch.from_numpy(array)


def _unpermute(w: torch.Tensor, n_head: int, head_dim: int) -> torch.Tensor:
    """Undo llama.cpp's `permute` (convert_hf_to_gguf.py), which stores each head's rows as
    (head_dim/2, 2) where HF keeps (2, head_dim/2): the rotate_half layout."""
    rows, cols = w.shape
    if rows != n_head * head_dim:
        raise ModelLoadError(
            f"A GGUF Q/K weight has {rows} rows where {n_head} heads of {head_dim} need "
            f"{n_head * head_dim}; the head counts in the metadata do not match the tensors."
        )
    w = w.reshape(n_head, head_dim // 2, 2, cols)  # (H, hd/2, 2, C) as llama.cpp stores it
    return w.transpose(1, 2).reshape(rows, cols)  # (H, 2, hd/2, C) -> rows of HF's layout
