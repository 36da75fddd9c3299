"""A small stateful Telegram Bot API for httpx.MockTransport, following the Bot API docs
(https://core.telegram.org/bots/api): every answer is `{"ok": true, "result": ...}` or
`{"ok": false, "error_code": N, "description": "..."}` with HTTP status N; a 429 carries
`parameters.retry_after`; `getUpdates` confirms everything below `offset`, filters by
`allowed_updates` (remembered between calls; `message_reaction_count` only when asked for) and
sends each reaction-count update with the message's full current counts."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_ALLOWED = ["message", "edited_message", "channel_post", "edited_channel_post"]


def respond(answer: tuple[int, dict[str, Any]]) -> httpx.Response:
    status, body = answer
    return httpx.Response(status, json=body)


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Channel:
    id: int
    username: str
    title: str
    members: int
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    next_id: int = 1

    def chat(self) -> dict[str, Any]:
        return {"id": self.id, "type": "channel", "title": self.title, "username": self.username}


class FakeTelegram:
    def __init__(self, *, token: str = "123456:TEST-token", members: int = 250) -> None:
        self.token = token
        self.channel = Channel(
            id=-1001234567890, username="plaudit_test", title="Plaudit", members=members
        )
        self.updates: list[dict[str, Any]] = []
        self.next_update_id = 500_000
        self.allowed = list(DEFAULT_ALLOWED)
        self.calls: list[str] = []  # method names, in order
        self.offsets: list[int] = []  # the offset of every getUpdates call
        # Queued answers for the next calls of a method: a (status, body) or an exception type.
        self.failures: dict[str, list[tuple[int, dict[str, Any]] | type[Exception]]] = {}
        self.apply_before_failing = False  # a queued 5xx answers AFTER the message was posted

    # ---- what people do in the channel (test side) -------------------------------------------

    def admin_post(self, text: str, *, date: int) -> int:
        message = self._new_message(text, date)
        self._enqueue("channel_post", message)
        return int(message["message_id"])

    def react(self, message_id: int, counts: dict[str, int]) -> None:
        """Set the message's anonymous reaction counts (emoji -> count, "paid" for stars)."""
        self.channel.counts[message_id] = dict(counts)
        reactions = [
            {
                "type": {"type": "paid"} if k == "paid" else {"type": "emoji", "emoji": k},
                "total_count": n,
            }
            for k, n in counts.items()
        ]
        self._enqueue(
            "message_reaction_count",
            {
                "chat": self.channel.chat(),
                "message_id": message_id,
                "date": int(time.time()),
                "reactions": reactions,
            },
        )

    def fail_next(
        self, method: str, answer: tuple[int, dict[str, Any]] | type[Exception], times: int = 1
    ) -> None:
        self.failures.setdefault(method, []).extend([answer] * times)

    def posted_texts(self) -> list[str]:
        return [m["text"] for m in self.channel.messages.values()]

    # ---- the Bot API -------------------------------------------------------------------------

    def _new_message(self, text: str, date: int) -> dict[str, Any]:
        message = {
            "message_id": self.channel.next_id,
            "sender_chat": self.channel.chat(),
            "chat": self.channel.chat(),
            "date": date,
            "text": text,
        }
        self.channel.messages[self.channel.next_id] = message
        self.channel.next_id += 1
        return message

    def _enqueue(self, kind: str, payload: dict[str, Any]) -> None:
        self.updates.append({"update_id": self.next_update_id, kind: payload})
        self.next_update_id += 1

    @staticmethod
    def error(code: int, description: str, **parameters: Any) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
        if parameters:
            body["parameters"] = parameters
        return code, body

    def handler(self, request: httpx.Request) -> httpx.Response:
        prefix, _, method = request.url.path.rpartition("/")
        if prefix != f"/bot{self.token}":
            return respond(self.error(401, "Unauthorized"))
        self.calls.append(method)
        params: dict[str, Any] = json.loads(request.content) if request.content else {}
        queued = self.failures.get(method)
        if queued:
            answer = queued.pop(0)
            if isinstance(answer, type):
                raise answer("simulated network failure", request=request)
            if self.apply_before_failing and method == "sendMessage":
                self._send_message(params)
            return respond(answer)
        handlers: dict[str, Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]] = {
            "getMe": lambda p: self.ok({"id": 123456, "is_bot": True, "username": "plaudit_bot"}),
            "getChat": self._get_chat,
            "getChatMemberCount": lambda p: self._with_chat(p, lambda c: self.ok(c.members)),
            "sendMessage": self._send_message,
            "getUpdates": self._get_updates,
        }
        if method not in handlers:
            return respond(self.error(404, "Not Found"))
        return respond(handlers[method](params))

    @staticmethod
    def ok(result: Any) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True, "result": result}

    def _with_chat(
        self, params: dict[str, Any], then: Callable[[Channel], tuple[int, dict[str, Any]]]
    ) -> tuple[int, dict[str, Any]]:
        chat_id = str(params.get("chat_id", ""))
        if chat_id not in (f"@{self.channel.username}", str(self.channel.id)):
            return self.error(400, "Bad Request: chat not found")
        return then(self.channel)

    def _get_chat(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self._with_chat(params, lambda c: self.ok(c.chat()))

    def _send_message(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        def send(channel: Channel) -> tuple[int, dict[str, Any]]:
            text = str(params.get("text", "")).strip()  # Telegram trims the text
            if not text:
                return self.error(400, "Bad Request: message text is empty")
            if utf16(text) > 4096:
                return self.error(400, "Bad Request: message is too long")
            return self.ok(self._new_message(text, int(time.time())))

        return self._with_chat(params, send)

    def _get_updates(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "allowed_updates" in params:
            self.allowed = list(params["allowed_updates"]) or list(DEFAULT_ALLOWED)
        offset = int(params.get("offset", 0))
        self.offsets.append(offset)
        if offset:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        limit = int(params.get("limit", 100))
        kinds = set(self.allowed)
        chosen = [u for u in self.updates if kinds & (set(u) - {"update_id"})][:limit]
        return self.ok(chosen)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)
