"""Test helpers for the network faces: a request-counting transport and a real Mastodon API
server (mastodon-mock, run as a subprocess the way an operator would run it)."""

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from plaudit.faces._http import RetryPolicy

# Fast retries for tests; the wait for a server's announced reset is still honoured in full.
FAST_RETRY = RetryPolicy(
    attempts=3, wait_initial=0.02, wait_max=0.1, wait_jitter=0.02, max_rate_limit_wait=10.0
)


@dataclass
class Exchange:
    method: str
    path: str
    status: int | None  # None when the request failed without a response
    started: float
    ended: float


@dataclass
class CountingTransport(httpx.AsyncBaseTransport):
    """Wraps a real transport and records every request that went through it."""

    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)
    log: list[Exchange] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.HTTPError:
            self.log.append(
                Exchange(request.method, request.url.path, None, started, time.monotonic())
            )
            raise
        self.log.append(
            Exchange(
                request.method, request.url.path, response.status_code, started, time.monotonic()
            )
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def calls(self, method: str, path: str) -> list[Exchange]:
        return [e for e in self.log if e.method == method and e.path == path]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mastodon(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("mastodon_mock", path=str(Path(sys.executable).parent))
    assert exe, "mastodon-mock is not installed in this environment (pip install mastodon-mock)"
    config = workdir / "mastodon_mock.toml"
    # The whole document is the config; url_scheme http so that status URLs match the server.
    config.write_text('url_scheme = "http"\n[faults]\nenabled = true\n', encoding="utf-8")
    last_error = ""
    for _ in range(3):  # a free port can be taken between the probe and the bind: try again
        port = _free_port()
        log = (workdir / f"server-{port}.log").open("wb")
        proc = subprocess.Popen(
            [
                exe,
                "serve",
                "--config",
                str(config),
                "--in-memory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base_url}/api/v1/instance", timeout=1).status_code == 200:
                    return proc, base_url
            except httpx.HTTPError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
        last_error = (workdir / f"server-{port}.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"mastodon_mock did not start:\n{last_error}")


@dataclass
class MastodonUser:
    id: str
    username: str
    token: str


class MastodonServer:
    """A running mastodon-mock and the test-side actions on it (other users, faults)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=10)

    def new_user(self) -> MastodonUser:
        data = self.client.post("/api/v1/_mock/dev_user", json={}).raise_for_status().json()
        return MastodonUser(data["id"], data["username"], data["access_token"])

    def as_user(self, user: MastodonUser, method: str, path: str, **kwargs: object) -> object:
        headers = {"Authorization": f"Bearer {user.token}"}
        response = self.client.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
        return response.raise_for_status().json()

    def post(self, user: MastodonUser, text: str) -> str:
        status = self.as_user(user, "POST", "/api/v1/statuses", json={"status": text})
        assert isinstance(status, dict)
        return str(status["id"])

    def statuses(self, user: MastodonUser) -> list[dict[str, object]]:
        """Every status of `user`, straight from the server (the ground truth)."""
        out: list[dict[str, object]] = []
        url: str | None = f"/api/v1/accounts/{user.id}/statuses?limit=40"
        while url:
            response = self.client.get(url).raise_for_status()
            out.extend(response.json())
            url = response.links.get("next", {}).get("url")
        return out

    def fault(self, *, method: str, path: str, effect: dict[str, object], count: int) -> None:
        rule = {"match": {"methods": [method], "path": path}, "effect": effect, "count": count}
        self.client.post("/api/v1/_mock/faults", json=rule).raise_for_status()

    def clear_faults(self) -> None:
        self.client.delete("/api/v1/_mock/faults").raise_for_status()
