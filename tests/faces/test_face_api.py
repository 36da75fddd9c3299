"""What the Face base class guarantees every face, checked with a deliberately sloppy face, and
the contract kit checked against faces that break the contract (it must fail them)."""

import math
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from plaudit.faces import (
    Draft,
    Face,
    FaceConfig,
    FaceError,
    FaceInfo,
    FaceState,
    FaceStateError,
    HistoricalPost,
    Limits,
    Published,
    RateLimited,
    Reactions,
    ReactionSnapshot,
    Rejected,
    ScoreWeights,
    Transient,
    score_reactions,
    utc_now,
)

# pytester runs the contract kit against broken faces (last test).
pytest_plugins = ["pytester"]

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class SloppyFace(Face[FaceConfig]):
    """Ignores since/until/limit, answers reactions partly and out of order, raises untagged
    errors: the base class must still give callers the documented behaviour."""

    type_name = "sloppy"
    Config = FaceConfig

    def __init__(self, *, name: str, config: FaceConfig, state_dir: Path) -> None:
        super().__init__(name=name, config=config, state_dir=state_dir)
        self.error: FaceError | None = None
        self.closed = 0
        self.hook_calls = 0

    @property
    def limits(self) -> Limits:
        return Limits(max_length=10, length_unit="graphemes")

    def measure(self, text: str) -> int:
        return len(text.replace("\u0301", ""))  # combining accent counts as nothing

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        for i in range(10, 0, -1):
            yield HistoricalPost(id=str(i), text=f"p{i}", created_at=T0 + timedelta(hours=i))
        if self.error:
            raise self.error

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        self.hook_calls += 1
        if self.error:
            raise self.error
        return Published(ref=idempotency_key, published_at=utc_now())

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        now = utc_now()
        known = [r for r in refs if r.startswith("k")]
        return [
            ReactionSnapshot(ref=r, found=True, reactions=Reactions(likes=len(r)), read_at=now)
            for r in reversed(known)
        ]

    async def _check(self) -> FaceInfo:
        return FaceInfo(face=self.name, type_name=self.type_name, account="a", limits=self.limits)

    async def _aclose(self) -> None:
        self.closed += 1


@pytest.fixture
def face(tmp_path: Path) -> SloppyFace:
    return SloppyFace(name="s", config=FaceConfig(), state_dir=tmp_path)


async def ids(face: Face[FaceConfig], **kwargs: object) -> list[str]:
    return [p.id async for p in face.history(**kwargs)]  # type: ignore[arg-type]


async def test_history_enforces_since_until_limit(face: SloppyFace) -> None:
    assert await ids(face) == [str(i) for i in range(10, 0, -1)]
    assert await ids(face, limit=3) == ["10", "9", "8"]
    assert await ids(face, since=T0 + timedelta(hours=8)) == ["10", "9", "8"]
    assert await ids(face, until=T0 + timedelta(hours=3)) == ["2", "1"]
    window = await ids(face, since=T0 + timedelta(hours=4), until=T0 + timedelta(hours=7))
    assert window == ["6", "5", "4"]
    assert await ids(face, limit=0) == []
    with pytest.raises(ValueError, match="timezone-aware"):
        await ids(face, since=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="is after until"):
        await ids(face, since=T0 + timedelta(hours=5), until=T0)
    with pytest.raises(ValueError, match="limit must be zero or positive"):
        await ids(face, limit=-1)


async def test_reactions_one_per_ref_in_order(face: SloppyFace) -> None:
    snaps = await face.reactions(["k1", "zz", "k22", "k1"])
    assert [(s.ref, s.found) for s in snaps] == [
        ("k1", True),
        ("zz", False),
        ("k22", True),
        ("k1", True),
    ]
    assert snaps[2].reactions.likes == 3 and snaps[1].reactions == Reactions()
    with pytest.raises(TypeError, match="not a single string"):
        await face.reactions("k1")


async def test_over_length_is_rejected_before_the_hook(face: SloppyFace) -> None:
    assert (await face.publish(Draft(text="e\u0301" * 10), idempotency_key="k")).ref == "k"
    with pytest.raises(Rejected) as info:
        await face.publish(Draft(text="x" * 11), idempotency_key="k2")
    assert info.value.reason == "too_long" and info.value.face == "s"
    assert str(info.value) == (
        "The draft is 11 graphemes long and face 's' allows at most 10; shorten it before "
        "publishing (faces never truncate)."
    )
    assert face.hook_calls == 1
    with pytest.raises(ValueError, match="non-empty idempotency_key"):
        await face.publish(Draft(text="x"), idempotency_key=" ")
    with pytest.raises(ValidationError, match="at least one non-space character"):
        Draft(text="  \n")


