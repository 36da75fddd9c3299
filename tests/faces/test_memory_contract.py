"""The contract suite run against the in-memory reference face."""

from pathlib import Path
from typing import Any

import pytest

from plaudit.faces import (
    AuthFailed,
    Face,
    FaceError,
    Permanent,
    RateLimited,
    Reactions,
    Rejected,
    Transient,
)
from plaudit.faces.testing import FaceContract, FaceFactory, MemoryConfig, MemoryFace


class TestMemoryFace(FaceContract):
    persistent = False  # the memory face forgets everything when the instance goes

    @pytest.fixture
    def face_factory(self) -> FaceFactory:
        def make(*, state_dir: Path, history: list[Any], page_size: int) -> MemoryFace:
            # The kit's page size (2) makes the seven seeded posts span four pages.
            config = MemoryConfig(page_size=page_size)
            face = MemoryFace(name="mem", config=config, state_dir=state_dir)
            face.seed(history)
            return face

        return make

    async def react(self, face: Face[Any], ref: str) -> Reactions | None:
        assert isinstance(face, MemoryFace)
        reactions = Reactions(likes=4, reposts=1, replies=2)
        face.set_reactions(ref, reactions)
        return reactions

    async def provoke(self, face: Face[Any], error: type[FaceError]) -> bool:
        assert isinstance(face, MemoryFace)
        made: dict[type[FaceError], FaceError] = {
            RateLimited: RateLimited("Slow down.", retry_after=1.5),
            AuthFailed: AuthFailed("Token revoked."),
            Transient: Transient("Server hiccup."),
            Permanent: Permanent("Account gone."),
            Rejected: Rejected("Forbidden word.", reason="forbidden"),
        }
        face.fail_next(made[error])
        return True


async def test_memory_history_is_paged(memory_face: MemoryFace) -> None:
    # The fixture from the pytest plugin: page size 50, so 7 posts come in one page.
    posts = [p async for p in memory_face.history()]
    assert len(posts) == 7 and memory_face.pages_served == 1
    paged = MemoryFace(name="p", config=MemoryConfig(page_size=3), state_dir=memory_face.state_dir)
    paged.seed(posts)
    assert [p.id async for p in paged.history()] == [p.id for p in posts]
    assert paged.pages_served == 3
    # A limit stops paging early.
    paged.pages_served = 0
    assert len([p async for p in paged.history(limit=2)]) == 2
    assert paged.pages_served == 1
