"""The CLI's API client against the real app served by uvicorn (in a thread: the client is
synchronous, like the CLI)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_helpers import TOKEN
from starlette.applications import Starlette

from plaudit.daemon._auth import TOKEN_FILE
from plaudit.daemon._client import (
    URL_FILE,
    ClientError,
    DaemonClient,
    DaemonUnreachable,
    RequestRefused,
    Unauthorized,
    for_state_dir,
)
from plaudit.daemon._control import GenerateRequest
from plaudit.daemon._http import HttpServer, serve
from plaudit.daemon._service import ControlService


@pytest.fixture
def url(app: Starlette) -> Iterator[str]:
    """The app served on its own event loop in a thread, as the daemon serves it."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, HttpServer] = {}

    async def main() -> None:
        holder["server"] = await serve(app, host="127.0.0.1", port=0)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop).result(10)
    assert started.is_set()
    yield holder["server"].url
    asyncio.run_coroutine_threadsafe(holder["server"].stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_status_start_stop(url: str, control: ControlService) -> None:
    with DaemonClient(base_url=url, token=TOKEN) as client:
        assert client.status().training == "running"
        assert client.stop_training().training == "paused"
        assert control.store.control().training.value == "paused"
        started = client.start_training("online")
        assert (started.training, started.mode) == ("running", "online")
        page = client.posts(limit=2, face="sim")
        assert page.total == 3 and len(page.posts) == 2
        samples = client.generate(GenerateRequest(prompt="hi", n=2, seed=1))
        assert len(samples) == 2
        history = client.metric_history(["reward"])
        assert len(history["reward"]) == 30


def test_errors_are_classified(url: str) -> None:
    with (
        DaemonClient(base_url=url, token="wrong-token-wrong-token") as client,
        pytest.raises(Unauthorized, match="refused the API token"),
    ):
        client.stop_training()
    with DaemonClient(base_url=url, token=TOKEN) as client:
        with pytest.raises(RequestRefused, match="nowhere") as refused:
            client.start_training("offline", data="nowhere")
        assert refused.value.status_code == 400
        with pytest.raises(ClientError, match="invalid training options: epochs"):
            client.start_training("offline", epochs=-1)


def test_unreachable(unused_tcp_port: int) -> None:
    with (
        DaemonClient(base_url=f"http://127.0.0.1:{unused_tcp_port}", token=None) as client,
        pytest.raises(DaemonUnreachable, match="no plaudit daemon answers"),
    ):
        client.status()


def test_for_state_dir(url: str, tmp_path: Path, unused_tcp_port: int) -> None:
    assert for_state_dir(tmp_path) is None  # no daemon ever started here
    (tmp_path / URL_FILE).write_text(f"http://127.0.0.1:{unused_tcp_port}\n")
    assert for_state_dir(tmp_path) is None  # a stale URL: nothing listens
    (tmp_path / URL_FILE).write_text(url + "\n")
    (tmp_path / TOKEN_FILE).write_text(TOKEN + "\n")
    client = for_state_dir(tmp_path)
    assert client is not None
    with client:
        assert client.stop_training().training == "paused"
    configured = for_state_dir(tmp_path, token="not-the-token-at-all")
    assert configured is not None
    with configured, pytest.raises(Unauthorized):
        configured.stop_training()
