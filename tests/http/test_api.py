"""The control API over a real uvicorn server, backed by the daemon's ControlService on a real
controller and a tiny model: auth, validation, errors, offline runs, the token file."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import TOKEN
from openapi_spec_validator import validate
from pydantic import SecretStr

from plaudit.daemon._auth import TOKEN_FILE, bearer_matches, ensure_token
from plaudit.daemon._control import ControlConflict, DaemonState, StatusView
from plaudit.daemon._http import (
    ENDPOINTS,
    STATIC_DIR,
    HttpServer,
    build_app,
    openapi_document,
    serve,
)
from plaudit.daemon._metrics import PROTECTED_ENDPOINTS, Metrics
from plaudit.daemon._service import ControlService
from plaudit.state import StateError, Store

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def unauthorized(metrics: Metrics, endpoint: str) -> float:
    value = metrics.registry.get_sample_value(
        "plaudit_http_unauthorized_total", {"endpoint": endpoint}
    )
    assert value is not None
    return value


async def test_auth_no_token_wrong_token_right_token(
    server: HttpServer, metrics: Metrics, control: ControlService
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        missing = await client.post("/api/training/stop")
        wrong = await client.post("/api/training/stop", headers={"Authorization": "Bearer nope"})
        basic = await client.post("/api/training/stop", headers={"Authorization": f"Basic {TOKEN}"})
        assert control.store.control().training.value == "running"  # none of them got through
        right = await client.post("/api/training/stop", headers=AUTH)
    assert [missing.status_code, wrong.status_code, basic.status_code] == [401, 401, 401]
    assert missing.json()["error"] == "unauthorized"
    assert "Authorization: Bearer" in missing.json()["message"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert right.status_code == 200
    assert right.json()["training"] == "paused"
    assert control.store.control().training.value == "paused"
    assert unauthorized(metrics, "training_stop") == 3
    assert unauthorized(metrics, "training_start") == 0


async def test_every_mutating_endpoint_needs_the_token(
    server: HttpServer, metrics: Metrics
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        for path, endpoint in [
            ("/api/training/start", "training_start"),
            ("/api/training/stop", "training_stop"),
            ("/api/generate", "generate"),
        ]:
            response = await client.post(path, json={})
            assert response.status_code == 401, path
            assert unauthorized(metrics, endpoint) == 1
        scrape = (await client.get("/metrics")).text
    assert 'plaudit_http_unauthorized_total{endpoint="generate"} 1.0' in scrape


async def test_reads_are_open(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        status = await client.get("/api/status")
        posts = await client.get("/api/posts", params={"limit": 2})
        history = await client.get("/api/metrics/history", params={"names": "loss,kl"})
        page = await client.get("/")
        script = await client.get("/static/app.js")
    assert status.status_code == 200
    assert {f["name"] for f in status.json()["faces"]} == {"sim", "journal"}
    assert posts.json()["total"] == 4
    assert len(posts.json()["posts"]) == 2
    newest = posts.json()["posts"][0]
    assert newest["face"] == "sim"
    assert newest["reactions"] == {"likes": 5, "reposts": 2, "replies": 1, "quotes": 0}
    assert newest["reward"] == pytest.approx(0.1)
    series = history.json()["series"]
    assert set(series) == {"loss", "kl"}
    assert len(series["loss"]) == 30
    assert series["loss"][0][1] == pytest.approx(3.0)
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "<title>plaudit</title>" in page.text
    assert script.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }


async def test_posts_filter_and_paging(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        journal = (await client.get("/api/posts", params={"face": "journal"})).json()
        second = (await client.get("/api/posts", params={"limit": 1, "offset": 1})).json()
    assert [p["face"] for p in journal["posts"]] == ["journal"]
    assert journal["total"] == 1
    assert second["offset"] == 1
    assert second["posts"][0]["text"].startswith("Shipped a small fix")


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/posts", {"limit": "0"}, "limit"),
        ("/api/posts", {"limit": "many"}, "limit"),
        ("/api/posts", {"offset": "-1"}, "offset"),
        ("/api/posts", {"limt": "5"}, "limt"),
        ("/api/metrics/history", {"names": "loss;drop table"}, "names"),
        ("/api/metrics/history", {"since": "nan"}, "since"),
    ],
)
async def test_bad_query_is_422_naming_the_field(
    server: HttpServer, path: str, params: dict[str, str], field: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(path, params=params)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert field in body["message"]
    assert body["details"][0]["field"] == field


async def test_bad_bodies(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        not_json = await client.post("/api/generate", content=b"{n: 2")
        wrong_type = await client.post("/api/generate", json={"n": 99})
        unknown = await client.post("/api/training/start", json={"mode": "online", "epoch": 2})
        not_object = await client.post("/api/training/start", json=[1, 2])
        huge = await client.post("/api/generate", json={"prompt": "x" * 70_000})
    assert not_json.status_code == 400
    assert "not valid JSON" in not_json.json()["message"]
    assert wrong_type.status_code == 422
    assert wrong_type.json()["details"] == [
        {"field": "n", "problem": "Input should be less than or equal to 8"}
    ]
    assert unknown.status_code == 422
    assert "epoch" in unknown.json()["message"]
    assert not_object.status_code == 422
    assert huge.status_code == 413


async def wait_for_offline_run(
    client: httpx.AsyncClient, store: Store, *, runs: int = 1
) -> list[dict[str, Any]]:
    """Poll the status until ``runs`` offline runs have ended and the request is done with
    (no progress shown, the mode back to online); every status seen on the way. The status is
    read before the store: the fit can end between the two reads (its checkpoint written, the
    run recorded, the mode switched back), so a status without progress may still show the
    mode it had (seen on a loaded machine) and is not the last one."""
    seen = []
    for _ in range(600):
        status = (await client.get("/api/status")).json()
        seen.append(status)
        ended = [r for r in store.runs(kind="offline") if r.ended_at is not None]
        if len(ended) >= runs and status["progress"] is None and status["mode"] == "online":
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError("the offline run did not end, with the mode back online, within 30 s")


async def test_control_refusals_map_to_400_and_409(
    server: HttpServer, control: ControlService
) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        unknown_data = await client.post(
            "/api/training/start", json={"mode": "offline", "data": "nowhere"}
        )
        first = await client.post("/api/training/start", json={"mode": "offline", "max_steps": 50})
        second = await client.post("/api/training/start", json={"mode": "offline"})
        await wait_for_offline_run(client, control.store)
        after = await client.post("/api/training/start", json={"mode": "offline", "max_steps": 1})
    assert unknown_data.status_code == 400
    assert "nowhere" in unknown_data.json()["message"]
    assert first.status_code == 200
    assert first.json()["mode"] == "offline"
    assert second.status_code == 409
    assert second.json()["error"] == "conflict"
    first_run = min(control.store.runs(kind="offline"), key=lambda r: r.id)
    assert first_run.config["max_steps"] == 50
    assert after.status_code == 200  # once the run is over, the next one is welcome


def service_like(
    control: ControlService,
    metrics: Metrics,
    *,
    state: DaemonState,
    cls: type[ControlService] = ControlService,
) -> ControlService:
    """A service over the same store, controller and policy as ``control``, in daemon state
    ``state``."""
    return cls(
        settings=control.settings,
        store=control.store,
        controller=control.controller,
        policy=control.policy,
        worker=control.worker,
        metrics=metrics,
        state=lambda: state,
        started_at=control.started_at,
    )


async def test_refusals_while_the_daemon_stops_are_503(
    control: ControlService, metrics: Metrics
) -> None:
    stopping = service_like(control, metrics, state="stopping")
    app = build_app(control=stopping, metrics=metrics, token=TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as client:
        start = await client.post("/api/training/start", json={"mode": "online"})
        generate = await client.post("/api/generate", json={"n": 1})
        status = await client.get("/api/status")
    assert (start.status_code, generate.status_code) == (503, 503)
    assert start.json()["error"] == "unavailable"
    assert "stopping" in generate.json()["message"]
    assert status.json()["state"] == "stopping"


async def test_offline_progress_advances(
    server: HttpServer, metrics: Metrics, control: ControlService
) -> None:
    """A long run shows its steps as they go; stopping training ends it at a step boundary."""
    long_run = {"mode": "offline", "epochs": 100, "max_steps": 1000}
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        started = await client.post("/api/training/start", json=long_run)
        assert started.json()["mode"] == "offline"
        steps: list[int] = []
        for _ in range(600):
            progress = (await client.get("/api/status")).json()["progress"]
            if progress is not None:
                assert (progress["mode"], progress["total_steps"]) == ("offline", 1000)
                steps.append(progress["step"])
            if len(set(steps)) >= 3:
                break
            await asyncio.sleep(0.05)
        stopped = await client.post("/api/training/stop")
        seen = await wait_for_offline_run(client, control.store)
    assert len(set(steps)) >= 3 and steps == sorted(steps), steps
    assert stopped.json()["training"] == "paused"
    assert (seen[-1]["mode"], seen[-1]["training"]) == ("online", "paused")
    (run,) = control.store.runs(kind="offline")
    assert run.status == "interrupted"
    assert steps[-1] <= run.metrics["steps"] < 1000
    counted = metrics.registry.get_sample_value("plaudit_train_steps_total", {"mode": "offline"})
    assert counted == run.metrics["steps"]


async def test_offline_run_completes(
    server: HttpServer, metrics: Metrics, control: ControlService
) -> None:
    before = len(control.store.metric_history(["offline_loss"], since=0)["offline_loss"])
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        started = await client.post("/api/training/start", json={"mode": "offline", "max_steps": 6})
        assert started.json()["mode"] == "offline"
        status = (await wait_for_offline_run(client, control.store))[-1]
    assert (status["mode"], status["training"]) == ("online", "running")
    assert status["policy_version"] == 1  # the fitted weights are the new policy
    assert metrics.registry.get_sample_value("plaudit_train_steps_total", {"mode": "offline"}) == 6
    after = control.store.metric_history(["offline_loss"], since=0)["offline_loss"]
    assert len(after) == before + 6
    (run,) = control.store.runs(kind="offline")
    assert run.status == "completed"


async def test_generate(server: HttpServer) -> None:
    request = {"prompt": "Good morning", "n": 3, "seed": 7}
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        response = await client.post("/api/generate", json=request)
        again = await client.post("/api/generate", json=request)
        other = await client.post("/api/generate", json=request | {"seed": 8})
    assert response.status_code == 200
    samples = response.json()["samples"]
    assert len(samples) == 3
    assert all(s["mean_logprob"] <= 0 and s["predicted_reward"] is None for s in samples)
    assert sum(s["tokens"] for s in samples) > 0
    assert again.json() == response.json()  # the seed makes it repeatable
    assert other.json() != response.json()


async def test_unknown_path_and_wrong_method_are_json(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        missing = await client.get("/api/nothing")
        wrong = await client.get("/api/training/start")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


async def test_a_failing_control_is_a_500_with_a_pointer_to_the_log(
    control: ControlService, metrics: Metrics
) -> None:
    control.store.close()  # every store call now fails: a bug-like failure, not a refusal
    app = build_app(control=control, metrics=metrics, token=TOKEN)
    # raise_app_exceptions (the default): the app must answer, not re-raise to the server.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/api/status")
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "see its log" in response.json()["message"]


def test_openapi_document_is_valid_openapi_3() -> None:
    spec = openapi_document()
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema
    assert spec["openapi"].startswith("3.")
    ops = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert ("/api/training/start", "post") in ops
    secured = {
        (path, method)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if op.get("security")
    }
    assert secured == {
        ("/api/training/start", "post"),
        ("/api/training/stop", "post"),
        ("/api/generate", "post"),
        ("/api/approvals/approve", "post"),
        ("/api/approvals/reject", "post"),
    }


def test_every_route_is_in_the_openapi_document(app: object) -> None:
    """The routes and the document come from ENDPOINTS: nothing served is undocumented."""
    spec = openapi_document()
    served = {
        (route.path, method.lower())
        for route in app.routes  # type: ignore[attr-defined]
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served == documented
    assert {ep.name for ep in ENDPOINTS if ep.auth} == set(PROTECTED_ENDPOINTS)


def test_error_codes_follow_what_each_endpoint_checks() -> None:
    paths = openapi_document()["paths"]
    codes = {
        (path, method): sorted(op["responses"])
        for path, item in paths.items()
        for method, op in item.items()
    }
    mutating = ["200", "400", "401", "409", "413", "422", "503"]
    assert codes[("/api/training/start", "post")] == mutating
    assert codes[("/api/training/stop", "post")] == mutating
    assert codes[("/api/generate", "post")] == mutating
    assert codes[("/api/posts", "get")] == ["200", "400", "422"]
    assert codes[("/api/status", "get")] == ["200"]
    assert codes[("/", "get")] == ["200"]


async def test_an_undeclared_refusal_is_a_500(control: ControlService, metrics: Metrics) -> None:
    """/api/status declares no refusal: one there is a bug, not a 400 the document hides."""

    class Refusing(ControlService):
        def status(self) -> StatusView:
            raise ControlConflict("nothing to conflict with")

    refusing = service_like(control, metrics, state="running", cls=Refusing)
    app = build_app(control=refusing, metrics=metrics, token=TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/api/status")
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"


async def test_openapi_is_served(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        served = (await client.get("/openapi.json")).json()
    assert served == openapi_document()


async def test_port_in_use_is_a_clear_error(server: HttpServer, app: object) -> None:
    with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1:\d+.*http\.port"):
        await serve(app, host="127.0.0.1", port=server.port)  # type: ignore[arg-type]


async def test_stop_is_clean_and_frees_the_port(app: object) -> None:
    srv = await serve(app, host="127.0.0.1", port=0)  # type: ignore[arg-type]
    async with httpx.AsyncClient(base_url=srv.url) as client:
        assert (await client.get("/api/status")).status_code == 200
    await srv.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=srv.url) as client:
            await client.get("/api/status")
    again = await serve(app, host="127.0.0.1", port=srv.port)  # type: ignore[arg-type]
    await again.stop()


# -- the token ------------------------------------------------------------------------------


def test_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    token = ensure_token(None, tmp_path)
    path = tmp_path / TOKEN_FILE
    assert len(token) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ensure_token(None, tmp_path) == token  # the second start reads the same one


def test_configured_token_wins_and_is_checked(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).write_text("from-the-file-xxxxxxxx\n")
    assert ensure_token(SecretStr("configured-token-123456"), tmp_path) == "configured-token-123456"
    with pytest.raises(ValueError, match="at least 16 characters"):
        ensure_token(SecretStr("short"), tmp_path)


def test_unreadable_token_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / TOKEN_FILE).mkdir()  # a folder where the file should be: reading fails
    with pytest.raises(StateError, match=TOKEN_FILE):
        ensure_token(None, tmp_path)


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        (TOKEN, False),
        ("Bearer ", False),
        (None, False),
        ("Bearer \u00e9\u00e9", False),
    ],
)
def test_bearer_matches(header: str | None, ok: bool) -> None:
    assert bearer_matches(header, TOKEN) is ok


def test_the_wheel_ships_every_status_page_file() -> None:
    """daemon/static is a folder, not a package: only package-data patterns put it in the
    wheel (checked by building one once: plaudit/daemon/static/{index.html,app.js,app.css})."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]["plaudit.daemon"]
    files = sorted(p.relative_to(root / "daemon").as_posix() for p in STATIC_DIR.iterdir())
    assert files == ["static/app.css", "static/app.js", "static/index.html"]
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
