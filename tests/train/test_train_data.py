"""Training data: format detection, bad-data errors, response-only labels, packing, split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plaudit.learner._data import (
    IGNORE_INDEX,
    PackedEpochs,
    dedupe,
    pack,
    read_file,
    split_validation,
    tokenize,
)
from plaudit.learner._errors import DataError
from plaudit.learner._tokenizer import Tokenizer


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_formats_are_detected_per_file(tmp_path: Path) -> None:
    lines, info = read_file(write(tmp_path, "a.txt", "first post\nsecond post\n\n"))
    assert info.fmt == "text" and [e.text for e in lines] == ["first post", "second post"]

    paras, info = read_file(write(tmp_path, "b.txt", "one\nstill one\n\ntwo\n"))
    assert info.fmt == "text" and [e.text for e in paras] == ["one\nstill one", "two"]

    qa, info = read_file(write(tmp_path, "c.txt", "Q: hi?\nA: hello\nmore\n\nQ: x\nA: y\n"))
    assert info.fmt == "qa" and len(qa) == 2
    assert qa[0].turns == (("user", "hi?"), ("assistant", "hello\nmore"))

    dlg, info = read_file(
        write(tmp_path, "d.txt", "User: a\nAssistant: b\nUser: c\nAssistant: d\n")
    )
    assert info.fmt == "dialogue" and len(dlg) == 1 and len(dlg[0].turns) == 4

    rows = [{"prompt": "Why?", "response": "Because."}, {"prompt": "a", "response": "b"}]
    pr, info = read_file(write(tmp_path, "e.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert info.fmt == "jsonl" and pr[0].segments() == [("Why?\n", False), ("Because.", True)]

    txt, info = read_file(write(tmp_path, "f.data", '{"text": "a post"}\n{"text": "b"}\n'))
    assert info.fmt == "jsonl" and [(e.fmt, e.text) for e in txt] == [
        ("text", "a post"),
        ("text", "b"),
    ]

    # --format overrides detection: the Q:/A: lines are then plain text.
    forced, info = read_file(tmp_path / "c.txt", "text")
    assert info.fmt == "text" and forced[0].text.startswith("Q: hi?")


@pytest.mark.parametrize(
    ("name", "content", "line", "words"),
    [
        ("latin1.txt", "ok line\ncaf\u00e9 au lait\n".encode("latin-1"), 2, "not valid UTF-8"),
        ("empty.txt", "  \n\n", 1, "is empty"),
        ("mixed.txt", "Q: a\nA: b\n\nUser: c\nAssistant: d\n", 4, "mixed formats"),
        ("plain_in_qa.txt", "Q: a\nA: b\n\njust a post\n", 4, "mixed formats"),
        ("order.txt", "Q: a\nQ: b\nA: c\n", 2, "expected a A: line"),
        ("no_answer.txt", "Q: a\nA: b\n\nQ: c\n", 4, "ends without an A: answer"),
        ("bad.jsonl", '{"text": "a"}\n{"text": \n', 2, "not valid JSON"),
        ("schema.jsonl", '{"text": "a"}\n{"prompt": "p", "response": "r"}\n', 2, "mixed formats"),
        ("keys.jsonl", '{"body": "a"}\n', 1, '"text"'),
    ],
)
def test_bad_data_names_file_and_line(
    tmp_path: Path, name: str, content: str | bytes, line: int, words: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as err:
        read_file(path)
    assert err.value.path == str(path) and err.value.line == line
    message = str(err.value)
    assert f"{path}" in message and words in message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_file(tmp_path / "nope.txt")


def test_conversations_train_on_responses_only(tmp_path: Path, tokenizer: Tokenizer) -> None:
    examples, _ = read_file(write(tmp_path, "qa.txt", "Q: what is it?\nA: a thing\n"))
    data = tokenize(examples, tokenizer)
    x, y = pack(data, [0], seq_len=32, pad_id=tokenizer.pad_id or 0)
    trained = y[0][y[0] != IGNORE_INDEX].tolist()
    assert trained[-1] == tokenizer.eos_id
    assert tokenizer.decode(trained[:-1]) == " a thing"
    # Every prompt token (BOS, "Q: what is it?\nA:") is input only.
    n_prompt = len(tokenizer.encode("Q: what is it?\nA:")) + 1
    assert (y[0][: n_prompt - 1] == IGNORE_INDEX).all()
    assert x[0][0] == tokenizer.bos_id

    plain = tokenize(read_file(write(tmp_path, "p.txt", "hello there\n"))[0], tokenizer)
    assert plain.trained[0][1:].all() and not plain.trained[0][0]  # all but BOS


def test_packing_keeps_every_target_and_pads_only_the_end(tokenizer: Tokenizer) -> None:
    from plaudit.learner._data import Example

    examples = [
        Example(turns=(("text", f"post number {i}"),), fmt="text", source="t") for i in range(9)
    ]
    data = tokenize(examples, tokenizer)
    stream = torch.cat([torch.from_numpy(a) for a in data.ids])
    x, y = pack(data, range(9), seq_len=7, pad_id=2)
    assert x.shape == y.shape and x.shape[1] == 7
    # Row r starts where row r-1 ended: inputs are the stream, targets the stream shifted.
    flat_x = x.flatten()[: len(stream) - 1]
    assert torch.equal(flat_x, stream[:-1])
    flat_y = y.flatten()
    trained = torch.cat([torch.from_numpy(m) for m in data.trained])[1:]
    expected = torch.where(trained, stream[1:], torch.tensor(IGNORE_INDEX))
    assert torch.equal(flat_y[: len(stream) - 1], expected)
    assert (flat_y[len(stream) - 1 :] == IGNORE_INDEX).all()  # padding carries no loss


def test_epochs_are_deterministic_and_reshuffled(tokenizer: Tokenizer) -> None:
    from plaudit.learner._data import Example

    examples = [
        Example(turns=(("text", f"post {i} here"),), fmt="text", source="t") for i in range(40)
    ]
    data = tokenize(examples, tokenizer)
    a = PackedEpochs(data=data, seq_len=8, pad_id=2, seed=3, rows_per_step=4)
    b = PackedEpochs(data=data, seq_len=8, pad_id=2, seed=3, rows_per_step=4)
    assert torch.equal(a.step_rows(1, 2)[0], b.step_rows(1, 2)[0])
    assert not torch.equal(a.epoch(0)[0], a.epoch(1)[0])
    assert a.steps_per_epoch == a.rows_per_epoch // 4 > 0


def test_dedupe_and_split_are_deterministic(tmp_path: Path) -> None:
    text = "\n".join(f"post {i}" for i in range(100)) + "\npost  3\npost 7\n"
    examples, _ = read_file(write(tmp_path, "d.txt", text))
    unique = dedupe(examples)
    assert len(examples) == 102 and len(unique) == 100  # whitespace-normalised duplicates
    train, val = split_validation(unique, 0.05)
    assert len(val) == 5 and len(train) == 95
    # The split depends on content only, not order.
    _, val2 = split_validation(list(reversed(unique)), 0.05)
    assert {e.text for e in val} == {e.text for e in val2}
    with pytest.raises(DataError, match="too few"):
        split_validation(unique[:1], 0.05)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_template_trains_on_assistant_turns_only(tmp_path: Path, tokenizer_dir: Path) -> None:
    tok = Tokenizer.from_dir(tokenizer_dir)
    tok.chat_template = CHATML
    examples, _ = read_file(
        write(tmp_path, "d.txt", "User: hi\nAssistant: hello\nUser: how?\nAssistant: fine\n")
    )
    data = tokenize(examples, tok, chat_template=True)
    ids, trained = data.ids[0].tolist(), data.trained[0].tolist()
    assert tok.decode(ids) == tok.apply_chat_template(
        [
            {"role": r, "content": c}
            for r, c in [
                ("user", "hi"),
                ("assistant", "hello"),
                ("user", "how?"),
                ("assistant", "fine"),
            ]
        ],
        add_generation_prompt=False,
    )
    # Trained runs: exactly the assistant turns with their end markers.
    runs, current = [], []
    for i, t in zip(ids, trained, strict=True):
        if t:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    runs.append(tok.decode(current))
    assert runs == ["hello<|im_end|>\n", "fine<|im_end|>\n"]


def test_whole_example_packing_never_cuts_a_response_from_its_prompt(tmp_path: Path) -> None:
    import numpy as np

    from plaudit.learner._data import PackedEpochs, TokenizedSet, pack_examples, whole_examples

    qa, _ = read_file(write(tmp_path, "qa.txt", "Q: why?\nA: because.\n\nQ: how?\nA: so.\n"))
    assert whole_examples("auto", qa) and not whole_examples("stream", qa)
    plain, _ = read_file(write(tmp_path, "p.txt", "one post\n\nanother post\n"))
    assert not whole_examples("auto", plain) and whole_examples("examples", plain)

    # Example i: ids 1000 i + j, a prompt of 3 tokens (not trained), then its response.
    lengths = [5, 9, 4, 12, 7, 6, 10, 3, 8]
    data = TokenizedSet(
        ids=[np.arange(n, dtype=np.int64) + 1000 * (i + 1) for i, n in enumerate(lengths)],
        trained=[np.arange(n) >= 3 for n in lengths],
    )
    x, y = pack_examples(data, range(len(lengths)), seq_len=15, pad_id=0)
    assert x.shape == y.shape == (len(x), 15) and len(x) < len(lengths)
    for i, n in enumerate(lengths):
        first = 1000 * (i + 1)
        rows = [r for r in range(len(x)) if first in x[r].tolist()]
        assert len(rows) == 1, f"example {i} starts in {len(rows)} rows"
        row, at = x[rows[0]].tolist(), x[rows[0]].tolist().index(first)
        assert row[at : at + n - 1] == list(range(first, first + n - 1))  # whole, in one row
        targets = y[rows[0]].tolist()[at : at + n - 1]  # each token's next, where trained
        assert targets == [first + j + 1 if j + 1 >= 3 else IGNORE_INDEX for j in range(n - 1)]
    assert int((y != IGNORE_INDEX).sum()) == sum(n - 3 for n in lengths)
    # An example longer than a row keeps its end: the response and the nearest prompt.
    x1, y1 = pack_examples(data, [3], seq_len=5, pad_id=0)
    assert x1[0].tolist() == list(range(4006, 4011)) and y1[0].tolist() == list(range(4007, 4012))
    # Rows are packed once and reshuffled per epoch: the same rows, as many, every epoch.
    epochs = PackedEpochs(data=data, seq_len=15, pad_id=0, seed=3, rows_per_step=2, whole=True)
    a, b = epochs.epoch(0)[0], epochs.epoch(1)[0]
    assert len(a) == len(b) == epochs.rows_per_epoch
    assert sorted(map(tuple, a.tolist())) == sorted(map(tuple, b.tolist()))
