"""Training data: read files in four formats, dedupe, split off validation, tokenize, pack.

Formats, detected per file (or forced with `fmt`):
  text      plain text. Blocks separated by blank lines are examples; a file without blank lines
            has one example per line (one post per line).
  qa        `Q: ...` / `A: ...` conversations; blocks separated by blank lines, a line without a
            marker continues the turn above it.
  dialogue  `User: ...` / `Assistant: ...` conversations, laid out like `qa`.
  jsonl     one JSON object per line: {"text": ...} or {"prompt": ..., "response": ...}.

Conversations and prompt/response pairs train on the response tokens only: every other target
is -100. Examples are packed end to end (each ends with EOS) into rows of max_seq_len + 1 tokens
so a batch has no padding except at the very end of an epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from ._errors import DataError

Format = Literal["text", "qa", "dialogue", "jsonl"]
FormatChoice = Literal["auto", "text", "qa", "dialogue", "jsonl"]
Role = Literal["text", "system", "user", "assistant", "prompt", "response"]

IGNORE_INDEX = -100  # torch cross_entropy's default ignore_index
# How examples become rows: "stream" concatenates them and cuts rows at fixed intervals (no
# padding; an example may span two rows), "examples" packs whole examples into rows (a
# response never loses its prompt to a row boundary; an example longer than a row keeps its
# end), "auto" the latter when any example has a prompt, the former for plain text.
Packing = Literal["auto", "stream", "examples"]

# Conversation markers per format: (user marker, assistant marker).
_MARKERS: dict[str, tuple[str, str]] = {"qa": ("Q:", "A:"), "dialogue": ("User:", "Assistant:")}
_QA_LINE = re.compile(r"^(Q|A):")
_DIALOGUE_LINE = re.compile(r"^(User|Assistant):")


class TextTokenizer(Protocol):
    """What packing needs from a tokenizer (plaudit.learner.Tokenizer has it)."""

    bos_id: int | None
    eos_id: int | None
    pad_id: int | None

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]: ...

    chat_template: str | None

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str: ...


@dataclass(frozen=True)
class Example:
    """One training example: a plain text, or a conversation as (role, text) turns."""

    turns: tuple[tuple[Role, str], ...]
    fmt: Format
    source: str  # "path:line" of its first line, for messages

    @property
    def key(self) -> str:
        """Whitespace-normalised content: equal keys are duplicates."""
        return "\x1f".join(f"{role}\x1e{' '.join(text.split())}" for role, text in self.turns)

    @property
    def text(self) -> str:
        """The trained content (response turns for conversations), for tokenizer training,
        references and memorisation checks."""
        trained = [t for role, t in self.turns if role in ("text", "assistant", "response")]
        return "\n".join(trained)

    def segments(self) -> list[tuple[str, bool]]:
        """(text, trained) pieces in order, in the file's own layout."""
        if self.fmt == "text":
            return [(self.turns[0][1], True)]
        if self.fmt == "jsonl":
            parts = dict(self.turns)
            prompt, response = parts["prompt"], parts["response"]
            if parts.get("system"):  # no chat template to place it: it leads the prompt
                prompt = f"{parts['system']}\n\n{prompt}"
            # A separator where neither side brings one, so "Why?" + "Because." reads right.
            if prompt and not prompt[-1].isspace() and not response[:1].isspace():
                prompt += "\n"
            return [(prompt, False), (response, True)]
        user, assistant = _MARKERS[self.fmt]
        out: list[tuple[str, bool]] = []
        for i, (role, text) in enumerate(self.turns):
            if role == "user":
                out.append((f"{chr(10) if i else ''}{user} {text}\n{assistant}", False))
            else:
                out.append((f" {text}", True))
        return out

    def chat_segments(self, tokenizer: TextTokenizer) -> list[tuple[str, bool]]:
        """(text, trained) pieces of a conversation rendered with the tokenizer's chat template
        (an instruct model's own format): each assistant turn is what the template adds between
        the prompt up to it and the conversation including it."""
        roles = {"assistant": "assistant", "response": "assistant", "system": "system"}
        messages = [{"role": roles.get(role, "user"), "content": t} for role, t in self.turns]
        out: list[tuple[str, bool]] = []
        done = ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages[: k + 1], add_generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError(
                    f"{self.source}: the tokenizer's chat template does not render this "
                    f"conversation turn by turn (each prefix must extend the last); pass "
                    f"--chat-template off to train on the file's own layout."
                )
            out += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        return out


