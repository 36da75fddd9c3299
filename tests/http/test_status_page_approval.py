"""The approval queue on the status page, end to end in headless Chromium over the daemon's
ControlService on a real controller: the held posts with their text to edit, approve, edit and
approve, reject, the server's refusals next to the post (an edit too long, a post that expired
meanwhile), approved posts waiting to go out, the "edited" badge in the feed, a 390 px screen;
and no section at all while the queue is off and holds nothing."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from http_helpers import TOKEN, hold, loop_settings, serving

from plaudit.daemon._http import HttpServer
from plaudit.daemon._metrics import Metrics
from plaudit.daemon._service import ControlService
from plaudit.state import PostStatus, RewardSource, Store

# End to end through a running daemon (about 20 s): in CI's `slow` run, out of the default one.
pytestmark = pytest.mark.slow

SCREENS = Path("/work/screens")
REJECTED_REWARD = -1.5


@pytest.fixture
async def approval_daemon(
    store: Store, metrics: Metrics, tiny_model_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[ControlService, HttpServer]]:
    """A daemon whose queue is on, and its HTTP server. One post may wait per face, so the post
    jobs that a decision pokes publish what was approved and never sample a new post."""
    settings = loop_settings(tiny_model_dir)
    approval = settings.approval.model_copy(
        update={
            "required": True,
            "expire_after": timedelta(hours=2),
            "max_waiting": 1,
            "rejected_reward": REJECTED_REWARD,
        }
    )
    settings = settings.model_copy(update={"approval": approval})
    async with serving(settings, store, metrics, tiny_model_dir, tmp_path) as served:
        yield served


def _published(store: Store, pid: int, *, edit: str | None) -> None:
    """What the post job does with an approved post, done here at once."""
    store.approve(pid, text=edit)
    store.record_intent(pid, idempotency_key=f"approval-{pid}")
    store.mark_published(pid, ref=f"r{pid}", url=None, published_at=time.time() - 30 + pid)


async def _overflow_at_390(page: Any) -> dict[str, int]:
    """How far the page and the queue's parts reach past a 390 px screen (0: nothing cut off);
    the pill's figure counts 1000 more when it lies over the token button."""
    return await page.evaluate(
        """() => {
          const card = document.getElementById('approval-card');
          const right = card.getBoundingClientRect().right;
          const parts = [...card.querySelectorAll('*')].filter((e) => e.offsetParent);
          const pill = document.getElementById('approval-pill').getBoundingClientRect();
          const token = document.getElementById('token-button').getBoundingClientRect();
          const apart = pill.right <= token.left || token.right <= pill.left
            || pill.bottom <= token.top || token.bottom <= pill.top;
          return {
            page: document.documentElement.scrollWidth - window.innerWidth,
            past: parts.filter((e) => e.getBoundingClientRect().right > right + 0.5).length,
            pill: Math.max(0, Math.ceil(pill.right - window.innerWidth)) + (apart ? 0 : 1000),
          };
        }"""
    )


