"""GGUF import: a tiny llama GGUF written here the way llama.cpp's converter writes one (Q/K rows
permuted per head, quantised matrices, no output tensor when tied) must give back the original
model's logits and tokenizer. Slow tests run the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plaudit.learner import ModelConfig, Tokenizer, Transformer, load_model
from plaudit.learner._gguf import open_gguf

CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "posting about the weather: sunny, then rain, then sun again",
    "<|im_start|>user\nhello there<|im_end|>",
] * 30


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `LlamaModel.permute`, verbatim in effect."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_llama_gguf(
    path: Path,
    model: Transformer,
    tokenizer: Tokenizer,
    *,
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    pre: str = "smollm",
) -> None:
    """Write `model` and `tokenizer` as a llama GGUF; matrices in `qtype`, norms in F32."""
    cfg = model.config
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    D = cfg.head_dim
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_kv_head)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(D)
    w.add_vocab_size(cfg.vocab_size)

    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = json.loads(tokenizer.backend.to_str())["model"]["merges"]
    specials = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values()}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges([" ".join(m) for m in merges])
    assert tokenizer.bos_id is not None and tokenizer.eos_id is not None
    w.add_bos_token_id(tokenizer.bos_id)
    w.add_eos_token_id(tokenizer.eos_id)
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)

    def matrix(name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=np.float32)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, array)
        else:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)

    matrix("token_embd.weight", sd["tok_emb.weight"])
    w.add_tensor("output_norm.weight", sd["norm_f.weight"])
    if not cfg.tie_embeddings:
        matrix("output.weight", sd["lm_head.weight"])
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        q, k, v = np.split(
            sd[b + "attn.qkv.weight"], [cfg.n_head * D, (cfg.n_head + cfg.n_kv_head) * D]
        )
        gate, up = np.split(sd[b + "mlp.fc.weight"], 2)
        matrix(f"blk.{i}.attn_q.weight", llama_cpp_permute(q, cfg.n_head))
        matrix(f"blk.{i}.attn_k.weight", llama_cpp_permute(k, cfg.n_kv_head))
        matrix(f"blk.{i}.attn_v.weight", v)
        matrix(f"blk.{i}.attn_output.weight", sd[b + "attn.proj.weight"])
        matrix(f"blk.{i}.ffn_gate.weight", gate)
        matrix(f"blk.{i}.ffn_up.weight", up)
        matrix(f"blk.{i}.ffn_down.weight", sd[b + "mlp.proj.weight"])
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[b + "norm1.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[b + "norm2.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    base = Tokenizer.train_bpe(CORPUS, vocab_size=320)
    base.backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return Tokenizer(
        backend=base.backend,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        chat_template="{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}",
    )


def random_llama(tokenizer: Tokenizer, *, tied: bool, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        family="llama",
        vocab_size=tokenizer.vocab_size,
        max_seq_len=64,
        n_layer=2,
        n_head=4,
        n_kv_head=2,  # grouped-query attention: K is permuted with its own head count
        n_embd=64,
        intermediate_size=96,  # multiples of 32: Q8_0 blocks
        rope_theta=5000.0,
        norm_eps=1e-5,
        tie_embeddings=tied,
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():  # non-trivial norms, so a norm mix-up shows in the logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_f32_gguf_gives_the_original_logits(
    tokenizer: Tokenizer, tmp_path: Path, tied: bool
) -> None:
    model = random_llama(tokenizer, tied=tied)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, model, tokenizer)
    loaded = load_model(path)
    assert loaded.model.config == model.config
    assert ("lm_head.weight" in loaded.model.state_dict()) is not tied
    x = torch.randint(
        0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        diff = (loaded.model(x) - model(x)).abs().max().item()
    assert diff < 1e-5


def test_q8_0_gguf_matches_its_dequantised_weights(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = random_llama(tokenizer, tied=True)
    path = tmp_path / "tiny-q8.gguf"
    write_llama_gguf(path, model, tokenizer, qtype=gguf.GGMLQuantizationType.Q8_0)
    assert {t.tensor_type.name for t in open_gguf(path).tensors} == {"Q8_0", "F32"}
    # The reference: the original weights pushed through Q8_0 and back, no permutation involved.
    Q8 = gguf.GGMLQuantizationType.Q8_0
    reference = random_llama(tokenizer, tied=True)
    with torch.no_grad():
        for p in reference.parameters():
            if p.dim() == 2:
                a = p.numpy()
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, Q8), Q8)))
    loaded = load_model(path)
    x = torch.randint(
        0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        got, want, original = loaded.model(x), reference(x), model(x)
    assert (got - want).abs().max().item() < 1e-5
    assert (got - original).abs().max().item() > 0  # it really was quantised
    assert (got - original).abs().max().item() < 0.05


def test_gguf_tokenizer_is_rebuilt(tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tok.gguf"
    write_llama_gguf(path, random_llama(tokenizer, tied=True), tokenizer)
    tok = Tokenizer.from_gguf(open_gguf(path))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (
        tokenizer.bos_id,
        tokenizer.eos_id,
        tokenizer.vocab_size,
    )
    assert tok.chat_template == tokenizer.chat_template
    # Without digits both split text the same way; control tokens stay whole.
    text = "the cat sat on the mat <|im_start|>user\nhello 👍 wörld<|im_end|>"
    assert tok.encode(text) == tokenizer.encode(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|im_end|>") == [tokenizer.backend.token_to_id("<|im_end|>")]
    # The `smollm` pre-tokenizer puts every digit in a token of its own.
    assert [tok.decode([i]) for i in tok.encode("2024")] == ["2", "0", "2", "4"]
    assert tok.stop_ids[0] == tok.eos_id and tokenizer.backend.token_to_id("<|im_end|>") in (
        tok.stop_ids
    )


def test_converted_gguf_is_cached(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = random_llama(tokenizer, tied=False)
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, model, tokenizer)
    cache = tmp_path / "cache"
    first = load_model(path, cache_dir=cache)
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    assert (folder / "plaudit_model.json").is_file() and (folder / "model.safetensors").is_file()
    second = load_model(path, cache_dir=cache)
    assert "(cached in" in second.source and "(cached in" not in first.source
    x = torch.arange(16)[None, :]
    with torch.no_grad():
        assert torch.equal(first.model(x), second.model(x))
    assert second.tokenizer.chat_template == tokenizer.chat_template
    assert list(tmp_path.glob(".*")) == [] and list(cache.glob(".*")) == []
    # A damaged cache is converted again (with a warning), never a reason to fail.
    weights = folder / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    third = load_model(path, cache_dir=cache)
    assert "(cached in" not in third.source
    with torch.no_grad():
        assert torch.equal(first.model(x), third.model(x))
    assert "(cached in" in load_model(path, cache_dir=cache).source
    # A cache converted before checksums is used, and sealed with them for the next loads.
    (folder / "checksums.json").unlink()
    assert "(cached in" in load_model(path, cache_dir=cache).source
    assert (folder / "checksums.json").is_file()


def test_a_gguf_is_hashed_again_only_when_its_stat_changes(
    tokenizer: Tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plaudit.learner import _load as load_module

    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, random_llama(tokenizer, tied=False), tokenizer)
    cache = tmp_path / "cache"
    hashed: list[Path] = []
    sha256 = load_module._sha256
    monkeypatch.setattr(load_module, "_sha256", lambda p: hashed.append(p) or sha256(p))
    first = load_model(path, cache_dir=cache)
    second = load_model(path, cache_dir=cache)
    assert hashed == [path] and "(cached in" in second.source
    # Other bytes (another model written over it): a new stat, hashed, its own conversion.
    write_llama_gguf(path, random_llama(tokenizer, tied=True), tokenizer)
    third = load_model(path, cache_dir=cache)
    assert hashed == [path, path] and "(cached in" not in third.source
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
    x = torch.arange(16)[None, :]
    with torch.no_grad():
        assert not torch.equal(first.model(x), third.model(x))
    # A damaged digest file is a cache: rebuilt, never a reason to fail.
    (cache / load_module.DIGESTS_FILE).write_text("{not json", encoding="utf-8")
    assert "(cached in" in load_model(path, cache_dir=cache).source
    assert len(hashed) == 3


def test_dtype_casts_parameters_only(tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_llama_gguf(path, random_llama(tokenizer, tied=True), tokenizer)
    loaded = load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.model.rope_cos.dtype == torch.float32
    assert not loaded.model.training


# --- the real SmolLM2-135M-Instruct (slow) ------------------------------------------------------

PARAGRAPH = (
    "The weather was warm and sunny, so we decided to go for a walk in the park. We saw many "
    "people walking their dogs and children playing on the grass. After an hour, we sat down on "
    "a bench and ate our lunch."
)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_model("smollm2", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2) -> None:  # type: ignore[no-untyped-def]
    tok, model = smollm2.tokenizer, smollm2.model
    assert model.config.n_layer == 30 and model.config.n_kv_head == 3
    x = torch.tensor([tok.encode("The capital of France is")])
    with torch.inference_mode():
        for _ in range(6):  # greedy, by repeated full forward passes
            x = torch.cat([x, model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert "Paris" in tok.decode(x[0].tolist())


@pytest.mark.slow
def test_smollm2_loss_on_plain_english(smollm2) -> None:  # type: ignore[no-untyped-def]
    ids = torch.tensor([smollm2.tokenizer.encode(PARAGRAPH)])
    with torch.inference_mode():
        logits = smollm2.model(ids)
    loss = F.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    assert loss < 3.0, loss


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_import(smollm2) -> None:  # type: ignore[no-untyped-def]
    """transformers' own GGUF reader (dequantise + reverse permute) is the peer."""
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from plaudit.learner._load import smollm2_path

    path = str(smollm2_path())
    raw = load_gguf_checkpoint(path)["config"]
    config = transformers.LlamaConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    hf = transformers.LlamaForCausalLM(config).eval()
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=hf)["tensors"]
    hf.load_state_dict(tensors, strict=False)
    hf.tie_weights()
    ids = smollm2.tokenizer.encode("Hello, my name is Ada and I like 7 cats. 👋")
    with torch.inference_mode():
        diff = (smollm2.model(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max()
    assert diff.item() < 1e-4
    # Tokenizer: transformers has no `smollm` digit split, so compare on text without digits.
    hf_tok = transformers.AutoTokenizer.from_pretrained(
        str(smollm2_path().parent), gguf_file=smollm2_path().name
    )
    text = "<|im_start|>user\nWhat's the weather like in Paris, café owner? 🌦️<|im_end|>\n"
    assert hf_tok(text, add_special_tokens=False).input_ids == smollm2.tokenizer.encode(text)
    assert smollm2.tokenizer.stop_ids == (2, 0)  # <|im_end|>, <|endoftext|>


@pytest.mark.slow
def test_smollm2_export_loads_in_transformers(smollm2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    from plaudit.learner import export_hf

    export_hf(tmp_path / "hf", model=smollm2.model, tokenizer=smollm2.tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "user", "content": "Write a short post about autumn."}]
    prompt = smollm2.tokenizer.apply_chat_template(messages)
    assert prompt == hf_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    ids = smollm2.tokenizer.encode(prompt)
    assert hf_tok(prompt, add_special_tokens=False).input_ids == ids
    with torch.inference_mode():
        diff = (smollm2.model(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max()
    assert diff.item() < 1e-4