@dataclass
class FileInfo:
    path: str
    fmt: Format
    examples: int


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"Cannot read training data {path}: {e.strerror}.", path=str(path)) from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); "
            f"re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.txt`.",
            path=str(path),
            line=line,
        ) from e
    if not text.strip():
        raise DataError(
            f"{path}: the file is empty; put training examples in it or leave it out of --data.",
            path=str(path),
            line=1,
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


def detect_format(path: Path, text: str) -> Format:
    """jsonl by extension or a leading `{`; qa / dialogue by their markers; else text.
    A file with both Q:/A: and User:/Assistant: markers is an error (mixed formats)."""
    lines = text.split("\n")
    first = next(line for line in lines if line.strip())
    if path.suffix.lower() in (".jsonl", ".ndjson") or first.lstrip().startswith("{"):
        return "jsonl"
    qa = next((i for i, line in enumerate(lines) if _QA_LINE.match(line)), None)
    dialogue = next((i for i, line in enumerate(lines) if _DIALOGUE_LINE.match(line)), None)
    if qa is not None and dialogue is not None:
        later, kinds = (dialogue, "User:/Assistant:") if dialogue > qa else (qa, "Q:/A:")
        raise DataError(
            f"{path}:{later + 1}: mixed formats in one file: this {kinds} line follows lines in "
            f"the other conversation format; put each format in its own file.",
            path=str(path),
            line=later + 1,
        )
    if qa is not None:
        return "qa"
    if dialogue is not None:
        return "dialogue"
    return "text"


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Runs of non-blank lines as (first line number, lines)."""
    out: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    for i, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not current:
                start = i
            current.append(line.rstrip())
        elif current:
            out.append((start, current))
            current = []
    if current:
        out.append((start, current))
    return out


def _parse_text(path: Path, text: str) -> list[Example]:
    blocks = _blocks(text)
    if len(blocks) == 1:  # no blank lines: one post per line
        start, lines = blocks[0]
        blocks = [(start + i, [line]) for i, line in enumerate(lines)]
    return [
        Example(turns=(("text", "\n".join(lines).strip()),), fmt="text", source=f"{path}:{n}")
        for n, lines in blocks
    ]


def _parse_conversation(path: Path, text: str, fmt: Format) -> list[Example]:
    user, assistant = _MARKERS[fmt]
    other = _DIALOGUE_LINE if fmt == "qa" else _QA_LINE
    examples = []
    for start, lines in _blocks(text):
        turns: list[tuple[Role, str]] = []
        for offset, line in enumerate(lines):
            n = start + offset
            role: Role | None = (
                "user"
                if line.startswith(user)
                else "assistant"
                if line.startswith(assistant)
                else None
            )
            if role is None:
                if other.match(line):
                    raise DataError(
                        f"{path}:{n}: mixed formats in one file: a {fmt} file has this line in the "
                        f"other conversation format; put each format in its own file.",
                        path=str(path),
                        line=n,
                    )
                if not turns:
                    raise DataError(
                        f"{path}:{n}: mixed formats in one file: plain text where a "
                        f"{user} line should start a {fmt} conversation; mark it with "
                        f"{user}/{assistant}, move it to its own file, or pass --format text.",
                        path=str(path),
                        line=n,
                    )
                r, t = turns[-1]
                turns[-1] = (r, f"{t}\n{line}")
                continue
            content = line[len(user if role == "user" else assistant) :].strip()
            expected: Role = "user" if not turns or turns[-1][0] == "assistant" else "assistant"
            if role != expected:
                marker = user if expected == "user" else assistant
                raise DataError(
                    f"{path}:{n}: expected a {marker} line here (turns must alternate, "
                    f"starting with {user}); fix the order or add the missing turn.",
                    path=str(path),
                    line=n,
                )
            if not content:
                raise DataError(
                    f"{path}:{n}: empty {line.split(':')[0]} turn; write its text after the "
                    f"marker or remove the line.",
                    path=str(path),
                    line=n,
                )
            turns.append((role, content))
        if turns[-1][0] != "assistant":
            raise DataError(
                f"{path}:{start}: this conversation ends without an {assistant} answer; add "
                f"one (responses are what the model learns) or remove it.",
                path=str(path),
                line=start,
            )
        examples.append(Example(turns=tuple(turns), fmt=fmt, source=f"{path}:{start}"))
    return examples


def _parse_jsonl(path: Path, text: str) -> list[Example]:
    examples = []
    schema: str | None = None
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); each line of a JSONL "
                f'file must be one object like {{"text": ...}}.',
                path=str(path),
                line=n,
            ) from e
        turns: tuple[tuple[Role, str], ...]
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            kind, turns = "text", (("text", obj["text"].strip()),)
        elif (
            isinstance(obj, dict)
            and isinstance(obj.get("prompt"), str)
            and isinstance(obj.get("response"), str)
        ):
            kind, turns = (
                "prompt/response",
                (("prompt", obj["prompt"]), ("response", obj["response"])),
            )
        else:
            raise DataError(
                f'{path}:{n}: expected an object with a string "text", or string "prompt" and '
                f'"response" keys; got {line.strip()[:60]!r}.',
                path=str(path),
                line=n,
            )
        if schema is None:
            schema = kind
        elif kind != schema:
            raise DataError(
                f"{path}:{n}: mixed formats in one file: a {kind} line in a file of {schema} "
                f"lines; put each kind in its own file.",
                path=str(path),
                line=n,
            )
        if not any(t.strip() for role, t in turns if role in ("text", "response")):
            raise DataError(
                f"{path}:{n}: empty text; remove the line or fill it in.", path=str(path), line=n
            )
        fmt: Format = "text" if kind == "text" else "jsonl"
        examples.append(Example(turns=turns, fmt=fmt, source=f"{path}:{n}"))
    return examples


def read_file(path: str | Path, fmt: FormatChoice = "auto") -> tuple[list[Example], FileInfo]:
    """Examples of one file and what was found in it; DataError names file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"Training data {path} does not exist or is not a file; check the --data path.",
            path=str(path),
        )
    text = _read_text(path)
    found: Format = detect_format(path, text) if fmt == "auto" else fmt
    if found == "text":
        examples = _parse_text(path, text)
    elif found == "jsonl":
        examples = _parse_jsonl(path, text)
    else:
        examples = _parse_conversation(path, text, found)
    return examples, FileInfo(path=str(path), fmt=found, examples=len(examples))


