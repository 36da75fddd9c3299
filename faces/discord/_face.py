"""`discord`: post to a Discord text channel as a bot, through the HTTP API (v10).

    [faces.server]
    type = "discord"
    bot_token = "..."                  # the bot needs View Channel, Send Messages,
    channel_id = "123456789012345678"  #   Read Message History in this channel

- publish: POST /channels/{id}/messages with a `nonce` derived from the idempotency key and
  `enforce_nonce: true`: Discord answers a repeated nonce from the same bot with the message it
  already created, for a few minutes. Beyond that the journal in the face's state_dir answers;
  an intent left unconfirmed (a crash, an answer that never came) is reconciled by reading the
  channel's messages since the intent for one by this bot with the same text before sending
  again, so a key posts once. Mentions are disabled (`allowed_mentions: {parse: []}`): a
  generated post never pings @everyone.
- history: GET /channels/{id}/messages, 100 at a time, paged with `before`; every author's
  posts by default (the channel's audience liked them too) or only the bot's.
- reactions: GET /channels/{id}/messages/{message_id} (its `reactions` array of counts);
  every emoji counts as a like except `negative_reactions` (see `plaudit.faces._emoji`); the
  messages of a thread started on the post are its replies. Discord has no reposts.
- audience: the guild's `approximate_member_count` (GET /guilds/{id}?with_counts=true).
- limits: 2000 characters of content.
- rate limits: per-route buckets from `X-RateLimit-*` (Remaining 0 pauses that route until
  Reset-After), the 429 body's `retry_after` (float seconds) waited out, a global 429 pausing
  every route, and a client-side ceiling of 50 requests per second (Discord's global limit).
"""

from __future__ import annotations

import hashlib
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
    SecretStr,
    field_validator,
)

from .._api import Face
from .._clock import Clock, utc_datetime
from .._emoji import DEFAULT_NEGATIVE, emoji_reactions, emoji_score_weights
from .._errors import Permanent
from .._http import FaceHttp, RateLimiter, RetryPolicy
from .._journal import PublishJournal
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
    ScoreWeights,
)

__all__ = ["DiscordConfig", "DiscordFace", "nonce_for", "snowflake_at"]

MAX_CONTENT = 2000
PAGE_SIZE = 100
DISCORD_EPOCH_MS = 1_420_070_400_000
POSTABLE_TYPES = {0, 19}  # DEFAULT, REPLY
_SNOWFLAKE = re.compile(r"^\d{15,21}$")


