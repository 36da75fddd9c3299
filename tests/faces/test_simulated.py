"""The simulated face: the contract suite, plus what makes it a useful audience: reactions
arrive over time, state survives a restart, spam and repeats lose, history is the corpus."""

import asyncio
import gzip
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from plaudit.faces import (
    Draft,
    Face,
    FaceStateError,
    Permanent,
    Reactions,
    SimulatedAudience,
    SimulatedClock,
    WallClock,
    discover,
)
from plaudit.faces.simulated import SimulatedConfig, SimulatedFace, load_corpus
from plaudit.faces.simulated._audience import words
from plaudit.faces.simulated._corpus import parse_corpus
from plaudit.faces.testing import FaceContract, FaceFactory

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class TestSimulatedFace(FaceContract):
    seeds_history = False  # its history is the VADER corpus
    history_read_limit = 300
    unknown_ref = "sim-999999"

    @pytest.fixture
    def face_factory(self) -> FaceFactory:
        clock = SimulatedClock(start=T0.timestamp())  # one clock across a "restart"

        def make(*, state_dir: Path, history: list[Any], page_size: int) -> SimulatedFace:
            return SimulatedFace(
                name="sim",
                config=SimulatedConfig(seed=3, history_page_size=page_size),
                state_dir=state_dir,
                clock=clock,
            )

        return make

    async def react(self, face: Face[Any], ref: str) -> Reactions | None:
        assert isinstance(face, SimulatedFace)
        assert isinstance(face.clock, SimulatedClock)
        face.clock.advance(timedelta(days=13).total_seconds())  # every reaction has arrived
        explained = face.explain(ref)
        assert explained is not None
        final = explained["final"]
        assert final["likes"] > 0, "a friendly post gets likes from 1,000 followers"
        return Reactions(**final)


def make_face(tmp_path: Path, clock: SimulatedClock, **config: Any) -> SimulatedFace:
    return SimulatedFace(
        name="sim", config=SimulatedConfig(**config), state_dir=tmp_path, clock=clock
    )


def hours(n: float) -> float:
    return n * 3600.0


GOOD = "Had a lovely walk by the river this morning, the sun was out and the birds were singing."


async def test_reactions_arrive_over_time_and_persist(tmp_path: Path) -> None:
    clock = SimulatedClock(start=T0.timestamp())
    face = make_face(tmp_path, clock, time_scale=1.0, arrival_mean_hours=4.0)
    published = await face.publish(Draft(text=GOOD), idempotency_key="k1")
    ref = published.ref
    assert published.published_at == T0, "the post is stamped with the face's clock"
    seen = []
    for after in (0, 0.5, 2, 6, 24, 96):
        clock.advance_to(T0.timestamp() + hours(after))
        (snap,) = await face.reactions([ref])
        assert snap.read_at == T0 + timedelta(hours=after)
        seen.append(snap.reactions.likes)
    assert seen[0] == 0
    assert seen == sorted(seen), f"counts never decrease: {seen}"
    assert seen[1] < seen[3] < seen[5], f"likes must keep arriving for hours: {seen}"
    final = face.explain(ref)
    assert final is not None and seen[-1] == final["final"]["likes"]
    await face.aclose()

    # A new instance on the same state folder: same post, same counts at the same time.
    for after, expected in ((2, seen[2]), (24, seen[4])):
        again = make_face(
            tmp_path,
            SimulatedClock(start=T0.timestamp() + hours(after)),
            time_scale=1.0,
            arrival_mean_hours=4.0,
        )
        (snap,) = await again.reactions([ref])
        assert snap.reactions.likes == expected
        await again.aclose()
    again = make_face(tmp_path, clock, time_scale=1.0, arrival_mean_hours=4.0)
    assert (await again.publish(Draft(text=GOOD), idempotency_key="k1")).ref == ref
    assert (await again.check()).details["posts_published"] == 1
    await again.aclose()


