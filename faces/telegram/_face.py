"""`telegram`: post to a Telegram channel through the Bot API.

    [faces.channel]
    type = "telegram"
    bot_token = "123456:ABC..."     # from @BotFather; the bot must be an admin of the channel
    chat_id = "@my_channel"         # or the numeric id, -100...

What the Bot API allows, and what this face does with it:

- publish: `sendMessage` with plain text (no parse_mode, so the text is sent as written). The
  Bot API has NO idempotency key, so the face keeps one itself: the intent is written to the
  journal in its state_dir before the request and the message id after. A repeated key returns
  the recorded message without a request. If a send fails in a way that proves it was not
  applied (connection refused, a 4xx or 429 answer) the intent is dropped and may be retried.
  If it fails after the request may have reached Telegram (a timeout while waiting for the
  answer, a 5xx, a dropped connection) or the process died in between, the outcome cannot be
  found out (bots cannot read a channel's history), so the key is marked unknown and never sent
  again: **at most once**. The window is the time between the request leaving and its answer
  being recorded, typically well under a second; a post may be lost in it, never duplicated.
- history: bots cannot read past channel messages either. History is what the face has seen:
  the posts it published and the `channel_post` updates it received since it was added, with
  the reaction counts it has been told about, kept in the state_dir.
- reactions: `getUpdates` with `allowed_updates` including `message_reaction_count` (Telegram
  sends these only when asked, only to channel admins, grouped and up to a few minutes late);
  each update carries the full current counts of one message. The face polls with a persisted
  offset, so it must be the only consumer of this bot's updates (no webhook, no other program
  calling getUpdates: Telegram answers 409 Conflict then).
  Counts: every reaction except `negative_reactions` (and paid stars) is a like; the negative
  ones are `extra["negative"]`, scored -1 by default; each emoji is also in `extra`.
  Forwards, views and comments are not available to bots: reposts and replies stay 0.
- audience: `getChatMemberCount` (the channel's subscribers).
- limits: 4096 UTF-16 code units per message (Telegram measures after entity parsing; plain
  text is not parsed, so that is the text itself). Telegram trims leading and trailing white
  space.
- rate limits: a 429 answer carries `parameters.retry_after` (seconds), which is waited out.

Keep the `httpx` logger at WARNING or above: at INFO it logs request URLs, and the Bot API puts
the token in the URL (this face's own error messages redact it).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    SecretStr,
    field_validator,
)

from .._api import Face
from .._clock import Clock, utc_datetime
from .._emoji import DEFAULT_NEGATIVE, emoji_reactions, emoji_score_weights
from .._errors import FaceError, Permanent, RateLimited, Transient
from .._http import FaceHttp, RateLimiter, RetryPolicy, retry_call
from .._journal import JournalState, PublishJournal
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

__all__ = ["TelegramConfig", "TelegramFace", "utf16_length"]

MAX_MESSAGE_LENGTH = 4096  # UTF-16 code units, after entity parsing
UPDATE_KINDS = ["channel_post", "edited_channel_post", "message_reaction_count"]
UPDATES_PER_CALL = 100
MAX_UPDATE_CALLS = 50  # per sync; 5,000 updates is more than a day of a busy channel
_CHANNEL_NAME = re.compile(r"^@[A-Za-z][A-Za-z0-9_]{3,31}$")
_UNSENT_CAUSES = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def utf16_length(text: str) -> int:
    """How Telegram measures text: UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


class TelegramConfig(FaceConfig):
    """Settings of one Telegram channel."""

    bot_token: SecretStr = Field(description="The bot's token from @BotFather")
    chat_id: str = Field(description='The channel: "@username" or its numeric id "-100..."')
    api_base: str = "https://api.telegram.org"  # or a self-hosted Bot API server
    disable_notification: bool = False
    negative_reactions: list[str] = Field(default_factory=lambda: list(DEFAULT_NEGATIVE))
    min_interval_seconds: NonNegativeFloat = 0.0
    timeout_seconds: PositiveFloat = 30.0
    score_weights: ScoreWeights = Field(default_factory=emoji_score_weights)

    @field_validator("chat_id", mode="before")
    @classmethod
    def _chat(cls, value: object) -> str:
        text = str(value).strip() if isinstance(value, str | int) else ""
        if _CHANNEL_NAME.match(text) or re.fullmatch(r"-?\d+", text):
            return text
        raise ValueError(
            'chat_id must be a channel username like "@my_channel" or a numeric chat id like '
            '"-1001234567890" (forward a channel post to @userinfobot to find it)'
        )

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        url = httpx.URL(value.strip())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("api_base must be an http(s) URL, like https://api.telegram.org")
        return str(url).rstrip("/")


