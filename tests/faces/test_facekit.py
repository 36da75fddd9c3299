"""The contract kit's own knobs: the face chooses the text of the posts the checks publish
(`post_text`), and a factory that takes `page_size` gets small pages, which bring paging bugs
out where one page would hide them."""

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from plaudit.faces import Draft, HistoricalPost, Published, Rejected
from plaudit.faces.testing import FaceContract, FaceFactory, MemoryConfig, MemoryFace


class HashtagShyFace(MemoryFace):
    """An audience that will not see hashtags: the platform refuses posts with one."""

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        if "#" in draft.text:
            raise Rejected("Hashtags are not allowed here; write the words out.", reason="tag")
        return await super()._publish(draft, idempotency_key=idempotency_key)


class TestHashtagShyFace(FaceContract):
    persistent = False

    @pytest.fixture
    def face_factory(self) -> FaceFactory:
        def make(*, state_dir: Path, history: list[HistoricalPost], page_size: int) -> MemoryFace:
            config = MemoryConfig(page_size=page_size)
            face = HashtagShyFace(name="shy", config=config, state_dir=state_dir)
            face.seed(history)
            return face

        return make

    def post_text(self, tag: str) -> str:
        return f"{self.sample_text}, number {tag}"


def test_the_default_post_text_is_the_one_with_a_hashtag(tmp_path: Path) -> None:
    # Without the override above, the shy face refuses the kit's posts: that is why it exists.
    assert FaceContract().post_text("p") == "A small, friendly test post about gardens #p"

    def make(*, state_dir: Path, history: list[HistoricalPost]) -> MemoryFace:
        return HashtagShyFace(name="shy", config=MemoryConfig(), state_dir=state_dir)

    with pytest.raises(Rejected, match="Hashtags"):
        FaceContract().test_publish_returns_published(make, tmp_path)


class RepeatsAtPageBoundaries(MemoryFace):
    """A paging bug: the cursor is inclusive, so each page starts with the last post of the
    page before. One page (the default 50 posts) hides it."""

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        size, cursor = self.config.page_size, until
        while True:
            page = [p for p in self.posts() if cursor is None or p.created_at <= cursor][:size]
            for post in page:
                yield post
            if len(page) < size:
                return
            cursor = page[-1].created_at


def _factory(face_class: type[MemoryFace]) -> FaceFactory:
    def make(*, state_dir: Path, history: list[HistoricalPost], **options: Any) -> MemoryFace:
        # **options: the kit sees that page_size is welcome and passes it.
        config = MemoryConfig(page_size=options.get("page_size", 50))
        face = face_class(name="paged", config=config, state_dir=state_dir)
        face.seed(history)
        return face

    return make


def test_small_pages_find_a_boundary_bug(tmp_path: Path) -> None:
    kit = FaceContract()
    with pytest.raises(AssertionError, match="in pages of 2 yielded a post twice"):
        kit.test_history_pages(_factory(RepeatsAtPageBoundaries), tmp_path / "a")
    with pytest.raises(AssertionError, match="yielded a post twice"):
        kit.test_history_newest_first_unique_aware(
            _factory(RepeatsAtPageBoundaries), tmp_path / "b"
        )
    kit.test_history_pages(_factory(MemoryFace), tmp_path / "c")  # the correct face passes


def test_a_factory_without_page_size_skips_the_page_check(tmp_path: Path) -> None:
    def make(*, state_dir: Path, history: list[HistoricalPost]) -> MemoryFace:
        face = MemoryFace(name="m", config=MemoryConfig(), state_dir=state_dir)
        face.seed(history)
        return face

    with pytest.raises(pytest.skip.Exception, match="accept `page_size`"):
        FaceContract().test_history_pages(make, tmp_path)
