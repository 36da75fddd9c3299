"""The dashboard against a real Prometheus scraping a live daemon (issue 17): what has no
value yet has no series (not a 0), "Posts (24 h)" counts whole posts, the generation-duration
quantiles hold for SmolLM2's minutes-long cycles, offline fits export no KL, and the Mode panel
says offline while the first fit runs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from http_helpers import require_tool
from monitoring_helpers import dashboard, panel_queries, prometheus, substitute

from plaudit.daemon._control import TrainingStartRequest
from plaudit.daemon._http import HttpServer
from plaudit.daemon._metrics import Metrics
from plaudit.daemon._service import ControlService

Query = Callable[[str], Awaitable[list[dict[str, Any]]]]


def panel(title: str) -> list[str]:
    """The queries of the dashboard's panels with this title."""
    exprs = [expr for t, expr in panel_queries(dashboard()) if t == title]
    assert exprs, f"no panel titled {title!r}"
    return exprs


@asynccontextmanager
async def scraped(server: HttpServer, folder: Path) -> AsyncIterator[tuple[Query, str]]:
    """A real Prometheus scraping the server four times a second, after its third scrape:
    a query function (instant vector, with the dashboard's variables filled in)."""
    target = f"127.0.0.1:{server.port}"
    with prometheus(require_tool("prometheus"), folder, target=target) as url:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:

            async def query(expr: str) -> list[dict[str, Any]]:
                r = await client.get(
                    "/api/v1/query", params={"query": substitute(expr, instance=target)}
                )
                body = r.json()
                assert body["status"] == "success", (expr, body)
                result: list[dict[str, Any]] = body["data"]["result"]
                return result

            deadline = time.monotonic() + 30
            while True:
                up = await query(f'count_over_time(up{{instance="{target}"}}[1m])')
                if up and float(up[0]["value"][1]) >= 3:
                    break
                assert time.monotonic() < deadline, "prometheus did not scrape"
                await asyncio.sleep(0.25)
            yield query, target


async def scrapes(n: int = 3) -> None:
    await asyncio.sleep(0.25 * n + 0.3)


def value(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


async def test_dashboard_on_a_live_daemon(
    server: HttpServer, control: ControlService, metrics: Metrics, tmp_path: Path
) -> None:
    async with scraped(server, tmp_path) as (query, _target):
        # Before any reward or update: no series, so Grafana says "No data", not 0.
        for title in (
            "Mean reward (last 20, all faces)",
            "Recent mean reward",
            "Reward model rank correlation",
            "Online loss",
            "KL to the reference model (nats per post)",
            "Offline loss",
        ):
            for expr in panel(title):
                assert await query(expr) == [], (title, expr)
        for name in ("plaudit_train_kl", "plaudit_online_importance_weight"):
            assert await query(f'{name}{{instance=~"$instance"}}') == [], name

        # A real post cycle on the simulated face: one post published.
        assert await control.controller.run_job("post:sim") == "success"
        # A real offline fit (asked for, 4 steps): a loss, and no KL (a fit has no reference).
        await control.start_training(TrainingStartRequest(mode="offline", data="sim"))
        deadline = time.monotonic() + 60
        while control.controller.is_running("offline") or control.controller.offline_fits.request:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        # What the collect sweep and an online update write (no reward is due in a test).
        metrics.record_reward("sim", 0.4)
        metrics.train_loss.labels("online").set(0.7)
        metrics.train_kl.labels("online").set(0.02)
        # SmolLM2 cycles on a CPU: nine of 142 s, then one of 13 min.
        for _ in range(9):
            metrics.generation_duration.observe(142.0)
        await scrapes()

        (posts_24h,) = panel("Posts (24 h)")
        posts = await query(posts_24h)
        assert posts[0]["value"][1] == "1", posts  # a whole post, not 1.039
        assert value(await query(panel("Mean reward (last 20, all faces)")[0])) == 0.4
        assert value(await query(panel("Online loss")[0])) == 0.7
        kl = await query('plaudit_train_kl{instance=~"$instance"}')
        assert [s["metric"]["mode"] for s in kl] == ["online"], kl
        offline_loss = value(await query(panel("Offline loss")[0]))
        assert math.isfinite(offline_loss) and offline_loss > 0

        p50, p95 = panel("Generation duration")
        # The tiny model's own cycle is one observation of the ten: p50 lies among the 142s.
        assert 0.9 * 142 <= value(await query(p50)) <= 1.1 * 142
        for _ in range(30):
            metrics.generation_duration.observe(780.0)
        await scrapes()
        assert 0.9 * 780 <= value(await query(p95)) <= 1.1 * 900


async def test_mode_panel_says_offline_while_the_first_fit_runs(
    first_fit: tuple[ControlService, HttpServer], tmp_path: Path
) -> None:
    service, srv = first_fit
    (mode_expr,) = panel("Mode")
    async with scraped(srv, tmp_path) as (query, _target):
        deadline = time.monotonic() + 60
        while service.controller.progress is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await scrapes()
        # The store says online (a scheduled fit does not change it); what trains is offline.
        assert service.store.control().mode.value == "online"
        assert [s["metric"]["mode"] for s in await query(mode_expr)] == ["offline"]
        await service.stop_training()
        while service.controller.is_running("offline"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await scrapes()
        assert [s["metric"]["mode"] for s in await query(mode_expr)] == ["online"]