# ---- the Bot API's shapes -------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Chat(_Loose):
    id: int
    type: str = "channel"
    title: str | None = None
    username: str | None = None


class _Message(_Loose):
    message_id: int
    date: int
    chat: _Chat
    text: str | None = None
    caption: str | None = None


class _ReactionCount(_Loose):
    type: dict[str, Any]
    total_count: int


class _ReactionCountUpdate(_Loose):
    chat: _Chat
    message_id: int
    date: int
    reactions: list[_ReactionCount]


class _Update(_Loose):
    update_id: int
    channel_post: _Message | None = None
    edited_channel_post: _Message | None = None
    message_reaction_count: _ReactionCountUpdate | None = None


# ---- what the face has seen, kept in its state_dir ------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    message_id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    date INTEGER NOT NULL,
    own INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reactions (
    message_id INTEGER PRIMARY KEY,
    counts TEXT NOT NULL,
    date INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class _ChannelStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def add_post(self, message_id: int, text: str, date: int, *, own: bool) -> None:
        self.db.execute(
            "INSERT INTO posts (message_id, text, date, own) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(message_id) DO UPDATE SET text = excluded.text, "
            "own = max(own, excluded.own)",
            (message_id, text, date, int(own)),
        )

    def set_counts(self, message_id: int, counts: dict[str, int], date: int) -> None:
        # Updates may arrive out of order after a retry: keep the newest counts.
        self.db.execute(
            "INSERT INTO reactions (message_id, counts, date) VALUES (?, ?, ?) "
            "ON CONFLICT(message_id) DO UPDATE SET counts = excluded.counts, date = excluded.date "
            "WHERE excluded.date >= reactions.date",
            (message_id, json.dumps(counts, ensure_ascii=False), date),
        )

    def counts(self, message_id: int) -> dict[str, int] | None:
        row = self.db.execute(
            "SELECT counts FROM reactions WHERE message_id = ?", (message_id,)
        ).fetchone()
        return None if row is None else {str(k): int(v) for k, v in json.loads(row[0]).items()}

    def known(self, message_id: int) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM posts WHERE message_id = ? UNION SELECT 1 FROM reactions "
            "WHERE message_id = ?",
            (message_id, message_id),
        ).fetchone()
        return row is not None

    def posts(self, *, until: int | None) -> Iterable[tuple[int, str, int]]:
        query = "SELECT message_id, text, date FROM posts"
        args: tuple[int, ...] = ()
        if until is not None:
            query += " WHERE date < ?"
            args = (until,)
        yield from self.db.execute(query + " ORDER BY date DESC, message_id DESC", args)


