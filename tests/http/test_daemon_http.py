"""The HTTP port of the real daemon (`plaudit run`, tiny model, simulated face) as a process:
auth, the CLI through the API, the playground on a real model, promtool on its scrape, the
OpenAPI description against its answers, a real Prometheus running every dashboard query, and
the status page in Chromium. One daemon serves the whole module (start-up costs ~10 s)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from daemon_helpers import DaemonProcess, tiny_config
from http_helpers import require_tool
from hypothesis import HealthCheck, given, settings
from monitoring_helpers import RULES, dashboard, panel_queries, prometheus, promtool, substitute

from plaudit.daemon._auth import TOKEN_FILE
from plaudit.daemon._client import URL_FILE

PLAUDIT = [sys.executable, "-c", "from plaudit.daemon._cli import main; main()"]
# Dashboard panels with no series until the first online update.
ABSENT_BEFORE_AN_UPDATE = {"Online loss", "KL to the reference model (nats per post)"}
# Panels with no series while [approval] is off (this daemon's): nothing waits, nothing was
# decided (tests/http/test_monitoring_approval.py runs them with the queue on).
ABSENT_WITHOUT_APPROVAL = {"Posts waiting for approval", "Approval wait"}


@dataclass
class Running:
    process: DaemonProcess
    url: str
    token: str
    config: Path
    state: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("daemon")
    state = folder / "state"
    config = folder / "plaudit.toml"
    text = tiny_config(state_dir=state, model_dir=tiny_model_dir)
    # Posting keeps going (the dashboard needs a post); online updates every 2 s would only
    # compete with the tests for the two cores, and learning is tested elsewhere.
    assert 'learn_interval = "2s"' in text
    config.write_text(text.replace('learn_interval = "2s"', 'learn_interval = "1h"'))
    process = DaemonProcess(config)
    try:
        process.wait_event("ready", timeout=90)
        url = (state / URL_FILE).read_text().strip()
        token = (state / TOKEN_FILE).read_text().strip()
        yield Running(process=process, url=url, token=token, config=config, state=state)
        rc, _ = process.stop()
        assert rc == 0, process.tail()
    finally:
        process.kill()


def test_token_file_is_private(daemon: Running) -> None:
    assert (daemon.state / TOKEN_FILE).stat().st_mode & 0o077 == 0


def test_auth_no_token_wrong_token_right_token(daemon: Running) -> None:
    with httpx.Client(base_url=daemon.url, timeout=30) as client:
        missing = client.post("/api/training/stop")
        wrong = client.post("/api/training/stop", headers={"Authorization": "Bearer wrong"})
        assert client.get("/api/status").json()["training"] == "running"
        right = client.post("/api/training/stop", headers=daemon.auth)
        assert client.get("/api/status").json()["training"] == "paused"
        again = client.post("/api/training/start", headers=daemon.auth, json={"mode": "online"})
        scrape = client.get("/metrics").text
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert again.json()["training"] == "running"
    assert 'plaudit_http_unauthorized_total{endpoint="training_stop"} 2.0' in scrape
    assert "plaudit_training_running 1.0" in scrape


def test_cli_train_stop_and_start_go_through_the_api(daemon: Running) -> None:
    def plaudit(*args: str) -> str:
        result = subprocess.run(
            [*PLAUDIT, *args, "--config", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "NO_COLOR": "1"},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    # Through the API (not a signal): the reply is the daemon's status after the change. Its
    # mode is what trains now: offline while an offline fit ends at its next step (Start after
    # the first fit was stopped runs it again: issue 17), else online.
    assert re.match(r"training paused \((online|offline)\)", plaudit("train", "stop"))
    assert httpx.get(f"{daemon.url}/api/status").json()["training"] == "paused"
    start = httpx.post(f"{daemon.url}/api/training/start", headers=daemon.auth, json={})
    assert start.json()["training"] == "running"


def test_playground_samples_the_real_model(daemon: Running) -> None:
    body = {"prompt": "Write a short cheerful post.", "n": 2, "max_new_tokens": 8, "seed": 3}
    response = httpx.post(f"{daemon.url}/api/generate", json=body, headers=daemon.auth, timeout=60)
    assert response.status_code == 200, response.text
    samples = response.json()["samples"]
    assert len(samples) == 2
    assert all(0 < s["tokens"] <= 8 and s["mean_logprob"] < 0 for s in samples)


def test_promtool_accepts_the_daemons_scrape(daemon: Running) -> None:
    scrape = httpx.get(f"{daemon.url}/metrics").content
    result = promtool("check", "metrics", stdin=scrape)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout.decode() + result.stderr.decode()
    )
    assert b'plaudit_posts_failed_total{face="sim",reason="auth"} 0.0' in scrape


# The API calls whose answers come from the daemon's own Control code (the rest is the HTTP
# layer, checked in-process by test_api_schema.py); no training start: an offline run would
# train the policy for minutes.
@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/status", "GET"),
        ("/api/posts", "GET"),
        ("/api/metrics/history", "GET"),
        ("/api/generate", "POST"),
        ("/api/training/stop", "POST"),
    ],
)
def test_the_daemon_answers_as_its_openapi_says(daemon: Running, path: str, method: str) -> None:
    schema = schemathesis.openapi.from_url(f"{daemon.url}/openapi.json")
    operation = schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=3,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        if path == "/api/generate" and isinstance(case.body, dict):
            case.body["max_new_tokens"] = 4  # keep the tiny model's work small
        case.call_and_validate(headers=daemon.auth, timeout=60)

    run()
    httpx.post(f"{daemon.url}/api/training/start", headers=daemon.auth, json={"mode": "online"})


def test_every_panel_query_returns_data_from_the_daemon(daemon: Running, tmp_path: Path) -> None:
    target = daemon.url.removeprefix("http://")
    with prometheus(require_tool("prometheus"), tmp_path, target=target, rule_files=[RULES]) as url:
        client = httpx.Client(base_url=url, timeout=10)

        def query(expr: str) -> dict[str, Any]:
            body: dict[str, Any] = client.get("/api/v1/query", params={"query": expr}).json()
            return body

        # Three scrapes, at least one published post (the "time since last post" panel), and
        # three rewarded posts that carried a prediction (the reward model's correlation is
        # absent until then, not 0).
        deadline = time.monotonic() + 60
        while True:
            scrapes = query(f'count_over_time(up{{instance="{target}"}}[1m])')["data"]["result"]
            posts = query("sum(plaudit_posts_published_total)")["data"]["result"]
            rho = query("plaudit_reward_model_spearman")["data"]["result"]
            scraped = bool(scrapes) and float(scrapes[0]["value"][1]) >= 3
            if scraped and posts and float(posts[0]["value"][1]) >= 1 and rho:
                break
            assert time.monotonic() < deadline, f"no scrapes or no post: {daemon.process.tail()}"
            time.sleep(0.5)

        # The last online update's loss and KL have no series before the first update (a 0
        # would read as measured); this daemon learns hourly, so they may have none yet.
        online_steps = f'sum(plaudit_train_steps_total{{mode="online", instance="{target}"}})'
        updated = float(query(online_steps)["data"]["result"][0]["value"][1]) > 0
        failures, values = [], 0
        for title, expr in panel_queries(dashboard()):
            body = query(substitute(expr, instance=target))
            if body["status"] != "success":
                failures.append(f"{title}: {expr}: {body.get('error')}")
            elif not body["data"]["result"]:
                if title in ABSENT_BEFORE_AN_UPDATE and not updated:
                    continue
                if title in ABSENT_WITHOUT_APPROVAL:
                    continue
                failures.append(f"{title}: {expr}: no data")
            else:
                values += sum(not math.isnan(float(s["value"][1])) for s in body["data"]["result"])
        assert not failures, "\n".join(failures)
        assert values > 40
        rules = client.get("/api/v1/rules").json()["data"]["groups"][0]["rules"]
        assert all(rule["health"] == "ok" for rule in rules), rules
        client.close()


@pytest.mark.slow  # ~13 s; the page itself is tested in test_status_page.py on every run
async def test_status_page_during_a_demo_run(
    daemon: Running,
    browser: Any,
    tmp_path: Path,
) -> None:
    """The screenshot of the page on a live daemon (`pytest -m slow -k demo_run -s`)."""
    page = browser.pages[0] if browser.pages else await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(daemon.url)
    pill = page.locator("#state-pill")
    await pill.filter(has_text="training running").wait_for()
    await page.click("#stop-button")  # the first action asks for the token
    await page.fill("#token-input", daemon.token)
    await page.click("#token-save")
    await pill.filter(has_text="training paused").wait_for()
    await page.click("#start-button")
    await pill.filter(has_text="training running").wait_for()
    await page.fill("#generate-prompt", "Write a short cheerful post.")
    await page.fill("input[name=max_new_tokens]", "12")
    await page.click("#generate-button")
    await page.locator("#samples li.sample").nth(1).wait_for(timeout=60_000)
    await page.locator("#feed li:not(.empty)").first.wait_for(timeout=30_000)
    shot = tmp_path / "status-page-daemon.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert not errors, errors
