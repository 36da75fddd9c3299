"""The notebook face through plaudit's contract suite, created through the registry (the real
entry point, so this fails if the package is not installed)."""

import json
from pathlib import Path
from typing import Any

import pytest

from plaudit.faces import Face, HistoricalPost, Reactions, discover
from plaudit.faces.testing import FaceContract, FaceFactory


def test_registered_through_its_entry_point() -> None:
    installed = {f.type_name: f for f in discover().installed()}
    assert installed["notebook"].package == "plaudit-face-notebook 0.1.0"


class TestNotebookFace(FaceContract):
    seeds_history = False  # the notebook keeps likes (stars) only, not the seeded reposts

    @pytest.fixture
    def face_factory(self) -> FaceFactory:
        registry = discover(only={"notebook"})

        def make(*, state_dir: Path, history: list[HistoricalPost]) -> Face[Any]:
            book = state_dir / "notebook.json"
            if not book.exists():  # seed the history once; a restart keeps the file
                state_dir.mkdir(parents=True, exist_ok=True)
                posts = [
                    {"ref": p.id, "key": None, "text": p.text, "at": p.created_at.isoformat()}
                    for p in history
                ]
                stars = {p.id: p.reactions.likes for p in history}
                book.write_text(json.dumps({"posts": posts, "stars": stars}), encoding="utf-8")
            return registry.create(name="nb", type="notebook", config={}, state_dir=state_dir)

        return make

    async def react(self, face: Face[Any], ref: str) -> Reactions | None:
        book_path = face.state_dir / "notebook.json"
        book = json.loads(book_path.read_text(encoding="utf-8"))
        book["stars"][ref] = 3  # a reader gives three stars
        book_path.write_text(json.dumps(book), encoding="utf-8")
        return Reactions(likes=3)