class TelegramFace(Face[TelegramConfig]):
    """A Telegram channel through a bot that administers it (type "telegram").

    Tests may pass `transport` (an httpx transport) and `retry` (a faster `RetryPolicy`)."""

    type_name = "telegram"
    Config = TelegramConfig

    def __init__(
        self,
        *,
        name: str,
        config: TelegramConfig,
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
        self._store = _ChannelStore(self.state_dir / "telegram.sqlite3")
        self._chat: _Chat | None = None

    @property
    def http(self) -> FaceHttp:
        if self._http is None:
            token = self.config.bot_token.get_secret_value()
            self._http = FaceHttp(
                face=self.name,
                base_url=f"{self.config.api_base}/bot{token}/",
                headers={"User-Agent": "plaudit"},
                timeout=self.config.timeout_seconds,
                # Telegram: about 30 messages a second per bot; far above what plaudit sends.
                limiter=RateLimiter(
                    rate=RequestRate(requests=30, per=timedelta(seconds=1)), clock=self.clock
                ),
                retry=self._retry,
                transport=self._transport,
                clock=self.clock,
                redact=[token],
            )
        return self._http

    # ---- Bot API calls -----------------------------------------------------------------------

    def _result(self, response: httpx.Response, method: str) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("ok") is not True or "result" not in body:
            raise Permanent(
                f"Face '{self.name}': Telegram's answer to {method} is not a Bot API result "
                f"({response.text[:80]!r}); check api_base.",
                face=self.name,
            )
        return body["result"]

    async def _call(self, method: str, **params: Any) -> Any:
        """A read-only Bot API method (safe to retry)."""
        response = await self.http.request("POST", method, json=params)
        return self._result(response, method)

    def _parse(self, model: type[_Loose], data: Any, what: str) -> Any:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise Permanent(
                f"Face '{self.name}' got an unexpected {what} from Telegram "
                f"({exc.errors()[0]['msg']}).",
                face=self.name,
            ) from None

    async def _resolve_chat(self) -> _Chat:
        if self._chat is None:
            result = await self._call("getChat", chat_id=self.config.chat_id)
            self._chat = self._parse(_Chat, result, "chat")
        return self._chat

    def _url(self, chat: _Chat, message_id: int) -> str:
        if chat.username:
            return f"https://t.me/{chat.username}/{message_id}"
        internal = str(chat.id).removeprefix("-100")  # private channels: t.me/c/<id>/<msg>
        return f"https://t.me/c/{internal}/{message_id}"

    async def _members(self) -> int:
        count = await self._call("getChatMemberCount", chat_id=self.config.chat_id)
        if not isinstance(count, int) or count < 0:
            raise Permanent(f"Face '{self.name}': getChatMemberCount gave {count!r}.")
        return count

    async def _sync(self) -> None:
        """Read pending updates: this channel's posts and reaction counts. The offset is stored
        after each batch is applied; applying a batch twice (after a crash) is harmless."""
        chat = await self._resolve_chat()
        offset = int(self._store.meta("update_offset") or 0)
        for _ in range(MAX_UPDATE_CALLS):
            params: dict[str, Any] = {
                "limit": UPDATES_PER_CALL,
                "timeout": 0,
                "allowed_updates": UPDATE_KINDS,
            }
            if offset:
                params["offset"] = offset
            result = await self._call("getUpdates", **params)
            if not isinstance(result, list):
                raise Permanent(f"Face '{self.name}': getUpdates did not return a list.")
            updates = [self._parse(_Update, u, "update") for u in result]
            if not updates:
                return
            for update in updates:
                self._apply(update, chat)
            offset = max(u.update_id for u in updates) + 1
            self._store.set_meta("update_offset", str(offset))
            if len(updates) < UPDATES_PER_CALL:
                return

    def _apply(self, update: _Update, chat: _Chat) -> None:
        for message in (update.channel_post, update.edited_channel_post):
            if message is not None and message.chat.id == chat.id:
                text = message.text if message.text is not None else message.caption
                if text:
                    self._store.add_post(message.message_id, text, message.date, own=False)
        counted = update.message_reaction_count
        if counted is not None and counted.chat.id == chat.id:
            self._store.set_counts(
                counted.message_id, self._counts(counted.reactions), counted.date
            )

    @staticmethod
    def _counts(reactions: list[_ReactionCount]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reaction in reactions:
            kind = reaction.type.get("type")
            if kind == "emoji":
                key = f"emoji:{reaction.type.get('emoji')}"
            elif kind == "custom_emoji":
                key = f"custom:{reaction.type.get('custom_emoji_id')}"
            else:
                key = str(kind)  # "paid" (stars)
            counts[key] = counts.get(key, 0) + max(reaction.total_count, 0)
        return counts

    def _reactions_from(self, counts: dict[str, int] | None) -> Reactions:
        if not counts:
            return Reactions()
        return emoji_reactions(counts, negative=self.config.negative_reactions)

    # ---- the face ----------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return Limits(
            max_length=MAX_MESSAGE_LENGTH,
            length_unit="UTF-16 code units",
            min_interval=timedelta(seconds=self.config.min_interval_seconds),
            request_rate=RequestRate(requests=30, per=timedelta(seconds=1)),
        )

    def measure(self, text: str) -> int:
        return utf16_length(text)

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        await self._sync()
        audience = await self._members()
        chat = await self._resolve_chat()
        # Dates are whole seconds: a post at 12:00:00.5 is stored as 12:00:00, so `until`
        # rounds up here and the base class applies the exact bound.
        until_s = None if until is None else int(until.timestamp()) + 1
        for message_id, text, date in list(self._store.posts(until=until_s)):
            created = datetime.fromtimestamp(date, UTC)
            if since is not None and created < since:
                return
            yield HistoricalPost(
                id=str(message_id),
                text=text,
                created_at=created,
                reactions=self._reactions_from(self._store.counts(message_id)),
                audience=audience,
                url=self._url(chat, message_id),
            )

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        entry = self._journal.get(idempotency_key)
        if entry is not None and entry.published is not None:
            return entry.published
        if entry is not None:
            # Recorded but never confirmed: the process died mid-send or the send was
            # ambiguous. Telegram cannot tell us, so this key is not sent again.
            note = entry.note or "the process stopped after the send was recorded"
            self._journal.unknown(idempotency_key, note=note)
            raise Permanent(
                f"Face '{self.name}' may or may not have posted the draft of key "
                f"{idempotency_key!r} ({note}); the Telegram Bot API has no idempotency key and "
                "bots cannot read a channel's history, so it is not sent again (at most once). "
                "Look in the channel; to post the text anyway, publish it under a new key.",
                face=self.name,
            )
        chat = await self._resolve_chat()
        self._journal.begin(idempotency_key, text=draft.text)
        try:
            response = await self._send(draft.text)
        except FaceError as exc:
            if _certainly_unsent(exc):
                self._journal.discard(idempotency_key)
                raise
            self._journal.unknown(idempotency_key, note=f"{type(exc).__name__}: {exc.message}")
            raise Permanent(
                f"Face '{self.name}' sent the draft of key {idempotency_key!r} but got no "
                f"answer ({type(exc).__name__}: {exc.message}); it may or may not be in the "
                "channel. It is not sent again (at most once): look in the channel, and publish "
                "under a new key to post it anyway.",
                face=self.name,
            ) from exc
        try:
            message = self._parse(_Message, self._result(response, "sendMessage"), "message")
        except Permanent as exc:  # Telegram said yes (2xx) but the answer cannot be read
            self._journal.unknown(idempotency_key, note=exc.message)
            raise
        published = Published(
            ref=str(message.message_id),
            url=self._url(chat, message.message_id),
            published_at=datetime.fromtimestamp(message.date, UTC),
        )
        self._journal.published(idempotency_key, published)
        self._store.add_post(message.message_id, draft.text, message.date, own=True)
        return published

    async def _send(self, text: str) -> httpx.Response:
        """sendMessage, retried only where the failure proves that nothing was posted."""
        policy = self.http.retry_policy

        def retry_on(exc: Exception) -> bool | float:
            if isinstance(exc, RateLimited):
                if exc.retry_after is None:
                    return True
                if exc.retry_after > policy.max_rate_limit_wait:
                    return False
                return exc.retry_after + 0.01  # a float: wait exactly this long
            return isinstance(exc, Transient) and _certainly_unsent(exc)

        def send() -> Awaitable[httpx.Response]:
            return self.http.request(
                "POST",
                "sendMessage",
                json={
                    "chat_id": self.config.chat_id,
                    "text": text,
                    "disable_notification": self.config.disable_notification,
                },
                publishing=True,
                retry=False,
            )

        ledger = self.http.waits
        return await retry_call(send, on=retry_on, policy=policy, clock=self.clock, ledger=ledger)

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        await self._sync()
        audience = await self._members()
        now = utc_datetime(self.clock)
        snaps = []
        for ref in refs:
            if not ref.isdigit() or not self._store.known(int(ref)):
                continue
            reactions = self._reactions_from(self._store.counts(int(ref)))
            snaps.append(
                ReactionSnapshot(
                    ref=ref, found=True, reactions=reactions, audience=audience, read_at=now
                )
            )
        return snaps

    async def _check(self) -> FaceInfo:
        me = await self._call("getMe")
        self._chat = None  # read the chat afresh: the operator may have renamed it
        chat = await self._resolve_chat()
        members = await self._members()
        bot = me.get("username") if isinstance(me, dict) else None
        return FaceInfo(
            face=self.name,
            type_name=self.type_name,
            account=f"@{chat.username}" if chat.username else str(chat.id),
            audience=members,
            limits=self.limits,
            details={
                "bot": f"@{bot}" if bot else None,
                "chat_title": chat.title,
                "chat_type": chat.type,
                "unconfirmed_publishes": self._journal.count(JournalState.UNKNOWN),
            },
        )

    def rate_limit_waited_seconds(self) -> float:
        return self._http.waits.rate_limit_s if self._http is not None else 0.0

    async def _aclose(self) -> None:
        self._journal.close()
        self._store.close()
        if self._http is not None:
            await self._http.aclose()


def _certainly_unsent(exc: FaceError) -> bool:
    """Whether a failed sendMessage certainly posted nothing: Telegram answered with a refusal
    (4xx, 429), or the connection was never made. A 5xx, a timeout waiting for the answer or a
    dropped connection may come after Telegram posted the message."""
    if isinstance(exc, Transient):
        return isinstance(exc.__cause__, _UNSENT_CAUSES)
    # AuthFailed, RateLimited, Rejected, Permanent: FaceHttp raised them for a 4xx answer,
    # a refusal (a 2xx answer that cannot be read is handled apart, in _publish).
    return True
