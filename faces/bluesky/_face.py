"""`bluesky`: post to a Bluesky (atproto) account with an app password.

    [faces.sky]
    type = "bluesky"
    service = "https://bsky.social"     # the account's PDS (or the bsky.social entryway)
    identifier = "me.bsky.social"       # handle or DID
    app_password = "xxxx-xxxx-xxxx-xxxx"
    langs = ["en"]

- session: com.atproto.server.createSession once, persisted in the state_dir and refreshed
  (see `_xrpc.py`); createSession is rate limited hard, so a restart reuses the session;
- publish: com.atproto.repo.createRecord of an `app.bsky.feed.post` (text, createdAt in UTC
  with milliseconds, langs, facets for links, mentions and tags with UTF-8 byte offsets) under a
  record key derived from the idempotency key. Each attempt first reads that record key: a post
  already there (an earlier attempt whose answer was lost, a crash, a restart) is returned, so a
  key makes at most one post, for ever, without a local journal;
- history: app.bsky.feed.getAuthorFeed, paged by cursor; reposts of others are skipped;
- reactions: app.bsky.feed.getPosts, 25 URIs per call: likeCount -> likes, repostCount ->
  reposts, replyCount -> replies, quoteCount -> quotes, bookmarkCount -> extra["bookmarks"];
  the account's followersCount (app.bsky.actor.getProfile) is the audience;
- limits: 300 graphemes (`measure()`) and 3000 UTF-8 bytes per post.

Refs are at:// URIs of the posts. A post's `created_at` in history is the earlier of its
`createdAt` and the AppView's `indexedAt` (the AppView's own sort key, so history stays newest
first even for posts whose clients wrote a clock in the future).

Score: the default weighted count over followers (`plaudit.faces.score_reactions`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
)

from .._api import Face
from .._clock import Clock, utc_datetime
from .._errors import Permanent, RateLimited, Rejected, Transient
from .._http import FaceHttp, RateLimiter, RetryPolicy, retry_call
from .._models import (
    Draft,
    FaceConfig,
    FaceInfo,
    HistoricalPost,
    Limits,
    Published,
    Reactions,
    ReactionSnapshot,
    RequestRate,
)
from ._text import (
    MAX_GRAPHEMES,
    MAX_TEXT_BYTES,
    facets_for,
    find_spans,
    format_datetime,
    is_valid_handle,
    measure,
    parse_datetime,
    tid_for_key,
)
from ._xrpc import Session, SessionStore, Xrpc

__all__ = ["BlueskyConfig", "BlueskyFace"]

POST = "app.bsky.feed.post"
BATCH_SIZE = 25  # the most URIs getPosts takes
_AT_URI = re.compile(r"^at://(did:[a-z]+:[a-zA-Z0-9._:%-]+)/([a-zA-Z0-9.-]+)/([a-zA-Z0-9._~:-]+)$")
_DID = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]+$")


class BlueskyConfig(FaceConfig):
    """Settings of one Bluesky account."""

    service: str = Field(
        default="https://bsky.social",
        description="The account's PDS, or https://bsky.social for accounts hosted by Bluesky",
    )
    identifier: str = Field(description="The account's handle (me.bsky.social) or DID")
    app_password: SecretStr = Field(
        description="An app password (Settings -> Privacy and security -> App passwords)"
    )
    langs: list[str] = Field(
        default_factory=lambda: ["en"],
        max_length=3,
        description="BCP-47 language tags written on every post (at most 3)",
    )
    web_url: str = Field(
        default="https://bsky.app", description="Where post URLs point (the web app)"
    )
    history_filter: Literal[
        "posts_no_replies", "posts_with_replies", "posts_and_author_threads"
    ] = "posts_no_replies"
    page_size: int = Field(default=100, ge=1, le=100, description="Posts per history page")
    min_interval_seconds: NonNegativeFloat = 0.0
    timeout_seconds: PositiveFloat = 30.0
    # The PDS allows 3000 requests per 5 minutes per IP; stay under it.
    requests_per_5_minutes: PositiveInt = 3000

    @field_validator("service", "web_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value.strip())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http(s) URL, like https://bsky.social")
        return str(url).rstrip("/")

    @field_validator("identifier")
    @classmethod
    def _handle_or_did(cls, value: str) -> str:
        value = value.strip().removeprefix("@")
        if not (_DID.match(value) or is_valid_handle(value)):
            raise ValueError(
                "must be the account's handle (like me.bsky.social, without a leading @) or "
                "its DID (did:plc:...)"
            )
        return value

    @field_validator("langs")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not re.fullmatch(r"[a-zA-Z]{2,8}(-[a-zA-Z0-9]{1,8})*", tag):
                raise ValueError(f"{tag!r} is not a BCP-47 language tag (like en, pt-BR)")
        return value


# ---- the API's shapes (only what the face reads; extra fields are ignored) ------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Author(_Loose):
    did: str
    handle: str = ""


class _PostView(_Loose):
    uri: str
    author: _Author
    record: dict[str, Any] = Field(default_factory=dict)
    indexed_at: str = Field(default="", alias="indexedAt")
    like_count: NonNegativeInt = Field(default=0, alias="likeCount")
    repost_count: NonNegativeInt = Field(default=0, alias="repostCount")
    reply_count: NonNegativeInt = Field(default=0, alias="replyCount")
    quote_count: NonNegativeInt = Field(default=0, alias="quoteCount")
    bookmark_count: NonNegativeInt = Field(default=0, alias="bookmarkCount")


class _FeedItem(_Loose):
    post: _PostView
    reason: dict[str, Any] | None = None


class _Feed(_Loose):
    feed: list[_FeedItem]
    cursor: str | None = None


class _Profile(_Loose):
    did: str
    handle: str
    followers_count: NonNegativeInt = Field(default=0, alias="followersCount")
    posts_count: NonNegativeInt = Field(default=0, alias="postsCount")


class _CreatedRecord(_Loose):
    uri: str
    cid: str


class BlueskyFace(Face[BlueskyConfig]):
    """A Bluesky account (type "bluesky").

    Besides the registry's arguments, tests may pass `transport` (an httpx transport, to wrap
    or replace the network) and `retry` (a faster `RetryPolicy`)."""

    type_name = "bluesky"
    Config = BlueskyConfig

    def __init__(
        self,
        *,
        name: str,
        config: BlueskyConfig,
        state_dir: Path,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name, config=config, state_dir=state_dir, clock=clock)
        self._transport = transport
        self._retry = retry
        self._xrpc: Xrpc | None = None
        self._dids: dict[str, str | None] = {}  # handle -> DID (None: does not resolve)

    # ---- plumbing ----------------------------------------------------------------------------

    @property
    def xrpc(self) -> Xrpc:
        if self._xrpc is None:
            http = FaceHttp(
                face=self.name,
                base_url=self.config.service,
                headers={"User-Agent": "plaudit (bluesky face)", "Accept": "application/json"},
                timeout=self.config.timeout_seconds,
                limiter=RateLimiter(rate=self._request_rate(), clock=self.clock),
                retry=self._retry,
                transport=self._transport,
                clock=self.clock,
            )
            self._xrpc = Xrpc(
                face=self.name,
                http=http,
                store=SessionStore(path=self.state_dir / "session.json", face=self.name),
                service=self.config.service,
                identifier=self.config.identifier,
                password=self.config.app_password,
            )
        return self._xrpc

    def _request_rate(self) -> RequestRate:
        return RequestRate(requests=self.config.requests_per_5_minutes, per=timedelta(minutes=5))

    def _parse(self, model: type[_Loose], data: Any, what: str) -> Any:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise Permanent(
                f"Face '{self.name}' got an unexpected {what} from {self.config.service} "
                f"({exc.error_count()} problems, first: {exc.errors()[0]['msg']} at "
                f"{'.'.join(str(p) for p in exc.errors()[0]['loc'])}); is `service` an "
                "atproto PDS with a Bluesky AppView behind it?",
                face=self.name,
            ) from None

    def _url(self, uri: str) -> str | None:
        match = _AT_URI.match(uri)
        if match is None or match.group(2) != POST:
            return None
        return f"{self.config.web_url}/profile/{match.group(1)}/post/{match.group(3)}"

    async def _profile(self, actor: str) -> _Profile:
        data = await self.xrpc.call("GET", "app.bsky.actor.getProfile", params={"actor": actor})
        profile: _Profile = self._parse(_Profile, data, "profile")
        return profile

    def _created_at(self, view: _PostView) -> datetime | None:
        created = parse_datetime(view.record.get("createdAt"))
        indexed = parse_datetime(view.indexed_at)
        moments = [m for m in (created, indexed) if m is not None]
        return min(moments) if moments else None

    def _snapshot(self, view: _PostView, *, audience: int, read_at: datetime) -> ReactionSnapshot:
        return ReactionSnapshot(
            ref=view.uri,
            found=True,
            reactions=_reactions_of(view),
            audience=audience,
            read_at=read_at,
        )

    # ---- the face ----------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return Limits(
            max_length=MAX_GRAPHEMES,
            length_unit="graphemes",
            min_interval=timedelta(seconds=self.config.min_interval_seconds),
            request_rate=self._request_rate(),
        )

    def measure(self, text: str) -> int:
        return measure(text)

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        session = await self.xrpc.session()
        audience = (await self._profile(session.did)).followers_count
        cursor: str | None = None
        seen_cursors: set[str] = set()
        while True:
            params: dict[str, Any] = {
                "actor": session.did,
                "limit": min(self.config.page_size, limit or self.config.page_size),
                "filter": self.config.history_filter,
            }
            if cursor is not None:
                params["cursor"] = cursor
            data = await self.xrpc.call("GET", "app.bsky.feed.getAuthorFeed", params=params)
            page: _Feed = self._parse(_Feed, data, "author feed")
            for item in page.feed:
                if item.reason is not None or item.post.author.did != session.did:
                    continue  # a repost or a pinned post: not this place in the timeline
                created_at = self._created_at(item.post)
                if created_at is None:
                    continue
                if since is not None and created_at < since:
                    return
                yield HistoricalPost(
                    id=item.post.uri,
                    text=str(item.post.record.get("text", "")),
                    created_at=created_at,
                    reactions=_reactions_of(item.post),
                    audience=audience,
                    url=self._url(item.post.uri),
                )
            if not page.feed or page.cursor is None:
                return
            if page.cursor in seen_cursors:
                raise Permanent(
                    f"The author feed of face '{self.name}' repeats cursor {page.cursor!r}; "
                    "stopping instead of reading the same page again.",
                    face=self.name,
                )
            seen_cursors.add(page.cursor)
            cursor = page.cursor

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        size = len(draft.text.encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            raise Rejected(
                f"The draft is {size} bytes in UTF-8 and Bluesky allows {MAX_TEXT_BYTES} per "
                "post (besides 300 graphemes); shorten it (faces never truncate).",
                reason="too_long",
                face=self.name,
            )
        rkey = tid_for_key(idempotency_key)
        policy = self.xrpc.http.retry_policy
        # The whole read-then-create is the unit to retry: after an attempt whose answer was
        # lost, the next one finds the record and returns it instead of writing again.
        return await retry_call(
            lambda: self._publish_once(draft, rkey=rkey, key=idempotency_key),
            on=self._retryable,
            policy=policy,
            clock=self.clock,
            ledger=self.xrpc.http.waits,
        )

    def _retryable(self, exc: Exception) -> bool | float:
        if isinstance(exc, RateLimited):
            if exc.retry_after is None:
                return True
            if exc.retry_after > self.xrpc.http.retry_policy.max_rate_limit_wait:
                return False
            return exc.retry_after
        return isinstance(exc, Transient)

    async def _publish_once(self, draft: Draft, *, rkey: str, key: str) -> Published:
        session = await self.xrpc.session()
        try:
            existing = await self.xrpc.call(
                "GET",
                "com.atproto.repo.getRecord",
                params={"repo": session.did, "collection": POST, "rkey": rkey},
                retry=False,
                missing=("RecordNotFound",),
            )
        except Permanent:
            # The repo itself cannot be read (a deactivated account answers 400 "Could not
            # find repo"); no post can exist under the key then, and createRecord's answer
            # says precisely what is wrong (401 AccountDeactivated -> AuthFailed).
            existing = None
        if existing is not None:
            return self._published_from_existing(existing, draft, key=key)
        now = utc_datetime(self.clock)
        # The time as written (milliseconds), so that a later call that finds the record
        # returns the very same `published_at`.
        created_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        record: dict[str, Any] = {
            "$type": POST,
            "text": draft.text,
            "createdAt": format_datetime(created_at),
            "langs": list(self.config.langs),
        }
        facets = await self._facets(draft.text)
        if facets:
            record["facets"] = facets
        data = await self.xrpc.call(
            "POST",
            "com.atproto.repo.createRecord",
            body={"repo": session.did, "collection": POST, "rkey": rkey, "record": record},
            publishing=True,
            retry=False,
        )
        created: _CreatedRecord = self._parse(_CreatedRecord, data, "createRecord answer")
        return Published(ref=created.uri, url=self._url(created.uri), published_at=created_at)

    def _published_from_existing(self, data: Any, draft: Draft, *, key: str) -> Published:
        uri = data.get("uri") if isinstance(data, dict) else None
        value = data.get("value") if isinstance(data, dict) else None
        if not isinstance(uri, str) or not isinstance(value, dict):
            raise Permanent(
                f"Face '{self.name}' got a getRecord answer without uri/value from "
                f"{self.config.service}.",
                face=self.name,
            )
        if value.get("text") != draft.text:
            raise Rejected(
                f"Idempotency key {key!r} was already used for another post ({uri}) of face "
                f"'{self.name}'; give every draft its own key.",
                reason="duplicate",
                face=self.name,
                ref=uri,
            )
        published_at = parse_datetime(value.get("createdAt")) or utc_datetime(self.clock)
        return Published(ref=uri, url=self._url(uri), published_at=published_at)

    async def _facets(self, text: str) -> list[dict[str, Any]]:
        spans = find_spans(text)
        for handle in {s.value for s in spans if s.kind == "mention"} - self._dids.keys():
            data = await self.xrpc.call(
                "GET",
                "com.atproto.identity.resolveHandle",
                params={"handle": handle},
                auth=False,
                missing=("HandleNotFound", "InvalidRequest"),
            )
            did = data.get("did") if isinstance(data, dict) else None
            self._dids[handle] = did if isinstance(did, str) and _DID.match(did) else None
        dids = {handle: did for handle, did in self._dids.items() if did is not None}
        return facets_for(text, spans, dids)

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        # Only post URIs in this account's repo can be posts of this face; any other ref
        # (another account's post, not a URI at all) is reported not found.
        session = await self.xrpc.session()
        uris = [
            ref
            for ref in refs
            if (m := _AT_URI.match(ref)) and m.group(1) == session.did and m.group(2) == POST
        ]
        if not uris:
            return []
        audience = (await self._profile(session.did)).followers_count
        views: list[_PostView] = []
        for start in range(0, len(uris), BATCH_SIZE):
            chunk = uris[start : start + BATCH_SIZE]
            data = await self.xrpc.call("GET", "app.bsky.feed.getPosts", params={"uris": chunk})
            posts = data.get("posts") if isinstance(data, dict) else None
            if not isinstance(posts, list):
                raise Permanent(
                    f"Face '{self.name}': getPosts answered without a list of posts.",
                    face=self.name,
                )
            views.extend(self._parse(_PostView, post, "post") for post in posts)
        now = utc_datetime(self.clock)
        return [self._snapshot(v, audience=audience, read_at=now) for v in views]

    async def _check(self) -> FaceInfo:
        session: Session = await self.xrpc.session()
        profile = await self._profile(session.did)
        return FaceInfo(
            face=self.name,
            type_name=self.type_name,
            account=f"@{profile.handle}",
            audience=profile.followers_count,
            limits=self.limits,
            details={
                "did": profile.did,
                "service": self.config.service,
                "posts": profile.posts_count,
                "max_bytes": MAX_TEXT_BYTES,
            },
        )

    def rate_limit_waited_seconds(self) -> float:
        return self._xrpc.http.waits.rate_limit_s if self._xrpc is not None else 0.0

    async def _aclose(self) -> None:
        if self._xrpc is not None:
            await self._xrpc.http.aclose()


def _reactions_of(view: _PostView) -> Reactions:
    extra = {"bookmarks": view.bookmark_count} if view.bookmark_count else {}
    return Reactions(
        likes=view.like_count,
        reposts=view.repost_count,
        replies=view.reply_count,
        quotes=view.quote_count,
        extra=extra,
    )
