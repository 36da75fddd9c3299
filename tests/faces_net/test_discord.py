"""The discord face against a fake Discord API (discord_fake.py, through httpx.MockTransport):
the contract suite, nonce + journal idempotency, per-route rate-limit buckets, reactions."""

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from discord_fake import NONCE_WINDOW, FakeDiscord
from faces_net_support import FAST_RETRY

from plaudit.faces import (
    AuthFailed,
    Draft,
    Face,
    FaceError,
    Permanent,
    RateLimited,
    Reactions,
    Rejected,
    Transient,
)
from plaudit.faces.discord import DiscordConfig, DiscordFace, nonce_for
from plaudit.faces.testing import SAMPLE_HISTORY, FaceContract, FaceFactory

MESSAGES = "POST /messages"


def make_face(fake: FakeDiscord, state_dir: Path, **options: Any) -> DiscordFace:
    options.setdefault("bot_token", fake.token)
    config = DiscordConfig(channel_id=fake.channel["id"], **options)
    return DiscordFace(
        name="dc", config=config, state_dir=state_dir, transport=fake.transport(), retry=FAST_RETRY
    )


class TestDiscordContract(FaceContract):
    seeds_history = False  # Discord has no reposts; the sample's reposts cannot be seeded
    unknown_ref = "123456789012345678"

    @pytest.fixture
    def face_factory(self) -> FaceFactory:
        fake = FakeDiscord()
        for post in SAMPLE_HISTORY:  # the channel's past, from a human member
            mid = fake.add_message(post.text, at=post.created_at)
            fake.react(mid, "👍", post.reactions.likes)
        self.fake = fake

        def make(*, state_dir: Path, history: list[Any]) -> DiscordFace:
            return make_face(fake, state_dir)

        return make

    async def react(self, face: Face[Any], ref: str) -> Reactions | None:
        self.fake.react(ref, "🎉", 3)
        self.fake.react(ref, "🌱", 2, custom_id="555555555555555555")
        self.fake.start_thread(ref, replies=4)
        return Reactions(likes=5, replies=4)

    async def provoke(self, face: Face[Any], error: type[FaceError]) -> bool:
        attempts = FAST_RETRY.attempts
        limited = {"message": "You are being rate limited.", "retry_after": 0.05, "global": False}
        answers: dict[type[FaceError], tuple[Any, int]] = {
            RateLimited: ((429, limited), attempts),
            AuthFailed: ((403, {"message": "Missing Permissions", "code": 50013}), 1),
            Transient: ((502, {"message": "Bad Gateway", "code": 0}), attempts),
            Permanent: ((404, {"message": "Unknown Channel", "code": 10003}), 1),
            Rejected: ((400, {"message": "Invalid Form Body", "code": 50035}), 1),
        }
        answer, times = answers[error]
        self.fake.fail_next(MESSAGES, answer, times)
        return True


async def test_nonce_makes_a_retry_after_a_lost_answer_return_the_same_message(
    tmp_path: Path,
) -> None:
    """The first POST is applied but its answer is lost (the connection drops): the retry
    carries the same nonce and Discord returns the message it already made."""
    fake = FakeDiscord()
    face = make_face(fake, tmp_path)
    await face.check()
    real_create = fake._create

    def create_then_drop(body: dict[str, Any]) -> tuple[int, Any]:
        fake._create = real_create  # type: ignore[method-assign]
        real_create(body)
        raise httpx.RemoteProtocolError("server disconnected without sending a response")

    fake._create = create_then_drop  # type: ignore[method-assign]
    published = await face.publish(Draft(text="Once, despite the drop"), idempotency_key="drop")
    assert fake.bot_texts() == ["Once, despite the drop"]
    assert fake.messages[published.ref]["nonce"] == nonce_for("drop")
    await face.aclose()


async def test_unconfirmed_intent_after_the_nonce_window_is_reconciled(tmp_path: Path) -> None:
    """The process died after Discord made the message, before the journal recorded it; it
    restarts after the nonce window has passed. The face finds its message in the channel
    instead of posting it a second time."""
    fake = FakeDiscord()
    face = make_face(fake, tmp_path)
    text = "Posted just before the crash"
    face._journal.begin("crash", text=text)  # the intent was recorded, then the process died
    made = fake._create({"content": text, "nonce": nonce_for("crash"), "enforce_nonce": True})[1]
    await face.aclose()
    fake.clock_offset = NONCE_WINDOW + 60  # Discord no longer remembers the nonce
    again = make_face(fake, tmp_path)
    published = await again.publish(Draft(text=text), idempotency_key="crash")
    assert published.ref == made["id"]
    assert fake.bot_texts() == [text] and fake.statuses("POST", MESSAGES) == []
    await again.aclose()


