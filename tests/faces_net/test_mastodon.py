"""The mastodon face against a real Mastodon API server (mastodon-mock, see conftest.py): the
contract suite, retries that never post twice, rate limits waited out, Mastodon's length rules."""

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faces_net_support import FAST_RETRY, CountingTransport, MastodonServer, MastodonUser

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
from plaudit.faces._http import RetryPolicy
from plaudit.faces.mastodon import MastodonConfig, MastodonFace, countable_length, html_to_text
from plaudit.faces.testing import FaceContract, FaceFactory

STATUSES = "/api/v1/statuses"


def make_face(
    server: MastodonServer,
    user: MastodonUser,
    state_dir: Path,
    *,
    transport: CountingTransport | None = None,
    retry: RetryPolicy = FAST_RETRY,
    **options: Any,
) -> MastodonFace:
    config = MastodonConfig(base_url=server.base_url, access_token=user.token, **options)
    return MastodonFace(
        name="fedi", config=config, state_dir=state_dir, transport=transport, retry=retry
    )


def texts_of(server: MastodonServer, user: MastodonUser) -> list[str]:
    return [html_to_text(str(s["content"])) for s in server.statuses(user)]


class TestMastodonContract(FaceContract):
    seeds_history = False  # a server's statuses are dated when they are created
    unknown_ref = "999999999999"  # a well-formed status id that does not exist

    @pytest.fixture
    def face_factory(self, mastodon: MastodonServer) -> FaceFactory:
        user = mastodon.new_user()
        for text in ("First light on the hill.", "Bread & butter, <b>bold</b>?", "Third\nline"):
            mastodon.post(user, text)
        self.server = mastodon

        def make(*, state_dir: Path, history: list[Any]) -> MastodonFace:
            return make_face(mastodon, user, state_dir)

        return make

    async def react(self, face: Face[Any], ref: str) -> Reactions | None:
        fan = self.server.new_user()
        await asyncio.to_thread(self.server.as_user, fan, "POST", f"{STATUSES}/{ref}/favourite")
        await asyncio.to_thread(self.server.as_user, fan, "POST", f"{STATUSES}/{ref}/reblog")
        await asyncio.to_thread(
            self.server.as_user,
            fan,
            "POST",
            STATUSES,
            json={"status": "Lovely!", "in_reply_to_id": ref},
        )
        return Reactions(likes=1, reposts=1, replies=1)

    async def provoke(self, face: Face[Any], error: type[FaceError]) -> bool:
        soon = (datetime.now(UTC) + timedelta(seconds=0.2)).isoformat()
        attempts = FAST_RETRY.attempts
        effects: dict[type[FaceError], tuple[dict[str, object], int]] = {
            # Every retry meets the limit too, so the face gives up and says when to come back.
            RateLimited: (
                {"type": "status", "status": 429, "headers": {"X-RateLimit-Reset": soon}},
                attempts,
            ),
            AuthFailed: ({"type": "status", "status": 401}, 1),
            Transient: ({"type": "status", "status": 503}, attempts),
            Permanent: ({"type": "status", "status": 404}, 1),
            Rejected: (
                {"type": "status", "status": 422, "body": {"error": "Validation failed"}},
                1,
            ),
        }
        effect, count = effects[error]
        await asyncio.to_thread(
            self.server.fault, method="POST", path=STATUSES, effect=effect, count=count
        )
        return True


# ---- the two "Show" results -----------------------------------------------------------------


async def test_publish_retried_after_500_creates_exactly_one_status(
    mastodon: MastodonServer, tmp_path: Path
) -> None:
    user = mastodon.new_user()
    transport = CountingTransport()
    face = make_face(mastodon, user, tmp_path, transport=transport)
    mastodon.fault(method="POST", path=STATUSES, effect={"type": "status", "status": 500}, count=1)
    text = "Retried once, posted once."
    published = await face.publish(Draft(text=text), idempotency_key="show-500")
    posts = transport.calls("POST", STATUSES)
    assert [p.status for p in posts] == [500, 200], "one 500, then one successful retry"
    statuses = mastodon.statuses(user)
    assert [s["id"] for s in statuses] == [published.ref], "the server holds exactly one status"
    # The caller retrying the same key (after a crash, say) changes nothing either.
    again = await face.publish(Draft(text=text), idempotency_key="show-500")
    assert again.ref == published.ref and len(mastodon.statuses(user)) == 1
    print(
        f"\nSHOW mastodon 500: POST attempts={len(posts)} statuses={[p.status for p in posts]} "
        f"server statuses={len(statuses)}"
    )
    await face.aclose()


