"""Tokenizers: a thin wrapper over `tokenizers.Tokenizer` that also knows the special tokens and
the chat template, so a model folder carries everything needed to turn text into ids and back.

Three ways in:
- `Tokenizer.train_bpe(texts, vocab_size=...)`: byte-level BPE trained on the data (from scratch);
- `Tokenizer.from_dir(dir)` / `from_file(tokenizer.json)`: a Hugging Face style folder
  (`tokenizer.json` plus an optional `tokenizer_config.json` with special tokens and template);
- `Tokenizer.from_gguf(reader)`: rebuilt from a GGUF file's `tokenizer.*` metadata.

`save(dir)` writes `tokenizer.json` and an HF style `tokenizer_config.json`, which is also what
`transformers.AutoTokenizer.from_pretrained(dir)` reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers

from ._errors import TokenizerError

if TYPE_CHECKING:
    import gguf

__all__ = ["BOS_TOKEN", "EOS_TOKEN", "PAD_TOKEN", "Tokenizer"]

# Special tokens of the tokenizers plaudit trains itself.
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"

# Special tokens that end a generation besides the tokenizer's own EOS, as llama.cpp treats them
# (an instruct model ends a turn with <|im_end|> while its EOS may be <|endoftext|>, or vice versa).
_END_OF_GENERATION = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
    EOS_TOKEN,
)

# GGUF token types (llama.cpp `llama_token_type`).
_GGUF_CONTROL = 3
_GGUF_USER_DEFINED = 4

# GGUF `tokenizer.ggml.pre` values for byte-level BPE, as the pre-tokenizer that splits the text
# before bytes are merged. None means the GPT-2 regex of `pre_tokenizers.ByteLevel` itself.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GGUF_PRE_SPLITS: dict[str, str | None] = {
    "default": None,
    "gpt2": None,
    "smollm": None,  # plus individual digits, below
    "llama3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
}
_GGUF_PRE_DIGITS = frozenset({"smollm"})


class Tokenizer:
    """Text <-> token ids, with the special tokens and chat template of the model it belongs to."""

    def __init__(
        self,
        *,
        backend: tokenizers.Tokenizer,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        add_bos_token: bool = False,
    ) -> None:
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.unk_token = unk_token
        self.chat_template = chat_template
        # Whether the model was pretrained on texts that start with BOS (Llama 2/3 yes, SmolLM2
        # no), kept for export; prompts follow plaudit's own rule (`_generate.encode_prompts`).
        self.add_bos_token = add_bos_token
        self.bos_id = self._id_of(bos_token, "bos_token")
        self.eos_id = self._id_of(eos_token, "eos_token")
        self.pad_id = self._id_of(pad_token, "pad_token")
        self.unk_id = self._id_of(unk_token, "unk_token")
        specials = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        stops = [self.eos_id] if self.eos_id is not None else []
        for token in _END_OF_GENERATION:
            token_id = backend.token_to_id(token)
            if token in specials and token_id is not None and token_id not in stops:
                stops.append(token_id)
        self.stop_ids: tuple[int, ...] = tuple(stops)

    def _id_of(self, token: str | None, what: str) -> int | None:
        if token is None:
            return None
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise TokenizerError(
                f"The {what} {token!r} is not in the vocabulary; fix tokenizer_config.json or "
                f"add the token to tokenizer.json."
            )
        return int(token_id)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
            f"eos={self.eos_token!r}, pad={self.pad_token!r}, add_bos={self.add_bos_token}, "
            f"chat_template="
            f"{'yes' if self.chat_template else 'no'})"
        )

    # ---- encode / decode ----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) map to
        their ids, which chat templates rely on; BOS is prepended only when asked for."""
        ids: list[int] = self.backend.encode(text, add_special_tokens=False).ids
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError(
                    "add_bos=True but this tokenizer has no BOS token; set bos_token in "
                    "tokenizer_config.json or call encode(..., add_bos=False)."
                )
            ids.insert(0, self.bos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], *, add_bos: bool = False) -> list[list[int]]:
        """`encode` for many texts at once (the backend runs them in parallel)."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        prefix = [] if not add_bos else self.encode("", add_bos=True)
        return [prefix + e.ids for e in encodings]

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of `ids`; with `skip_special` the special tokens are left out."""
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special))

    # ---- chat -----------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """Render `messages` ([{"role": ..., "content": ...}, ...]) with the chat template, the
        way `transformers` does (sandboxed Jinja, trim_blocks, lstrip_blocks)."""
        if self.chat_template is None:
            raise TokenizerError(
                "This tokenizer has no chat template; give the prompt as plain text, or use a "
                "model whose tokenizer_config.json (or GGUF tokenizer.chat_template) has one."
            )
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or not {"role", "content"} <= message.keys():
                raise TokenizerError(
                    f"Chat message {i} must be a mapping with 'role' and 'content' keys, "
                    f"got {message!r}."
                )
        template = _compile_chat_template(self.chat_template)
        import jinja2

        try:
            return str(
                template.render(
                    messages=[dict(m) for m in messages],
                    add_generation_prompt=add_generation_prompt,
                    bos_token=self.bos_token or "",
                    eos_token=self.eos_token or "",
                    pad_token=self.pad_token or "",
                    unk_token=self.unk_token or "",
                )
            )
        except jinja2.TemplateError as e:
            raise TokenizerError(f"The chat template failed to render these messages: {e}") from e

    # ---- persistence ----------------------------------------------------------------------------

    def save(self, path: str | Path, *, model_max_length: int | None = None) -> None:
        """Write `tokenizer.json` and an HF style `tokenizer_config.json` into folder `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        backend = self.backend
        if self.add_bos_token and self.bos_token is not None:
            # Said in tokenizer.json itself, the one place every transformers version reads.
            backend = tokenizers.Tokenizer.from_str(backend.to_str())
            bos = self.bos_token
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, self.bos_id)]
            )
        backend.save(str(path / "tokenizer.json"))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos_token,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        }
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = getattr(self, key)
            if value is not None:
                config[key] = value
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (path / "tokenizer_config.json").write_text(
            json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load a folder holding `tokenizer.json` (and optionally `tokenizer_config.json`,
        `chat_template.jinja`), as written by `save` or by `transformers`."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise TokenizerError(
                f"No tokenizer.json in {path}; a model folder needs the tokenizer it was trained "
                f"with (save it with Tokenizer.save or transformers' save_pretrained)."
            )
        return cls.from_file(path / "tokenizer.json")

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json`; special tokens and the chat template come from a
        `tokenizer_config.json` (and `chat_template.jinja`) beside it when there is one."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"Tokenizer file {path} does not exist; check the path.")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on a bad file
            raise TokenizerError(f"{path} is not a valid tokenizer.json: {e}") from e
        config: dict[str, Any] = {}
        config_path = path.parent / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{config_path} is not valid JSON: {e}") from e
        template = _chat_template_of(config)
        template_path = path.parent / "chat_template.jinja"
        if template_path.is_file():
            template = template_path.read_text(encoding="utf-8")
        bos_token = _token_of(config.get("bos_token"))
        add_bos = config.get("add_bos_token")
        if add_bos is None:  # not stated: does the tokenizer's post-processor prepend BOS?
            bos_id = backend.token_to_id(bos_token) if bos_token is not None else None
            first = backend.encode("a", add_special_tokens=True).ids[:1]
            add_bos = bos_id is not None and first == [bos_id]
        return cls(
            backend=backend,
            bos_token=bos_token,
            eos_token=_token_of(config.get("eos_token")),
            pad_token=_token_of(config.get("pad_token")),
            unk_token=_token_of(config.get("unk_token")),
            chat_template=template,
            add_bos_token=bool(add_bos),
        )

    # ---- building -------------------------------------------------------------------------------

    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int,
        min_frequency: int = 2,
        chat_template: str | None = None,
    ) -> Tokenizer:
        """Train a byte-level BPE on `texts`: ids 0, 1, 2 are `<|bos|>`, `<|eos|>`, `<|pad|>`,
        then the 256 byte symbols, then merges up to `vocab_size` (fewer if the data runs out).
        Every UTF-8 text round-trips exactly, seen in training or not."""
        specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
        smallest = len(specials) + 256
        if vocab_size < smallest:
            raise TokenizerError(
                f"vocab_size={vocab_size} is too small for a byte-level BPE; use at least "
                f"{smallest} (3 special tokens + 256 bytes)."
            )
        if min_frequency < 1:
            raise TokenizerError(f"min_frequency must be >= 1, got {min_frequency}.")
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(  # type: ignore[call-arg]
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(
            backend=backend,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            pad_token=PAD_TOKEN,
            chat_template=chat_template,
        )

    @classmethod
    def from_gguf(cls, reader: gguf.GGUFReader) -> Tokenizer:
        """Rebuild the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.

        Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`, used by SmolLM2, Llama 3, Qwen)
        is supported; the pre-tokenizer follows `tokenizer.ggml.pre` (`smollm`: individual
        digits, then the GPT-2 byte-level split)."""
        from ._gguf import gguf_field

        kind = gguf_field(reader, "tokenizer.ggml.model", None)
        if kind != "gpt2":
            raise TokenizerError(
                f"The GGUF tokenizer is of kind {kind!r}; plaudit rebuilds only byte-level BPE "
                f"('gpt2') tokenizers. Use a Hugging Face folder with a tokenizer.json instead."
            )
        pre = gguf_field(reader, "tokenizer.ggml.pre", "default")
        if pre not in _GGUF_PRE_SPLITS:
            raise TokenizerError(
                f"The GGUF pre-tokenizer {pre!r} is not supported (known: "
                f"{', '.join(sorted(_GGUF_PRE_SPLITS))}); use a Hugging Face folder with a "
                f"tokenizer.json instead."
            )
        tokens: list[str] = gguf_field(reader, "tokenizer.ggml.tokens")
        merges: list[str] = gguf_field(reader, "tokenizer.ggml.merges")
        types: list[int] = gguf_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
        vocab = {token: i for i, token in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise TokenizerError("The GGUF vocabulary has duplicate tokens; the file is damaged.")
        pairs: list[tuple[str, str]] = []
        for merge in merges:
            left, sep, right = merge.partition(" ")
            if not sep:
                raise TokenizerError(f"Malformed GGUF merge {merge!r}; the file is damaged.")
            pairs.append((left, right))
        backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=pairs))
        steps: list[pre_tokenizers.PreTokenizer] = []
        if pre in _GGUF_PRE_DIGITS:
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        split = _GGUF_PRE_SPLITS[pre]
        if split is None:
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        else:
            steps.append(pre_tokenizers.Split(Regex(split), behavior="isolated"))
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
        backend.decoder = decoders.ByteLevel()
        # Control tokens (<|im_start|> ...) must match whole in text, as llama.cpp does.
        backend.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False)
                for t, kind_id in zip(tokens, types, strict=True)
                if kind_id == _GGUF_CONTROL
            ]
        )
        backend.add_tokens(
            [
                AddedToken(t, special=False, normalized=False)
                for t, kind_id in zip(tokens, types, strict=True)
                if kind_id == _GGUF_USER_DEFINED
            ]
        )

        def token(key: str) -> str | None:
            token_id = gguf_field(reader, f"tokenizer.ggml.{key}", None)
            if token_id is None:
                return None
            if not 0 <= token_id < len(tokens):
                raise TokenizerError(
                    f"GGUF tokenizer.ggml.{key}={token_id} is outside the vocabulary of "
                    f"{len(tokens)} tokens; the file is damaged."
                )
            return tokens[int(token_id)]

        return cls(
            backend=backend,
            bos_token=token("bos_token_id"),
            eos_token=token("eos_token_id"),
            pad_token=token("padding_token_id"),
            unk_token=token("unknown_token_id"),
            chat_template=gguf_field(reader, "tokenizer.chat_template", None),
            add_bos_token=bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", False)),
        )


def _token_of(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise TokenizerError(f"Cannot read special token {value!r} from tokenizer_config.json.")


def _chat_template_of(config: Mapping[str, Any]) -> str | None:
    """`chat_template` is a string, or a list of named templates of which we want `default`."""
    template = config.get("chat_template")
    if template is None:
        return None
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        default = named.get("default")
        if isinstance(default, str):
            return default
    raise TokenizerError(
        "tokenizer_config.json has a chat_template that is neither a string nor a list with a "
        "'default' entry; fix or remove it."
    )


def _compile_chat_template(source: str) -> Any:
    """Compile a chat template in the environment transformers uses, so templates written for
    it (raise_exception, tojson, strftime_now, loop controls) render the same here."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError as e:
        raise TokenizerError(
            "Rendering a chat template needs jinja2; install it with `pip install jinja2`."
        ) from e

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise TokenizerError(f"The chat template does not compile: {e}") from e
