"""A small stateful Discord HTTP API (v10) for httpx.MockTransport, following Discord's docs:

- rate limits (docs/topics/rate-limits.md): per-route buckets that count per top-level resource,
  every answer with X-RateLimit-Limit / Remaining / Reset (epoch) / Reset-After (float seconds)
  / Bucket (a hash shared by the route); over the limit a 429 with `Retry-After` (whole seconds,
  rounded up), `X-RateLimit-Scope: user` and the JSON body
  `{"message": "You are being rate limited.", "retry_after": <float>, "global": false}`;
- create message with `nonce` + `enforce_nonce: true`: the same bot and nonce within a few
  minutes returns the message already created instead of a new one;
- messages carry `reactions: [{"count", "count_details", "me", "emoji": {"id", "name"}}]` and
  `thread: {"id", "message_count"}` when a thread was started on them;
- GET /guilds/{id}?with_counts=true adds `approximate_member_count`;
- errors: 401 `{"message": "401: Unauthorized", "code": 0}`, 404 `Unknown Message` (10008),
  400 `Invalid Form Body` (50035) for content over 2000 characters.
"""

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

DISCORD_EPOCH_MS = 1_420_070_400_000
NONCE_WINDOW = 180.0  # "the past few minutes"


class FakeDiscord:
    def __init__(
        self,
        *,
        token: str = "bot-token-abc",
        members: int = 120,
        bucket_limit: int = 50,
        bucket_window: float = 1.0,
    ) -> None:
        self.token = token
        self.bot = {"id": "900000000000000001", "username": "plaudit", "bot": True}
        self.human = {"id": "900000000000000002", "username": "ada", "bot": False}
        self.guild = {"id": "800000000000000001", "name": "Gardeners", "members": members}
        self.channel = {
            "id": "700000000000000001",
            "guild_id": self.guild["id"],
            "name": "posts",
            "type": 0,
        }
        self.messages: dict[str, dict[str, Any]] = {}
        self.nonces: dict[tuple[str, str], tuple[str, float]] = {}
        self.clock_offset = 0.0  # tests move time forward (the nonce window) with this
        self.bucket_limit, self.bucket_window = bucket_limit, bucket_window
        self.buckets: dict[str, tuple[float, int]] = {}  # "route|resource" -> (window start, used)
        self.calls: list[tuple[str, str, int]] = []  # (method, route, status)
        self.failures: dict[str, list[tuple[int, dict[str, Any]] | type[Exception]]] = {}
        self._seq = 0

    # ---- test side ---------------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.clock_offset

    def _snowflake(self, at: float) -> str:
        self._seq = (self._seq + 1) % 4096
        return str(((int(at * 1000) - DISCORD_EPOCH_MS) << 22) | self._seq)

    def add_message(
        self, content: str, *, at: datetime, author: dict[str, Any] | None = None
    ) -> str:
        message = self._message(content, author or self.human, at.timestamp())
        return str(message["id"])

    def react(
        self, message_id: str, emoji: str, count: int, *, custom_id: str | None = None
    ) -> None:
        reactions = self.messages[message_id]["reactions"]
        reactions[:] = [r for r in reactions if r["emoji"]["name"] != emoji]
        reactions.append(
            {
                "count": count,
                "count_details": {"burst": 0, "normal": count},
                "me": False,
                "me_burst": False,
                "burst_colors": [],
                "emoji": {"id": custom_id, "name": emoji},
            }
        )

    def start_thread(self, message_id: str, replies: int) -> None:
        self.messages[message_id]["thread"] = {
            "id": self._snowflake(self.now()),
            "message_count": replies,
        }

    def fail_next(
        self, key: str, answer: tuple[int, dict[str, Any]] | type[Exception], times: int = 1
    ) -> None:
        """Queue answers for the next calls of `key` ("POST /messages", "GET /guild", ...)."""
        self.failures.setdefault(key, []).extend([answer] * times)

    def bot_texts(self) -> list[str]:
        return [m["content"] for m in self.messages.values() if m["author"]["id"] == self.bot["id"]]

    def statuses(self, method: str, route: str) -> list[int]:
        return [status for m, r, status in self.calls if m == method and r == route]

    # ---- the API -----------------------------------------------------------------------------

    def _message(
        self, content: str, author: dict[str, Any], at: float, nonce: str | None = None
    ) -> dict[str, Any]:
        mid = self._snowflake(at)
        message: dict[str, Any] = {
            "id": mid,
            "channel_id": self.channel["id"],
            "author": dict(author),
            "content": content,
            "timestamp": datetime.fromtimestamp(at, UTC).isoformat(),
            "edited_timestamp": None,
            "type": 0,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "reactions": [],
        }
        if nonce is not None:
            message["nonce"] = nonce
        self.messages[mid] = message
        return message

    def _route(self, method: str, path: str) -> tuple[str, str, str] | None:
        """(route name for failures, bucket route, top-level resource) of a request path."""
        patterns = [
            ("GET", r"/api/v10/users/@me", "GET /me"),
            ("GET", r"/api/v10/channels/(\d+)", "GET /channel"),
            ("GET", r"/api/v10/guilds/(\d+)", "GET /guild"),
            ("GET", r"/api/v10/channels/(\d+)/messages", "GET /messages"),
            ("POST", r"/api/v10/channels/(\d+)/messages", "POST /messages"),
            ("GET", r"/api/v10/channels/(\d+)/messages/([^/]+)", "GET /message"),
        ]
        for verb, pattern, name in patterns:
            m = re.fullmatch(pattern, path)
            if verb == method and m:
                return name, name, m.group(1) if m.groups() else ""
        return None

    def _limit(self, bucket: str, resource: str) -> tuple[dict[str, str], float | None]:
        """Count one request against its bucket; the headers, and the wait if over."""
        now = self.now()
        key = f"{bucket}|{resource}"
        start, used = self.buckets.get(key, (now, 0))
        if now - start >= self.bucket_window:
            start, used = now, 0
        reset_after = max(0.0, start + self.bucket_window - now)
        headers = {
            "X-RateLimit-Limit": str(self.bucket_limit),
            "X-RateLimit-Reset": f"{start + self.bucket_window:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": hashlib.md5(bucket.encode()).hexdigest()[:16],
        }
        if used >= self.bucket_limit:
            headers["X-RateLimit-Remaining"] = "0"
            headers["X-RateLimit-Scope"] = "user"
            headers["Retry-After"] = str(math.ceil(reset_after))
            return headers, reset_after
        used += 1
        self.buckets[key] = (start, used)
        headers["X-RateLimit-Remaining"] = str(self.bucket_limit - used)
        return headers, None

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bot {self.token}":
            return httpx.Response(401, json={"message": "401: Unauthorized", "code": 0})
        route = self._route(request.method, request.url.path)
        if route is None:
            return httpx.Response(404, json={"message": "404: Not Found", "code": 0})
        name, bucket, resource = route
        headers, wait = self._limit(bucket, resource)
        if wait is not None:
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(wait, 3),
                "global": False,
            }
            self.calls.append((request.method, name, 429))
            return httpx.Response(429, json=body, headers=headers)
        queued = self.failures.get(name)
        if queued:
            answer = queued.pop(0)
            if isinstance(answer, type):
                self.calls.append((request.method, name, 0))
                raise answer("simulated network failure", request=request)
            status, body = answer
            self.calls.append((request.method, name, status))
            return httpx.Response(status, json=body, headers=headers)
        status, payload = self._dispatch(name, request)
        self.calls.append((request.method, name, status))
        return httpx.Response(status, json=payload, headers=headers)

    def _dispatch(self, name: str, request: httpx.Request) -> tuple[int, Any]:
        params = request.url.params
        handlers: dict[str, Callable[[], tuple[int, Any]]] = {
            "GET /me": lambda: (200, self.bot),
            "GET /channel": lambda: (200, self.channel),
            "GET /guild": lambda: self._get_guild(params.get("with_counts") == "true"),
            "GET /messages": lambda: self._list(params),
            "POST /messages": lambda: self._create(json.loads(request.content)),
            "GET /message": lambda: self._get_message(request.url.path.rsplit("/", 1)[1]),
        }
        return handlers[name]()

    def _get_guild(self, with_counts: bool) -> tuple[int, Any]:
        guild = {"id": self.guild["id"], "name": self.guild["name"]}
        if with_counts:
            guild["approximate_member_count"] = self.guild["members"]
            guild["approximate_presence_count"] = self.guild["members"] // 3
        return 200, guild

    def _list(self, params: httpx.QueryParams) -> tuple[int, Any]:
        limit = min(int(params.get("limit", 50)), 100)
        ids = sorted(self.messages, key=int, reverse=True)
        if "before" in params:
            ids = [i for i in ids if int(i) < int(params["before"])]
        if "after" in params:
            ids = [i for i in ids if int(i) > int(params["after"])]
            ids = sorted(ids, key=int)[:limit]  # the oldest after the cursor
            return 200, [self.messages[i] for i in sorted(ids, key=int, reverse=True)]
        return 200, [self.messages[i] for i in ids[:limit]]

    def _get_message(self, mid: str) -> tuple[int, Any]:
        if mid not in self.messages:
            return 404, {"message": "Unknown Message", "code": 10008}
        return 200, self.messages[mid]

    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        content = str(body.get("content", ""))
        if len(content) > 2000:
            errors = {
                "content": {
                    "_errors": [
                        {
                            "code": "BASE_TYPE_MAX_LENGTH",
                            "message": "Must be 2000 or fewer in length.",
                        }
                    ]
                }
            }
            return 400, {"message": "Invalid Form Body", "code": 50035, "errors": errors}
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            seen = self.nonces.get((self.bot["id"], str(nonce)))
            if seen is not None and self.now() - seen[1] < NONCE_WINDOW:
                return 200, self.messages[seen[0]]
        message = self._message(
            content, self.bot, self.now(), nonce=None if nonce is None else str(nonce)
        )
        if nonce is not None:
            self.nonces[(self.bot["id"], str(nonce))] = (str(message["id"]), self.now())
        return 200, message

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)
