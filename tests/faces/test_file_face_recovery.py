"""The file face after faults: a write that fails half-way (the disk fills up), a torn last
record from a crash, paths that are not regular files, and lines too long to hold in memory.

The half-written append is real: a child process writes under RLIMIT_FSIZE, so the kernel
itself stores part of the record and fails the rest, as a full disk does."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from plaudit.faces import (
    Draft,
    FaceConfigError,
    FaceError,
    Permanent,
    SimulatedClock,
    Transient,
    discover,
)
from plaudit.faces.file import FileConfig, FileFace


def make(tmp_path: Path, **config: Any) -> FileFace:
    return FileFace(
        name="f", config=FileConfig(**config), state_dir=tmp_path / "state", clock=SimulatedClock()
    )


def record(ref: str, key: str, text: str) -> bytes:
    data = {"ref": ref, "idempotency_key": key, "text": text, "published_at": "2024-01-01T00:00Z"}
    return json.dumps(data).encode() + b"\n"


# The child: one good publish, one publish whose write the kernel cuts off after `room` bytes
# (RLIMIT_FSIZE; SIGXFSZ ignored so that write() fails with EFBIG instead of killing us), then
# the limit is lifted, as when disk space is freed, and two more publishes follow.
CHILD = textwrap.dedent(
    """
    import asyncio, json, resource, signal, sys
    from pathlib import Path
    from plaudit.faces import Draft, FaceError, SimulatedClock
    from plaudit.faces.file import FileConfig, FileFace

    async def main(folder: Path) -> None:
        clock = SimulatedClock()
        face = FileFace(name="f", config=FileConfig(), state_dir=folder, clock=clock)
        await face.publish(Draft(text="before the disk filled up"), idempotency_key="k1")
        clock.advance(60)
        size = face.published_path.stat().st_size
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 30, hard))
        try:
            await face.publish(Draft(text="x" * 200), idempotency_key="k2")
            failed = None
        except FaceError as exc:
            failed = type(exc).__name__
        after_failure = face.published_path.stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        await face.publish(Draft(text="x" * 200), idempotency_key="k2")
        clock.advance(60)
        await face.publish(Draft(text="after space was freed"), idempotency_key="k3")
        texts = [p.text async for p in face.history()]
        print(json.dumps({"failed": failed, "size": size, "after_failure": after_failure,
                          "texts": texts}))

    asyncio.run(main(Path(sys.argv[1])))
    """
)


def test_a_write_cut_off_by_a_full_disk_leaves_no_torn_record(tmp_path: Path) -> None:
    """Problem 1 of issue 16: after the failed append the file is as before it, so later
    publishes and every read work with on_bad_line = "error"."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failed"] is not None, "the cut-off write must fail the publish"
    assert result["after_failure"] == result["size"], "the partial record is truncated away"
    assert result["texts"] == ["after space was freed", "x" * 200, "before the disk filled up"]
    lines = (tmp_path / "state" / "published.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert len(lines) == 4


async def test_no_space_left_is_transient_and_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC half-way through the record (half is really written, then the disk is full):
    the caller may retry, and the file is byte for byte what it was."""
    face = make(tmp_path)
    await face.publish(Draft(text="first"), idempotency_key="k1")
    before = face.published_path.read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") != str(face.published_path):
            return real_write(fd, data)
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(Transient, match="free disk space"):
        await face.publish(Draft(text="second"), idempotency_key="k2")
    monkeypatch.undo()
    assert face.published_path.read_bytes() == before
    await face.publish(Draft(text="second"), idempotency_key="k2")
    assert [p.text async for p in face.history()] == ["first", "second"]


async def test_a_torn_tail_is_cut_with_a_loud_warning_before_the_next_append(
    tmp_path: Path,
) -> None:
    face = make(tmp_path)  # on_bad_line = "error", the default
    face.published_path.parent.mkdir(parents=True)
    good = record("file-1", "k1", "complete")
    torn = b'{"ref": "file-2", "idempotency_key": "k2", "te'  # a crash mid-write
    face.published_path.write_bytes(good + torn)
    with structlog.testing.capture_logs() as logs:
        await face.publish(Draft(text="after the crash"), idempotency_key="k3")
    raw = face.published_path.read_bytes()
    assert raw.startswith(good) and torn not in raw
    assert [p.text async for p in face.history()] == ["after the crash", "complete"]
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["bytes"] == len(torn) and warning["file"] == str(face.published_path)


async def test_a_torn_tail_is_cut_at_the_first_read(tmp_path: Path) -> None:
    face = make(tmp_path)
    face.published_path.parent.mkdir(parents=True)
    face.published_path.write_bytes(record("file-1", "k1", "complete") + b'{"ref": "fi')
    assert [p.text async for p in face.history()] == ["complete"]
    assert face.published_path.read_bytes() == record("file-1", "k1", "complete")


async def test_a_complete_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    """Only bytes that are not a record are cut: a whole record whose newline was lost is
    finished, never dropped, and its key still finds it."""
    face = make(tmp_path)
    face.published_path.parent.mkdir(parents=True)
    whole = record("file-1", "k1", "whole").rstrip(b"\n")
    face.published_path.write_bytes(whole)
    again = await face.publish(Draft(text="whole"), idempotency_key="k1")
    assert again.ref == "file-1"
    await face.publish(Draft(text="next"), idempotency_key="k2")
    assert [p.text async for p in face.history()] == ["next", "whole"]
    assert face.published_path.read_bytes().startswith(whole + b"\n")


@pytest.mark.parametrize("key", ["published", "reactions", "history"])
def test_a_device_or_folder_is_refused_at_construction(tmp_path: Path, key: str) -> None:
    """Problem 5: `published = "/dev/full"` made the face read an endless file; now neither
    `config check` (the Config model) nor the registry accepts a path that is not a file."""
    value: Any = [Path("/dev/full")] if key == "history" else Path("/dev/full")
    with pytest.raises(ValidationError, match="not a regular file"):
        FileConfig(**{key: value})
    with pytest.raises(FaceConfigError) as info:
        discover(only=["file"]).create(
            name="f",
            type="file",
            config={key: [str(tmp_path)] if key == "history" else str(tmp_path)},
            state_dir=tmp_path / "s",
        )
    message = str(info.value)
    assert key in message and "is a folder" in message and "[faces.f]" in message


def test_a_path_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(ValidationError, match="cannot be created"):
        FileConfig(published=tmp_path / "plain" / "published.jsonl")
    FileConfig(published=tmp_path / "new" / "folder" / "published.jsonl")  # created at publish


async def test_a_path_replaced_by_a_device_later_is_a_permanent_error(tmp_path: Path) -> None:
    face = make(tmp_path, reactions=tmp_path / "reactions.jsonl")
    (tmp_path / "reactions.jsonl").symlink_to("/dev/zero")  # endless, were it read whole
    with pytest.raises(Permanent, match="not a regular file"):
        await face.reactions(["x"])


def test_a_huge_line_is_a_bad_line_read_in_bounded_memory(tmp_path: Path) -> None:
    """A 64 MiB line (sparse: no disk used) costs a bounded buffer, not 64 MiB, and is a bad
    line that names its file and number."""
    history = tmp_path / "h.jsonl"
    with history.open("wb") as f:
        f.write(b'{"text": "ok", "created_at": "2024-01-01T00:00:00Z"}\n')
        f.seek(64 * 2**20, os.SEEK_CUR)  # a hole: 64 MiB of zero bytes, no newline
        f.write(b'\n{"text": "also ok", "created_at": "2024-01-02T00:00:00Z"}\n')
    face = make(tmp_path, history=[history], on_bad_line="skip")

    async def read() -> list[str]:
        return [p.text async for p in face.history()]

    import asyncio

    tracemalloc.start()
    try:
        texts = asyncio.run(read())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert texts == ["also ok", "ok"] and face.skipped_lines == 1
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    strict = make(tmp_path, history=[history])
    with pytest.raises(Permanent, match=r"h\.jsonl line 2 is longer than"):
        asyncio.run(strict.check())


async def test_a_failed_append_to_a_folder_stays_permanent(tmp_path: Path) -> None:
    face = make(tmp_path)
    face.published_path.mkdir(parents=True)
    with pytest.raises(FaceError) as info:
        await face.publish(Draft(text="hello"), idempotency_key="k")
    assert isinstance(info.value, Permanent)
    assert os.path.isdir(face.published_path)