def examples_from_texts(texts: Iterable[str], *, source: str) -> list[Example]:
    """Plain-text examples from strings (a face's history)."""
    return [
        Example(turns=(("text", t.strip()),), fmt="text", source=f"{source}#{i}")
        for i, t in enumerate(texts)
        if t.strip()
    ]


def examples_from_pairs(
    pairs: Iterable[tuple[str, str]], *, source: str, system: str | None = None
) -> list[Example]:
    """Prompt/response examples from (prompt, response) strings, each with an optional system
    message: trained on the response only, rendered with the tokenizer's chat template where
    it has one (the daemon's offline fit: the posting instruction -> a history post)."""
    head: tuple[tuple[Role, str], ...] = (("system", system),) if system else ()
    return [
        Example(
            turns=(*head, ("prompt", prompt), ("response", response.strip())),
            fmt="jsonl",
            source=f"{source}#{i}",
        )
        for i, (prompt, response) in enumerate(pairs)
        if response.strip()
    ]


def dedupe(examples: Sequence[Example]) -> list[Example]:
    """First occurrence of each example, by whitespace-normalised content."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        if ex.key not in seen:
            seen.add(ex.key)
            out.append(ex)
    return out


def split_validation(
    examples: Sequence[Example], fraction: float
) -> tuple[list[Example], list[Example]]:
    """(train, val): the round(n * fraction) examples (at least 1 when fraction > 0) with the
    smallest content hash go to validation. Deterministic, independent of file order and seed,
    and an example stays on its side when data is added."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"--val-split must be in [0, 1), got {fraction}.")
    if fraction == 0.0:
        return list(examples), []
    n_val = max(1, round(len(examples) * fraction))
    if n_val >= len(examples):
        raise DataError(
            f"{len(examples)} examples are too few to hold out {n_val} for validation; add data "
            f"or pass --val-split 0."
        )

    def digest(ex: Example) -> bytes:
        return hashlib.blake2b(ex.key.encode("utf-8"), digest_size=8).digest()

    ranked = sorted(range(len(examples)), key=lambda i: digest(examples[i]))
    val_idx = set(ranked[:n_val])
    train = [ex for i, ex in enumerate(examples) if i not in val_idx]
    val = [ex for i, ex in enumerate(examples) if i in val_idx]
    return train, val


