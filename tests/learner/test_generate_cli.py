"""Text-level generation and the `plaudit models` / `plaudit generate` commands, on a tiny
random model saved as a plaudit model folder with a BPE tokenizer trained here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from plaudit.daemon import _cli_learner
from plaudit.learner import (
    PRESETS,
    ContextLengthError,
    ModelConfig,
    SamplingConfig,
    Tokenizer,
    TokenizerError,
    Transformer,
    save_model,
)
from plaudit.learner._generate import encode_prompts, generate_text

TEXTS = [
    "the cat sat on the mat and looked at the sun",
    "a dog ran in the park, happy and loud",
    "coffee in the morning makes the day better",
] * 20
CHAT = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe(TEXTS, vocab_size=300, chat_template=CHAT)


@pytest.fixture(scope="module")
def model(tokenizer: Tokenizer) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tokenizer.vocab_size, max_seq_len=40, n_layer=2, n_head=2, n_kv_head=1,
        n_embd=32, intermediate_size=64,
    )  # fmt: skip
    return Transformer(cfg).eval()


@pytest.fixture(scope="module")
def model_dir(
    tmp_path_factory: pytest.TempPathFactory, model: Transformer, tokenizer: Tokenizer
) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_model(path, model=model, tokenizer=tokenizer)
    return path


def cli(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    _cli_learner.register(app)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_generate_text_decodes_tokens_and_stops_at_eos(
    model: Transformer, tokenizer: Tokenizer
) -> None:
    eos = tokenizer.eos_id
    assert eos is not None and eos in tokenizer.stop_ids
    # Make EOS likely enough that some samples end on it.
    with torch.no_grad():
        biased = Transformer(model.config).eval()
        biased.load_state_dict(model.state_dict())
        biased.tok_emb.weight[eos] += 0.5 * biased.norm_f.weight.sign()
    out = generate_text(
        model=biased, tokenizer=tokenizer, prompts=["the cat", "coffee"], n=4,
        sampling=SamplingConfig(max_new_tokens=20, seed=0),
    )  # fmt: skip
    assert [s.prompt_index for s in out] == [0] * 4 + [1] * 4
    assert any(s.finished for s in out) and any(not s.finished for s in out)
    for s in out:
        assert len(s.tokens) == len(s.logprobs)
        if s.finished:
            assert s.tokens[-1] == eos and eos not in s.tokens[:-1]
            assert s.text == tokenizer.decode(s.tokens[:-1])
        else:
            assert eos not in s.tokens and s.text == tokenizer.decode(s.tokens)


def test_chat_messages_use_the_template(tokenizer: Tokenizer) -> None:
    conv = [{"role": "user", "content": "hello"}]
    (ids,) = encode_prompts(tokenizer, messages=[conv])
    assert tokenizer.decode(ids) == "<|bos|>user: hello\n<|bos|>assistant:"
    with pytest.raises(ValueError, match="wrap a single conversation in a list"):
        encode_prompts(tokenizer, messages=conv)  # type: ignore[arg-type]
    plain = Tokenizer.train_bpe(TEXTS, vocab_size=300)
    with pytest.raises(TokenizerError, match="no chat template"):
        encode_prompts(plain, messages=[conv])


def test_empty_prompt_starts_from_bos(tokenizer: Tokenizer) -> None:
    assert encode_prompts(tokenizer, prompts=[""]) == [[tokenizer.bos_id]]
    with pytest.raises(ValueError, match="either prompts"):
        encode_prompts(tokenizer)


def test_one_bos_rule_for_texts_templates_and_empty_prompts(tokenizer: Tokenizer) -> None:
    bos = tokenizer.bos_id
    assert bos is not None and not tokenizer.add_bos_token
    # BOS first, as training lays texts out, whatever add_bos_token says.
    assert encode_prompts(tokenizer, prompts=["the cat"]) == [[bos, *tokenizer.encode("the cat")]]
    conv = [{"role": "user", "content": "hello"}]
    (chat,) = encode_prompts(tokenizer, messages=[conv])
    assert chat[0] == bos and chat[1] != bos  # the template writes BOS: no second one
    rendered = tokenizer.apply_chat_template(conv)  # what Policy.render_prompt hands over
    assert encode_prompts(tokenizer, prompts=[rendered]) == [chat]
    no_bos = Tokenizer(backend=tokenizer.backend, eos_token="<|eos|>")
    assert encode_prompts(no_bos, prompts=["the"]) == [no_bos.encode("the")]
    assert encode_prompts(no_bos, prompts=[""]) == [[no_bos.eos_id]]  # where a new text begins


def test_models_lists_every_preset_with_its_count() -> None:
    code, out, _ = cli("models", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.split("\n") if line]  # not splitlines: U+0085
    presets = {r["name"]: r for r in rows if "params" in r}
    assert list(presets) == list(PRESETS)
    for name, cfg in PRESETS.items():
        assert ModelConfig.from_dict({k: presets[name][k] for k in cfg.to_dict()}) == cfg
    assert 25e6 < presets["small"]["params"] < 29e6
    code, out, _ = cli("models")
    assert code == 0 and "small" in out and "26.7M" in out and "smollm2" in out


def test_generate_json_lines_are_reproducible(model_dir: Path, tokenizer: Tokenizer) -> None:
    args = ["generate", "--model", str(model_dir), "--prompt", "the cat", "--prompt", "a dog"]
    args += ["--n", "2", "--max-new-tokens", "6", "--top-p", "0.9", "--seed", "3", "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    rows = [json.loads(line) for line in out.split("\n") if line]  # not splitlines: U+0085
    assert [(r["prompt_index"], r["sample"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in rows:
        assert len(r["tokens"]) == len(r["logprobs"])
        assert len(r["tokens"]) == 6 or (r["finished"] and r["tokens"][-1] in tokenizer.stop_ids)
        body = r["tokens"][:-1] if r["finished"] else r["tokens"]
        assert r["text"] == tokenizer.decode(body)
        assert all(lp <= 0 for lp in r["logprobs"])
    assert cli(*args)[1] == out


def test_generate_plain_output_and_chat(model_dir: Path) -> None:
    code, out, err = cli(
        "generate", "--model", str(model_dir), "--prompt", "hi", "--chat", "--temperature", "0",
        "--max-new-tokens", "3",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("--- prompt 0, sample 0 (3 tokens, length limit)")


def test_generate_errors_are_one_line(model_dir: Path, tmp_path: Path) -> None:
    code, _, err = cli("generate", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert code == 1 and err.startswith("error: ") and "does not exist" in err
    long_prompt = " ".join(["coffee"] * 60)
    code, _, err = cli("generate", "--model", str(model_dir), "--prompt", long_prompt)
    assert code == 1 and "context is 40 tokens" in err
    code, _, err = cli("generate", "--model", str(model_dir), "--prompt", "x", "--top-p", "1.5")
    assert code == 1 and "top_p must be in (0, 1]" in err


def test_context_error_class(model: Transformer, tokenizer: Tokenizer) -> None:
    with pytest.raises(ContextLengthError):
        generate_text(
            model=model, tokenizer=tokenizer, prompts=["coffee " * 60], sampling=SamplingConfig()
        )
