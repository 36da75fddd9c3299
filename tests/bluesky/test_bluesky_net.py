"""The bluesky face against the reference implementation (npm @atproto/dev-env TestNetwork:
a real PDS and AppView). Run with `pytest -m bluesky` after `.ci/bluesky-setup`."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from bluesky_support import FAST_RETRY, Account, DevNetwork, Fault, NetTransport, xrpc_fault

from plaudit.faces import (
    AuthFailed,
    Draft,
    Face,
    FaceError,
    HistoricalPost,
    Permanent,
    RateLimited,
    Reactions,
    Rejected,
    Transient,
    utc_now,
)
from plaudit.faces.bluesky import BlueskyConfig, BlueskyFace, format_datetime
from plaudit.faces.testing import FaceContract

pytestmark = pytest.mark.bluesky

CREATE = "com.atproto.repo.createRecord"


@dataclass
class Harness:
    """One test's account on the dev network and the faces made for it."""

    network: DevNetwork
    account: Account
    counts: Counter[str] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)

    def face(self, state_dir: Path, **config: Any) -> BlueskyFace:
        cfg = BlueskyConfig(
            service=self.network.pds,
            identifier=self.account.handle,
            app_password=self.account.app_password,
            **config,
        )
        transport = NetTransport(self.network, counts=self.counts, faults=self.faults)
        face = BlueskyFace(
            name="sky", config=cfg, state_dir=state_dir, transport=transport, retry=FAST_RETRY
        )
        _harness_of[face] = self
        return face


_harness_of: weakref.WeakKeyDictionary[Face[Any], Harness] = weakref.WeakKeyDictionary()


def seed(account: Account, history: list[HistoricalPost]) -> None:
    """Write past posts with their original dates (the AppView sorts backdated posts by
    createdAt). Their reactions cannot be seeded: that would take a crowd of accounts."""
    for post in history:
        account.create(
            "app.bsky.feed.post",
            {"text": post.text, "createdAt": format_datetime(post.created_at), "langs": ["en"]},
        )


# ---- the contract suite -----------------------------------------------------------------------


class TestBlueskyContract(FaceContract):
    seeds_history = False  # the dates and texts are seeded, the reactions are not
    min_history = 3
    # A well-formed post URI in a repo that does not exist.
    unknown_ref = "at://did:plc:aaaaaaaaaaaaaaaaaaaaaaaa/app.bsky.feed.post/3jzfcijpj2z2a"

    @pytest.fixture
    def face_factory(self, devnet: DevNetwork) -> Any:
        harnesses: dict[Path, Harness] = {}

        def make(*, state_dir: Path, history: list[HistoricalPost]) -> BlueskyFace:
            harness = harnesses.get(state_dir)
            if harness is None:  # first call for this folder: a fresh account with a past
                account = devnet.create_account("contract")
                seed(account, history)
                harness = harnesses[state_dir] = Harness(devnet, account)
            return harness.face(state_dir)

        return make

    async def react(self, face: Face[Any], ref: str) -> Reactions | None:
        harness = _harness_of[face]
        fan = harness.network.create_account("fan")
        await asyncio.to_thread(fan.like, ref)
        await asyncio.to_thread(fan.follow, harness.account.did)
        return Reactions(likes=1)

    async def provoke(self, face: Face[Any], error: type[FaceError]) -> bool:
        harness = _harness_of[face]
        faults = harness.faults
        if error is RateLimited:
            # The PDS's 429: RateLimit-* headers with the reset in epoch seconds, an hour away.
            reset = int(time.time()) + 3600
            headers = {
                "ratelimit-limit": "5000",
                "ratelimit-remaining": "0",
                "ratelimit-reset": str(reset),
                "ratelimit-policy": "5000;w=3600",
            }
            faults.append(
                xrpc_fault(CREATE, 429, "RateLimitExceeded", "Rate Limit Exceeded", headers=headers)
            )
        elif error is Transient:
            # The write reaches the PDS but its answer is lost (502 from a proxy), then the
            # server stays unreachable for the face's remaining attempts.
            faults.append(xrpc_fault(CREATE, 502, "UpstreamFailure", "Bad Gateway", forward=True))
            for _ in range(FAST_RETRY.attempts - 1):
                faults.append(xrpc_fault(None, 503, "InternalServerError", "Unavailable"))
        elif error is AuthFailed:
            # Real: the account is deactivated; the PDS refuses its writes (401).
            await asyncio.to_thread(
                harness.account.call, "POST", "com.atproto.server.deactivateAccount", json={}
            )
        elif error is Rejected:
            # The exact body the PDS sends for a record that fails the lexicon.
            faults.append(
                xrpc_fault(
                    CREATE,
                    400,
                    "InvalidRequest",
                    "Invalid app.bsky.feed.post record: grapheme too big (maximum 300, got 301)"
                    " at $.record.text",
                )
            )
        elif error is Permanent:
            # `service` points at a web server that is not a PDS.
            faults.append(
                Fault(CREATE, 404, b"<html>Not Found</html>", {"content-type": "text/html"})
            )
        else:
            return False
        return True


