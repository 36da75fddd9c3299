"""The dashboard's "Approval queue" row and the PlauditApprovalsWaiting alert against a real
Prometheus scraping a live daemon with `[approval] required = true`: real post cycles hold
posts, a human's decisions go through the API, and every query of the row returns data (and
nothing for another instance). With the queue off, the waiting panel has no series."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_helpers import TOKEN, loop_settings, require_tool, serving
from monitoring_helpers import RULES, dashboard, panels, prometheus, substitute

from plaudit.daemon._http import HttpServer
from plaudit.daemon._metrics import Metrics
from plaudit.daemon._service import ControlService
from plaudit.state import PostStatus, Store

# End to end through a running daemon (about 20 s): in CI's `slow` run, out of the default one.
pytestmark = pytest.mark.slow

ROW = "Approval queue"
WAITING, DECISIONS, WAIT = "Posts waiting for approval", "Approval decisions", "Approval wait"


def row_panels() -> list[dict[str, Any]]:
    """The panels of the dashboard's approval row (between its row and the next)."""
    found: list[dict[str, Any]] = []
    inside = False
    for panel in panels(dashboard()):
        if panel["type"] == "row":
            inside = panel["title"] == ROW
            found.extend(panel.get("panels", []) if inside else [])
            continue
        if inside:
            found.append(panel)
    return found


def queries(title: str) -> list[str]:
    exprs = [t["expr"] for p in row_panels() if p["title"] == title for t in p["targets"]]
    assert exprs, f"no panel titled {title!r} in the {ROW!r} row"
    return exprs


def test_the_row_says_when_it_has_data() -> None:
    assert [p["title"] for p in row_panels()] == [WAITING, DECISIONS, WAIT]
    for panel in row_panels():
        assert "[approval] required = true" in panel["description"], panel["title"]


@pytest.fixture
async def approval_server(
    store: Store, metrics: Metrics, tiny_model_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[ControlService, HttpServer]]:
    """The daemon with `[approval] required = true`, and its HTTP server."""
    settings = loop_settings(tiny_model_dir)
    settings = settings.model_copy(
        update={"approval": settings.approval.model_copy(update={"required": True})}
    )
    async with serving(settings, store, metrics, tiny_model_dir, tmp_path) as served:
        yield served


async def wait_for_scrapes(query: Any, target: str, n: int = 3) -> None:
    deadline = time.monotonic() + 30
    while True:
        up = await query(f'count_over_time(up{{instance="{target}"}}[1m])')
        if up and float(up[0]["value"][1]) >= n:
            return
        assert time.monotonic() < deadline, "prometheus did not scrape"
        await asyncio.sleep(0.25)


def by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"][label]: float(s["value"][1]) for s in result}


async def held(service: ControlService, face: str) -> int:
    """A real post cycle, which holds the post it chose; its id."""
    assert await service.controller.run_job(f"post:{face}") == "success"
    (post,) = service.store.queue(face=face, status=PostStatus.AWAITING)
    return post.id


async def test_the_approval_row_on_a_live_daemon(
    approval_server: tuple[ControlService, HttpServer], tmp_path: Path
) -> None:
    service, srv = approval_server
    target = f"127.0.0.1:{srv.port}"
    with prometheus(require_tool("prometheus"), tmp_path, target=target, rule_files=[RULES]) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as prom:

            async def query(expr: str, instance: str = target) -> list[dict[str, Any]]:
                r = await prom.get(
                    "/api/v1/query", params={"query": substitute(expr, instance=instance)}
                )
                body = r.json()
                assert body["status"] == "success", (expr, body)
                result: list[dict[str, Any]] = body["data"]["result"]
                return result

            await wait_for_scrapes(query, target)
            # The queue is on: each face's gauge is there from the start, at 0.
            assert by(await query(queries(WAITING)[0]), "face") == {"sim": 0, "journal": 0}
            # Nothing decided yet: no wait quantile (not a NaN).
            for expr in queries(WAIT):
                assert await query(expr) == [], expr

            # A human decides three held posts through the API; a fourth waits.
            api = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=srv.url, headers=api, timeout=30) as client:
                for path, body in (
                    ("/api/approvals/approve", {}),
                    ("/api/approvals/approve", {"text": "A human's better words."}),
                    ("/api/approvals/reject", {}),
                ):
                    post_id = await held(service, "sim")
                    r = await client.post(path, json={"post_id": post_id, **body})
                    assert r.status_code == 200, r.text
            await held(service, "sim")
            await asyncio.sleep(0.25 * 4 + 0.3)  # four scrapes after the last decision

            failures = []
            for panel in row_panels():
                for target_ in panel["targets"]:
                    result = await query(target_["expr"])
                    if not result:
                        failures.append(f"{panel['title']}: {target_['expr']}: no data")
                    elif any(math.isnan(float(s["value"][1])) for s in result):
                        failures.append(f"{panel['title']}: {target_['expr']}: NaN")
                    if await query(target_["expr"], instance="elsewhere:1"):
                        failures.append(f"{panel['title']}: {target_['expr']}: ignores $instance")
            assert not failures, "\n".join(failures)

            assert by(await query(queries(WAITING)[0]), "face") == {"sim": 1, "journal": 0}
            decided = by(await query(queries(DECISIONS)[0]), "decision")
            assert decided == {"approved": 1, "edited": 1, "rejected": 1, "expired": 0}
            p50, p90 = [float((await query(expr))[0]["value"][1]) for expr in queries(WAIT)]
            # Decided within seconds of the hold: inside the first bucket (a minute).
            assert 0 < p50 <= p90 <= 60

            # The alert rule evaluates against the live series (and does not fire: 12 h).
            groups = (await prom.get("/api/v1/rules")).json()["data"]["groups"]
            (rule,) = [
                r for g in groups for r in g["rules"] if r["name"] == "PlauditApprovalsWaiting"
            ]
            assert rule["health"] == "ok", rule
            assert rule["state"] == "inactive", rule


async def test_the_waiting_panel_has_no_series_while_the_queue_is_off(
    server: HttpServer, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{server.port}"
    with prometheus(require_tool("prometheus"), tmp_path, target=target) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as prom:

            async def query(expr: str) -> list[dict[str, Any]]:
                r = await prom.get(
                    "/api/v1/query", params={"query": substitute(expr, instance=target)}
                )
                result: list[dict[str, Any]] = r.json()["data"]["result"]
                return result

            await wait_for_scrapes(query, target)
            # "No data" in Grafana, as the panel's description says; not a row of zeros.
            assert await query(queries(WAITING)[0]) == []
            for expr in queries(WAIT):
                assert await query(expr) == [], expr