async def test_time_scale_compresses_a_day_into_a_minute(tmp_path: Path) -> None:
    clock = SimulatedClock()
    face = make_face(tmp_path, clock, time_scale=1440.0)
    ref = (await face.publish(Draft(text=GOOD), idempotency_key="k")).ref
    clock.advance(60)  # one minute of the clock = one day of the audience
    (snap,) = await face.reactions([ref])
    final = face.explain(ref)
    assert final is not None
    assert snap.reactions.likes >= 0.95 * final["final"]["likes"]
    await face.aclose()


async def final_score(tmp_path: Path, texts: list[str], seed: int = 0) -> list[float]:
    """Publish `texts` in order on one account, return the final score of each."""
    clock = SimulatedClock()
    face = make_face(tmp_path, clock, seed=seed)
    refs = []
    for i, text in enumerate(texts):
        refs.append((await face.publish(Draft(text=text), idempotency_key=f"k{i}")).ref)
        clock.advance(hours(3))
    clock.advance(hours(24 * 30))
    scores = [face.score(s) for s in await face.reactions(refs)]
    await face.aclose()
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_spam_and_repeats_score_worse_than_a_normal_post(tmp_path: Path, seed: int) -> None:
    (normal,) = await final_score(tmp_path / "normal", [GOOD], seed)
    (bangs,) = await final_score(
        tmp_path / "bangs",
        ["Had a lovely walk by the river this morning!!!!!!!! LOVE IT!!!!"],
        seed,
    )
    (salad,) = await final_score(
        tmp_path / "salad", ["love amazing great happy best wonderful awesome beautiful"], seed
    )
    (short,) = await final_score(tmp_path / "short", ["Great!"], seed)
    _, repeat = await final_score(tmp_path / "repeat", [GOOD, GOOD], seed)
    template = (
        await final_score(
            tmp_path / "template",
            [
                f"What a beautiful day to be alive, friends! Today I saw a {x}."
                for x in ("dog", "cat", "bird", "fox", "fish")
            ],
            seed,
        )
    )[-1]
    for name, worse in [
        ("!!!", bangs),
        ("salad", salad),
        ("short", short),
        ("repeat", repeat),
        ("template", template),
    ]:
        assert worse < 0.5 * normal, f"{name} scored {worse:.4f} vs normal {normal:.4f}"


async def test_negative_preference_flips_the_audience(tmp_path: Path) -> None:
    happy = "I love my friends and my family, they make me happy every day."
    grumpy = "I hate everything about this stupid rainy day, nothing works and it is awful."
    pos = await final_score(tmp_path / "p", [happy, grumpy])
    clock = SimulatedClock()
    face = make_face(tmp_path / "n", clock, preference="negative")
    refs = [(await face.publish(Draft(text=t), idempotency_key=t)).ref for t in (happy, grumpy)]
    clock.advance(hours(24 * 30))
    neg = [face.score(s) for s in await face.reactions(refs)]
    assert pos[0] > pos[1] and neg[1] > neg[0]
    await face.aclose()


async def test_same_seed_same_fate_other_seed_other_noise(tmp_path: Path) -> None:
    a = await final_score(tmp_path / "a", [GOOD], seed=5)
    b = await final_score(tmp_path / "b", [GOOD], seed=5)
    c = await final_score(tmp_path / "c", [GOOD], seed=6)
    assert a == b and a != c


async def test_history_is_the_corpus_newest_first(tmp_path: Path) -> None:
    face = make_face(tmp_path, SimulatedClock())
    posts = [p async for p in face.history(limit=5000)]
    assert len(posts) == 4200
    assert posts[0].id == "vader-4200" and posts[-1].id == "vader-1"
    assert posts[-1].text.startswith("Somehow I was blessed")
    assert all(p.audience == 1000 for p in posts[:10])
    # Human ratings drive the historical reactions: the top-rated quarter beats the bottom one.
    corpus = {f"vader-{c.id}": c.rating for c in load_corpus()}
    ranked = sorted(posts, key=lambda p: corpus[p.id])
    q = len(ranked) // 4
    low = sum(face.score(p) for p in ranked[:q]) / q
    high = sum(face.score(p) for p in ranked[-q:]) / q
    assert high > 3 * low
    # Published posts come first, then the corpus.
    ref = (await face.publish(Draft(text=GOOD), idempotency_key="k")).ref
    assert [p.id async for p in face.history(limit=2)] == [ref, "vader-4200"]
    (snap,) = await face.reactions(["vader-1"])
    assert snap.found and snap.reactions == posts[-1].reactions
    await face.aclose()