# ---- what the issue asks to see ----------------------------------------------------------------


def test_publish_like_from_second_account_read_back(devnet: DevNetwork, tmp_path: Path) -> None:
    harness = Harness(devnet, devnet.create_account("poster"))
    fan = devnet.create_account("fan")

    async def run() -> None:
        async with harness.face(tmp_path) as face:
            published = await face.publish(
                Draft(text="Tomatoes are ripe 🍅 and the bees are back"), idempotency_key="k1"
            )
            assert published.ref.startswith(f"at://{harness.account.did}/app.bsky.feed.post/")
            (before,) = await face.reactions([published.ref])
            assert before.found and before.reactions.likes == 0
            await asyncio.to_thread(fan.like, published.ref)
            await asyncio.to_thread(fan.follow, harness.account.did)
            (after,) = await face.reactions([published.ref])
            assert after.found
            assert after.reactions.likes == 1
            assert after.reactions.reposts == after.reactions.replies == 0
            assert after.audience == 1  # the fan follows
            assert face.score(after) > face.score(before)
            history = [p async for p in face.history(limit=5)]
            assert history[0].id == published.ref
            assert history[0].reactions.likes == 1

    asyncio.run(run())


def test_session_persisted_and_reused_across_restart(devnet: DevNetwork, tmp_path: Path) -> None:
    harness = Harness(devnet, devnet.create_account("restart"))

    async def run() -> None:
        async with harness.face(tmp_path) as face:
            await face.check()
            await face.publish(Draft(text="first life"), idempotency_key="a")
        assert harness.counts["com.atproto.server.createSession"] == 1
        saved = tmp_path / "session.json"
        assert saved.stat().st_mode & 0o777 == 0o600, "the session file holds tokens"
        for _ in range(3):  # three restarts
            async with harness.face(tmp_path) as face:
                info = await face.check()
                assert info.account == f"@{harness.account.handle}"
                await face.publish(Draft(text="another life"), idempotency_key="b")
        assert harness.counts["com.atproto.server.createSession"] == 1, (
            "a restarted face must reuse the saved session, not log in again"
        )
        assert harness.counts["com.atproto.server.refreshSession"] == 0
        texts = [r["value"]["text"] for r in harness.account.records()]
        assert sorted(texts) == ["another life", "first life"]

    asyncio.run(run())


def _forge_exp(token: str, exp: int) -> str:
    """The token with its `exp` claim changed (the signature no longer matches)."""
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] = exp
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{raw}.{sig}"


def test_session_refresh_and_relogin(devnet: DevNetwork, tmp_path: Path) -> None:
    harness = Harness(devnet, devnet.create_account("refresh"))
    saved = tmp_path / "session.json"

    def edit(**changes: str) -> dict[str, str]:
        data: dict[str, str] = json.loads(saved.read_text())
        data.update(changes)
        saved.write_text(json.dumps(data))
        return data

    async def run() -> None:
        async with harness.face(tmp_path) as face:
            await face.check()
        counts = harness.counts

        # 1. The access token has expired (by its exp): refreshed before any request fails.
        data = json.loads(saved.read_text())
        edit(access_jwt=_forge_exp(data["access_jwt"], int(time.time()) - 10))
        async with harness.face(tmp_path) as face:
            await face.check()
        assert counts["com.atproto.server.refreshSession"] == 1
        assert counts["com.atproto.server.createSession"] == 1
        failed_before = counts["app.bsky.actor.getProfile"]

        # 2. The server refuses the access token (InvalidToken): refresh, then send again.
        edit(access_jwt="not.a.token")
        async with harness.face(tmp_path) as face:
            await face.check()
        assert counts["com.atproto.server.refreshSession"] == 2
        assert counts["com.atproto.server.createSession"] == 1
        assert counts["app.bsky.actor.getProfile"] == failed_before + 2  # refused, then ok

        # 3. The refresh token is revoked too: only now a new session is created.
        data = json.loads(saved.read_text())
        revoke = {"Authorization": f"Bearer {data['refresh_jwt']}"}
        httpx.post(f"{devnet.pds}/xrpc/com.atproto.server.deleteSession", headers=revoke)
        edit(access_jwt="not.a.token")
        async with harness.face(tmp_path) as face:
            await face.publish(Draft(text="after a new login"), idempotency_key="n")
        assert counts["com.atproto.server.refreshSession"] == 3
        assert counts["com.atproto.server.createSession"] == 2

    asyncio.run(run())


def test_wrong_app_password_is_auth_failed(devnet: DevNetwork, tmp_path: Path) -> None:
    account = devnet.create_account("wrong")
    account.app_password = "aaaa-bbbb-cccc-dddd"
    harness = Harness(devnet, account)

    async def run() -> None:
        async with harness.face(tmp_path) as face:
            with pytest.raises(AuthFailed, match="app_password") as info:
                await face.check()
            assert info.value.face == "sky"
        assert not (tmp_path / "session.json").exists()

    asyncio.run(run())


