"""Fixtures for the HTTP tests (helpers live in http_helpers.py, imported by name)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from http_helpers import (
    FACES,
    TOKEN,
    first_fit_settings,
    loop_settings,
    require_tool,
    running_control,
    seed_store,
    serving,
)
from starlette.applications import Starlette

from plaudit.daemon._http import HttpServer, build_app, serve
from plaudit.daemon._metrics import Metrics
from plaudit.daemon._service import ControlService
from plaudit.state import Store


@pytest.fixture(scope="session")
def seeded_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seeded state folder per session (seeding fsyncs ~50 transactions); tests copy it."""
    folder = tmp_path_factory.mktemp("seeded") / "state"
    with Store.open(folder) as s:
        seed_store(s)
    return folder


@pytest.fixture
def store(tmp_path: Path, seeded_state: Path) -> Iterator[Store]:
    shutil.copytree(seeded_state, tmp_path / "state")
    with Store.open(tmp_path / "state") as s:
        yield s


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(faces=list(FACES), version="0.1.0", model="tiny-test")


@pytest.fixture
async def control(
    store: Store, metrics: Metrics, tiny_model_dir: Path, tmp_path: Path
) -> AsyncIterator[ControlService]:
    """The daemon's ControlService over a started Controller, as `plaudit run` builds them.

    The controller's jobs run on this test's event loop. A synchronous test (schemathesis,
    the client in its thread) calls the service from another loop: what it asks for only
    runs, and is stopped at once, when this fixture tears down."""
    settings = loop_settings(tiny_model_dir)
    async with running_control(settings, store, metrics, tiny_model_dir, tmp_path) as service:
        yield service


@pytest.fixture
def app(control: ControlService, metrics: Metrics) -> Starlette:
    return build_app(control=control, metrics=metrics, token=TOKEN)


@pytest.fixture
async def server(app: Starlette) -> AsyncIterator[HttpServer]:
    srv = await serve(app, host="127.0.0.1", port=0)
    yield srv
    await srv.stop()


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    chromium = require_tool("chromium")
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as pw:
        # A persistent context is how Playwright takes a fresh --user-data-dir of our own.
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            for page in context.pages:  # stop the page's polling before closing
                await page.goto("about:blank")
            await context.close()


@pytest.fixture
async def first_fit(
    store: Store, metrics: Metrics, tiny_model_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[ControlService, HttpServer]]:
    """A daemon whose first offline fit runs now, and its HTTP server."""
    settings = first_fit_settings(tiny_model_dir)
    async with serving(settings, store, metrics, tiny_model_dir, tmp_path) as served:
        yield served