def test_corpus_file_quirks() -> None:
    corpus = load_corpus()
    assert [c.id for c in corpus] == list(range(1, 4201))
    texts = {c.id: c.text for c in corpus}
    assert "&amp;" not in " ".join(texts.values()), "HTML escapes are decoded"
    assert texts[3].startswith("We were 17 deep last night & the love")
    assert any("£1000" in t for t in texts.values()), "UTF-8, not ASCII"
    assert all(t == t.strip() for t in texts.values())
    assert -4 <= min(c.rating for c in corpus) < max(c.rating for c in corpus) <= 4
    with pytest.raises(ValueError, match="line 2"):
        parse_corpus(b"1\t0.5\tfine\r\n2\tbroken line\r\n")
    raw = gzip.compress(b"1\t0.5\tok &lt;3\r\n")
    assert parse_corpus(gzip.decompress(raw))[0].text == "ok <3"


async def test_unusable_state_folder_is_a_permanent_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be", encoding="utf-8")
    face = SimulatedFace(name="sim", config=SimulatedConfig(), state_dir=blocker / "sim")
    with pytest.raises(Permanent) as info:
        await face.publish(Draft(text=GOOD), idempotency_key="k")
    assert info.value.face == "sim"
    assert f"Cannot create the simulated face's state folder {blocker / 'sim'}" in str(info.value)


async def test_registry_runs_the_audience_on_the_hosts_clock(tmp_path: Path) -> None:
    """A week of posting and reading on a simulated clock, through the registry as the daemon
    creates faces: it takes no real time, and the audience keeps the clock's pace."""
    clock = SimulatedClock()
    face = discover(only={"simulated"}).create(
        name="sim", type="simulated", config={"seed": 1}, state_dir=tmp_path, clock=clock
    )
    assert face.clock is clock
    started = time.monotonic()
    refs = []
    for day in range(7):
        refs.append((await face.publish(Draft(text=GOOD), idempotency_key=f"d{day}")).ref)
        await clock.sleep(hours(24))  # what a posting loop does between posts
    snaps = await face.reactions(refs)
    assert time.monotonic() - started < 5.0, "a simulated week takes no real week"
    assert snaps[0].reactions.likes > 0, "a week-old post has collected its likes"
    assert all(s.read_at.timestamp() == clock.now() for s in snaps)
    await face.aclose()


async def test_wall_clock_demo_with_time_scale(tmp_path: Path) -> None:
    """The default clock is the real time; `time_scale` speeds the audience up for a demo."""
    face = SimulatedFace(
        name="sim",
        config=SimulatedConfig(time_scale=1_000_000.0, seed=3),  # a day in about 0.09 s
        state_dir=tmp_path,
    )
    assert isinstance(face.clock, WallClock)
    ref = (await face.publish(Draft(text=GOOD), idempotency_key="k")).ref
    await asyncio.sleep(0.2)  # about 2 days of audience time
    (snap,) = await face.reactions([ref])
    final = face.explain(ref)
    assert final is not None and snap.reactions.likes == final["final"]["likes"] > 0
    await face.aclose()


NEAR = "Had a lovely walk by the river this morning, the sun was out and the birds were loud."
PLAIN = "The meeting moved to Thursday, so bring the notes from last week with you."
SALAD = "love amazing great happy best wonderful awesome beautiful"


