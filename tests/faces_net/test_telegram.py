"""The telegram face against a fake Bot API (telegram_fake.py, through httpx.MockTransport):
the contract suite, at-most-once publishing without an idempotency key, reaction counts from
`message_reaction_count` updates, error mapping, UTF-16 length."""

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from faces_net_support import FAST_RETRY
from telegram_fake import FakeTelegram

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
from plaudit.faces.telegram import TelegramConfig, TelegramFace, utf16_length
from plaudit.faces.testing import SAMPLE_HISTORY, FaceContract, FaceFactory


def make_face(fake: FakeTelegram, state_dir: Path, **options: Any) -> TelegramFace:
    options.setdefault("bot_token", fake.token)
    config = TelegramConfig(chat_id="@plaudit_test", **options)
    return TelegramFace(
        name="tg", config=config, state_dir=state_dir, transport=fake.transport(), retry=FAST_RETRY
    )


class TestTelegramContract(FaceContract):
    seeds_history = False  # reactions cannot carry reposts or replies on Telegram
    unknown_ref = "987654"

    @pytest.fixture
    def face_factory(self) -> FaceFactory:
        fake = FakeTelegram()
        # Posts an admin made before: the bot sees them as channel_post updates.
        for post in SAMPLE_HISTORY:
            fake.admin_post(post.text, date=int(post.created_at.timestamp()))
        self.fake = fake

        def make(*, state_dir: Path, history: list[Any]) -> TelegramFace:
            return make_face(fake, state_dir)

        return make

    async def react(self, face: Face[Any], ref: str) -> Reactions | None:
        self.fake.react(int(ref), {"👍": 3, "🔥": 1, "👎": 1})
        return Reactions(likes=4)

    async def provoke(self, face: Face[Any], error: type[FaceError]) -> bool:
        attempts = FAST_RETRY.attempts
        answers: dict[type[FaceError], Any] = {
            # A Telegram 429 says how long to wait; every attempt meets it, so it surfaces.
            RateLimited: (
                FakeTelegram.error(429, "Too Many Requests: retry after 0", retry_after=0),
                attempts,
            ),
            AuthFailed: (FakeTelegram.error(401, "Unauthorized"), 1),
            # Connection refused: certainly not posted, so retried, then surfaced as Transient.
            Transient: (httpx.ConnectError, attempts),
            Permanent: (FakeTelegram.error(404, "Not Found"), 1),
            Rejected: (FakeTelegram.error(400, "Bad Request: message is too long"), 1),
        }
        answer, times = answers[error]
        self.fake.fail_next("sendMessage", answer, times)
        return True


async def test_reaction_counts_arrive_as_updates(tmp_path: Path) -> None:
    fake = FakeTelegram(members=40)
    face = make_face(fake, tmp_path)
    published = await face.publish(Draft(text="Sunrise over the bay"), idempotency_key="k1")
    assert published.url == f"https://t.me/plaudit_test/{published.ref}"
    fake.react(int(published.ref), {"👍": 5, "❤": 2, "👎": 1, "paid": 3})
    (snap,) = await face.reactions([published.ref])
    assert snap.found and snap.audience == 40
    assert snap.reactions.likes == 10, "everything but the negative reaction (stars included)"
    assert snap.reactions.extra["negative"] == 1 and snap.reactions.extra["emoji:👍"] == 5
    # Score: (10 likes - 1 negative) / 40 subscribers, with the default weights.
    assert face.score(snap) == pytest.approx(9 / 40)
    # Later counts replace earlier ones (each update carries the full counts).
    fake.react(int(published.ref), {"👍": 6})
    (snap,) = await face.reactions([published.ref])
    assert snap.reactions.likes == 6 and snap.reactions.extra.get("negative") == 0
    assert "message_reaction_count" in fake.allowed, "reaction counts must be asked for"
    await face.aclose()


async def test_update_offset_and_counts_survive_a_restart(tmp_path: Path) -> None:
    fake = FakeTelegram()
    face = make_face(fake, tmp_path)
    ref = (await face.publish(Draft(text="Kept"), idempotency_key="k")).ref
    fake.react(int(ref), {"🔥": 2})
    await face.reactions([ref])
    await face.aclose()
    again = make_face(fake, tmp_path)
    (snap,) = await again.reactions([ref])
    assert fake.offsets[-1] == fake.next_update_id, "the restarted face resumes at its offset"
    assert snap.reactions.likes == 2, "counts read before the restart are kept"
    posts = [p async for p in again.history()]
    assert [p.text for p in posts] == ["Kept"]
    await again.aclose()