# --- tokenize and pack ---------------------------------------------------------------------


def sample_prompts(
    val_examples: Sequence[Example], n: int, *, tokenizer: TextTokenizer | None = None
) -> list[str]:
    """Fixed prompts for samples at each evaluation: the prompts of held-out conversations
    (chat-templated when `tokenizer` is given), or the first two words of held-out posts."""
    prompts = []
    for ex in val_examples[:n]:
        if ex.fmt == "text":
            prompts.append(" ".join(ex.turns[0][1].split()[:2]))
        else:
            segments = ex.segments() if tokenizer is None else ex.chat_segments(tokenizer)
            prompts.append(segments[0][0])
    return prompts


@dataclass
class TokenizedSet:
    """Per example: token ids (int64) and which targets are trained (bool), same length."""

    ids: list[np.ndarray]
    trained: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_tokens(self) -> int:
        return int(sum(len(a) for a in self.ids))


def tokenize(
    examples: Sequence[Example], tokenizer: TextTokenizer, *, chat_template: bool = False
) -> TokenizedSet:
    """BOS (when the tokenizer has one, not trained) + segments + EOS (trained: the model learns
    to stop). Segments are encoded one by one so the trained mask is exact. With
    `chat_template`, conversations are rendered with the tokenizer's template instead (which
    brings its own special tokens: no BOS or EOS is added to them)."""
    if tokenizer.eos_id is None:
        raise DataError(
            "The tokenizer has no EOS token, so examples cannot be separated; use a tokenizer "
            "with an eos_token (every plaudit-built and imported tokenizer has one)."
        )
    ids_out, trained_out = [], []
    for ex in examples:
        templated = chat_template and ex.fmt != "text"
        ids: list[int] = [] if tokenizer.bos_id is None or templated else [tokenizer.bos_id]
        trained: list[bool] = [False] * len(ids)
        for text, is_trained in ex.chat_segments(tokenizer) if templated else ex.segments():
            piece = tokenizer.encode(text)
            ids += piece
            trained += [is_trained] * len(piece)
        if not templated:
            ids.append(tokenizer.eos_id)
            trained.append(True)
        ids_out.append(np.asarray(ids, dtype=np.int64))
        trained_out.append(np.asarray(trained, dtype=np.bool_))
    return TokenizedSet(ids=ids_out, trained=trained_out)


