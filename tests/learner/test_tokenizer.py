"""Tokenizers: byte-level BPE training, exact round trips, special tokens, saving and loading,
chat templates."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from plaudit.learner import Tokenizer, TokenizerError
from plaudit.learner._tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello again, world.",
    "Posting about cats, dogs and the weather today :)",
    "I love this so much!!! 😂😂",
    "Numbers like 2024 and 3.14159 show up too.",
    "déjà vu, naïve café, Übermensch, smörgåsbord",
    "東京は晴れです。今日もいい天気。",
] * 20

# Pieces that stress byte-level handling: multi-codepoint emoji (ZWJ, skin tones, flags),
# CJK, combining marks, right-to-left scripts, unusual whitespace, control characters, and text
# that spells a special token.
PIECES = [
    "a",
    "Zebra",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "\n\n\n",
    "\u00a0",
    "\u3000",
    "\u2028",
    "👍",
    "👍🏽",
    "👩‍👩‍👧‍👦",
    "🇫🇷",
    "東京",
    "한국어",
    "e\u0301",
    "a\u0308\u0323",
    "\u0915\u094d\u0937",
    "مرحبا",
    "שלום",
    "\x00",
    "\x7f",
    "\ufeff",
    "\U0010fffd",
    "<|eos|>",
    "<|bos",
    "2024",
    "?!",
]


def random_text(rng: random.Random) -> str:
    parts: list[str] = []
    for _ in range(rng.randint(0, 12)):
        if rng.random() < 0.2:
            # Any scalar value except surrogates, which are not valid in UTF-8.
            cp = rng.randint(0, 0x10FFFF)
            while 0xD800 <= cp <= 0xDFFF:
                cp = rng.randint(0, 0x10FFFF)
            parts.append(chr(cp))
        else:
            parts.append(rng.choice(PIECES))
    return "".join(parts)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(CORPUS, vocab_size=400)


def test_train_bpe_special_tokens_and_ids(bpe: Tokenizer) -> None:
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2)
    assert (bpe.bos_token, bpe.eos_token, bpe.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert bpe.stop_ids == (1,)
    assert 259 < bpe.vocab_size <= 400
    ids = bpe.encode("Hello world")
    assert bpe.encode("Hello world", add_bos=True) == [0, *ids]
    # Merges were learned: a frequent word is fewer tokens than its bytes.
    assert len(bpe.encode(" world")) < len(b" world")


def test_round_trip_is_exact_on_random_unicode(bpe: Tokenizer) -> None:
    rng = random.Random(1234)
    texts = [random_text(rng) for _ in range(400)] + PIECES + ["".join(PIECES)]
    for text in texts:
        ids = bpe.encode(text)
        assert all(0 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == text, repr(text)
    assert bpe.encode_batch(texts[:50]) == [bpe.encode(t) for t in texts[:50]]


def test_special_token_text_maps_to_its_id_and_skip_special(bpe: Tokenizer) -> None:
    ids = bpe.encode("hi<|eos|>")
    assert ids[-1] == bpe.eos_id
    assert bpe.decode(ids, skip_special=True) == "hi"


def test_vocab_size_too_small_is_an_error() -> None:
    with pytest.raises(TokenizerError, match="at least 259"):
        Tokenizer.train_bpe(CORPUS, vocab_size=100)


def test_save_and_load_round_trip(bpe: Tokenizer, tmp_path: Path) -> None:
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
    tok = Tokenizer(
        backend=bpe.backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=template,
    )
    tok.save(tmp_path, model_max_length=128)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == EOS_TOKEN and config["model_max_length"] == 128
    loaded = Tokenizer.from_dir(tmp_path)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert loaded.chat_template == template
    text = "Hello wörld 👍 2024\n"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.vocab_size == tok.vocab_size


def test_hf_style_config_with_added_token_dicts_and_named_templates(
    bpe: Tokenizer, tmp_path: Path
) -> None:
    bpe.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": BOS_TOKEN, "special": True},
                "eos_token": EOS_TOKEN,
                "pad_token": None,
                "chat_template": [
                    {"name": "tool_use", "template": "tools"},
                    {"name": "default", "template": "{{ messages[0].content }}"},
                ],
            }
        )
    )
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.bos_token == BOS_TOKEN and tok.pad_id is None
    assert tok.apply_chat_template([{"role": "user", "content": "hey"}]) == "hey"
    # A chat_template.jinja file (what transformers >= 4.47 writes) wins over the config.
    (tmp_path / "chat_template.jinja").write_text("J:{{ messages[0].content }}")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([{"role": "u", "content": "x"}]) == (
        "J:x"
    )


def test_chat_template_renders_like_transformers(bpe: Tokenizer) -> None:
    template = (
        "{% for message in messages %}"
        "{% if message['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tok = Tokenizer(backend=bpe.backend, eos_token=EOS_TOKEN, chat_template=template)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tok.apply_chat_template(messages) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not tok.apply_chat_template(messages, add_generation_prompt=False).endswith(
        "assistant\n"
    )
    with pytest.raises(TokenizerError, match="unknown role system"):
        tok.apply_chat_template([{"role": "system", "content": "x"}])
    with pytest.raises(TokenizerError, match="'role' and 'content'"):
        tok.apply_chat_template([{"content": "no role"}])


def test_errors_name_the_problem(bpe: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no chat template"):
        bpe.apply_chat_template([{"role": "user", "content": "hi"}])
    with pytest.raises(TokenizerError, match=r"No tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        Tokenizer(backend=bpe.backend, eos_token="<|not-a-token|>")
    no_bos = Tokenizer(backend=bpe.backend)
    with pytest.raises(TokenizerError, match="no BOS token"):
        no_bos.encode("x", add_bos=True)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=r"not a valid tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(TokenizerError, match="does not compile"):
        Tokenizer(backend=bpe.backend, chat_template="{% for %}").apply_chat_template([])


def test_add_bos_token_is_kept_and_detected(bpe: Tokenizer, tmp_path: Path) -> None:
    from tokenizers import processors

    assert not bpe.add_bos_token
    tok = Tokenizer(backend=bpe.backend, bos_token=BOS_TOKEN, add_bos_token=True)
    tok.save(tmp_path / "stated")
    assert Tokenizer.from_dir(tmp_path / "stated").add_bos_token
    # A Llama-style tokenizer.json whose post-processor prepends BOS, and no config saying so.
    backend = Tokenizer.from_dir(tmp_path / "stated").backend
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, 0)]
    )
    (tmp_path / "detected").mkdir()
    backend.save(str(tmp_path / "detected" / "tokenizer.json"))
    (tmp_path / "detected" / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": BOS_TOKEN})
    )
    detected = Tokenizer.from_dir(tmp_path / "detected")
    assert detected.add_bos_token
    # encode never adds BOS behind the caller's back.
    assert detected.encode("hello") == bpe.encode("hello")