async def test_publish_whose_response_was_lost_is_not_duplicated(
    mastodon: MastodonServer, tmp_path: Path
) -> None:
    """The first POST reaches the server but answers after the client gave up (the server still
    creates the status); the retry carries the same Idempotency-Key, so one status results."""
    user = mastodon.new_user()
    transport = CountingTransport()
    face = make_face(mastodon, user, tmp_path, transport=transport, timeout_seconds=0.4)
    await face.check()  # load instance and account before the slow call
    mastodon.fault(
        method="POST", path=STATUSES, effect={"type": "latency", "delay_ms": 1200}, count=1
    )
    published = await face.publish(Draft(text="Slow server, one post."), idempotency_key="lost")
    await asyncio.sleep(1.2)  # let the delayed first request finish on the server
    statuses = mastodon.statuses(user)
    assert [s["id"] for s in statuses] == [published.ref]
    assert [p.status for p in transport.calls("POST", STATUSES)] == [None, 200]
    await face.aclose()


@pytest.mark.parametrize("reset_format", ["iso8601", "epoch"])
async def test_429_is_waited_out_until_the_reset(
    mastodon: MastodonServer, tmp_path: Path, reset_format: str
) -> None:
    """Real Mastodon sends X-RateLimit-Reset as ISO-8601, mastodon-mock as epoch seconds; both
    make the face sleep until the reset and try once more, not hammer the server."""
    user = mastodon.new_user()
    transport = CountingTransport()
    face = make_face(mastodon, user, tmp_path, transport=transport)
    await face.check()
    if reset_format == "iso8601":
        reset_at = time.time() + 2.0
        value = datetime.fromtimestamp(reset_at, UTC).isoformat(timespec="milliseconds")
    else:
        reset_at = float(int(time.time()) + 3)  # whole seconds, as mastodon-mock sends them
        value = str(int(reset_at))
    headers = {"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": value}
    effect = {"type": "status", "status": 429, "headers": headers, "body": {"error": "Too many"}}
    mastodon.fault(method="POST", path=STATUSES, effect=effect, count=1)
    reset_mono = time.monotonic() + (reset_at - time.time())
    published = await face.publish(Draft(text=f"Patient ({reset_format})."), idempotency_key="rl")
    posts = transport.calls("POST", STATUSES)
    assert [p.status for p in posts] == [429, 200], "exactly one retry after the 429"
    waited, due = posts[1].started - posts[0].ended, reset_mono - posts[0].ended
    assert posts[1].started >= reset_mono - 0.05, f"retried after {waited:.2f}s, reset {due:.2f}s"
    assert posts[1].started <= reset_mono + 1.0, f"waited {waited:.2f}s for a reset {due:.2f}s away"
    assert [s["id"] for s in mastodon.statuses(user)] == [published.ref]
    # The wait is reported, for plaudit_rate_limit_wait_seconds_total.
    assert face.rate_limit_waited_seconds() >= due - 0.05
    print(
        f"\nSHOW mastodon 429 ({reset_format}): POST attempts={len(posts)} "
        f"reset in {due:.2f}s, retried after {waited:.2f}s"
    )
    await face.aclose()


async def test_far_reset_surfaces_as_rate_limited_after_one_request(
    mastodon: MastodonServer, tmp_path: Path
) -> None:
    user = mastodon.new_user()
    transport = CountingTransport()
    face = make_face(mastodon, user, tmp_path, transport=transport)
    reset = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    effect = {"type": "status", "status": 429, "headers": {"X-RateLimit-Reset": reset}}
    mastodon.fault(method="POST", path=STATUSES, effect=effect, count=1)
    with pytest.raises(RateLimited) as info:
        await face.publish(Draft(text="Not now."), idempotency_key="far")
    assert info.value.retry_after is not None and 3500 < info.value.retry_after <= 3600
    assert len(transport.calls("POST", STATUSES)) == 1, "no hammering while the limit holds"
    assert mastodon.statuses(user) == []
    await face.aclose()


# ---- history, reactions, limits -------------------------------------------------------------


async def test_history_pages_with_link_header_and_excludes_reblogs(
    mastodon: MastodonServer, tmp_path: Path
) -> None:
    user, other = mastodon.new_user(), mastodon.new_user()
    theirs = mastodon.post(other, "Someone else's post")
    mine = [mastodon.post(user, f"Post number {i}") for i in range(45)]
    mastodon.as_user(user, "POST", f"{STATUSES}/{theirs}/reblog")
    follower = mastodon.new_user()
    mastodon.as_user(follower, "POST", f"/api/v1/accounts/{user.id}/follow")
    transport = CountingTransport()
    face = make_face(mastodon, user, tmp_path, transport=transport)
    posts = [p async for p in face.history()]
    assert [p.id for p in posts] == list(reversed(mine)), "all 45, newest first, no reblog"
    assert posts[0].text == "Post number 44" and posts[0].audience == 1
    pages = transport.calls("GET", f"/api/v1/accounts/{user.id}/statuses")
    assert len(pages) == 2, "45 posts at 40 a page: two pages through the Link header"
    await face.aclose()