async def test_per_route_bucket_is_waited_out_and_other_routes_go_on(tmp_path: Path) -> None:
    fake = FakeDiscord(bucket_limit=2, bucket_window=0.6)
    face = make_face(fake, tmp_path)
    await face.check()
    start = time.monotonic()
    refs = [
        (await face.publish(Draft(text=f"Burst {i}"), idempotency_key=f"b{i}")).ref
        for i in range(5)
    ]
    elapsed = time.monotonic() - start
    assert len(set(refs)) == 5 and len(fake.bot_texts()) == 5
    # 5 posts at 2 per 0.6 s: two resets to wait for, and the limit is never hit (Remaining 0
    # pauses the route before a 429 can happen).
    assert fake.statuses("POST", MESSAGES) == [200] * 5
    assert elapsed >= 1.1, f"5 posts in {elapsed:.2f}s would break 2 per 0.6 s"
    # The message route is spent now; reading the guild (another bucket) is not held back.
    t0 = time.monotonic()
    await face.check()
    assert time.monotonic() - t0 < 0.3
    await face.aclose()


async def test_429_body_retry_after_is_waited_out_not_hammered(tmp_path: Path) -> None:
    fake = FakeDiscord()
    face = make_face(fake, tmp_path)
    await face.check()
    body = {"message": "You are being rate limited.", "retry_after": 0.8, "global": False}
    fake.fail_next(MESSAGES, (429, body))
    start = time.monotonic()
    await face.publish(Draft(text="After the wait"), idempotency_key="w")
    assert time.monotonic() - start >= 0.8
    assert fake.statuses("POST", MESSAGES) == [429, 200]
    await face.aclose()


async def test_reactions_and_audience(tmp_path: Path) -> None:
    fake = FakeDiscord(members=80)
    face = make_face(fake, tmp_path)
    published = await face.publish(Draft(text="Seedlings are up"), idempotency_key="s")
    assert (
        published.url
        == f"https://discord.com/channels/{fake.guild['id']}/{fake.channel['id']}/{published.ref}"
    )
    fake.react(published.ref, "👍", 6)
    fake.react(published.ref, "👎", 2)
    snaps = await face.reactions([published.ref, "123456789012345678", "not-an-id"])
    assert [s.found for s in snaps] == [True, False, False]
    reactions = snaps[0].reactions
    assert reactions.likes == 6 and reactions.extra["negative"] == 2 and snaps[0].audience == 80
    assert face.score(snaps[0]) == pytest.approx((6 - 2) / 80)
    await face.aclose()


async def test_history_pages_and_filters(tmp_path: Path) -> None:
    fake = FakeDiscord()
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(230):
        fake.add_message(f"old {i}", at=t0 + timedelta(minutes=i))
    fake.add_message("", at=t0 + timedelta(hours=10))  # an attachment-only message: skipped
    face = make_face(fake, tmp_path)
    posts = [p async for p in face.history()]
    assert [p.text for p in posts] == [f"old {i}" for i in reversed(range(230))]
    assert fake.statuses("GET", "GET /messages") == [200, 200, 200], "100 + 100 + 30"
    window = [p.text async for p in face.history(until=t0 + timedelta(minutes=5))]
    assert window == [f"old {i}" for i in reversed(range(5))]
    mine = make_face(fake, tmp_path / "b", history_authors="bot")
    assert [p async for p in mine.history()] == []
    await face.aclose()
    await mine.aclose()


async def test_over_length_never_sent_and_auth_errors(tmp_path: Path) -> None:
    fake = FakeDiscord()
    face = make_face(fake, tmp_path)
    assert face.limits.max_length == 2000
    with pytest.raises(Rejected) as info:
        await face.publish(Draft(text="x" * 2001), idempotency_key="long")
    assert info.value.reason == "too_long" and fake.statuses("POST", MESSAGES) == []
    await face.aclose()
    wrong = make_face(fake, tmp_path / "w", bot_token="nope")
    with pytest.raises(AuthFailed, match="401"):
        await wrong.check()
    await wrong.aclose()


def test_config_messages() -> None:
    with pytest.raises(ValueError, match="channel_id must be a Discord id"):
        DiscordConfig(channel_id="general", bot_token="t")
    assert (
        DiscordConfig(channel_id=700000000000000001, bot_token="t").channel_id
        == "700000000000000001"
    )
    assert len(nonce_for("k" * 100)) == 25
