"""The file face: the contract suite over JSONL history, plus text formats, the reactions file
written by someone else, bad lines, and the append-only published file."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from plaudit.faces import Draft, Face, FaceError, HistoricalPost, Permanent, Reactions
from plaudit.faces.file import FileConfig, FileFace
from plaudit.faces.testing import FaceContract, FaceFactory


def write_history(path: Path, posts: list[HistoricalPost]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for p in posts:
            record = {"id": p.id, "text": p.text, "created_at": p.created_at.isoformat()}
            record.update(p.reactions.model_dump(exclude={"extra"}))
            f.write(json.dumps(record) + "\n")


def append_reactions(face: FileFace, ref: str, **counts: int) -> None:
    with face.reactions_path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"ref": ref, **counts}) + "\n")


class TestFileFace(FaceContract):
    @pytest.fixture
    def face_factory(self) -> FaceFactory:
        def make(*, state_dir: Path, history: list[HistoricalPost]) -> FileFace:
            source = state_dir / "history.jsonl"
            if not source.exists():
                state_dir.mkdir(parents=True, exist_ok=True)
                write_history(source, history)
            config = FileConfig(history=[source], audience=80)
            return FileFace(name="files", config=config, state_dir=state_dir)

        return make

    async def react(self, face: Face[Any], ref: str) -> Reactions | None:
        assert isinstance(face, FileFace)
        append_reactions(face, ref, likes=1)
        append_reactions(face, ref, likes=5, reposts=2)  # the later line wins
        return Reactions(likes=5, reposts=2)

    async def provoke(self, face: Face[Any], error: type[FaceError]) -> bool:
        if error is not Permanent:
            return False
        assert isinstance(face, FileFace)
        face.published_path.unlink(missing_ok=True)
        face.published_path.mkdir(parents=True)  # appending to a folder fails for good
        return True


def make(tmp_path: Path, **config: Any) -> FileFace:
    return FileFace(name="f", config=FileConfig(**config), state_dir=tmp_path / "state")


async def test_text_history_lines_and_paragraphs(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("first post\n\nsecond post\nthird post\n", encoding="utf-8")
    paras = tmp_path / "paras.md"
    paras.write_text("one\nstill one\n\n\ntwo\r\n\r\nthree\n", encoding="utf-8")
    face = make(tmp_path, history=[paras], history_format="paragraphs")
    posts = [p async for p in face.history()]
    assert [p.text for p in posts] == ["three", "two", "one\nstill one"]
    assert posts[-1].id == "paras.md:1"
    face = make(tmp_path, history=[lines], history_format="lines")
    assert [p.text async for p in face.history()] == ["third post", "second post", "first post"]


async def test_published_then_reactions_from_another_program(tmp_path: Path) -> None:
    face = make(tmp_path, audience=10)
    published = await face.publish(Draft(text="héllo — world"), idempotency_key="k")
    record = json.loads(face.published_path.read_text(encoding="utf-8"))
    assert record["text"] == "héllo — world" and record["ref"] == published.ref
    (snap,) = await face.reactions([published.ref])
    assert snap.found and snap.reactions == Reactions()
    face.reactions_path.write_text(
        json.dumps({"ref": published.ref, "likes": 3})
        + "\n"
        + json.dumps({"ref": published.ref, "likes": 7, "replies": 1, "audience": 12})
        + "\n"
        + '{"ref": "half-writ',  # a line being written right now: ignored
        encoding="utf-8",
    )
    (snap,) = await face.reactions([published.ref])
    assert snap.reactions == Reactions(likes=7, replies=1) and snap.audience == 12
    assert face.score(snap) == pytest.approx(8 / 12)


async def test_bad_lines_name_file_and_line_or_are_skipped(tmp_path: Path) -> None:
    source = tmp_path / "h.jsonl"
    source.write_text(
        '{"text": "ok", "created_at": "2024-01-01T00:00:00Z"}\n'
        "{not json}\n"
        '{"text": "no date"}\n'
        '{"text": "naive", "created_at": "2024-01-01T00:00:00"}\n'
        '{"text": "epoch", "created_at": 1704067200, "likes": 2}\n',
        encoding="utf-8",
    )
    strict = make(tmp_path, history=[source])
    with pytest.raises(Permanent) as info:
        [p async for p in strict.history()]
    message = str(info.value)
    assert f"{source} line 2 is not valid JSON" in message and 'on_bad_line = "skip"' in message
    lenient = make(tmp_path, history=[source], on_bad_line="skip")
    posts = [p async for p in lenient.history()]
    assert [p.text for p in posts] == ["ok", "epoch"]  # same instant: file order kept
    assert posts[1].created_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert lenient.skipped_lines == 3
    assert (await lenient.check()).details["skipped_lines"] >= 3


async def test_missing_history_file_is_a_clear_error(tmp_path: Path) -> None:
    face = make(tmp_path, history=[tmp_path / "nope.jsonl"])
    with pytest.raises(Permanent, match=r"no history file .*nope.jsonl; fix the `history` path"):
        await face.check()


async def test_torn_published_line_is_cut_not_glued(tmp_path: Path) -> None:
    """A torn last line (a crash mid-write) is cut before the next append, so that it never
    becomes a broken middle line (test_file_face_recovery.py has the faults in detail)."""
    face = make(tmp_path)
    face.published_path.parent.mkdir(parents=True)
    face.published_path.write_bytes(b'{"ref": "x", "text": "torn')  # a crash mid-write
    await face.publish(Draft(text="after the crash"), idempotency_key="k2")
    raw = face.published_path.read_bytes()
    assert b"torn" not in raw and raw.count(b"\n") == 1
    assert [p.text async for p in face.history()] == ["after the crash"]
    assert face.skipped_lines == 0