async def test_appeal_is_the_mean_score_that_publishing_draws(tmp_path: Path) -> None:
    """`appeal()` is the expected final score. On 150 audiences of other seeds, one account
    publishes the same posts in turn (a near-duplicate of the first, so the repetition penalty
    counts; a plain post; word salad), each scored by `appeal()` just before it goes out: the
    expectation is the same for every seed, and the mean final score matches it within 4
    standard errors."""
    texts = [NEAR, PLAIN, SALAD]
    expected: list[float] = []
    draws: list[list[float]] = [[] for _ in texts]
    for seed in range(150):
        clock = SimulatedClock(start=T0.timestamp())
        face = make_face(tmp_path / str(seed), clock, seed=seed)
        await face.publish(Draft(text=GOOD), idempotency_key="first")
        refs = []
        for i, text in enumerate(texts):
            clock.advance(hours(2))
            (want,) = await face.appeal([text])
            if seed == 0:
                expected.append(want)
            # The seed changes the draws, not the expectation.
            assert want == pytest.approx(expected[i], rel=1e-12)
            refs.append((await face.publish(Draft(text=text), idempotency_key=text)).ref)
        clock.advance(hours(24 * 30))  # every reaction has arrived
        for i, snap in enumerate(await face.reactions(refs)):
            draws[i].append(face.score(snap))
        await face.aclose()
    for text, want, got in zip(texts, expected, draws, strict=True):
        mean = sum(got) / len(got)
        se = (sum((x - mean) ** 2 for x in got) / (len(got) - 1) / len(got)) ** 0.5
        assert abs(mean - want) < 4 * se, (
            f"{text!r}: appeal {want:.4f}, drawn {mean:.4f} ± {se:.4f}"
        )
    near, plain, salad = expected
    assert near < plain and salad < 0.5 * plain, "a near-repeat and word salad lose"


async def test_appeal_judges_against_recent_posts_and_stores_nothing(tmp_path: Path) -> None:
    clock = SimulatedClock(start=T0.timestamp())
    face = make_face(tmp_path, clock)
    assert isinstance(face, SimulatedAudience)
    (fresh,) = await face.appeal([GOOD])
    assert (await face.check()).details["posts_published"] == 0, "appeal() publishes nothing"
    await face.publish(Draft(text=GOOD), idempotency_key="k")
    (again, empty) = await face.appeal([GOOD, ""])
    assert again < 0.5 * fresh, "an exact repeat of a recent post is worth much less"
    assert empty < fresh, "any text gets a score, an empty one a low one"
    assert await face.appeal([]) == []
    with pytest.raises(TypeError, match="sequence of texts"):
        await face.appeal(GOOD)
    await face.aclose()
    with pytest.raises(FaceStateError):
        await face.appeal([GOOD])


def test_faces_without_a_simulated_audience_do_not_claim_one(tmp_path: Path) -> None:
    memory = discover(only={"memory"}).create(
        name="m", type="memory", config={}, state_dir=tmp_path
    )
    assert not isinstance(memory, SimulatedAudience)


async def test_history_topic_bonus_counts_whole_words_as_live_posts_do(tmp_path: Path) -> None:
    topics = {"cat": 1.5}
    plain = make_face(tmp_path / "plain", SimulatedClock())
    keen = make_face(tmp_path / "keen", SimulatedClock(), topics=topics)
    before = {p.id: p async for p in plain.history(limit=5000)}
    after = {p.id: p async for p in keen.history(limit=5000)}
    cat = [i for i, p in before.items() if "cat" in words(p.text)]
    inside = [i for i, p in before.items() if "cat" in p.text.lower() and i not in cat]
    assert cat and inside  # "cat", and "education", "indicates", ... without it
    # The same seed draws the same noise: a bonus shows as more likes, its absence as none.
    assert all(after[i].reactions.likes > before[i].reactions.likes for i in cat)
    assert all(after[i].reactions == before[i].reactions for i in inside)
    await plain.aclose()
    await keen.aclose()