def pack(
    data: TokenizedSet, order: Sequence[int] | np.ndarray, *, seq_len: int, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Concatenate examples in `order` and cut into rows: tokens (R, seq_len) and labels
    (R, seq_len), labels[r, t] = next token or -100 where it is not trained. Rows overlap by one
    token so no target is lost; the last row is padded (pad targets are -100)."""
    ids = np.concatenate([data.ids[i] for i in order])  # (L,)
    trained = np.concatenate([data.trained[i] for i in order])  # (L,)
    n_rows = max(1, math.ceil((len(ids) - 1) / seq_len))
    total = n_rows * seq_len + 1
    ids = np.pad(ids, (0, total - len(ids)), constant_values=pad_id)  # (R*T+1,)
    trained = np.pad(trained, (0, total - len(trained)), constant_values=False)
    starts = np.arange(n_rows)[:, None] * seq_len  # (R, 1)
    cols = np.arange(seq_len + 1)[None, :]  # (1, T+1)
    window = ids[starts + cols]  # (R, T+1)
    window_trained = trained[starts + cols]  # (R, T+1)
    x = torch.from_numpy(window[:, :-1].copy())  # (R, T)
    y = np.where(window_trained[:, 1:], window[:, 1:], IGNORE_INDEX)  # (R, T)
    return x, torch.from_numpy(y.copy())


def whole_examples(packing: Packing, examples: Sequence[Example]) -> bool:
    """Whether `packing` packs whole examples into rows for these examples (see `Packing`)."""
    if packing == "auto":
        return any(ex.fmt != "text" for ex in examples)
    return packing == "examples"


def pack_examples(
    data: TokenizedSet, order: Sequence[int] | np.ndarray, *, seq_len: int, pad_id: int
) -> tuple[Tensor, Tensor]:
    """Whole examples, in `order`, into rows of seq_len + 1 tokens (inputs and targets, as
    `pack`): an example goes into the current row when it fits, else it starts the next one,
    and the rest of the row is padding (no loss). An example longer than a row keeps its last
    seq_len + 1 tokens: the response with as much of its prompt as fits."""
    width = seq_len + 1
    rows: list[list[int]] = []  # example indices per row
    used = width
    for i in order:
        n = min(len(data.ids[i]), width)
        if used + n > width:
            rows.append([])
            used = 0
        rows[-1].append(int(i))
        used += n
    window = np.full((len(rows), width), pad_id, dtype=np.int64)  # (R, T+1)
    window_trained = np.zeros((len(rows), width), dtype=np.bool_)  # (R, T+1)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            ids, trained = data.ids[i][-width:], data.trained[i][-width:]
            window[r, at : at + len(ids)] = ids
            window_trained[r, at : at + len(ids)] = trained
            at += len(ids)
    x = torch.from_numpy(window[:, :-1].copy())  # (R, T)
    y = np.where(window_trained[:, 1:], window[:, 1:], IGNORE_INDEX)  # (R, T)
    return x, torch.from_numpy(y.copy())


def pack_rows(
    data: TokenizedSet,
    order: Sequence[int] | np.ndarray,
    *,
    seq_len: int,
    pad_id: int,
    whole: bool,
) -> tuple[Tensor, Tensor]:
    """`pack_examples` where ``whole``, else `pack`."""
    packer = pack_examples if whole else pack
    return packer(data, order, seq_len=seq_len, pad_id=pad_id)


@dataclass
class PackedEpochs:
    """Training rows, reshuffled per epoch from (seed, epoch) alone, so any (epoch, step) can be
    rebuilt exactly on resume. Each step takes `rows_per_step` rows (micro-batch x grad-accum x
    world size); an incomplete last step of an epoch is skipped. With ``whole`` examples are
    packed whole (`pack_examples`) once, in a seeded order, and the rows are reshuffled per
    epoch, so every epoch has the same number of rows."""

    data: TokenizedSet
    seq_len: int
    pad_id: int
    seed: int
    rows_per_step: int
    whole: bool = False
    _cache: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)
    _whole_rows: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    def _packed_whole(self) -> tuple[Tensor, Tensor]:
        if self._whole_rows is None:
            g = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(len(self.data), generator=g).numpy()
            self._whole_rows = pack_examples(
                self.data, order, seq_len=self.seq_len, pad_id=self.pad_id
            )
        return self._whole_rows

    def epoch(self, epoch: int) -> tuple[Tensor, Tensor]:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if self.whole:
                x, y = self._packed_whole()
                perm = torch.randperm(len(x), generator=g)
                self._cache = {epoch: (x[perm], y[perm])}
            else:
                order = torch.randperm(len(self.data), generator=g).numpy()
                rows = pack(self.data, order, seq_len=self.seq_len, pad_id=self.pad_id)
                self._cache = {epoch: rows}
        return self._cache[epoch]

    @property
    def rows_per_epoch(self) -> int:
        if self.whole:
            return len(self._packed_whole()[0])
        return max(1, math.ceil((self.data.num_tokens - 1) / self.seq_len))

    @property
    def steps_per_epoch(self) -> int:
        return self.rows_per_epoch // self.rows_per_step

    def step_rows(self, epoch: int, index: int) -> tuple[Tensor, Tensor]:
        """Rows of optimizer step `index` of `epoch`: (rows_per_step, T) tokens and labels."""
        x, y = self.epoch(epoch)
        lo = index * self.rows_per_step
        return x[lo : lo + self.rows_per_step], y[lo : lo + self.rows_per_step]


# --- statistics ----------------------------------------------------------------------------


@dataclass
class DataStats:
    files: list[FileInfo]
    examples: int
    duplicates: int
    train_examples: int
    val_examples: int
    train_tokens: int
    trained_tokens: int  # targets that carry loss
    val_tokens: int
    mean_len: float
    median_len: float
    p95_len: float
    max_len: int
    longer_than_context: int  # examples spanning more than one row
    seq_len: int

    def lines(self) -> list[str]:
        out = [f"{f.path}: {f.examples} examples ({f.fmt})" for f in self.files]
        out.append(
            f"{self.examples} examples after removing {self.duplicates} duplicates: "
            f"{self.train_examples} train, {self.val_examples} validation"
        )
        share = self.trained_tokens / max(1, self.train_tokens)
        out.append(
            f"train tokens {self.train_tokens:,} ({share:.0%} trained), validation tokens "
            f"{self.val_tokens:,}"
        )
        out.append(
            f"tokens per example: mean {self.mean_len:.1f}, median {self.median_len:.0f}, "
            f"p95 {self.p95_len:.0f}, max {self.max_len}; {self.longer_than_context} longer "
            f"than --max-seq-len {self.seq_len} (they span rows)"
        )
        return out


def compute_stats(
    *,
    files: list[FileInfo],
    n_before_dedupe: int,
    train: TokenizedSet,
    val: TokenizedSet,
    seq_len: int,
) -> DataStats:
    lengths = np.asarray([len(a) for a in train.ids]) if len(train) else np.zeros(1)
    return DataStats(
        files=files,
        examples=len(train) + len(val),
        duplicates=n_before_dedupe - len(train) - len(val),
        train_examples=len(train),
        val_examples=len(val),
        train_tokens=train.num_tokens,
        trained_tokens=int(sum(int(m[1:].sum()) for m in train.trained)),
        val_tokens=val.num_tokens,
        mean_len=float(lengths.mean()),
        median_len=float(np.median(lengths)),
        p95_len=float(np.percentile(lengths, 95)),
        max_len=int(lengths.max()),
        longer_than_context=int((lengths > seq_len + 1).sum()),
        seq_len=seq_len,
    )
