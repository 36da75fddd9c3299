"""Hugging Face model folders of the GPT-2 and Llama families: import into plaudit's state-dict
names and export back, so that `transformers` loads the export with the same logits.

The differences undone here:
- GPT-2 stores its linear layers as `Conv1D`, weights (in, out): transposed against nn.Linear;
  q, k, v are already fused in `c_attn`, in plaudit's [q; k; v] row order once transposed.
- Llama keeps q_proj/k_proj/v_proj and gate_proj/up_proj apart; plaudit fuses them (rows
  [q; k; v] and [gate; up]).
- A tied head has no `lm_head.weight` in either.
`transformers` is never imported here: config.json is read and written as plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from plaudit.state import StateError, atomic_folder

from ._errors import ModelExportError, ModelLoadError
from ._model import ModelConfig, Transformer
from ._tokenizer import Tokenizer

__all__ = ["export_hf", "hf_config", "read_hf_folder"]

# Buffers some older checkpoints saved next to the weights; they are derived, never weights.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


# --- import ----------------------------------------------------------------------------------


def hf_config(raw: dict[str, Any], *, source: Path) -> ModelConfig:
    """The ModelConfig equivalent of a config.json of model_type gpt2 or llama."""
    model_type = raw.get("model_type")
    try:
        if model_type == "gpt2":
            return _gpt2_config(raw, source=source)
        if model_type == "llama":
            return _llama_config(raw, source=source)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(
            f"{source / 'config.json'} is not a usable {model_type} config: {e!r}"
        ) from e
    raise ModelLoadError(
        f"{source / 'config.json'} has model_type {model_type!r}; plaudit imports 'gpt2' and "
        f"'llama' Hugging Face folders (convert other models to GGUF or retrain)."
    )


def _gpt2_config(raw: dict[str, Any], *, source: Path) -> ModelConfig:
    act = raw.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ModelLoadError(
            f"{source / 'config.json'}: activation_function {act!r} is not supported; plaudit's "
            f"GPT-2 uses the tanh GELU ('gelu_new')."
        )
    if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("scale_attn_weights") is False:
        raise ModelLoadError(
            f"{source / 'config.json'}: non-standard attention scaling "
            f"(scale_attn_by_inverse_layer_idx / scale_attn_weights) is not supported."
        )
    n_embd = int(raw["n_embd"])
    return ModelConfig(
        family="gpt2",
        vocab_size=int(raw["vocab_size"]),
        max_seq_len=int(raw["n_positions"]),
        n_layer=int(raw["n_layer"]),
        n_head=int(raw["n_head"]),
        n_kv_head=int(raw["n_head"]),
        n_embd=n_embd,
        intermediate_size=int(raw.get("n_inner") or 4 * n_embd),
        norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", True)),
        bias=True,
    )


def _llama_config(raw: dict[str, Any], *, source: Path) -> ModelConfig:
    where = source / "config.json"
    hidden, n_head = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    if raw.get("head_dim") not in (None, hidden // n_head):
        raise ModelLoadError(
            f"{where}: head_dim {raw['head_dim']} differs from hidden_size / num_attention_heads "
            f"= {hidden // n_head}; plaudit's model needs head_dim = n_embd // n_head."
        )
    if raw.get("hidden_act", "silu") != "silu":
        raise ModelLoadError(f"{where}: hidden_act {raw['hidden_act']!r} is not supported (silu).")
    # transformers 5 writes rope_parameters; 4.x wrote rope_theta and rope_scaling.
    rope = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    kinds = {rope.get("rope_type"), scaling.get("rope_type"), scaling.get("type")}
    rope_type = next((k for k in sorted(kinds - {None, "default"}, key=str)), None)
    if rope_type is not None:
        raise ModelLoadError(
            f"{where}: RoPE scaling {rope_type!r} is not supported; use a model without it."
        )
    attention_bias, mlp_bias = bool(raw.get("attention_bias")), bool(raw.get("mlp_bias"))
    if attention_bias != mlp_bias:
        raise ModelLoadError(
            f"{where}: attention_bias={attention_bias} with mlp_bias={mlp_bias} is not supported; "
            f"plaudit's llama has biases on all linear layers or on none."
        )
    return ModelConfig(
        family="llama",
        vocab_size=int(raw["vocab_size"]),
        max_seq_len=int(raw["max_position_embeddings"]),
        n_layer=int(raw["num_hidden_layers"]),
        n_head=n_head,
        n_kv_head=int(raw.get("num_key_value_heads") or n_head),
        n_embd=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta") or raw.get("rope_theta") or 10000.0),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bias=attention_bias,
    )


def read_hf_folder(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and fp32 state dict (plaudit names) of a Hugging Face folder: config.json and
    model.safetensors, or shards listed in model.safetensors.index.json."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"No config.json in {path}; a Hugging Face model folder needs one.")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{config_path} is not valid JSON: {e}") from e
    config = hf_config(raw, source=path)
    hf = _read_safetensors(path)
    sd = _gpt2_from_hf(hf, config) if config.family == "gpt2" else _llama_from_hf(hf, config)
    leftover = sorted(k for k in hf if not k.endswith(_IGNORED_SUFFIXES) and k != "lm_head.weight")
    if leftover:
        raise ModelLoadError(
            f"{path} has tensors plaudit's {config.family} model has no place for: "
            f"{', '.join(leftover[:5])}{' ...' if len(leftover) > 5 else ''}; check that "
            f"config.json matches the weights."
        )
    return config, sd


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = [path / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        hint = (
            " (only PyTorch .bin weights: re-save with safe_serialization=True)"
            if any(path.glob("*.bin"))
            else ""
        )
        raise ModelLoadError(f"No *.safetensors weights in {path}{hint}.")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise ModelLoadError(f"Weight shard {file} listed in the index is missing.")
        tensors.update(load_file(str(file)))
    return {k: v.float() for k, v in tensors.items()}


class _Taker:
    """Pops named tensors out of a checkpoint, checking each shape against the config."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __call__(self, name: str, *shape: int) -> torch.Tensor:
        t = self.tensors.pop(name, None)
        if t is None:
            raise ModelLoadError(
                f"Tensor {name!r} is missing from the checkpoint; the weights are incomplete or "
                f"do not belong to this config.json."
            )
        if tuple(t.shape) != shape:
            raise ModelLoadError(
                f"Tensor {name!r} has shape {tuple(t.shape)}, expected {shape} from config.json; "
                f"the weights do not belong to this config."
            )
        return t