async def test_approval_queue_on_the_page(
    browser: Any, approval_daemon: tuple[ControlService, HttpServer]
) -> None:
    service, srv = approval_daemon
    store = service.store
    first = hold(store, "sim", "Approve me as I am: a calm walk by the river.", predicted=0.42)
    second = hold(store, "sim", "Edit me before I go out, please.")
    third = hold(store, "sim", "Reject me: a rude post nobody should read.")
    fourth = hold(store, "sim", "I will expire while you read me.")
    # An edit approved earlier (from the CLI) whose face has not posted it yet.
    earlier = hold(store, "journal", "The journal's own words.")
    store.approve(earlier, text="A human's words for the journal.")
    # Two approved posts that went out: one in a human's words, one as the model wrote it.
    _published(store, hold(store, "sim", "The model's draft."), edit="Rewritten, then out.")
    _published(store, hold(store, "sim", "Approved as the model wrote it."), edit=None)

    SCREENS.mkdir(parents=True, exist_ok=True)
    page = browser.pages[0] if browser.pages else await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    # The page's clock: paused below, so no poll redraws the queue between two steps.
    await page.clock.install()
    await page.goto(srv.url)

    card = page.locator("#approval-card")
    await card.wait_for()
    held = page.locator("#approval-list li.held-post")
    await held.nth(3).wait_for()
    assert await held.count() == 4
    await page.locator("#approval-pill").filter(has_text="4 awaiting approval").wait_for()
    assert await page.text_content("#approval-count") == "(4)"

    # What each held post shows: face, the text in a labelled textarea, prediction, expiry.
    item = held.filter(has=page.locator(f"#held-text-{first}"))
    text = page.get_by_label(f"Text of post {first}")
    assert await text.input_value() == "Approve me as I am: a calm walk by the river."
    meta = await item.locator(".post-meta").text_content() or ""
    assert "sim" in meta and "predicted +0.42" in meta, meta
    assert re.search(r"expires in (2\.0|1\.9) h", meta), meta
    rules = await page.text_content("#approval-rules") or ""
    assert f"reward {REJECTED_REWARD}" in rules and "within 2 h" in rules, rules
    assert "dropped, with no reward" in rules, rules
    for name in (f"Approve post {first}", f"Reject post {first}"):
        assert await page.get_by_role("button", name=name, exact=True).is_enabled()
    save_first = page.get_by_role("button", name=f"Save edit and approve post {first}")
    assert await save_first.is_disabled()  # nothing edited yet
    await text.fill("Approve me as I am: a calm walk by the river!")
    assert await save_first.is_enabled()
    await text.fill("Approve me as I am: a calm walk by the river.")
    assert await save_first.is_disabled()

    # Approved before, not yet out: listed below with its status and "edited".
    approved = page.locator("#approved-list li", has_text="A human's words for the journal.")
    await approved.wait_for()
    approved_meta = await approved.locator(".post-meta").text_content() or ""
    assert "approved, publishes at the face's next chance" in approved_meta
    assert await approved.locator(".chip.edited").text_content() == "edited"

    # The feed: the post that went out in a human's words carries "edited"; the other nothing.
    out = page.locator("#feed li", has_text="Rewritten, then out.")
    await out.wait_for()
    assert await out.locator(".chip.edited").text_content() == "edited"
    plain = page.locator("#feed li", has_text="Approved as the model wrote it.")
    assert await plain.locator(".chip.edited").count() == 0

    await page.screenshot(path=str(SCREENS / "approval-desktop-before.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await _overflow_at_390(page) == {"page": 0, "past": 0, "pill": 0}
    await page.screenshot(path=str(SCREENS / "approval-390-before.png"), full_page=True)
    await page.set_viewport_size({"width": 1280, "height": 900})

    # Approve: the token is asked for then; the post leaves the queue and goes out.
    await page.get_by_role("button", name=f"Approve post {first}", exact=True).click()
    await page.locator("#token-dialog").wait_for(state="visible")
    await page.fill("#token-input", TOKEN)
    await page.click("#token-save")
    await item.wait_for(state="detached")
    assert store.get_post(first).status in (PostStatus.APPROVED, PostStatus.PUBLISHED)

    # Edit and approve: an edit the face cannot take is refused, next to the post.
    second_text = page.get_by_label(f"Text of post {second}")
    second_item = held.filter(has=page.locator(f"#held-text-{second}"))
    await second_text.fill("x" * 300)
    await page.get_by_role("button", name=f"Save edit and approve post {second}").click()
    error = second_item.locator(".held-error")
    await error.filter(has_text="takes at most 280").wait_for()
    await second_item.screenshot(path=str(SCREENS / "approval-edit-too-long-400.png"))
    assert store.get_post(second).status is PostStatus.AWAITING
    await second_text.fill("Edited by a human before it went out.")
    await page.get_by_role("button", name=f"Save edit and approve post {second}").click()
    await second_item.wait_for(state="detached")
    edited = store.get_post(second)
    assert edited.status in (PostStatus.APPROVED, PostStatus.PUBLISHED)
    assert edited.text == "Edited by a human before it went out."
    assert edited.original_text == "Edit me before I go out, please."

    # Reject: never published, and the rejection's reward trains the model.
    await page.get_by_role("button", name=f"Reject post {third}", exact=True).click()
    await held.filter(has=page.locator(f"#held-text-{third}")).wait_for(state="detached")
    assert store.get_post(third).status is PostStatus.REJECTED
    rewards = store.rewards(source=RewardSource.REJECTED)
    assert [(r.post_id, r.reward) for r in rewards] == [(third, REJECTED_REWARD)]
    await page.locator("#approval-pill").filter(has_text="1 awaiting approval").wait_for()

    # A post that expired after the page drew it: the daemon's 409 shows next to it, and it
    # stays on the page (no actions left) until dismissed.
    await page.clock.pause_at(time.time() + 1)
    await page.wait_for_timeout(500)  # what the pause let run (a poll) has answered
    store.expire(fourth, publish=False)
    await page.get_by_role("button", name=f"Approve post {fourth}", exact=True).click()
    fourth_item = held.filter(has=page.locator(f"#held-text-{fourth}"))
    message = fourth_item.locator(".held-error")
    await message.filter(has_text="not waiting for approval").wait_for()
    assert "expired" in (await message.text_content() or "")
    await fourth_item.locator(".expires").filter(has_text="no longer awaiting").wait_for()
    assert await page.get_by_role("button", name=f"Approve post {fourth}").is_hidden()
    assert store.get_post(fourth).status is PostStatus.EXPIRED
    await page.locator("#approval-list li.held-post").first.screenshot(
        path=str(SCREENS / "approval-expired-409.png")
    )
    await page.clock.resume()
    await page.get_by_role("button", name=f"Dismiss post {fourth}").click()
    await fourth_item.wait_for(state="detached")
    await page.locator("#approval-list li.empty").wait_for()
    await page.locator("#approval-pill").filter(has_text="0 awaiting approval").wait_for()
    assert await card.is_visible()  # the queue is on: the section stays, empty

    # Approved from the page and not out yet (the face posts one per post interval): listed
    # below the queue, the edit marked.
    for pid, edit in ((first, False), (second, True)):
        if store.get_post(pid).status is PostStatus.APPROVED:
            row = page.locator(f"#approved-list li[data-post-id='{pid}']")
            await row.wait_for()
            assert await row.locator(".chip.edited").count() == int(edit)
    await page.screenshot(path=str(SCREENS / "approval-desktop-after.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    assert await _overflow_at_390(page) == {"page": 0, "past": 0, "pill": 0}
    await page.screenshot(path=str(SCREENS / "approval-390-after.png"), full_page=True)
    assert not problems, problems


async def test_no_approval_section_while_the_queue_is_off(
    browser: Any, server: HttpServer, control: ControlService
) -> None:
    assert not control.settings.approval.required
    page = browser.pages[0] if browser.pages else await browser.new_page()
    async with page.expect_response("**/api/approvals") as queue:
        await page.goto(server.url)
    assert (await (await queue.value).json())["posts"] == []
    await page.locator("#state-pill").filter(has_text="training running").wait_for()
    await page.locator("#feed li").first.wait_for()
    assert await page.is_hidden("#approval-card")
    assert await page.is_hidden("#approval-pill")
    assert await page.locator("#feed .chip.edited").count() == 0
