"""The control API over a real uvicorn server: auth, validation, errors, the token file."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import httpx
import pytest
from http_helpers import TOKEN, StoreControl
from openapi_spec_validator import validate
from pydantic import SecretStr

from plaudit.daemon._auth import TOKEN_FILE, bearer_matches, ensure_token
from plaudit.daemon._http import STATIC_DIR, HttpServer, build_app, openapi_document, serve
from plaudit.daemon._metrics import Metrics
from plaudit.state import StateError

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def unauthorized(metrics: Metrics, endpoint: str) -> float:
    value = metrics.registry.get_sample_value(
        "plaudit_http_unauthorized_total", {"endpoint": endpoint}
    )
    assert value is not None
    return value


async def test_auth_no_token_wrong_token_right_token(
    server: HttpServer, metrics: Metrics, control: StoreControl
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


async def test_control_refusals_map_to_400_and_409(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        unknown_data = await client.post(
            "/api/training/start", json={"mode": "offline", "data": "nowhere"}
        )
        first = await client.post("/api/training/start", json={"mode": "offline", "max_steps": 50})
        second = await client.post("/api/training/start", json={"mode": "offline"})
    assert unknown_data.status_code == 400
    assert "nowhere" in unknown_data.json()["message"]
    assert first.status_code == 200
    assert first.json()["mode"] == "offline"
    assert first.json()["progress"]["total_steps"] == 50
    assert second.status_code == 409
    assert second.json()["error"] == "conflict"


async def test_offline_progress_advances(server: HttpServer, metrics: Metrics) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        started = await client.post("/api/training/start", json={"mode": "offline", "max_steps": 6})
        assert started.json()["progress"]["step"] == 0
        seen = []
        for _ in range(100):
            status = (await client.get("/api/status")).json()
            seen.append(status["progress"]["step"] if status["progress"] else None)
            if status["progress"] is None:
                break
            await asyncio.sleep(0.02)
    assert seen[-1] is None, "the offline run never finished"
    steps = [s for s in seen if s is not None]
    assert steps == sorted(steps) and steps[-1] > 0
    assert status["mode"] == "online"
    assert metrics.registry.get_sample_value("plaudit_train_steps_total", {"mode": "offline"}) == 6


async def test_generate(server: HttpServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
        response = await client.post(
            "/api/generate", json={"prompt": "Good morning", "n": 3, "seed": 7}
        )
        again = await client.post(
            "/api/generate", json={"prompt": "Good morning", "n": 3, "seed": 7}
        )
    assert response.status_code == 200
    samples = response.json()["samples"]
    assert len(samples) == 3
    assert all(s["text"].startswith("Good morning") for s in samples)
    assert again.json() == response.json()


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
    control: StoreControl, metrics: Metrics
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
    }


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