def _gpt2_from_hf(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    # The original openai-community/gpt2 files have no "transformer." prefix.
    if "wte.weight" in hf:
        for k in list(hf):
            if k != "lm_head.weight":
                hf["transformer." + k] = hf.pop(k)
    take = _Taker(hf)
    C, inner, V = config.n_embd, config.intermediate_size, config.vocab_size
    sd = {
        "tok_emb.weight": take("transformer.wte.weight", V, C),
        "pos_emb.weight": take("transformer.wpe.weight", config.max_seq_len, C),
        "norm_f.weight": take("transformer.ln_f.weight", C),
        "norm_f.bias": take("transformer.ln_f.bias", C),
    }
    for i in range(config.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for norm, ln in (("norm1", "ln_1"), ("norm2", "ln_2")):
            sd[f"{b}{norm}.weight"] = take(f"{h}{ln}.weight", C)
            sd[f"{b}{norm}.bias"] = take(f"{h}{ln}.bias", C)
        # Conv1D weights are (in, out): transpose into nn.Linear's (out, in).
        for ours, theirs, n_in, n_out in (
            ("attn.qkv", "attn.c_attn", C, 3 * C),
            ("attn.proj", "attn.c_proj", C, C),
            ("mlp.fc", "mlp.c_fc", C, inner),
            ("mlp.proj", "mlp.c_proj", inner, C),
        ):
            sd[f"{b}{ours}.weight"] = take(f"{h}{theirs}.weight", n_in, n_out).t().contiguous()
            sd[f"{b}{ours}.bias"] = take(f"{h}{theirs}.bias", n_out)
    if not config.tie_embeddings:
        sd["lm_head.weight"] = take("lm_head.weight", V, C)
    return sd


def _llama_from_hf(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    take = _Taker(hf)
    C, inner, V = config.n_embd, config.intermediate_size, config.vocab_size
    D = config.head_dim
    q_rows, kv_rows = config.n_head * D, config.n_kv_head * D
    sd = {
        "tok_emb.weight": take("model.embed_tokens.weight", V, C),
        "norm_f.weight": take("model.norm.weight", C),
    }
    for i in range(config.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        sd[b + "norm1.weight"] = take(h + "input_layernorm.weight", C)
        sd[b + "norm2.weight"] = take(h + "post_attention_layernorm.weight", C)
        parts = (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows))
        sd[b + "attn.qkv.weight"] = torch.cat(
            [take(f"{h}self_attn.{n}.weight", rows, C) for n, rows in parts]
        )
        sd[b + "attn.proj.weight"] = take(h + "self_attn.o_proj.weight", C, C)
        sd[b + "mlp.fc.weight"] = torch.cat(
            [take(h + "mlp.gate_proj.weight", inner, C), take(h + "mlp.up_proj.weight", inner, C)]
        )
        sd[b + "mlp.proj.weight"] = take(h + "mlp.down_proj.weight", C, inner)
        if config.bias:
            sd[b + "attn.qkv.bias"] = torch.cat(
                [take(f"{h}self_attn.{n}.bias", rows) for n, rows in parts]
            )
            sd[b + "attn.proj.bias"] = take(h + "self_attn.o_proj.bias", C)
            sd[b + "mlp.fc.bias"] = torch.cat(
                [take(h + "mlp.gate_proj.bias", inner), take(h + "mlp.up_proj.bias", inner)]
            )
            sd[b + "mlp.proj.bias"] = take(h + "mlp.down_proj.bias", C)
    if not config.tie_embeddings:
        sd["lm_head.weight"] = take("lm_head.weight", V, C)
    return sd


# --- export ----------------------------------------------------------------------------------


def export_hf(
    path: Path, *, model: Transformer, tokenizer: Tokenizer, overwrite: bool = False
) -> None:
    """Write a Hugging Face folder (config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json, generation_config.json) that
    `transformers.AutoModelForCausalLM.from_pretrained(path)` loads with the same logits.
    The folder is written next to `path` and renamed into place, so it is never half-written."""
    config = model.config
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if config.family == "gpt2":
        tensors, hf_cfg = _gpt2_to_hf(sd, config), _gpt2_hf_config(config)
    else:
        tensors, hf_cfg = _llama_to_hf(sd, config), _llama_hf_config(config)
    # Token ids are the tokenizer's; models trained by plaudit may have a padded vocabulary.
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelExportError(
            f"The tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size} embeddings; export the tokenizer the model was trained with."
        )
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
    hf_cfg |= ids | {"pad_token_id": tokenizer.pad_id}
    eos: int | list[int] | None = list(tokenizer.stop_ids) or None
    if isinstance(eos, list) and len(eos) == 1:
        eos = eos[0]
    generation = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": eos,
        "pad_token_id": tokenizer.pad_id,
    }
    try:
        with atomic_folder(path, replace=overwrite) as tmp:
            save_file(
                {k: v.contiguous() for k, v in tensors.items()},
                str(tmp / "model.safetensors"),
                metadata={"format": "pt"},
            )
            _write_json(tmp / "config.json", hf_cfg)
            _write_json(tmp / "generation_config.json", generation)
            tokenizer.save(tmp, model_max_length=config.max_seq_len)
    except StateError as e:  # a LearnerError, which the CLI reports as one line
        raise ModelExportError(str(e)) from e


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _common_hf_config(config: ModelConfig) -> dict[str, Any]:
    return {
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": "float32",  # transformers 4.x
        "dtype": "float32",  # transformers 5
        "use_cache": True,
    }


def _gpt2_hf_config(config: ModelConfig) -> dict[str, Any]:
    return _common_hf_config(config) | {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_positions": config.max_seq_len,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.intermediate_size,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


def _llama_hf_config(config: ModelConfig) -> dict[str, Any]:
    return _common_hf_config(config) | {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # transformers 4.x
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": config.bias,
        "attention_dropout": 0.0,
        "mlp_bias": config.bias,
        "pretraining_tp": 1,
    }


def _gpt2_to_hf(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    def bias_of(name: str, size: int) -> torch.Tensor:
        # HF GPT-2 always has biases; a zero bias is the same function as none.
        return sd.get(name, torch.zeros(size))

    C = config.n_embd
    out = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        "transformer.wpe.weight": sd["pos_emb.weight"],
        "transformer.ln_f.weight": sd["norm_f.weight"],
        "transformer.ln_f.bias": bias_of("norm_f.bias", C),
    }
    for i in range(config.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for norm, ln in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[f"{h}{ln}.weight"] = sd[f"{b}{norm}.weight"]
            out[f"{h}{ln}.bias"] = bias_of(f"{b}{norm}.bias", C)
        for ours, theirs in (
            ("attn.qkv", "attn.c_attn"),
            ("attn.proj", "attn.c_proj"),
            ("mlp.fc", "mlp.c_fc"),
            ("mlp.proj", "mlp.c_proj"),
        ):
            w = sd[f"{b}{ours}.weight"]  # (out, in)
            out[f"{h}{theirs}.weight"] = w.t().contiguous()  # Conv1D: (in, out)
            out[f"{h}{theirs}.bias"] = bias_of(f"{b}{ours}.bias", w.shape[0])
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _llama_to_hf(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    D = config.head_dim
    split = [config.n_head * D, config.n_kv_head * D, config.n_kv_head * D]
    out = {
        "model.embed_tokens.weight": sd["tok_emb.weight"],
        "model.norm.weight": sd["norm_f.weight"],
    }
    for i in range(config.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        out[h + "input_layernorm.weight"] = sd[b + "norm1.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[b + "norm2.weight"]
        kinds = ("weight", "bias") if config.bias else ("weight",)
        for kind in kinds:
            q, k, v = torch.split(sd[f"{b}attn.qkv.{kind}"], split)
            out[f"{h}self_attn.q_proj.{kind}"] = q
            out[f"{h}self_attn.k_proj.{kind}"] = k
            out[f"{h}self_attn.v_proj.{kind}"] = v
            out[f"{h}self_attn.o_proj.{kind}"] = sd[f"{b}attn.proj.{kind}"]
            gate, up = sd[f"{b}mlp.fc.{kind}"].chunk(2)
            out[f"{h}mlp.gate_proj.{kind}"] = gate
            out[f"{h}mlp.up_proj.{kind}"] = up
            out[f"{h}mlp.down_proj.{kind}"] = sd[f"{b}mlp.proj.{kind}"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out
