"""The approval queue over the API: reading it needs no token, deciding does; an approval
publishes through the running controller, an edit keeps the model's text, a rejection is a
reward, and a decision that cannot be taken says why (400) or that it came too late (409)."""

from __future__ import annotations

import httpx
import pytest
from http_helpers import TOKEN, hold

from plaudit.daemon._http import HttpServer
from plaudit.daemon._service import ControlService
from plaudit.state import PostStatus, RewardSource

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_the_queue_is_read_openly_and_decided_with_the_token(
    server: HttpServer, control: ControlService
) -> None:
    store = control.store
    a = hold(store, "sim", "A post to approve as it is.")
    b = hold(store, "sim", "A post a human will rewrite.")
    c = hold(store, "sim", "A post nobody should see.")
    async with httpx.AsyncClient(base_url=server.url) as client:
        queue = (await client.get("/api/approvals")).json()
        assert [p["id"] for p in queue["posts"]] == [a, b, c]
        assert queue["required"] is False and queue["on_expiry"] == "drop"
        assert queue["rejected_reward"] == -2.0
        first = queue["posts"][0]
        assert first["status"] == "awaiting" and first["face"] == "sim"
        assert first["expires_at"] == first["held_at"] + 86400
        assert (await client.get("/api/status")).json()["approvals_waiting"] == 3

        refused = await client.post("/api/approvals/approve", json={"post_id": a})
        assert refused.status_code == 401
        assert store.get_post(a).status is PostStatus.AWAITING

        ok = await client.post("/api/approvals/approve", json={"post_id": a}, headers=AUTH)
        assert ok.status_code == 200, ok.text
        assert ok.json()["approval"] == "approved"
        edit = await client.post(
            "/api/approvals/approve",
            json={"post_id": b, "text": "Rewritten by a human."},
            headers=AUTH,
        )
        assert (
            edit.json()["approval"] == "edited" and edit.json()["text"] == "Rewritten by a human."
        )
        assert store.get_post(b).original_text == "A post a human will rewrite."
        no = await client.post("/api/approvals/reject", json={"post_id": c}, headers=AUTH)
        assert no.json() == {
            "id": c,
            "face": "sim",
            "status": "rejected",
            "approval": "rejected",
            "text": "A post nobody should see.",
            "reward": -2.0,
        }
        (reward,) = store.rewards(source=RewardSource.REJECTED)
        assert reward.post_id == c

        again = await client.post("/api/approvals/reject", json={"post_id": c}, headers=AUTH)
        assert again.status_code == 409
        assert "not waiting for approval (it is rejected)" in again.json()["message"]
        missing = await client.post("/api/approvals/reject", json={"post_id": 99999}, headers=AUTH)
        assert missing.status_code == 400 and "there is no post 99999" in missing.json()["message"]
        bad = await client.post(
            "/api/approvals/approve", json={"post_id": a, "txt": "typo"}, headers=AUTH
        )
        assert bad.status_code == 422

        # An approved post publishes at the face's next slot: a post interval (1 d here) after
        # its last post, which the seeded store has from minutes ago.
        last = store.last_published_at("sim")
        assert last is not None
        sim = {f["name"]: f for f in (await client.get("/api/status")).json()["faces"]}["sim"]
        assert sim["next_post_at"] == pytest.approx(last + 86400)
        queue = (await client.get("/api/approvals", params={"face": "sim"})).json()
        assert [(p["id"], p["status"], p["approval"], p["expires_at"]) for p in queue["posts"]] == [
            (a, "approved", "approved", None),
            (b, "approved", "edited", None),
        ]
        assert queue["posts"][1]["original_text"] == "A post a human will rewrite."
        # Once out, the feed says which post a human edited.
        store.record_intent(b, idempotency_key="k-b")
        store.mark_published(b, ref="ref-b", url=None, published_at=last + 86400)
        feed = (await client.get("/api/posts", params={"face": "sim", "limit": 1})).json()
        assert (feed["posts"][0]["id"], feed["posts"][0]["approval"]) == (b, "edited")
        assert feed["posts"][0]["text"] == "Rewritten by a human."
        unknown = await client.get("/api/approvals", params={"face": "nope"})
        assert unknown.status_code == 400 and "no face named 'nope'" in unknown.json()["message"]
