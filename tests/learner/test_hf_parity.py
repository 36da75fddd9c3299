"""Peer tests against `transformers`: plaudit's export loads in GPT2LMHeadModel / LlamaForCausalLM
with the same logits, and folders `transformers` saved load in plaudit with the same logits.
Also the export command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from plaudit.learner import (
    ModelConfig,
    ModelExportError,
    Tokenizer,
    Transformer,
    export_hf,
    load_model,
    save_model,
)

transformers = pytest.importorskip("transformers")

TOL = 1e-4
TEMPLATE = (
    "{% for message in messages %}{{ '<|bos|>' + message['role'] + ': ' + message['content'] }}"
    "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}{{ '<|bos|>assistant: ' }}{% endif %}"
)
TEXTS = [
    "Hello world! Posting about the weather today: sunny, 21 degrees.",
    "naïve café 👍🏽 東京 — ok?\n\n  indented\tline",
    "<|bos|>user: hi<|eos|>",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    corpus = [t * 3 for t in TEXTS] * 20
    base = Tokenizer.train_bpe(corpus, vocab_size=300)
    return Tokenizer(
        backend=base.backend,
        bos_token=base.bos_token,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        chat_template=TEMPLATE,
    )


CONFIGS = {
    "gpt2-tied": dict(family="gpt2", n_kv_head=4, intermediate_size=80, bias=True),
    "gpt2-untied": dict(
        family="gpt2", n_kv_head=4, intermediate_size=80, bias=True, tie_embeddings=False
    ),
    "llama-gqa-tied": dict(family="llama", n_kv_head=2, intermediate_size=72),
    "llama-gqa-untied": dict(
        family="llama", n_kv_head=1, intermediate_size=72, tie_embeddings=False
    ),
    "llama-bias-untied": dict(
        family="llama", n_kv_head=2, intermediate_size=72, bias=True, tie_embeddings=False
    ),
}


def random_model(vocab_size: int, seed: int, **kw: object) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab_size,
        max_seq_len=48,
        n_layer=2,
        n_head=4,
        n_embd=32,
        norm_eps=1e-5,
        rope_theta=500.0,
        **{"tie_embeddings": True, **kw},  # type: ignore[arg-type]
    )
    model = Transformer(config).eval()
    with torch.no_grad():  # every weight random, norms and biases included
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def ids(vocab_size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (3, 40), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_loads_in_transformers_with_the_same_logits(
    name: str, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    model = random_model(tokenizer.vocab_size + 4, seed=1, **CONFIGS[name])
    export_hf(tmp_path / "hf", model=model, tokenizer=tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    expected = "GPT2LMHeadModel" if model.config.family == "gpt2" else "LlamaForCausalLM"
    assert type(hf).__name__ == expected
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings
    x = ids(model.config.vocab_size, seed=2)
    with torch.no_grad():
        diff = (model(x) - hf(x).logits).abs().max().item()
    print(f"{name}: plaudit -> transformers max abs diff {diff:.2e}")
    assert diff < TOL
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_id


@pytest.mark.parametrize("name", list(CONFIGS))
def test_transformers_folder_imports_with_the_same_logits(
    name: str, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    kw = CONFIGS[name]
    torch.manual_seed(3)
    common = dict(
        vocab_size=tokenizer.vocab_size, tie_word_embeddings=kw.get("tie_embeddings", True)
    )
    if kw["family"] == "gpt2":
        config = transformers.GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=48,
            n_inner=kw["intermediate_size"],
            **common,
        )
        hf = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=kw["n_kv_head"],
            intermediate_size=kw["intermediate_size"],
            max_position_embeddings=48,
            rope_theta=500.0,
            attention_bias=kw.get("bias", False),
            mlp_bias=kw.get("bias", False),
            **common,
        )
        hf = transformers.LlamaForCausalLM(config)
    hf.eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.model.config.family == kw["family"]
    assert loaded.model.config.n_kv_head == kw["n_kv_head"]
    assert loaded.model.config.tie_embeddings == kw.get("tie_embeddings", True)
    x = ids(tokenizer.vocab_size, seed=4)
    with torch.no_grad():
        diff = (loaded.model(x) - hf(x).logits).abs().max().item()
    print(f"{name}: transformers -> plaudit max abs diff {diff:.2e}")
    assert diff < TOL


def test_exported_tokenizer_loads_in_autotokenizer(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = random_model(tokenizer.vocab_size, seed=5, family="llama", n_kv_head=2)
    export_hf(tmp_path, model=model, tokenizer=tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == (
        tokenizer.bos_token,
        tokenizer.eos_token,
        tokenizer.pad_token,
    )
    for text in [*TEXTS, "".join(TEXTS), "2024-11-22 🇫🇷\r\n"]:
        ours = tokenizer.encode(text)
        assert hf_tok(text, add_special_tokens=False).input_ids == ours
        assert hf_tok.decode(ours) == text
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey!"}]
    assert tokenizer.apply_chat_template(messages) == hf_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    # A tokenizer whose model expects BOS: transformers then prepends it by default too.
    with_bos = Tokenizer(
        backend=tokenizer.backend,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        add_bos_token=True,
    )
    export_hf(tmp_path / "bos", model=model, tokenizer=with_bos)
    hf_bos = transformers.AutoTokenizer.from_pretrained(tmp_path / "bos")
    assert hf_bos(TEXTS[0]).input_ids == with_bos.encode(TEXTS[0], add_bos=True)


def test_sharded_and_unprefixed_checkpoints_import(tokenizer: Tokenizer, tmp_path: Path) -> None:
    torch.manual_seed(6)
    config = transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=48
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    x = ids(tokenizer.vocab_size, seed=7)
    with torch.no_grad():
        want = hf(x).logits
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="40KB")
    tokenizer.save(sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    with torch.no_grad():
        assert (load_model(sharded).model(x) - want).abs().max().item() < TOL
    # The original openai-community/gpt2 weights have no "transformer." prefix.
    bare = tmp_path / "bare"
    hf.save_pretrained(bare)
    tokenizer.save(bare)
    sd = load_file(str(bare / "model.safetensors"))
    save_file(
        {k.removeprefix("transformer."): v for k, v in sd.items()}, str(bare / "model.safetensors")
    )
    with torch.no_grad():
        assert (load_model(bare).model(x) - want).abs().max().item() < TOL


def test_plaudit_folder_round_trip(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = random_model(tokenizer.vocab_size, seed=8, family="llama", n_kv_head=2)
    save_model(tmp_path / "m", model=model, tokenizer=tokenizer)
    manifest = json.loads((tmp_path / "m" / "plaudit_model.json").read_text())
    assert manifest["format"] == "plaudit-model" and manifest["version"] == 1
    assert ModelConfig.from_dict(manifest["config"]) == model.config
    save_model(tmp_path / "m", model=model, tokenizer=tokenizer)  # replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folders left
    loaded = load_model(tmp_path / "m")
    x = ids(tokenizer.vocab_size, seed=9)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.tokenizer.chat_template == TEMPLATE


def test_export_refuses_a_non_empty_folder(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = random_model(tokenizer.vocab_size, seed=10, family="gpt2", n_kv_head=4, bias=True)
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ModelExportError, match="not empty"):
        export_hf(tmp_path, model=model, tokenizer=tokenizer)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    export_hf(tmp_path, model=model, tokenizer=tokenizer, overwrite=True)
    assert not (tmp_path / "keep.txt").exists() and (tmp_path / "config.json").is_file()
    small = random_model(tokenizer.vocab_size - 10, seed=10, family="llama", n_kv_head=4)
    with pytest.raises(ModelExportError, match="embeddings"):
        export_hf(tmp_path / "new", model=small, tokenizer=tokenizer)


def test_export_command(tokenizer: Tokenizer, tmp_path: Path) -> None:
    from plaudit.daemon._cli import _register, app

    _register()
    model = random_model(tokenizer.vocab_size, seed=11, family="llama", n_kv_head=2)
    save_model(tmp_path / "m", model=model, tokenizer=tokenizer)
    runner = CliRunner()
    out = tmp_path / "hf"
    args = ["export", "--model", str(tmp_path / "m"), "--out", str(out)]
    result = runner.invoke(app, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = ids(tokenizer.vocab_size, seed=12)
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() < TOL
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--force" in again.output
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    missing = runner.invoke(
        app, ["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "new")]
    )
    assert missing.exit_code == 1 and "does not exist" in missing.output
