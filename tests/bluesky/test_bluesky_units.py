"""Fast checks of the bluesky face's own logic (default run, no network): text rules, error
mapping, and the session's life against an httpx.MockTransport that answers like a PDS does
(the same bodies the reference PDS sends; see test_bluesky_net.py for the real server)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from plaudit.faces import AuthFailed, Draft, Permanent, RateLimited, Rejected, Transient
from plaudit.faces._http import RetryPolicy
from plaudit.faces.bluesky import (
    BlueskyConfig,
    BlueskyFace,
    error_for_xrpc,
    facets_for,
    find_spans,
    format_datetime,
    measure,
    parse_datetime,
    tid_for_key,
)
from plaudit.faces.bluesky._text import is_valid_tid

# ---- text rules -------------------------------------------------------------------------------


def test_measure_counts_grapheme_clusters() -> None:
    assert measure("hello") == 5
    assert measure("👨‍👩‍👧‍👦") == 1  # a ZWJ family: 7 code points, one grapheme
    assert measure("🇫🇷🇩🇪") == 2  # two flags: 4 regional indicators
    assert measure("e\u0301") == 1  # e + combining acute
    assert measure("👍🏽") == 1  # emoji + skin tone modifier
    assert measure("") == 0


def _slice(text: str, facet: dict[str, Any]) -> str:
    index = facet["index"]
    return text.encode("utf-8")[index["byteStart"] : index["byteEnd"]].decode("utf-8")


def test_facets_use_utf8_byte_offsets() -> None:
    text = "🎉 café @alice.test see https://example.com/ä?x=1. #Grün"
    spans = find_spans(text)
    assert [(s.kind, s.value) for s in spans] == [
        ("mention", "alice.test"),
        ("link", "https://example.com/ä?x=1"),
        ("tag", "Grün"),
    ]
    facets = facets_for(text, spans, {"alice.test": "did:plc:alice"})
    mention, link, tag = facets
    # "🎉" is 4 bytes, "é" is 2: the mention starts at byte 11, character 7.
    assert text.index("@") == 7
    assert mention["index"] == {"byteStart": 11, "byteEnd": 22}
    assert _slice(text, mention) == "@alice.test"
    assert mention["features"] == [
        {"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:alice"}
    ]
    assert _slice(text, link) == "https://example.com/ä?x=1"  # the sentence's dot is left out
    assert link["features"][0] == {
        "$type": "app.bsky.richtext.facet#link",
        "uri": "https://example.com/ä?x=1",
    }
    assert _slice(text, tag) == "#Grün"
    assert tag["features"][0] == {"$type": "app.bsky.richtext.facet#tag", "tag": "Grün"}


def test_unresolved_mention_gets_no_facet() -> None:
    text = "hi @ghost.test and @bob.test"
    facets = facets_for(text, find_spans(text), {"bob.test": "did:plc:bob"})
    assert [_slice(text, f) for f in facets] == ["@bob.test"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail me at me@example.com", []),  # not after a space: an address, no mention
        ("@nodot is no handle", []),
        (
            "(see https://en.wikipedia.org/wiki/Foo_(bar))",
            ["https://en.wikipedia.org/wiki/Foo_(bar)"],
        ),
        ("go to https://x.org/a!", ["https://x.org/a"]),
        ("ftp://example.com is not linked", []),
        ("#1 is a number, #one is a tag", ["one"]),
        ("https://x.org/#frag stays one link", ["https://x.org/#frag"]),
        ("Hi @Bob.Test.", ["bob.test"]),  # handles resolve lower-case; the text keeps its case
    ],
)
def test_span_detection(text: str, expected: list[str]) -> None:
    assert [s.value for s in find_spans(text)] == expected


def test_created_at_format() -> None:
    moment = datetime(2024, 3, 1, 12, 0, 5, 123456, tzinfo=UTC)
    assert format_datetime(moment) == "2024-03-01T12:00:05.123Z"
    cet = moment.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert format_datetime(cet) == "2024-03-01T12:00:05.123Z", "always written in UTC"
    assert format_datetime(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00.000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_datetime(datetime(2024, 1, 1))
    assert parse_datetime("2024-03-01T12:00:05.123Z") == moment.replace(microsecond=123000)
    assert parse_datetime("2024-03-01T12:00:05") == datetime(2024, 3, 1, 12, 0, 5, tzinfo=UTC)
    assert parse_datetime("2024-03-01T13:00:05+01:00") == datetime(2024, 3, 1, 12, 0, 5, tzinfo=UTC)
    assert parse_datetime("yesterday") is None
    assert parse_datetime(None) is None


def test_tid_for_key_is_a_deterministic_valid_tid() -> None:
    keys = [f"intent-{i}" for i in range(2000)]
    tids = [tid_for_key(k) for k in keys]
    assert all(is_valid_tid(t) for t in tids), [t for t in tids if not is_valid_tid(t)][:3]
    assert tids == [tid_for_key(k) for k in keys], "the same key must give the same record key"
    assert len(set(tids)) == len(tids)
    assert tid_for_key("a") != tid_for_key("a ")
    # The timestamp bits decode to a moment in 2023, before any post written today.
    alphabet = "234567abcdefghijklmnopqrstuvwxyz"
    value = 0
    for ch in tids[0]:
        value = value * 32 + alphabet.index(ch)
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value >> 10)
    assert datetime(2023, 1, 1, tzinfo=UTC) <= moment < datetime(2023, 8, 1, tzinfo=UTC)


# ---- error mapping ----------------------------------------------------------------------------


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "https://pds.example/xrpc/com.atproto.repo.createRecord")
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "name", "publishing", "expected"),
    [
        (401, "AuthenticationRequired", False, AuthFailed),
        (401, "AccountDeactivated", True, AuthFailed),
        (400, "ExpiredToken", False, AuthFailed),
        (400, "InvalidToken", True, AuthFailed),
        (400, "InvalidRequest", True, Rejected),
        (400, "InvalidRequest", False, Permanent),
        (400, "InvalidSwap", True, Permanent),
        (403, "Forbidden", False, AuthFailed),
        (404, "XRPCNotSupported", False, Permanent),
        (500, "InternalServerError", True, Transient),
        (502, "UpstreamFailure", False, Transient),
        (503, None, False, Transient),
    ],
)
def test_error_for_xrpc(status: int, name: str | None, publishing: bool, expected: type) -> None:
    body = {"error": name, "message": "something"} if name else {}
    error = error_for_xrpc(_answer(status, body), face="sky", publishing=publishing)
    assert type(error) is expected
    assert error.face == "sky"
    if name:
        assert name in str(error), "the message names the XRPC error"
    if expected is Rejected:
        assert isinstance(error, Rejected) and error.reason == "invalid"


def test_error_for_xrpc_rate_limit_reset_epoch_seconds() -> None:
    reset = int(time.time()) + 120
    response = _answer(
        429,
        {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
        {"ratelimit-limit": "30", "ratelimit-remaining": "0", "ratelimit-reset": str(reset)},
    )
    error = error_for_xrpc(response, face="sky")
    assert isinstance(error, RateLimited)
    assert error.retry_after is not None and 115 <= error.retry_after <= 121
    retry_after = _answer(429, {"error": "RateLimitExceeded"}, {"retry-after": "7"})
    error = error_for_xrpc(retry_after, face="sky")
    assert isinstance(error, RateLimited) and error.retry_after == 7
    assert error_for_xrpc(_answer(200, {}), face="sky") is None


# ---- the session, against a PDS double ----------------------------------------------------------


def _jwt(sub: str, exp: float, n: int) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'typ': 'at+jwt'})}.{part({'sub': sub, 'exp': int(exp), 'n': n})}.sig{n}"


@dataclass
class FakePds:
    """Just enough of a PDS for the session logic: tokens with lifetimes, rotation, records."""

    password: str = "app-pass-word-1234"
    did: str = "did:plc:me"
    handle: str = "me.test"
    lifetime: float = 7200.0
    access: set[str] = field(default_factory=set)
    refresh: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)  # tokens the server says have expired
    deactivated: bool = False
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    lose_next_create: bool = False  # apply the next createRecord, then answer 502
    counts: Counter[str] = field(default_factory=Counter)
    _n: int = 0

    def issue(self) -> dict[str, str]:
        self._n += 1
        access = _jwt(self.did, time.time() + self.lifetime, self._n)
        refresh = _jwt(self.did, time.time() + 90 * 86400, self._n) + "r"
        self.access.add(access)
        self.refresh.add(refresh)
        return {"did": self.did, "handle": self.handle, "accessJwt": access, "refreshJwt": refresh}

    def handler(self, request: httpx.Request) -> httpx.Response:
        nsid = request.url.path.removeprefix("/xrpc/")
        self.counts[nsid] += 1
        token = request.headers.get("authorization", "").removeprefix("Bearer ")

        def error(status: int, name: str, message: str = "") -> httpx.Response:
            return httpx.Response(status, json={"error": name, "message": message or name})

        if nsid == "com.atproto.server.createSession":
            body = json.loads(request.content)
            if body["identifier"] != self.handle or body["password"] != self.password:
                return error(401, "AuthenticationRequired", "Invalid identifier or password")
            return httpx.Response(200, json=self.issue())
        if nsid == "com.atproto.server.refreshSession":
            if token not in self.refresh:
                return error(400, "ExpiredToken", "Token has been revoked")
            self.refresh.discard(token)
            return httpx.Response(200, json=self.issue())
        if nsid == "com.atproto.repo.getRecord":
            record = self.records.get(request.url.params["rkey"])
            if record is None:
                return error(400, "RecordNotFound", "Could not locate record")
            return httpx.Response(200, json=record)
        # Everything else needs the access token.
        if token in self.expired:
            return error(400, "ExpiredToken", "Token has expired")
        if token not in self.access:
            return error(400, "InvalidToken", "Token could not be verified")
        if self.deactivated:
            return error(401, "AccountDeactivated", "Account is deactivated")
        if nsid == "app.bsky.actor.getProfile":
            return httpx.Response(
                200, json={"did": self.did, "handle": self.handle, "followersCount": 3}
            )
        if nsid == "com.atproto.repo.createRecord":
            body = json.loads(request.content)
            rkey = body["rkey"]
            if rkey in self.records:
                return error(500, "InternalServerError", "Internal Server Error")
            uri = f"at://{self.did}/app.bsky.feed.post/{rkey}"
            self.records[rkey] = {"uri": uri, "cid": "bafy", "value": body["record"]}
            if self.lose_next_create:
                self.lose_next_create = False
                return error(502, "UpstreamFailure", "Bad Gateway")
            return httpx.Response(200, json={"uri": uri, "cid": "bafy"})
        return error(501, "MethodNotImplemented", f"no {nsid}")


FAST = RetryPolicy(attempts=3, wait_initial=0.01, wait_max=0.02, wait_jitter=0.0)


def _face(pds: FakePds, state_dir: Path, **config: Any) -> BlueskyFace:
    cfg = BlueskyConfig(
        service="https://pds.example",
        identifier=config.pop("identifier", pds.handle),
        app_password=config.pop("app_password", pds.password),
        **config,
    )
    return BlueskyFace(
        name="sky",
        config=cfg,
        state_dir=state_dir,
        transport=httpx.MockTransport(pds.handler),
        retry=FAST,
    )


def _saved(state_dir: Path) -> dict[str, str]:
    data: dict[str, str] = json.loads((state_dir / "session.json").read_text())
    return data


async def test_session_created_once_then_reused_across_restarts(tmp_path: Path) -> None:
    pds = FakePds()
    async with _face(pds, tmp_path) as face:
        info = await face.check()
        assert info.account == "@me.test" and info.audience == 3
    assert (tmp_path / "session.json").stat().st_mode & 0o777 == 0o600
    for _ in range(3):
        async with _face(pds, tmp_path) as face:
            await face.check()
    assert pds.counts["com.atproto.server.createSession"] == 1
    assert pds.counts["com.atproto.server.refreshSession"] == 0
    assert pds.counts["app.bsky.actor.getProfile"] == 4


async def test_expired_token_answer_refreshes_and_resends_once(tmp_path: Path) -> None:
    pds = FakePds()
    async with _face(pds, tmp_path) as face:
        await face.check()
    pds.expired.add(_saved(tmp_path)["access_jwt"])
    async with _face(pds, tmp_path) as face:
        await face.check()
    assert pds.counts["com.atproto.server.refreshSession"] == 1
    assert pds.counts["com.atproto.server.createSession"] == 1
    assert pds.counts["app.bsky.actor.getProfile"] == 3  # ok, expired, ok after refresh
    assert _saved(tmp_path)["access_jwt"] not in pds.expired, "the new session is saved"


async def test_token_near_expiry_is_refreshed_before_use(tmp_path: Path) -> None:
    pds = FakePds()
    async with _face(pds, tmp_path) as face:
        await face.check()
    # The saved access token expires in 30 s, within the refresh margin.
    pds.lifetime = 30.0
    dying = pds.issue()
    pds.lifetime = 7200.0
    saved = _saved(tmp_path)
    saved.update(access_jwt=dying["accessJwt"], refresh_jwt=dying["refreshJwt"])
    (tmp_path / "session.json").write_text(json.dumps(saved))
    async with _face(pds, tmp_path) as face:
        await face.check()
    assert pds.counts["com.atproto.server.refreshSession"] == 1
    assert pds.counts["com.atproto.server.createSession"] == 1
    assert _saved(tmp_path)["access_jwt"] != dying["accessJwt"]
    assert pds.counts["app.bsky.actor.getProfile"] == 2, "no request was sent with a dying token"


async def test_refused_refresh_creates_a_new_session(tmp_path: Path) -> None:
    pds = FakePds()
    async with _face(pds, tmp_path) as face:
        await face.check()
    pds.access.clear()
    pds.refresh.clear()  # both tokens revoked (for example: the app password was rotated)
    async with _face(pds, tmp_path) as face:
        await face.check()
    assert pds.counts["com.atproto.server.refreshSession"] == 1
    assert pds.counts["com.atproto.server.createSession"] == 2


async def test_concurrent_calls_renew_once(tmp_path: Path) -> None:
    pds = FakePds()
    async with _face(pds, tmp_path) as face:
        await face.check()
        pds.expired.update(pds.access)
        await asyncio.gather(*(face.check() for _ in range(5)))
    assert pds.counts["com.atproto.server.refreshSession"] == 1


async def test_deactivated_account_is_auth_failed_without_new_tokens(tmp_path: Path) -> None:
    pds = FakePds(deactivated=True)
    async with _face(pds, tmp_path) as face:
        with pytest.raises(AuthFailed, match="deactivated") as info:
            await face.check()
    assert info.value.face == "sky"
    assert pds.counts["com.atproto.server.refreshSession"] == 0
    assert pds.counts["com.atproto.server.createSession"] == 1


async def test_wrong_password_is_auth_failed_and_nothing_saved(tmp_path: Path) -> None:
    pds = FakePds()
    async with _face(pds, tmp_path, app_password="nope-nope-nope-nope") as face:
        with pytest.raises(AuthFailed, match="app_password"):
            await face.check()
    assert not (tmp_path / "session.json").exists()


async def test_session_of_another_account_is_not_reused(tmp_path: Path) -> None:
    pds = FakePds()
    async with _face(pds, tmp_path) as face:
        await face.check()
    other = FakePds(handle="other.test", did="did:plc:other")
    other.counts = pds.counts
    async with _face(other, tmp_path) as face:
        info = await face.check()
    assert info.account == "@other.test"
    assert pds.counts["com.atproto.server.createSession"] == 2


async def test_create_session_rate_limit_surfaces_with_retry_after(tmp_path: Path) -> None:
    reset = int(time.time()) + 300

    def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429,
            json={"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
            headers={"ratelimit-remaining": "0", "ratelimit-reset": str(reset)},
        )

    cfg = BlueskyConfig(service="https://pds.example", identifier="me.test", app_password="x")
    face = BlueskyFace(
        name="sky", config=cfg, state_dir=tmp_path, transport=httpx.MockTransport(limited)
    )
    async with face:
        with pytest.raises(RateLimited) as info:
            await face.check()
    assert info.value.retry_after is not None and info.value.retry_after > 290


# ---- publishing against the double --------------------------------------------------------------


async def test_publish_key_reused_for_other_text_is_rejected(tmp_path: Path) -> None:
    pds = FakePds()
    async with _face(pds, tmp_path) as face:
        first = await face.publish(Draft(text="one"), idempotency_key="k")
        assert first.ref.endswith("/" + tid_for_key("k"))
        assert first.url == f"https://bsky.app/profile/{pds.did}/post/{tid_for_key('k')}"
        again = await face.publish(Draft(text="one"), idempotency_key="k")
        assert again == first
        with pytest.raises(Rejected) as info:
            await face.publish(Draft(text="two"), idempotency_key="k")
    assert info.value.reason == "duplicate"
    assert pds.counts["com.atproto.repo.createRecord"] == 1


async def test_publish_lost_answer_is_found_by_the_next_attempt(tmp_path: Path) -> None:
    pds = FakePds(lose_next_create=True)
    async with _face(pds, tmp_path) as face:
        published = await face.publish(Draft(text="once"), idempotency_key="k")
    assert len(pds.records) == 1
    assert pds.counts["com.atproto.repo.createRecord"] == 1
    record = pds.records[tid_for_key("k")]["value"]
    assert published.published_at == parse_datetime(record["createdAt"])
    assert record["langs"] == ["en"] and record["$type"] == "app.bsky.feed.post"


async def test_publish_over_3000_bytes_is_rejected_before_sending(tmp_path: Path) -> None:
    pds = FakePds()
    family = "👨‍👩‍👧‍👦"  # 25 bytes, one grapheme
    text = family * 150  # 150 graphemes (within 300) but 3750 bytes
    async with _face(pds, tmp_path) as face:
        assert face.measure(text) == 150
        with pytest.raises(Rejected, match="3000") as info:
            await face.publish(Draft(text=text), idempotency_key="k")
    assert info.value.reason == "too_long"
    assert sum(pds.counts.values()) == 0


def test_config_messages() -> None:
    with pytest.raises(ValueError, match="handle"):
        BlueskyConfig(identifier="@not a handle", app_password="x")
    with pytest.raises(ValueError, match="BCP-47"):
        BlueskyConfig(identifier="me.bsky.social", app_password="x", langs=["english!"])
    with pytest.raises(ValueError, match="http"):
        BlueskyConfig(identifier="me.bsky.social", app_password="x", service="bsky.social")
    cfg = BlueskyConfig(identifier="@Me.bsky.social", app_password="s3cret-pass-word")
    assert cfg.identifier == "Me.bsky.social"
    assert "s3cret" not in repr(cfg), "the app password never shows in a repr"
