"""The contract test kit for face authors (also a pytest plugin, loaded through `pytest11`).
It needs pytest, which plaudit does not install: `pip install 'plaudit[facekit]'`.

Subclass `FaceContract` in your face's tests and give it a `face_factory` fixture; pytest then
runs every check below against your face, the same checks every built-in face passes:

    import pytest
    from plaudit.faces.testing import FaceContract

    class TestMyFace(FaceContract):
        @pytest.fixture
        def face_factory(self):
            def make(*, state_dir, history):
                return MyFace(name="t", config=MyFace.Config(), state_dir=state_dir)
            return make

The factory is called inside the test's event loop, with keyword arguments `state_dir` (a fresh
folder; called again with the same folder to simulate a restart) and `history` (the posts of
`SAMPLE_HISTORY`, for faces whose history can be seeded), and `page_size` if its signature takes
it (or **kwargs): the history page size to give the face, so that the checks read across page
boundaries. It returns the face (or an awaitable of it), on whatever clock the test likes: the
checks compare times with `face.clock`, so a face on a `SimulatedClock` passes them too.
Capabilities are class attributes; hooks are methods you override:

    seeds_history         True if the factory puts exactly `history` into the face's history
                          (then ids, texts, dates and reactions are compared one to one)
    min_history           the face under test has at least this many past posts
    history_read_limit    how many posts the history checks read at most
    persistent            a second instance on the same state_dir keeps idempotency
    published_in_history  posts published through the face show up in its history
    unknown_ref           a well-formed ref that exists nowhere (reactions must say found=False)
    page_size             the page size a factory that takes `page_size` gets (default 2)
    sample_text           the start of the posts the checks publish (see post_text)

    def post_text(self, tag) -> str
        the text of one post the checks publish; `tag` differs for every post and so must
        the text. Default: sample_text + " #" + tag; override it where the audience or the
        platform minds hashtags.

    async def react(self, face, ref) -> Reactions | None
        make reactions appear on `ref` (a second account likes it, a reactions file gets a
        line, the simulated audience gets time); return counts the face must now report at
        least, or None if it cannot (that check is skipped).
    async def provoke(self, face, error) -> bool
        make the NEXT publish() fail with `error` (a FaceError class) as the caller sees it,
        after the face's own retries (a fault injected in the server, a MockTransport answer);
        return False where the face cannot (that case is skipped).
    def run(self, coroutine)
        runs one check's coroutine; asyncio.run by default (override for trio/anyio).

The checks are plain synchronous tests that run their own event loop, so they work whatever
async plugin (or none) your test suite uses. `MemoryFace` is the in-memory reference face.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from ._api import Face
from ._clock import utc_datetime
from ._errors import (
    AuthFailed,
    FaceError,
    FaceStateError,
    Permanent,
    RateLimited,
    Rejected,
    Transient,
)
from ._memory import MemoryConfig, MemoryFace
from ._models import Draft, HistoricalPost, Reactions, ReactionSnapshot
from ._registry import FaceRegistry, discover

__all__ = ["SAMPLE_HISTORY", "FaceContract", "FaceFactory", "MemoryConfig", "MemoryFace"]

T = TypeVar("T")
FaceFactory = Callable[..., "Face[Any] | Awaitable[Face[Any]]"]

_T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

# Seven past posts, oldest first, hours apart, with reactions; faces that can be seeded get these.
SAMPLE_HISTORY: tuple[HistoricalPost, ...] = tuple(
    HistoricalPost(
        id=f"h{i}",
        text=text,
        created_at=_T0 + timedelta(hours=5 * i, minutes=i),
        reactions=Reactions(likes=3 * i + 1, reposts=i % 3, replies=i % 2, quotes=0),
        audience=None,
    )
    for i, text in enumerate(
        [
            "Morning light over the harbour, coffee in hand.",
            "Finished the first draft of the garden plan.",
            "Rain all day. Good day for reading.",
            "The new bridge opened and the whole town walked across it.",
            "Three tomatoes ripe already, early this year!",
            "Quiet evening, long walk, good talk.",
            "Tried the bakery on the corner: worth the queue.",
        ]
    )
)

ERROR_CLASSES: tuple[type[FaceError], ...] = (
    RateLimited,
    AuthFailed,
    Transient,
    Permanent,
    Rejected,
)


class FaceContract:
    """The checks every face passes. See the module docstring for how to use it."""

    seeds_history: ClassVar[bool] = True
    min_history: ClassVar[int] = 3
    history_read_limit: ClassVar[int] = 200
    persistent: ClassVar[bool] = True
    published_in_history: ClassVar[bool] = True
    unknown_ref: ClassVar[str] = "plaudit-contract-unknown-ref"
    page_size: ClassVar[int] = 2  # seven seeded posts span four pages
    sample_text: ClassVar[str] = "A small, friendly test post about gardens"

    # ---- what a subclass provides ------------------------------------------------------------

    @pytest.fixture
    def face_factory(self) -> FaceFactory:
        raise NotImplementedError(
            f"{type(self).__name__} must define a `face_factory` fixture that returns a "
            "callable(*, state_dir, history) -> Face; see plaudit.faces.testing."
        )

    async def react(self, face: Face[Any], ref: str) -> Reactions | None:
        """Make reactions appear on `ref`; return the counts now expected at least."""
        return None

    async def provoke(self, face: Face[Any], error: type[FaceError]) -> bool:
        """Make the next publish() fail with `error`; False if this face cannot."""
        return False

    def post_text(self, tag: str) -> str:
        """The text of the post the checks publish as `tag` ("p", "idem", "err-Transient"...).
        Different tags must give different texts (the checks count posts by their text)."""
        return f"{self.sample_text} #{tag}"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run(coroutine)

    # ---- helpers -----------------------------------------------------------------------------

    async def _make(self, factory: FaceFactory, state_dir: Path) -> Face[Any]:
        kwargs: dict[str, Any] = {"state_dir": state_dir, "history": list(SAMPLE_HISTORY)}
        if _takes_page_size(factory):
            kwargs["page_size"] = self.page_size
        made = factory(**kwargs)
        face = await made if inspect.isawaitable(made) else made
        assert isinstance(face, Face), f"face_factory returned {face!r}, not a Face"
        return face

    async def _all(self, face: Face[Any], **kwargs: Any) -> list[HistoricalPost]:
        kwargs.setdefault("limit", self.history_read_limit)
        return [post async for post in face.history(**kwargs)]

    def _check_sorted(self, posts: list[HistoricalPost]) -> None:
        for older, newer in zip(posts[1:], posts, strict=False):
            assert newer.created_at >= older.created_at, (
                f"history() must yield newest first: {newer.id} ({newer.created_at}) came "
                f"before {older.id} ({older.created_at})"
            )

    # ---- history -----------------------------------------------------------------------------

    def test_history_newest_first_unique_aware(
        self, face_factory: FaceFactory, tmp_path: Path
    ) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                posts = await self._all(face)
                assert len(posts) >= self.min_history, (
                    f"expected at least {self.min_history} past posts, got {len(posts)}"
                )
                self._check_sorted(posts)
                ids = [p.id for p in posts]
                assert len(set(ids)) == len(ids), "history() yielded a post twice (paging bug?)"
                for post in posts:
                    assert post.created_at.tzinfo is not None
                    assert post.created_at.utcoffset() == timedelta(0)
            finally:
                await face.aclose()

        self.run(check())

    def test_history_matches_seed(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        if not self.seeds_history:
            pytest.skip("this face's history cannot be seeded (seeds_history = False)")

        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                posts = await self._all(face)
                expected = sorted(SAMPLE_HISTORY, key=lambda p: p.created_at, reverse=True)
                got = [(p.id, p.text, p.created_at, p.reactions) for p in posts]
                want = [(p.id, p.text, p.created_at, p.reactions) for p in expected]
                assert got == want
            finally:
                await face.aclose()

        self.run(check())

    def test_history_limit(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                posts = await self._all(face)
                assert await self._all(face, limit=0) == []
                first = await self._all(face, limit=2)
                assert [p.id for p in first] == [p.id for p in posts[:2]]
                one = await self._all(face, limit=1)
                assert [p.id for p in one] == [posts[0].id]
            finally:
                await face.aclose()

        self.run(check())

    def test_history_since_until(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                posts = await self._all(face)
                assert len(posts) >= 3
                newest, pivot, oldest = posts[0], posts[len(posts) // 2], posts[-1]
                t = pivot.created_at
                since = await self._all(face, since=t)
                assert [p.id for p in since] == [p.id for p in posts if p.created_at >= t], (
                    "since is inclusive: every post at or after it, newest first"
                )
                until = await self._all(face, until=t)
                want_until = [p.id for p in posts if p.created_at < t]
                # Older posts past the read limit may follow: compare the part both read.
                assert [p.id for p in until][: len(want_until)] == want_until, (
                    "until is exclusive: every post before it, newest first"
                )
                assert all(p.created_at < t for p in until)
                window = await self._all(
                    face, since=oldest.created_at, until=newest.created_at + timedelta(seconds=1)
                )
                assert [p.id for p in window] == [p.id for p in posts]
                with pytest.raises(ValueError):
                    await self._all(face, since=datetime(2024, 1, 1))  # naive datetime
            finally:
                await face.aclose()

        self.run(check())

    def test_history_pages(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        if not _takes_page_size(face_factory):
            pytest.skip(
                "face_factory takes no `page_size`, so the history may fit in one page; accept "
                "`page_size` and give it to the face's page-size setting"
            )

        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                posts = await self._all(face)
                ids = [p.id for p in posts]
                size = self.page_size
                assert len(posts) > size, (
                    f"{len(posts)} past posts fit in one page of {size}: seed more posts or "
                    "lower page_size, so that the checks read across pages"
                )
                assert len(set(ids)) == len(ids), (
                    f"history() in pages of {size} yielded a post twice: a page boundary "
                    "repeats a post (an inclusive cursor?)"
                )
                # Limits at and around the page boundaries.
                for limit in sorted({1, size - 1, size, size + 1, 2 * size, 2 * size + 1}):
                    if 0 < limit <= len(posts):
                        got = [p.id for p in await self._all(face, limit=limit)]
                        assert got == ids[:limit], (
                            f"history(limit={limit}) with pages of {size} gave {got}, "
                            f"expected the newest {limit}: {ids[:limit]}"
                        )
                # `since` at the first post of the second page.
                start = posts[size].created_at
                since = [p.id for p in await self._all(face, since=start)]
                assert since == [p.id for p in posts if p.created_at >= start]
            finally:
                await face.aclose()

        self.run(check())

    # ---- publish -----------------------------------------------------------------------------

    def test_publish_returns_published(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                before = utc_datetime(face.clock)  # the face's now: simulated clocks pass
                published = await face.publish(
                    Draft(text=self.post_text("p")), idempotency_key="k-p"
                )
                assert published.ref
                assert published.published_at.utcoffset() == timedelta(0)
                skew = abs(published.published_at - before)
                assert skew < timedelta(minutes=10), f"published_at is {skew} away from now"
                if self.published_in_history:
                    posts = await self._all(face, limit=20)
                    assert published.ref in [p.id for p in posts]
                    mine = next(p for p in posts if p.id == published.ref)
                    assert mine.text == self.post_text("p"), "the text must be published unchanged"
            finally:
                await face.aclose()

        self.run(check())

    def test_publish_is_idempotent(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                draft = Draft(text=self.post_text("idem"))
                first = await face.publish(draft, idempotency_key="k-idem")
                second = await face.publish(draft, idempotency_key="k-idem")
                assert second.ref == first.ref, "same idempotency key must give the same ref"
                other = await face.publish(
                    Draft(text=self.post_text("other")), idempotency_key="k-2"
                )
                assert other.ref != first.ref, "a new key must make a new post"
                if self.published_in_history:
                    texts = [p.text for p in await self._all(face, limit=20)]
                    assert texts.count(draft.text) == 1, "the same key must publish only once"
            finally:
                await face.aclose()

        self.run(check())

    def test_publish_idempotent_across_restart(
        self, face_factory: FaceFactory, tmp_path: Path
    ) -> None:
        if not self.persistent:
            pytest.skip("this face keeps no state across instances (persistent = False)")

        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            draft = Draft(text=self.post_text("restart"))
            try:
                first = await face.publish(draft, idempotency_key="k-restart")
            finally:
                await face.aclose()
            again = await self._make(face_factory, tmp_path)
            try:
                second = await again.publish(draft, idempotency_key="k-restart")
                assert second.ref == first.ref, "idempotency must survive a restart"
                if self.published_in_history:
                    texts = [p.text for p in await self._all(again, limit=20)]
                    assert texts.count(draft.text) == 1
            finally:
                await again.aclose()

        self.run(check())

    def test_publish_rejects_over_length_without_truncating(
        self, face_factory: FaceFactory, tmp_path: Path
    ) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                limits = face.limits
                assert limits.max_length > 0
                assert limits.min_interval >= timedelta(0)
                words = "word " * (limits.max_length // 5 + 2)
                too_long = words[: limits.max_length + 1].rstrip() + "x"
                while face.measure(too_long) <= limits.max_length:
                    too_long += "x"
                with pytest.raises(Rejected) as info:
                    await face.publish(Draft(text=too_long), idempotency_key="k-long")
                assert info.value.reason == "too_long"
                assert info.value.face == face.name
                if self.published_in_history:
                    texts = [p.text for p in await self._all(face, limit=20)]
                    assert not any(t and too_long.startswith(t) for t in texts), (
                        "an over-long draft must not be published, not even truncated"
                    )
            finally:
                await face.aclose()

        self.run(check())

    def test_publish_exactly_max_length(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                n = face.limits.max_length
                text = (self.post_text("max") + " " + "z" * n)[:n]
                while face.measure(text) > n:
                    text = text[:-1]
                published = await face.publish(Draft(text=text), idempotency_key="k-max")
                assert published.ref
            finally:
                await face.aclose()

        self.run(check())

    # ---- reactions and score -----------------------------------------------------------------

    def test_reactions_known_and_unknown(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                a = await face.publish(Draft(text=self.post_text("ra")), idempotency_key="k-ra")
                b = await face.publish(Draft(text=self.post_text("rb")), idempotency_key="k-rb")
                refs = [a.ref, self.unknown_ref, b.ref]
                snaps = await face.reactions(refs)
                assert [s.ref for s in snaps] == refs, "one snapshot per ref, in order"
                assert [s.found for s in snaps] == [True, False, True]
                missing = snaps[1]
                assert missing.reactions == Reactions(), "an unknown ref has zero counts"
                for snap in snaps:
                    assert snap.read_at.utcoffset() == timedelta(0)
                    assert abs(snap.read_at - utc_datetime(face.clock)) < timedelta(minutes=10)
                assert await face.reactions([]) == []
            finally:
                await face.aclose()

        self.run(check())

    def test_reactions_appear(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                published = await face.publish(
                    Draft(text=self.post_text("loved")), idempotency_key="k-loved"
                )
                expected = await self.react(face, published.ref)
                if expected is None:
                    pytest.skip("react() is not implemented for this face")
                (snap,) = await face.reactions([published.ref])
                assert snap.found
                got = snap.reactions
                for kind in ("likes", "reposts", "replies", "quotes"):
                    assert getattr(got, kind) >= getattr(expected, kind), (
                        f"{kind}: expected at least {getattr(expected, kind)}, got {got}"
                    )
                score = face.score(snap)
                assert math.isfinite(score)
                if sum((got.likes, got.reposts, got.replies, got.quotes)) > 0:
                    assert score > 0, "a post with reactions must score above zero"
            finally:
                await face.aclose()

        self.run(check())

    def test_score(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                now = utc_datetime(face.clock)

                def snap(likes: int) -> ReactionSnapshot:
                    reactions = Reactions(likes=likes, reposts=1, replies=1)
                    return ReactionSnapshot(
                        ref="r", found=True, reactions=reactions, audience=50, read_at=now
                    )

                low, high = face.score(snap(1)), face.score(snap(10))
                assert math.isfinite(low) and math.isfinite(high)
                assert high > low, "more likes must score higher"
                empty = ReactionSnapshot(ref="r", found=True, audience=50, read_at=now)
                assert face.score(empty) <= low
                with pytest.raises(ValueError):
                    face.score(ReactionSnapshot(ref="r", found=False, read_at=now))
                posts = await self._all(face, limit=3)
                for post in posts:
                    assert math.isfinite(face.score(post))
            finally:
                await face.aclose()

        self.run(check())

    # ---- errors, check, lifecycle ------------------------------------------------------------

    @pytest.mark.parametrize("error", ERROR_CLASSES, ids=lambda e: e.__name__)
    def test_error_mapping(
        self, face_factory: FaceFactory, tmp_path: Path, error: type[FaceError]
    ) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                if not await self.provoke(face, error):
                    pytest.skip(f"provoke() cannot make this face raise {error.__name__}")
                draft = Draft(text=self.post_text(f"err-{error.__name__}"))
                key = f"k-err-{error.__name__}"
                with pytest.raises(error) as info:
                    await face.publish(draft, idempotency_key=key)
                assert info.value.face == face.name, "errors must name the face instance"
                if isinstance(info.value, RateLimited) and info.value.retry_after is not None:
                    assert info.value.retry_after >= 0
                if error in (RateLimited, Transient):
                    # The caller retries with the same key: exactly one post results.
                    first = await face.publish(draft, idempotency_key=key)
                    second = await face.publish(draft, idempotency_key=key)
                    assert first.ref == second.ref
                    if self.published_in_history:
                        texts = [p.text for p in await self._all(face, limit=20)]
                        assert texts.count(draft.text) == 1
            finally:
                await face.aclose()

        self.run(check())

    def test_check(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            try:
                info = await face.check()
                assert info.face == face.name
                assert info.type_name == face.type_name
                assert info.account
                assert info.limits == face.limits
                assert info.audience is None or info.audience >= 0
            finally:
                await face.aclose()

        self.run(check())

    def test_aclose(self, face_factory: FaceFactory, tmp_path: Path) -> None:
        async def check() -> None:
            face = await self._make(face_factory, tmp_path)
            await face.aclose()
            await face.aclose()  # a second close is harmless
            with pytest.raises(FaceStateError, match="aclose"):
                await face.publish(Draft(text=self.post_text("late")), idempotency_key="k-late")
            with pytest.raises(FaceStateError):
                await face.reactions(["x"])
            with pytest.raises(FaceStateError):
                await face.check()
            with pytest.raises(FaceStateError):
                await self._all(face)

        self.run(check())


def _takes_page_size(factory: FaceFactory) -> bool:
    """Whether the factory accepts `page_size=` (by name or through **kwargs)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a signature inspect cannot read: do not guess
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "page_size" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in params
    )


# ---- the pytest plugin part (registered through the `pytest11` entry point) -----------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "face_contract: a face's run of the plaudit.faces.testing contract suite"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and issubclass(cls, FaceContract):
            item.add_marker("face_contract")


@pytest.fixture
def face_registry() -> FaceRegistry:
    """A fresh registry of the installed face types (`discover()`)."""
    return discover()


@pytest.fixture
def memory_face(tmp_path: Path) -> MemoryFace:
    """An open in-memory face seeded with `SAMPLE_HISTORY`."""
    face = MemoryFace(name="memory", config=MemoryConfig(), state_dir=tmp_path)
    face.seed(SAMPLE_HISTORY)
    return face