async def test_errors_leave_the_face_tagged_with_its_name(face: SloppyFace) -> None:
    face.error = RateLimited("Slow down.", retry_after=2.0)
    with pytest.raises(RateLimited) as info:
        await face.publish(Draft(text="x"), idempotency_key="k")
    assert info.value.face == "s" and info.value.retry_after == 2.0
    assert str(info.value) == "Slow down. (face 's')"
    face.error = Transient("Flaky.", face="other", ref="r1")
    with pytest.raises(Transient) as again:
        await ids(face)
    assert again.value.face == "other", "a name the face set itself is kept"
    assert str(again.value) == "Flaky. (face 'other', ref r1)"


async def test_lifecycle(face: SloppyFace) -> None:
    assert face.state is FaceState.OPEN
    async with face as entered:
        assert entered is face
    assert face.state is FaceState.CLOSED and face.closed == 1
    await face.aclose()
    assert face.closed == 1, "the hook runs once"
    with pytest.raises(FaceStateError) as info:
        await face.publish(Draft(text="x"), idempotency_key="k")
    assert str(info.value) == (
        "Face 's' (sloppy) is closed, so publish() cannot be called; aclose() was called on it "
        "already. Create a new instance through the registry to use this face again."
    )
    assert "closed" in repr(face)


def test_default_score_formula(face: SloppyFace) -> None:
    r = Reactions(likes=10, reposts=3, replies=4, quotes=1, extra={"bookmarks": 5})
    snap = ReactionSnapshot(ref="r", found=True, reactions=r, audience=200, read_at=T0)
    assert face.score(snap) == pytest.approx((10 + 2 * 3 + 4 + 2 * 1) / 200)
    weights = ScoreWeights(likes=0.5, reposts=0, replies=0, quotes=0, extra={"bookmarks": 2})
    assert score_reactions(snap, weights) == pytest.approx((5 + 10) / 200)
    no_audience = snap.model_copy(update={"audience": None})
    assert face.score(no_audience) == pytest.approx(22.0)
    post = HistoricalPost(id="h", text="t", created_at=T0, reactions=r, audience=0)
    assert face.score(post) == pytest.approx(22.0), "audience 0 divides by 1, not 0"
    with pytest.raises(ValueError, match="did not find it"):
        face.score(ReactionSnapshot(ref="gone", found=False, read_at=T0))
    with pytest.raises(ValidationError, match="finite"):
        ScoreWeights(likes=math.inf)


def test_models_normalise_and_validate() -> None:
    from datetime import timezone

    paris = timezone(timedelta(hours=2))
    post = HistoricalPost(id="1", text="t", created_at=datetime(2024, 6, 1, 14, tzinfo=paris))
    assert post.created_at == datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert post.created_at.utcoffset() == timedelta(0)
    with pytest.raises(ValidationError, match="timezone"):
        HistoricalPost(id="1", text="t", created_at=datetime(2024, 6, 1))
    with pytest.raises(ValidationError):
        Reactions(likes=-1)
    with pytest.raises(ValidationError, match="min_interval"):
        Limits(max_length=5, min_interval=timedelta(seconds=-1))
    with pytest.raises(ValidationError):
        FaceConfig(unknown_key=1)  # type: ignore[call-arg]


BROKEN_FACES = """
from plaudit.faces import Published, utc_now
from plaudit.faces.testing import FaceContract, MemoryConfig, MemoryFace
import pytest

class PostsTwice(MemoryFace):
    async def _publish(self, draft, *, idempotency_key):
        return await super()._publish(draft, idempotency_key=idempotency_key + str(utc_now()))

class WrongOrder(MemoryFace):
    async def _history(self, *, since, until, limit):
        posts = [p async for p in super()._history(since=since, until=until, limit=None)]
        for p in reversed(posts):
            yield p

class Base(FaceContract):
    persistent = False
    cls = MemoryFace
    @pytest.fixture
    def face_factory(self):
        def make(*, state_dir, history):
            face = self.cls(name="x", config=MemoryConfig(), state_dir=state_dir)
            face.seed(history)
            return face
        return make

class TestPostsTwice(Base):
    cls = PostsTwice

class TestWrongOrder(Base):
    cls = WrongOrder

class TestFine(Base):
    pass
"""


def test_contract_kit_fails_faces_that_break_the_contract(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=BROKEN_FACES)
    # Without pytest-asyncio: the kit runs its own event loop.
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-p", "no:asyncio")
    outcomes = result.parseoutcomes()
    failed = {
        line.split("::")[1] + "::" + line.split("::")[2].split(" ")[0]
        for line in result.outlines
        if line.startswith("FAILED")
    }
    assert "TestPostsTwice::test_publish_is_idempotent" in failed
    assert "TestWrongOrder::test_history_newest_first_unique_aware" in failed
    assert not any(name.startswith("TestFine::") for name in failed)
    assert outcomes["passed"] > 20