def nonce_for(key: str) -> str:
    """Discord nonces are at most 25 characters; idempotency keys may be longer."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:25]


def snowflake_at(moment: datetime) -> int:
    """The smallest snowflake id of `moment` (ids encode their creation time)."""
    ms = int(moment.timestamp() * 1000) - DISCORD_EPOCH_MS
    return max(ms, 0) << 22


class DiscordConfig(FaceConfig):
    """Settings of one Discord channel."""

    bot_token: SecretStr = Field(description="The bot's token (Developer Portal -> Bot)")
    channel_id: str = Field(description="The text channel's id (Developer Mode -> Copy ID)")
    api_base: str = "https://discord.com/api/v10"
    history_authors: Literal["all", "bot"] = "all"
    negative_reactions: list[str] = Field(default_factory=lambda: list(DEFAULT_NEGATIVE))
    min_interval_seconds: NonNegativeFloat = 0.0
    timeout_seconds: PositiveFloat = 30.0
    score_weights: ScoreWeights = Field(default_factory=emoji_score_weights)

    @field_validator("channel_id", mode="before")
    @classmethod
    def _snowflake(cls, value: object) -> str:
        text = str(value).strip() if isinstance(value, str | int) else ""
        if not _SNOWFLAKE.match(text):
            raise ValueError(
                "channel_id must be a Discord id (15-21 digits, as a string); turn on Developer "
                "Mode in Discord and use Copy Channel ID"
            )
        return text

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        url = httpx.URL(value.strip())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("api_base must be an http(s) URL like https://discord.com/api/v10")
        return str(url).rstrip("/")


# ---- the API's shapes -----------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _User(_Loose):
    id: str
    username: str = ""
    bot: bool = False


class _Emoji(_Loose):
    id: str | None = None
    name: str | None = None


class _Reaction(_Loose):
    count: NonNegativeInt
    emoji: _Emoji


class _Thread(_Loose):
    id: str
    message_count: NonNegativeInt = 0


class _Message(_Loose):
    id: str
    channel_id: str
    author: _User
    content: str = ""
    timestamp: datetime
    type: int = 0
    reactions: list[_Reaction] = Field(default_factory=list)
    thread: _Thread | None = None


class _Channel(_Loose):
    id: str
    guild_id: str | None = None
    name: str | None = None


class _Guild(_Loose):
    id: str
    name: str = ""
    approximate_member_count: NonNegativeInt | None = None


class DiscordFace(Face[DiscordConfig]):
    """A Discord text channel, posted to by a bot (type "discord").

    Tests may pass `transport` (an httpx transport) and `retry` (a faster `RetryPolicy`)."""

    type_name = "discord"
    Config = DiscordConfig

    def __init__(
        self,
        *,
        name: str,
        config: DiscordConfig,
        state_dir: Path,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name, config=config, state_dir=state_dir, clock=clock)
        self._transport = transport
        self._retry = retry
        self._http: FaceHttp | None = None
        self._journal = PublishJournal(self.state_dir / "publish-journal.sqlite3", clock=self.clock)
        self._bot: _User | None = None
        self._channel: _Channel | None = None

    @property
    def http(self) -> FaceHttp:
        if self._http is None:
            self._http = FaceHttp(
                face=self.name,
                base_url=self.config.api_base + "/",
                headers={
                    "Authorization": f"Bot {self.config.bot_token.get_secret_value()}",
                    # Discord asks bots for this exact form of User-Agent.
                    "User-Agent": "DiscordBot (https://github.com/plaudit/plaudit, 0.1)",
                },
                timeout=self.config.timeout_seconds,
                limiter=RateLimiter(
                    rate=RequestRate(requests=50, per=timedelta(seconds=1)), clock=self.clock
                ),
                retry=self._retry,
                transport=self._transport,
                clock=self.clock,
            )
        return self._http

    # ---- API calls ---------------------------------------------------------------------------

    @property
    def _cid(self) -> str:
        return self.config.channel_id

    async def _get(
        self, path: str, route: str, *, expect: tuple[int, ...] = (), **params: Any
    ) -> httpx.Response:
        # Buckets are per route and per top-level resource (the channel or the guild).
        return await self.http.request(
            "GET", path, params=params or None, bucket=f"GET {route}", expect=expect
        )

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise Permanent(
                f"Face '{self.name}': Discord's answer to {response.request.url.path} is not "
                f"JSON ({response.text[:80]!r}); check api_base.",
                face=self.name,
            ) from None

    def _parse(self, model: type[_Loose], data: Any, what: str) -> Any:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise Permanent(
                f"Face '{self.name}' got an unexpected {what} from Discord "
                f"({exc.errors()[0]['msg']}).",
                face=self.name,
            ) from None

    async def _me(self) -> _User:
        if self._bot is None:
            response = await self._get("users/@me", "/users/@me")
            self._bot = self._parse(_User, self._json(response), "user")
        return self._bot

    async def _channel_info(self) -> _Channel:
        if self._channel is None:
            response = await self._get(f"channels/{self._cid}", f"/channels/{self._cid}")
            self._channel = self._parse(_Channel, self._json(response), "channel")
        return self._channel

    async def _guild(self) -> _Guild | None:
        channel = await self._channel_info()
        if channel.guild_id is None:
            return None
        gid = channel.guild_id
        response = await self._get(f"guilds/{gid}", f"/guilds/{gid}", with_counts="true")
        guild: _Guild = self._parse(_Guild, self._json(response), "guild")
        return guild

    async def _messages(self, **params: Any) -> list[_Message]:
        response = await self._get(
            f"channels/{self._cid}/messages", f"/channels/{self._cid}/messages", **params
        )
        items = self._json(response)
        if not isinstance(items, list):
            raise Permanent(f"Face '{self.name}': the channel's messages are not a list.")
        return [self._parse(_Message, item, "message") for item in items]

    def _url(self, guild_id: str | None, message_id: str) -> str:
        return f"https://discord.com/channels/{guild_id or '@me'}/{self._cid}/{message_id}"

    def _reactions_of(self, message: _Message) -> Reactions:
        counts: dict[str, int] = {}
        for reaction in message.reactions:
            emoji = reaction.emoji
            key = f"emoji:{emoji.name}" if emoji.id is None else f"custom:{emoji.name}:{emoji.id}"
            counts[key] = counts.get(key, 0) + reaction.count
        replies = message.thread.message_count if message.thread else 0
        return emoji_reactions(counts, negative=self.config.negative_reactions, replies=replies)

    # ---- the face ----------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return Limits(
            max_length=MAX_CONTENT,
            length_unit="characters",
            min_interval=timedelta(seconds=self.config.min_interval_seconds),
            request_rate=RequestRate(requests=50, per=timedelta(seconds=1)),
        )

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        guild = await self._guild()
        audience = guild.approximate_member_count if guild else None
        only = (await self._me()).id if self.config.history_authors == "bot" else None
        # Snowflakes encode time: start right at `until` instead of paging down to it.
        before: str | None = str(snowflake_at(until)) if until is not None else None
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE}
            if before is not None:
                params["before"] = before
            page = await self._messages(**params)
            if not page:
                return
            page.sort(key=lambda m: int(m.id), reverse=True)
            for message in page:
                if since is not None and message.timestamp < since:
                    return
                if message.type not in POSTABLE_TYPES or not message.content:
                    continue
                if only is not None and message.author.id != only:
                    continue
                yield HistoricalPost(
                    id=message.id,
                    text=message.content,
                    created_at=message.timestamp,
                    reactions=self._reactions_of(message),
                    audience=audience,
                    url=self._url(guild.id if guild else None, message.id),
                )
            if len(page) < PAGE_SIZE:
                return
            before = page[-1].id

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        entry = self._journal.get(idempotency_key)
        if entry is not None and entry.published is not None:
            return entry.published
        channel = await self._channel_info()
        if entry is not None:
            # Unconfirmed earlier attempt: the nonce may have expired, so look first.
            found = await self._find_own(draft.text, after=entry.started_at, guild=channel.guild_id)
            if found is not None:
                self._journal.published(idempotency_key, found)
                return found
        self._journal.begin(idempotency_key, text=draft.text)
        # Retries are safe: a repeated nonce returns the message already created.
        response = await self.http.request(
            "POST",
            f"channels/{self._cid}/messages",
            json={
                "content": draft.text,
                "nonce": nonce_for(idempotency_key),
                "enforce_nonce": True,
                "allowed_mentions": {"parse": []},
            },
            publishing=True,
            bucket=f"POST /channels/{self._cid}/messages",
        )
        message: _Message = self._parse(_Message, self._json(response), "message")
        published = Published(
            ref=message.id,
            url=self._url(channel.guild_id, message.id),
            published_at=message.timestamp,
        )
        self._journal.published(idempotency_key, published)
        return published

    async def _find_own(self, text: str, *, after: datetime, guild: str | None) -> Published | None:
        """This bot's message with exactly `text`, sent since `after` (minus a minute of clock
        skew) and not recorded under another key."""
        me = await self._me()
        known = self._journal.published_refs()
        cursor = snowflake_at(after - timedelta(minutes=1))
        for _ in range(10):  # 1,000 messages since the intent is more than enough
            page = await self._messages(after=str(cursor), limit=PAGE_SIZE)
            for message in page:
                if (
                    message.author.id == me.id
                    and message.content == text
                    and message.id not in known
                ):
                    return Published(
                        ref=message.id,
                        url=self._url(guild, message.id),
                        published_at=message.timestamp,
                    )
            if len(page) < PAGE_SIZE:
                return None
            cursor = max(int(m.id) for m in page)
        return None

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        guild = await self._guild()
        audience = guild.approximate_member_count if guild else None
        route = f"/channels/{self._cid}/messages/{{message_id}}"
        snaps = []
        for ref in refs:
            if not _SNOWFLAKE.match(ref):
                continue
            response = await self._get(f"channels/{self._cid}/messages/{ref}", route, expect=(404,))
            if response.status_code == 404:  # Unknown Message: deleted or never here
                continue
            message = self._parse(_Message, self._json(response), "message")
            snaps.append(
                ReactionSnapshot(
                    ref=ref,
                    found=True,
                    reactions=self._reactions_of(message),
                    audience=audience,
                    read_at=utc_datetime(self.clock),
                )
            )
        return snaps

    async def _check(self) -> FaceInfo:
        self._bot, self._channel = None, None  # read afresh
        me = await self._me()
        channel = await self._channel_info()
        guild = await self._guild()
        where = f"#{channel.name or channel.id}" + (f" in {guild.name}" if guild else "")
        return FaceInfo(
            face=self.name,
            type_name=self.type_name,
            account=f"{me.username} -> {where}",
            audience=guild.approximate_member_count if guild else None,
            limits=self.limits,
            details={"bot_id": me.id, "guild_id": channel.guild_id, "channel": channel.name},
        )

    def rate_limit_waited_seconds(self) -> float:
        return self._http.waits.rate_limit_s if self._http is not None else 0.0

    async def _aclose(self) -> None:
        self._journal.close()
        if self._http is not None:
            await self._http.aclose()
