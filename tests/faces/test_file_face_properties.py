"""Property tests of the file face's readers and its write-ahead published file (issue 16): for
any bytes in its files, every call returns or raises a face error (never another exception),
"skip" never raises, and a publish keeps every complete line that was there before it."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plaudit.faces import Draft, FaceError, SimulatedClock
from plaudit.faces.file import FileConfig, FileFace

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = ["id", "text", "created_at", "likes", "reposts", "audience", "url", "ref", "extra"]
KEYS += ["idempotency_key", "published_at", "replies", "quotes"]
records = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6).map(
    lambda d: json.dumps(d).encode()
)
good = st.builds(
    lambda n, likes: json.dumps(
        {
            "id": f"p{n}",
            "ref": f"p{n}",
            "text": f"post {n}",
            "likes": likes,
            "created_at": "2024-01-01T00:00:00Z",
        }
    ).encode(),
    st.integers(0, 5),
    st.integers(0, 9),
)
lines = st.one_of(good, records, st.binary(max_size=60), st.just(b""), st.just(b"\r"))
files = st.tuples(st.lists(lines, max_size=8), st.booleans()).map(
    lambda t: b"\n".join(t[0]) + (b"\n" if t[1] and t[0] else b"")
)


def run_all(face: FileFace) -> None:
    async def calls() -> None:
        for call in (
            lambda: _drain(face),
            lambda: face.reactions(["p1", "p2", "nowhere"]),
            lambda: face.check(),
            lambda: face.publish(Draft(text="a new post"), idempotency_key="new"),
        ):
            try:
                await call()
            except FaceError:
                if face.config.on_bad_line == "skip":
                    raise

    asyncio.run(calls())


async def _drain(face: FileFace) -> list[Any]:
    return [p async for p in face.history()]


@PROPERTY
@given(
    history=files,
    reactions=files,
    text_history=st.binary(max_size=200),
    mode=st.sampled_from(["error", "skip"]),
)
def test_any_bytes_in_the_read_files_give_posts_or_a_face_error(
    history: bytes, reactions: bytes, text_history: bytes, mode: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "h.jsonl").write_bytes(history)
        (folder / "h.txt").write_bytes(text_history)
        (folder / "r.jsonl").write_bytes(reactions)
        config = FileConfig(
            history=[folder / "h.jsonl", folder / "h.txt"],
            reactions=folder / "r.jsonl",
            on_bad_line=mode,  # type: ignore[arg-type]
        )
        run_all(FileFace(name="f", config=config, state_dir=folder, clock=SimulatedClock()))


@PROPERTY
@given(published=files, mode=st.sampled_from(["error", "skip"]))
def test_a_publish_keeps_every_complete_line_of_the_published_file(
    published: bytes, mode: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "published.jsonl").write_bytes(published)
        config = FileConfig(on_bad_line=mode)  # type: ignore[arg-type]
        face = FileFace(name="f", config=config, state_dir=folder, clock=SimulatedClock())
        run_all(face)
        after = (folder / "published.jsonl").read_bytes()
        complete = published[: published.rfind(b"\n") + 1]
        assert after.startswith(complete), "a complete line was removed"
        assert after == b"" or after.endswith(b"\n"), "a torn tail is left"