def test_facets_link_mention_tag_byte_offsets(devnet: DevNetwork, tmp_path: Path) -> None:
    harness = Harness(devnet, devnet.create_account("facets"))
    friend = devnet.create_account("friend")
    link = "https://example.com/garden?q=🌱"
    text = f"🌻 Grüße @{friend.handle} — see {link}. #Gärten 👨‍👩‍👧 @nobody.test"

    async def run() -> None:
        async with harness.face(tmp_path) as face:
            published = await face.publish(Draft(text=text), idempotency_key="f")
        rkey = published.ref.rsplit("/", 1)[1]
        rec = harness.account.call(
            "GET",
            "com.atproto.repo.getRecord",
            params={"repo": harness.account.did, "collection": "app.bsky.feed.post", "rkey": rkey},
        )["value"]
        assert rec["text"] == text
        raw = text.encode("utf-8")
        spans = {
            f["features"][0]["$type"].rsplit("#", 1)[1]: (
                raw[f["index"]["byteStart"] : f["index"]["byteEnd"]].decode("utf-8"),
                f["features"][0],
            )
            for f in rec["facets"]
        }
        assert set(spans) == {"link", "mention", "tag"}, "@nobody.test does not resolve: no facet"
        assert spans["link"][0] == link and spans["link"][1]["uri"] == link
        assert spans["mention"][0] == f"@{friend.handle}"
        assert spans["mention"][1]["did"] == friend.did
        assert spans["tag"][0] == "#Gärten" and spans["tag"][1]["tag"] == "Gärten"
        assert rec["langs"] == ["en"]
        # The AppView accepted and indexed the facets as they are.
        await devnet.aprocess_all()
        view = harness.account.call(
            "GET", "app.bsky.feed.getPosts", params={"uris": [published.ref]}
        )["posts"][0]
        assert view["record"]["facets"] == rec["facets"]
        # createdAt: UTC, milliseconds, Z.
        assert rec["createdAt"].endswith("Z") and len(rec["createdAt"]) == 24

    asyncio.run(run())


def test_lost_answer_retried_makes_one_post(devnet: DevNetwork, tmp_path: Path) -> None:
    harness = Harness(devnet, devnet.create_account("lost"))
    # The first write is applied but its answer lost; the face's own retry finds the record.
    harness.faults.append(xrpc_fault(CREATE, 502, "UpstreamFailure", "Bad Gateway", forward=True))

    async def run() -> None:
        async with harness.face(tmp_path) as face:
            published = await face.publish(Draft(text="only once"), idempotency_key="once")
            again = await face.publish(Draft(text="only once"), idempotency_key="once")
        assert again.ref == published.ref
        assert harness.counts[CREATE] == 1, "the second attempt found the post, no new write"
        records = harness.account.records()
        assert [r["value"]["text"] for r in records] == ["only once"]
        assert records[0]["uri"] == published.ref

    asyncio.run(run())


def test_rate_limit_with_near_reset_is_waited_out(devnet: DevNetwork, tmp_path: Path) -> None:
    harness = Harness(devnet, devnet.create_account("limited"))
    reset = int(time.time()) + 2  # epoch seconds, as the PDS sends: 1 to 2 s from now
    headers = {"ratelimit-remaining": "0", "ratelimit-reset": str(reset)}
    harness.faults.append(
        xrpc_fault(CREATE, 429, "RateLimitExceeded", "Rate Limit Exceeded", headers=headers)
    )

    async def run() -> None:
        async with harness.face(tmp_path) as face:
            started = time.monotonic()
            await face.publish(Draft(text="patience"), idempotency_key="p")
            waited = time.monotonic() - started
        assert harness.counts[CREATE] == 2
        assert waited >= 0.9, f"the face sent again after {waited:.2f} s, before the reset"
        assert [r["value"]["text"] for r in harness.account.records()] == ["patience"]

    asyncio.run(run())


def test_history_pages_and_skips_reposts(devnet: DevNetwork, tmp_path: Path) -> None:
    harness = Harness(devnet, devnet.create_account("pages"))
    other = devnet.create_account("other")
    theirs = other.create(
        "app.bsky.feed.post", {"text": "not mine", "createdAt": format_datetime_now()}
    )
    harness.account.create(
        "app.bsky.feed.repost",
        {
            "subject": {"uri": theirs["uri"], "cid": theirs["cid"]},
            "createdAt": format_datetime_now(),
        },
    )

    async def run() -> None:
        async with harness.face(tmp_path, page_size=2) as face:
            for i in range(5):
                await face.publish(Draft(text=f"post {i}"), idempotency_key=f"k{i}")
            posts = [p async for p in face.history()]
        assert [p.text for p in posts] == [f"post {i}" for i in reversed(range(5))]
        assert harness.counts["app.bsky.feed.getAuthorFeed"] >= 3  # 2 + 2 + 1 (+ the repost)

    asyncio.run(run())


def format_datetime_now() -> str:
    return format_datetime(utc_now())