async def test_ambiguous_send_is_never_repeated(tmp_path: Path) -> None:
    """A 502 after Telegram posted the message: the face cannot find out, so it refuses to send
    the key again (at most once) instead of risking a duplicate."""
    fake = FakeTelegram()
    fake.apply_before_failing = True
    fake.fail_next("sendMessage", FakeTelegram.error(502, "Bad Gateway"))
    face = make_face(fake, tmp_path)
    draft = Draft(text="Posted, but the answer was lost")
    with pytest.raises(Permanent, match="may or may not be in the channel"):
        await face.publish(draft, idempotency_key="amb")
    with pytest.raises(Permanent, match="at most once"):
        await face.publish(draft, idempotency_key="amb")
    assert fake.calls.count("sendMessage") == 1, "no second request for an ambiguous key"
    assert fake.posted_texts() == [draft.text]
    info = await face.check()
    assert info.details["unconfirmed_publishes"] == 1
    await face.aclose()


async def test_timeout_waiting_for_the_answer_is_ambiguous_but_refused_connection_is_not(
    tmp_path: Path,
) -> None:
    fake = FakeTelegram()
    face = make_face(fake, tmp_path)
    fake.fail_next("sendMessage", httpx.ReadTimeout)
    with pytest.raises(Permanent, match="ReadTimeout"):
        await face.publish(Draft(text="Timed out"), idempotency_key="t")
    assert fake.calls.count("sendMessage") == 1, "a read timeout is not retried blindly"
    fake.fail_next("sendMessage", httpx.ConnectError, times=1)
    published = await face.publish(Draft(text="Refused then sent"), idempotency_key="c")
    assert fake.calls.count("sendMessage") == 3 and published.ref
    await face.aclose()


async def test_429_retry_after_is_waited_out(tmp_path: Path) -> None:
    fake = FakeTelegram()
    face = make_face(fake, tmp_path)
    await face.check()
    fake.fail_next(
        "sendMessage", FakeTelegram.error(429, "Too Many Requests: retry after 1", retry_after=1)
    )
    start = time.monotonic()
    await face.publish(Draft(text="Patient"), idempotency_key="rl")
    assert time.monotonic() - start >= 1.0
    assert fake.calls.count("sendMessage") == 2 and fake.posted_texts() == ["Patient"]
    await face.aclose()


async def test_error_mapping_and_token_redaction(tmp_path: Path) -> None:
    fake = FakeTelegram()
    wrong = make_face(fake, tmp_path / "a", bot_token="999:WRONG-secret")
    with pytest.raises(AuthFailed) as info:
        await wrong.check()
    assert "WRONG-secret" not in str(info.value), "the token is in the URL; never in messages"
    await wrong.aclose()
    face = make_face(fake, tmp_path / "b")
    fake.fail_next(
        "getUpdates", FakeTelegram.error(409, "Conflict: terminated by other getUpdates request")
    )
    with pytest.raises(Permanent, match="Conflict"):
        await face.reactions(["1"])
    fake.fail_next("getChatMemberCount", FakeTelegram.error(500, "Internal Server Error"), times=3)
    with pytest.raises(Transient):
        await face.reactions(["1"])
    await face.aclose()
    other = TelegramFace(
        name="x",
        config=TelegramConfig(chat_id="@somewhere_else", bot_token=fake.token),
        state_dir=tmp_path / "c",
        transport=fake.transport(),
    )
    with pytest.raises(Permanent, match="chat not found"):
        await other.check()
    await other.aclose()


async def test_length_is_utf16_and_over_length_is_never_sent(tmp_path: Path) -> None:
    fake = FakeTelegram()
    face = make_face(fake, tmp_path)
    assert utf16_length("😀") == 2 and utf16_length("é") == 1
    fits = "😀" * 2048  # 4096 UTF-16 units, 2048 code points
    assert face.measure(fits) == 4096
    await face.publish(Draft(text=fits), idempotency_key="fits")
    with pytest.raises(Rejected) as info:
        await face.publish(Draft(text=fits + "a"), idempotency_key="over")
    assert info.value.reason == "too_long"
    assert fake.calls.count("sendMessage") == 1
    await face.aclose()


def test_history_keeps_only_this_channel(tmp_path: Path) -> None:
    import asyncio

    fake = FakeTelegram()
    fake.admin_post("Ours", date=int(datetime(2024, 5, 1, tzinfo=UTC).timestamp()))
    stranger = {"id": -100999, "type": "channel", "title": "Other"}
    fake.updates.append(
        {
            "update_id": 1,
            "channel_post": {"message_id": 1, "date": 1, "chat": stranger, "text": "Not ours"},
        }
    )

    async def run() -> list[str]:
        face = make_face(fake, tmp_path)
        try:
            return [p.text async for p in face.history()]
        finally:
            await face.aclose()

    assert asyncio.run(run()) == ["Ours"]


def test_config_messages() -> None:
    with pytest.raises(ValueError, match="chat_id must be a channel username"):
        TelegramConfig(chat_id="my channel", bot_token="1:x")
    assert TelegramConfig(chat_id=-1001234567890, bot_token="1:x").chat_id == "-1001234567890"
    with pytest.raises(ValueError, match="bot_token"):
        TelegramConfig.model_validate({"chat_id": "@plaudit_test"})
