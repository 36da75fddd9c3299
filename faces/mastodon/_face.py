"""`mastodon`: post to a Mastodon account through its REST API.

    [faces.fedi]
    type = "mastodon"
    base_url = "https://mastodon.social"
    access_token = "..."          # an app token with read + write:statuses
    visibility = "public"

- publish: POST /api/v1/statuses with `Idempotency-Key` (the server deduplicates retries for
  about an hour) and a journal in the face's state_dir (for ever, across restarts);
- history: GET /api/v1/accounts/:id/statuses (reblogs excluded), paged with the `Link` header;
- reactions: GET /api/v1/statuses?id[]=... (Mastodon 4.3+), one GET per status on older
  servers; favourites -> likes, reblogs -> reposts, replies -> replies, quotes -> quotes;
  the account's followers are the audience;
- limits: `configuration.statuses.max_characters` from the instance (500 until it has been
  asked), counted the way Mastodon counts (`measure()`: URLs as 23, graphemes);
- rate limits: the `X-RateLimit-*` headers (Reset is ISO-8601 on real Mastodon, epoch seconds
  on some servers and mocks) pause the client until the reset; a 429 is waited out when the
  reset is near and raised as `RateLimited` otherwise.

Score: the default weighted count over followers (`plaudit.faces.score_reactions`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

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
from .._errors import Permanent, Rejected
from .._http import FaceHttp, RateLimiter, RetryPolicy
from .._journal import JournalState, PublishJournal, text_digest
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
from ._text import countable_length, html_to_text

__all__ = ["MastodonConfig", "MastodonFace"]

DEFAULT_MAX_CHARACTERS = 500  # Mastodon's default when the instance does not say
DEFAULT_URL_CHARACTERS = 23
# Mastodon keeps an Idempotency-Key for 3600 s; after this long a pending key is reconciled
# against the account's own statuses instead of trusting the server to deduplicate.
SERVER_KEY_WINDOW = timedelta(minutes=50)
PAGE_SIZE = 40  # the most Mastodon serves per page
BATCH_SIZE = 20  # ids per GET /api/v1/statuses?id[]=...


class MastodonConfig(FaceConfig):
    """Settings of one Mastodon account."""

    base_url: str = Field(description="The instance, e.g. https://mastodon.social")
    access_token: SecretStr = Field(description="An access token with read and write:statuses")
    visibility: Literal["public", "unlisted", "private", "direct"] = "public"
    language: str | None = Field(default=None, description="ISO 639-1 code sent with posts")
    max_length: PositiveInt | None = Field(
        default=None, description="Override the instance's max_characters (never above it)"
    )
    min_interval_seconds: NonNegativeFloat = 0.0
    exclude_replies: bool = False  # leave the account's replies out of history()
    timeout_seconds: PositiveFloat = 30.0
    requests_per_5_minutes: PositiveInt = 300  # Mastodon's default per-account API budget

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value.strip())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                "base_url must be an http(s) URL of the instance, like https://mastodon.social"
            )
        return str(url).rstrip("/")


# ---- the API's shapes (only what the face reads; extra fields are ignored) ------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Account(_Loose):
    id: str
    acct: str
    username: str
    followers_count: NonNegativeInt = 0


class _Status(_Loose):
    id: str
    content: str = ""
    created_at: datetime
    url: str | None = None
    account: _Account
    favourites_count: NonNegativeInt = 0
    reblogs_count: NonNegativeInt = 0
    replies_count: NonNegativeInt = 0
    quotes_count: NonNegativeInt = 0  # Mastodon 4.5+


class _Instance(_Loose):
    max_characters: PositiveInt = DEFAULT_MAX_CHARACTERS
    url_characters: PositiveInt = DEFAULT_URL_CHARACTERS
    domain: str = ""
    version: str = ""


class MastodonFace(Face[MastodonConfig]):
    """A Mastodon account (type "mastodon").

    Besides the registry's arguments, tests may pass `transport` (an httpx transport, to wrap
    or replace the network) and `retry` (a faster `RetryPolicy`)."""

    type_name = "mastodon"
    Config = MastodonConfig

    def __init__(
        self,
        *,
        name: str,
        config: MastodonConfig,
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
        self._instance: _Instance | None = None
        self._account: _Account | None = None
        self._batch_reads = True  # False once the server turned out to predate GET ?id[]=

    # ---- plumbing ----------------------------------------------------------------------------

    @property
    def http(self) -> FaceHttp:
        if self._http is None:
            rate = RequestRate(
                requests=self.config.requests_per_5_minutes, per=timedelta(minutes=5)
            )
            self._http = FaceHttp(
                face=self.name,
                base_url=self.config.base_url,
                headers={
                    "Authorization": f"Bearer {self.config.access_token.get_secret_value()}",
                    "User-Agent": "plaudit (+https://github.com/plaudit)",
                    "Accept": "application/json",
                },
                timeout=self.config.timeout_seconds,
                limiter=RateLimiter(rate=rate, clock=self.clock),
                retry=self._retry,
                transport=self._transport,
                clock=self.clock,
            )
        return self._http

    def _parse(self, model: type[_Loose], data: Any, what: str) -> Any:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise Permanent(
                f"Face '{self.name}' got an unexpected {what} from {self.config.base_url} "
                f"({exc.error_count()} problems, first: {exc.errors()[0]['msg']}); is base_url "
                "a Mastodon-compatible server?",
                face=self.name,
            ) from None

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise Permanent(
                f"Face '{self.name}' got a response that is not JSON from "
                f"{response.request.method} {response.request.url.path} "
                f"({response.text[:80]!r}); is base_url a Mastodon server?",
                face=self.name,
            ) from None

    async def _load_instance(self) -> _Instance:
        if self._instance is None:
            response = await self.http.request("GET", "/api/v2/instance", expect=(404,))
            if response.status_code == 404:  # before Mastodon 4.0
                response = await self.http.request("GET", "/api/v1/instance")
            data = self._json(response)
            if not isinstance(data, dict):
                data = {}
            statuses = (data.get("configuration") or {}).get("statuses") or {}
            self._instance = self._parse(
                _Instance,
                {
                    "max_characters": statuses.get("max_characters", DEFAULT_MAX_CHARACTERS),
                    "url_characters": statuses.get(
                        "characters_reserved_per_url", DEFAULT_URL_CHARACTERS
                    ),
                    "domain": data.get("domain") or data.get("uri") or "",
                    "version": data.get("version") or "",
                },
                "instance description",
            )
        return self._instance

    async def _me(self, *, fresh: bool = False) -> _Account:
        if self._account is None or fresh:
            response = await self.http.request("GET", "/api/v1/accounts/verify_credentials")
            self._account = self._parse(_Account, self._json(response), "account")
        return self._account

    def _post(self, status: _Status) -> HistoricalPost:
        return HistoricalPost(
            id=status.id,
            text=html_to_text(status.content),
            created_at=status.created_at,
            reactions=_reactions_of(status),
            audience=status.account.followers_count,
            url=status.url,
        )

    # ---- the face ----------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        instance_max = self._instance.max_characters if self._instance else DEFAULT_MAX_CHARACTERS
        chosen = self.config.max_length
        return Limits(
            max_length=min(chosen, instance_max) if chosen else instance_max,
            length_unit=f"characters (graphemes; every URL counts as {self._url_characters()})",
            min_interval=timedelta(seconds=self.config.min_interval_seconds),
            request_rate=RequestRate(
                requests=self.config.requests_per_5_minutes, per=timedelta(minutes=5)
            ),
        )

    def _url_characters(self) -> int:
        return self._instance.url_characters if self._instance else DEFAULT_URL_CHARACTERS

    def measure(self, text: str) -> int:
        return countable_length(text, url_chars=self._url_characters())

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        me = await self._me()
        params: dict[str, Any] = {"limit": PAGE_SIZE, "exclude_reblogs": "true"}
        if self.config.exclude_replies:
            params["exclude_replies"] = "true"
        async for page in self.http.paginate(f"/api/v1/accounts/{me.id}/statuses", params=params):
            items = self._json(page)
            if not isinstance(items, list):
                raise Permanent(
                    f"Face '{self.name}': the account's statuses are not a list.", face=self.name
                )
            if not items:
                return
            for item in items:
                post = self._post(self._parse(_Status, item, "status"))
                if since is not None and post.created_at < since:
                    return
                yield post

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        entry = self._journal.get(idempotency_key)
        if entry is not None and entry.published is not None:
            return entry.published
        # The instance may allow less (or more) than the default the base class checked.
        instance = await self._load_instance()
        length = self.measure(draft.text)
        if length > self.limits.max_length:
            raise Rejected(
                f"The draft is {length} characters as Mastodon counts them and "
                f"{instance.domain or self.config.base_url} allows {self.limits.max_length}; "
                "shorten it (faces never truncate).",
                reason="too_long",
                face=self.name,
            )
        if entry is not None and utc_datetime(self.clock) - entry.started_at > SERVER_KEY_WINDOW:
            # The server has forgotten the key by now: look for the post before sending again.
            found = await self._find_own_post(draft.text, after=entry.started_at)
            if found is not None:
                self._journal.published(idempotency_key, found)
                return found
        self._journal.begin(idempotency_key, text=draft.text)
        body: dict[str, Any] = {"status": draft.text, "visibility": self.config.visibility}
        if self.config.language:
            body["language"] = self.config.language
        # Retrying is safe: the server answers a repeated Idempotency-Key with the first status.
        response = await self.http.request(
            "POST",
            "/api/v1/statuses",
            json=body,
            headers={"Idempotency-Key": idempotency_key},
            publishing=True,
        )
        status = self._parse(_Status, self._json(response), "status")
        published = Published(ref=status.id, url=status.url, published_at=status.created_at)
        self._journal.published(idempotency_key, published)
        return published

    async def _find_own_post(self, text: str, *, after: datetime) -> Published | None:
        """The account's status with exactly `text`, created after `after` (minus a minute of
        clock skew) and not already recorded under another key."""
        known = self._journal.published_refs()
        since = after - timedelta(minutes=1)
        async for post in self.history(since=since):
            if post.id not in known and text_digest(post.text) == text_digest(text):
                return Published(ref=post.id, url=post.url, published_at=post.created_at)
        return None

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        statuses: list[_Status] = []
        if self._batch_reads:
            for start in range(0, len(refs), BATCH_SIZE):
                chunk = refs[start : start + BATCH_SIZE]
                response = await self.http.request(
                    "GET", "/api/v1/statuses", params={"id[]": list(chunk)}, expect=(404,)
                )
                if response.status_code == 404:  # before Mastodon 4.3: no batch endpoint
                    self._batch_reads = False
                    statuses.clear()
                    break
                items = self._json(response)
                statuses.extend(self._parse(_Status, item, "status") for item in items or [])
        if not self._batch_reads:
            for ref in refs:
                response = await self.http.request(
                    "GET", f"/api/v1/statuses/{quote(ref, safe='')}", expect=(404,), ref=ref
                )
                if response.status_code != 404:
                    statuses.append(self._parse(_Status, self._json(response), "status"))
        now = utc_datetime(self.clock)
        return [
            ReactionSnapshot(
                ref=s.id,
                found=True,
                reactions=_reactions_of(s),
                audience=s.account.followers_count,
                read_at=now,
            )
            for s in statuses
        ]

    async def _check(self) -> FaceInfo:
        instance = await self._load_instance()
        me = await self._me(fresh=True)
        domain = instance.domain or httpx.URL(self.config.base_url).host
        return FaceInfo(
            face=self.name,
            type_name=self.type_name,
            account=f"@{me.acct}@{domain}" if "@" not in me.acct else f"@{me.acct}",
            audience=me.followers_count,
            limits=self.limits,
            details={
                "instance": domain,
                "version": instance.version,
                "max_characters": instance.max_characters,
                "characters_reserved_per_url": instance.url_characters,
                "unconfirmed_publishes": self._journal.count(JournalState.PENDING),
            },
        )

    def rate_limit_waited_seconds(self) -> float:
        return self._http.waits.rate_limit_s if self._http is not None else 0.0

    async def _aclose(self) -> None:
        self._journal.close()
        if self._http is not None:
            await self._http.aclose()


def _reactions_of(status: _Status) -> Reactions:
    return Reactions(
        likes=status.favourites_count,
        reposts=status.reblogs_count,
        replies=status.replies_count,
        quotes=status.quotes_count,
    )
