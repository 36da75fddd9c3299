"""Metrics, Prometheus and Grafana: promtool on a live scrape, the config and the alert rules
(checked and unit-tested), the dashboard's shape, and every dashboard query run through a
real Prometheus that scrapes a live server."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import timedelta

import httpx
import pytest
from http_helpers import require_tool
from monitoring_helpers import (
    PROMETHEUS_DIR,
    RULES,
    dashboard,
    exercise,
    keep_exercising,
    panel_queries,
    panels,
    prometheus,
    promtool,
    substitute,
    unscoped_selectors,
)

from plaudit.daemon._http import HttpServer
from plaudit.daemon._metrics import (
    FAILURE_REASONS,
    FILTER_REASONS,
    TRAJECTORY_KINDS,
    Metrics,
    horizon_label,
    watch_event_loop_lag,
)

# -- the registry ---------------------------------------------------------------------------


def test_every_label_combination_starts_at_zero(metrics: Metrics) -> None:
    value = metrics.registry.get_sample_value
    for face in ("sim", "journal"):
        assert value("plaudit_posts_published_total", {"face": face}) == 0
        for reason in FILTER_REASONS:
            assert value("plaudit_posts_filtered_total", {"face": face, "reason": reason}) == 0
        for reason in FAILURE_REASONS:
            assert value("plaudit_posts_failed_total", {"face": face, "reason": reason}) == 0
            for call in ("history", "publish", "reactions"):
                labels = {"face": face, "call": call, "reason": reason}
                assert value("plaudit_face_errors_total", labels) == 0
        for horizon in ("1h", "6h", "1d"):
            labels = {"face": face, "horizon": horizon}
            assert value("plaudit_reactions_collected_total", labels) == 0
        assert value("plaudit_reward_count", {"face": face}) == 0
        assert value("plaudit_publish_duration_seconds_bucket", {"face": face, "le": "+Inf"}) == 0
    for task in ("offline", "post", "collect", "learn"):
        assert value("plaudit_scheduler_misfires_total", {"task": task}) == 0
        for outcome in ("success", "error", "skipped"):
            labels = {"task": task, "outcome": outcome}
            assert value("plaudit_scheduler_job_runs_total", labels) == 0
    for kind in TRAJECTORY_KINDS:
        assert value("plaudit_online_trajectories_total", {"kind": kind}) == 0
    assert value("plaudit_build_info", {"version": "0.1.0", "model": "tiny-test"}) == 1
    assert value("process_resident_memory_bytes") is not None


def test_no_post_text_or_id_in_labels(metrics: Metrics) -> None:
    exercise(metrics, 3)
    label_names = {
        name for family in metrics.registry.collect() for s in family.samples for name in s.labels
    }
    allowed = {"face", "call", "reason", "horizon", "mode", "task", "outcome", "endpoint", "le"}
    allowed |= {"decision"}  # plaudit_approval_decisions_total: approved, edited, ...
    allowed |= {"part"}  # plaudit_state_bytes: checkpoints, database, cache, other
    allowed |= {"kind"}  # plaudit_online_trajectories_total: reward, candidate, filtered, ...
    allowed |= {"posts"}  # plaudit_post_kinds: candidates, history
    allowed |= {"version", "model", "implementation", "major", "minor", "patchlevel"}
    allowed |= {"generation"}  # python_gc_* from the runtime collector
    assert label_names <= allowed


def test_record_reward_keeps_the_recent_mean(metrics: Metrics) -> None:
    for reward in [1.0] * 30 + [-1.0] * 10:
        metrics.record_reward("sim", reward)
    # the last 20: ten 1.0 and ten -1.0
    assert metrics.registry.get_sample_value("plaudit_reward_recent_mean", {"face": "sim"}) == 0
    assert metrics.registry.get_sample_value("plaudit_reward_count", {"face": "sim"}) == 40


def test_set_training(metrics: Metrics) -> None:
    metrics.set_training(running=False, mode="offline")
    value = metrics.registry.get_sample_value
    assert value("plaudit_training_running") == 0
    assert value("plaudit_training_mode", {"mode": "offline"}) == 1
    assert value("plaudit_training_mode", {"mode": "online"}) == 0
    with pytest.raises(ValueError, match="training mode must be one of"):
        metrics.set_training(running=True, mode="sideways")


@pytest.mark.parametrize(
    ("horizon", "label"),
    [
        (timedelta(hours=1), "1h"),
        (timedelta(hours=24), "1d"),
        (timedelta(minutes=90), "90m"),
        (timedelta(seconds=10), "10s"),
        (2.5, "2.5s"),
    ],
)
def test_horizon_label(horizon: timedelta | float, label: str) -> None:
    assert horizon_label(horizon) == label


def test_horizon_label_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive duration"):
        horizon_label(0)


async def test_event_loop_lag_sees_a_blocked_loop(metrics: Metrics) -> None:
    task = asyncio.create_task(watch_event_loop_lag(metrics, interval=0.02))
    await asyncio.sleep(0.1)
    time.sleep(0.3)  # block the loop, as a stray synchronous call would
    await asyncio.sleep(0.05)
    blocked = metrics.registry.get_sample_value(
        "plaudit_event_loop_delay_seconds_bucket", {"le": "0.1"}
    )
    count = metrics.registry.get_sample_value("plaudit_event_loop_delay_seconds_count")
    task.cancel()
    assert count is not None and blocked is not None
    assert count - blocked >= 1, "the 0.3 s block was not seen"
    await asyncio.sleep(0.1)  # the gauge shows the last (short) lag again
    assert metrics.registry.get_sample_value("plaudit_event_loop_lag_seconds") is not None


# -- promtool -------------------------------------------------------------------------------


async def test_promtool_check_metrics_on_a_live_scrape(
    server: HttpServer, metrics: Metrics
) -> None:
    exercise(metrics, 1)
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/metrics")
        await client.post("/api/generate")  # a refused call shows up in the next scrape
        after = (await client.get("/metrics")).text
    assert response.headers["content-type"].startswith("text/plain; version=")
    result = promtool("check", "metrics", stdin=response.content)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout.decode() + result.stderr.decode()
    )
    assert 'plaudit_http_unauthorized_total{endpoint="generate"} 2.0' in after
    assert b"_created" not in response.content  # no per-series creation-time gauges


def test_promtool_check_config_and_rules() -> None:
    config = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout.decode() + config.stderr.decode()
    rules = promtool("check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout.decode() + rules.stderr.decode()
    assert b"SUCCESS: 10 rules found" in rules.stdout


def test_promtool_rule_unit_tests() -> None:
    tests = sorted(str(p) for p in (PROMETHEUS_DIR / "tests").glob("*.test.yml"))
    assert len(tests) == 2
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_alert_rules_cover_the_required_cases() -> None:
    text = RULES.read_text()
    for alert in (
        "PlauditDown",  # daemon down
        "PlauditAbsent",
        "PlauditNoRecentPost",
        "PlauditPublishErrors",
        "PlauditRewardFalling",
        "PlauditOfflineTrainingStalled",
        "PlauditOnlineLearningStalled",
        "PlauditApprovalsWaiting",
    ):
        assert f"alert: {alert}\n" in text


# -- the dashboard --------------------------------------------------------------------------


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["id"] is None
    assert board["uid"] == "plaudit-main"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["datasource"]["uid"] == "${datasource}"
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == [
        "Overview",
        "Faces",
        "Approval queue",
        "Rewards and learning",
        "Offline training",
        "Process",
    ]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert not unscoped_selectors(target["expr"]), (panel["title"], target["expr"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


def test_unscoped_selector_check_can_fail() -> None:
    assert unscoped_selectors('sum(rate(foo[1m])) + bar{instance=~"$instance"} + up') == [
        "foo",
        "up",
    ]


# -- a real Prometheus scraping a live server -----------------------------------------------


async def test_every_panel_query_returns_data_from_a_real_prometheus(
    server: HttpServer, metrics: Metrics, tmp_path: pytest.TempPathFactory
) -> None:
    binary = require_tool("prometheus")
    # What the daemon runs: the lag watcher, and the controller's updates (simulated).
    tasks = [
        asyncio.create_task(keep_exercising(metrics)),
        asyncio.create_task(watch_event_loop_lag(metrics, interval=0.05)),
    ]
    target = f"127.0.0.1:{server.port}"
    try:
        with prometheus(binary, tmp_path, target=target, rule_files=[RULES]) as url:  # type: ignore[arg-type]
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:

                async def query(expr: str) -> dict[str, object]:
                    r = await client.get("/api/v1/query", params={"query": expr})
                    body: dict[str, object] = r.json()
                    return body

                # Wait for three scrapes, so that rate() and increase() have samples to use.
                deadline = time.monotonic() + 30
                while True:
                    body = await query(f'count_over_time(up{{instance="{target}"}}[1m])')
                    result = body["data"]["result"]  # type: ignore[index]
                    if result and float(result[0]["value"][1]) >= 3:
                        break
                    assert time.monotonic() < deadline, f"prometheus did not scrape: {body}"
                    await asyncio.sleep(0.25)

                board = dashboard()
                failures, nan_only, checked = [], [], 0
                for title, expr in panel_queries(board):
                    body = await query(substitute(expr, instance=target))
                    checked += 1
                    if body.get("status") != "success":
                        failures.append(f"{title}: {expr}: {body.get('error')}")
                        continue
                    result = body["data"]["result"]  # type: ignore[index]
                    if not result:
                        failures.append(f"{title}: {expr}: no data")
                    elif all(math.isnan(float(s["value"][1])) for s in result):
                        nan_only.append(f"{title}: {expr}")
                    # The same query for another instance must be empty: the filter works.
                    other = await query(substitute(expr, instance="elsewhere:1"))
                    if other["data"]["result"]:  # type: ignore[index]
                        failures.append(f"{title}: {expr}: ignores $instance")
                assert not failures, "\n".join(failures)
                assert not nan_only, "\n".join(nan_only)
                assert checked == len(panel_queries(board)) >= 40

                # The instance variable's query (label_values) finds the daemon.
                values = await client.get(
                    "/api/v1/label/instance/values", params={"match[]": "plaudit_build_info"}
                )
                assert values.json()["data"] == [target]

                # Every alert rule evaluates without error against live data.
                rules = (await client.get("/api/v1/rules")).json()["data"]["groups"][0]["rules"]
                assert len(rules) == 10
                assert all(rule["health"] == "ok" for rule in rules), rules
    finally:
        for task in tasks:
            task.cancel()