async def test_reactions_read_back_counts_and_followers(
    mastodon: MastodonServer, tmp_path: Path
) -> None:
    user = mastodon.new_user()
    face = make_face(mastodon, user, tmp_path)
    a = await face.publish(Draft(text="Liked twice"), idempotency_key="a")
    b = await face.publish(Draft(text="Boosted"), idempotency_key="b")
    fans = [mastodon.new_user() for _ in range(2)]
    for fan in fans:
        mastodon.as_user(fan, "POST", f"{STATUSES}/{a.ref}/favourite")
        mastodon.as_user(fan, "POST", f"/api/v1/accounts/{user.id}/follow")
    mastodon.as_user(fans[0], "POST", f"{STATUSES}/{b.ref}/reblog")
    snaps = await face.reactions([a.ref, b.ref, "999999999999"])
    assert [s.found for s in snaps] == [True, True, False]
    assert snaps[0].reactions == Reactions(likes=2)
    assert snaps[1].reactions == Reactions(reposts=1)
    assert snaps[0].audience == 2
    # Score: (2 likes) / 2 followers and (2 x 1 reblog) / 2 followers with default weights.
    assert face.score(snaps[0]) == pytest.approx(1.0)
    assert face.score(snaps[1]) == pytest.approx(1.0)
    await face.aclose()


async def test_limits_come_from_the_instance_and_check_reports(
    mastodon: MastodonServer, tmp_path: Path
) -> None:
    user = mastodon.new_user()
    face = make_face(mastodon, user, tmp_path, max_length=480)
    info = await face.check()
    assert info.limits.max_length == 480, "a configured max_length below the instance's wins"
    assert info.account.startswith(f"@{user.username}@")
    assert info.details["max_characters"] == 500
    assert info.details["characters_reserved_per_url"] == 23
    await face.aclose()


async def test_long_url_counts_23_and_over_length_is_rejected_unsent(
    mastodon: MastodonServer, tmp_path: Path
) -> None:
    user = mastodon.new_user()
    transport = CountingTransport()
    face = make_face(mastodon, user, tmp_path, transport=transport)
    url = "https://example.com/" + "a" * 60
    text = "x" * (500 - 23 - 1) + " " + url  # 500 as Mastodon counts, 557 code points
    assert face.measure(text) == 500 and len(text) == 557
    with pytest.raises(Rejected) as info:
        await face.publish(Draft(text=text + "!"), idempotency_key="long")
    assert info.value.reason == "too_long"
    assert transport.calls("POST", STATUSES) == [], "an over-long draft is never sent"
    await face.aclose()


def test_countable_length_rules() -> None:
    assert countable_length("plain text") == 10
    assert countable_length("see https://example.com/very/long/path/indeed.") == 4 + 23 + 1
    assert countable_length("hi @alice@mastodon.social") == len("hi @alice")
    assert countable_length("👍🏽🇩🇪") == 2, "graphemes, not code points"
    assert countable_length("mail me at bob@example.com") == len("mail me at bob@example.com")
    assert countable_length("x" * 10, url_chars=30) == 10


def test_html_to_text() -> None:
    assert html_to_text("<p>a &amp; b</p><p>c<br />d</p>") == "a & b\n\nc\nd"
    link = (
        '<p>go <a href="https://example.com/long/path"><span class="invisible">https://</span>'
        '<span class="ellipsis">example.com/lo</span><span class="invisible">ng/path</span></a>'
        "</p>"
    )
    assert html_to_text(link) == "go https://example.com/long/path"


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="base_url must be an http"):
        MastodonConfig(base_url="mastodon.social", access_token="t")
    with pytest.raises(ValueError, match="access_token"):
        MastodonConfig.model_validate({"base_url": "https://m.example"})
    config = MastodonConfig(base_url="https://m.example/", access_token="secret-token")
    assert config.base_url == "https://m.example" and "secret-token" not in repr(config)


async def test_pending_key_older_than_the_server_window_is_found_not_reposted(
    mastodon: MastodonServer, tmp_path: Path
) -> None:
    """The status was created but the answer never recorded, and the server's one-hour memory
    of the Idempotency-Key is over: the face finds the status instead of posting it again."""
    user = mastodon.new_user()
    text = "Made before the crash."
    face = make_face(mastodon, user, tmp_path)
    face._journal.begin("old", text=text)
    face._journal._conn().execute(
        "UPDATE publish_journal SET started_at = ? WHERE key = 'old'",
        ((datetime.now(UTC) - timedelta(hours=2)).isoformat(),),
    )
    made = mastodon.post(user, text)  # what the lost request did
    await face.aclose()
    transport = CountingTransport()
    again = make_face(mastodon, user, tmp_path, transport=transport)
    published = await again.publish(Draft(text=text), idempotency_key="old")
    assert published.ref == made
    assert transport.calls("POST", STATUSES) == [] and len(mastodon.statuses(user)) == 1
    await again.aclose()
