"""The status page in headless Chromium over the daemon's ControlService on a real controller
(issue 17): during the first offline fit (posting waits for it, the mode is offline, the bar
ends when training is stopped), the token asked for only when an action needs it, deleted
posts, links only to web pages, and the faces table on a phone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from http_helpers import TOKEN

from plaudit.daemon._http import HttpServer
from plaudit.daemon._service import ControlService
from plaudit.state import NewCandidate, Snapshot, Store


async def _wait_for_fit(service: ControlService) -> None:
    deadline = time.monotonic() + 60
    while (p := service.controller.progress) is None or p.step < 1:
        assert time.monotonic() < deadline, "the first offline fit did not start"
        await asyncio.sleep(0.05)


async def test_status_during_the_first_fit_and_after_stop(
    first_fit: tuple[ControlService, HttpServer],
) -> None:
    """The API: posting waits for the first fit, the mode is offline while it runs (the store
    keeps "online"), and the stop's own answer says the run is ending."""
    service, _srv = first_fit
    await _wait_for_fit(service)
    view = service.status()
    assert view.posting_waits_for_first_fit
    assert view.mode == "offline" and service.store.control().mode.value == "online"
    assert view.progress is not None and view.progress.mode == "offline"
    assert not view.progress.stopping
    assert not any(name.startswith("post:") for name in service.controller.due())

    stopped = await service.stop_training()
    # Nothing awaited since the stop: the fit cannot have returned, and says it is ending.
    assert stopped.progress is not None and stopped.progress.stopping
    deadline = time.monotonic() + 30
    while service.controller.is_running("offline"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    after = service.status()
    assert after.progress is None and after.mode == "online"


async def test_page_during_the_first_fit(
    browser: Any, first_fit: tuple[ControlService, HttpServer]
) -> None:
    service, srv = first_fit
    await _wait_for_fit(service)
    page = browser.pages[0] if browser.pages else await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(srv.url)

    await page.locator("#progress-text").filter(has_text="offline run: step").wait_for()
    assert await page.text_content("#training-mode") == "offline"
    assert (await page.text_content("#summary-meta") or "").startswith("offline mode")
    assert await page.text_content("#next-post") == "after the first offline fit"
    cells = page.locator("#faces-body td[data-label='Next post']")
    assert await cells.all_text_contents() == ["after the first offline fit"] * 2
    # Training runs (in offline mode): "Start online training" has nothing to start.
    assert await page.is_disabled("#start-button")
    assert await page.is_visible("#progress-bar")

    # Stop: the first action asks for the token; from the stop's answer on, the bar is gone
    # (the run ends at its next step: "stopped at step N; ending…"), then the whole progress.
    await page.click("#stop-button")
    await page.fill("#token-input", TOKEN)
    await page.click("#token-save")
    # (Polled from here: the page's CSP forbids the string eval of wait_for_function.)
    deadline = time.monotonic() + 30
    while not (await page.is_hidden("#progress") or await page.is_hidden("#progress-bar")):
        assert time.monotonic() < deadline, "the bar still runs 30 s after Stop"
        await asyncio.sleep(0.05)
    if await page.is_visible("#progress"):
        assert "stopped at step" in (await page.text_content("#progress-text") or "")
    await page.locator("#progress").wait_for(state="hidden", timeout=30_000)
    await page.locator("#training-mode").filter(has_text="online").wait_for()
    assert await page.text_content("#training-state") == "paused"
    assert not problems, problems


async def test_page_stopping_run_ends_its_bar(browser: Any, server: HttpServer) -> None:
    """What the page draws from a status whose run is stopping (a SmolLM2 step takes
    seconds, so this lasts): the bar is gone, the text says the run ends."""
    page = browser.pages[0] if browser.pages else await browser.new_page()
    async with httpx.AsyncClient(base_url=server.url) as client:
        status = (await client.get("/api/status")).json()
    status["training"] = "paused"
    status["progress"] = {
        "mode": "offline",
        "step": 12,
        "total_steps": 400,
        "loss": 2.5,
        "tokens_per_second": 150.0,
        "started_at": time.time() - 60,
        "stopping": True,
    }

    async def fulfil(route: Any) -> None:
        await route.fulfill(json=status)

    await page.route("**/api/status", fulfil)
    await page.goto(server.url)
    text = page.locator("#progress-text")
    await text.filter(has_text="stopped at step 12 of 400").wait_for()
    assert await page.is_visible("#progress") and not await page.is_visible("#progress-bar")
    assert await page.text_content("#progress-extra") == "loss 2.5"  # no stale tok/s


def _add_post(store: Store, *, text: str, url: str, found: bool) -> int:
    now = time.time()
    (pid,) = store.add_candidates(
        face="sim",
        cycle_id=f"issue17-{text[:8]}",
        candidates=[NewCandidate(text=text, tokens=[1, 2], logprobs=[-1.0, -1.0])],
    )
    store.choose(pid)
    store.record_intent(pid, idempotency_key=f"issue17-{pid}")
    store.mark_published(pid, ref=f"r{pid}", url=url, published_at=now - 60 + pid)
    store.add_snapshot(
        Snapshot(
            post_id=pid,
            horizon_s=3600,
            found=found,
            likes=0,
            reposts=0,
            replies=0,
            quotes=0,
            extra={},
            audience=100,
            read_at=now,
        )
    )
    return pid


async def test_feed_shows_deleted_posts_and_links_only_to_web_pages(
    browser: Any, server: HttpServer, control: ControlService
) -> None:
    _add_post(control.store, text="Gone from the platform.", url="https://x.test/1", found=False)
    _add_post(control.store, text="A simulated post.", url="simulated://sim/s1", found=True)
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await page.goto(server.url)
    posts = page.locator("#feed li")
    await posts.nth(5).wait_for()

    simulated = posts.filter(has_text="A simulated post.")
    assert await simulated.locator("a").count() == 0  # simulated:// leads nowhere
    assert await simulated.locator(".chip", has_text="likes 0").count() == 1

    deleted = posts.filter(has_text="Gone from the platform.")
    assert await deleted.locator(".chip.deleted").text_content() == "deleted on the platform"
    assert await deleted.locator(".chip", has_text="likes").count() == 0  # not "0 reactions"
    assert await deleted.locator("a").count() == 0

    # The seeded posts' https links stay.
    rain = posts.filter(has_text="Rain all week")
    assert await rain.locator("a").get_attribute("href") == "https://example.test/3"
    async with httpx.AsyncClient(base_url=server.url) as client:
        feed = (await client.get("/api/posts?limit=2")).json()["posts"]
    assert [p["deleted"] for p in feed] == [False, True]


async def test_new_tab_reads_without_asking_for_the_token(browser: Any, server: HttpServer) -> None:
    first = browser.pages[0] if browser.pages else await browser.new_page()
    for page in (first, await browser.new_page()):
        await page.goto(server.url)
        await page.locator("#state-pill").filter(has_text="training running").wait_for()
        await page.locator("#feed li").first.wait_for()
        await page.wait_for_timeout(300)
        assert not await page.is_visible("#token-dialog")
        await page.goto("about:blank")


async def test_faces_table_fits_a_390px_screen(
    browser: Any, server: HttpServer, tmp_path: Path
) -> None:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(server.url)
    await page.locator("#faces-body td[data-label='Last error']").first.wait_for()
    box = await page.evaluate(
        """() => {
          const card = document.getElementById('faces-title').closest('.card');
          const right = card.getBoundingClientRect().right;
          const wrap = card.querySelector('.table-wrap');
          const cells = [...card.querySelectorAll('td, th')].filter((c) => c.offsetParent);
          return {
            overflow: wrap.scrollWidth - wrap.clientWidth,
            past: cells.filter((c) => c.getBoundingClientRect().right > right + 0.5).length,
            errors: cells.filter((c) => c.dataset.label === 'Last error').length,
          };
        }"""
    )
    assert box == {"overflow": 0, "past": 0, "errors": 2}, box
    await page.locator("#faces-table").screenshot(path=str(tmp_path / "faces-390.png"))
