"""The status page end to end in headless Chromium (Debian's, driven by Playwright) over the
daemon's ControlService on a real controller and a tiny model: token, stop and start, an
offline run with live progress stopped from the page, the playground, charts and the feed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from http_helpers import TOKEN

from plaudit.daemon._http import HttpServer
from plaudit.daemon._service import ControlService


async def test_status_page_end_to_end(
    browser: Any, server: HttpServer, control: ControlService, tmp_path: Path
) -> None:
    page = browser.pages[0] if browser.pages else await browser.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    await page.goto(server.url)
    pill = page.locator("#state-pill")
    await pill.filter(has_text="training running").wait_for()
    # Reading needs no token: the page asks for it when an action needs it, not on load.
    dialog = page.locator("#token-dialog")
    assert not await dialog.is_visible()

    # Stop, then start: the status changes on the page and in the daemon's store.
    await page.click("#stop-button")
    await dialog.wait_for(state="visible")
    await page.fill("#token-input", TOKEN)
    await page.click("#token-save")
    await dialog.wait_for(state="hidden")
    # The dialog's close event (which keeps the token) is dispatched as a task after the dialog
    # hides; once the stop took effect, the request that carried the token has been made.
    await pill.filter(has_text="training paused").wait_for()
    assert await page.evaluate("sessionStorage.getItem('plaudit.token')") == TOKEN
    assert control.store.control().training.value == "paused"
    await page.click("#start-button")
    await pill.filter(has_text="training running").wait_for()
    assert control.store.control().training.value == "running"

    # A long offline run (thousands of steps) with live progress; stopping training from the page
    # ends it at a step boundary, and the daemon is back in online mode, paused.
    await page.fill("#offline-data", "sim")
    await page.fill("input[name=epochs]", "1000")
    await page.fill("input[name=max_steps]", "20000")
    await page.fill("input[name=lr]", "3e-5")
    await page.click("#offline-button")
    progress = page.locator("#progress-text")
    await progress.filter(has_text="offline run: step").wait_for(timeout=30_000)
    await page.locator("#progress-extra").filter(has_text="loss").wait_for(timeout=30_000)
    assert control.store.control().mode.value == "offline"
    await page.screenshot(path=str(tmp_path / "status-page-offline-run.png"))
    await page.click("#stop-button")
    await page.locator("#progress").wait_for(state="hidden", timeout=45_000)
    await pill.filter(has_text="training paused").wait_for()
    assert "online mode" in await page.text_content("#summary-meta")
    (run,) = control.store.runs(kind="offline")
    assert run.status == "interrupted" and run.config["max_steps"] == 20000
    await page.click("#start-button")
    await pill.filter(has_text="training running").wait_for()

    # The playground: two samples from the current policy (a tiny model: no chat template,
    # so it writes a post of its own whatever the prompt).
    await page.fill("#generate-prompt", "Good morning")
    await page.fill("input[name=n]", "2")
    await page.click("#generate-button")
    samples = page.locator("#samples li.sample")
    await samples.nth(1).wait_for()
    assert await samples.count() == 2
    assert await page.locator("#samples li.sample .post-text").count() == 2

    # Charts from the metric history, the feed from the store, the faces table.
    for name in ("offline", "loss", "reward", "kl"):
        await page.locator(f"#chart-{name} svg path.series").wait_for()
    assert await page.locator("#feed li").count() == 4
    assert "Rain all week" in (await page.text_content("#feed li:first-child") or "")
    assert await page.locator("#faces-body tr").count() == 2

    shot = tmp_path / "status-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
    assert not problems, problems

    # A wrong token in the session: the page asks again instead of failing silently.
    await page.evaluate("sessionStorage.setItem('plaudit.token', 'wrong-token-123456')")
    await page.click("#stop-button")
    await dialog.wait_for(state="visible")
    await page.fill("#token-input", TOKEN)
    await page.click("#token-save")
    await pill.filter(has_text="training paused").wait_for()
    assert len(problems) == 1 and "401" in problems[0], problems  # the refused call, only

    # The dark palette follows the system setting.
    await page.emulate_media(color_scheme="dark")
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(18, 21, 27)"
    await page.screenshot(path=str(tmp_path / "status-page-dark.png"), full_page=True)
