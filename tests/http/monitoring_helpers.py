"""Helpers for the monitoring tests: exercising every metric, a real Prometheus process, and
the dashboard's queries with Grafana's variables filled in."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from http_helpers import require_tool

from plaudit.daemon._metrics import (
    APPROVAL_DECISIONS,
    FACE_CALLS,
    FAILURE_REASONS,
    FILTER_REASONS,
    JOB_OUTCOMES,
    PROTECTED_ENDPOINTS,
    SCHEDULER_JOBS,
    TRAINING_MODES,
    TRAJECTORY_KINDS,
    Metrics,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/plaudit.json"
PROMETHEUS_DIR = ROOT / "deploy/prometheus"
RULES = PROMETHEUS_DIR / "rules/plaudit.rules.yml"

# Grafana's built-in variables, as Grafana would fill them in for a short time range.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def exercise(metrics: Metrics, step: int) -> None:
    """Touch every series once, as a busy daemon would (values move with ``step``)."""
    for face in metrics.faces:
        metrics.posts_generated.labels(face).inc(6)
        metrics.posts_published.labels(face).inc()
        metrics.rate_limit_waits.labels(face).inc()
        metrics.rate_limit_wait_seconds.labels(face).inc(1.5)
        metrics.publish_duration.labels(face).observe(0.2 + 0.01 * (step % 7))
        metrics.last_post_timestamp.labels(face).set(time.time())
        metrics.record_reward(face, ((step * 37) % 11 - 5) / 4)
        for reason in FILTER_REASONS:
            metrics.posts_filtered.labels(face, reason).inc()
        for reason in FAILURE_REASONS:
            metrics.posts_failed.labels(face, reason).inc()
            for call in FACE_CALLS:
                metrics.face_errors.labels(face, call, reason).inc()
        for horizon in metrics.horizons:
            metrics.reactions_collected.labels(face, horizon).inc()
        metrics.reward_model_spearman.labels(face).set(0.3)
        metrics.post_kinds.labels(face, "history").set(15.4)
        metrics.post_kinds.labels(face, "candidates").set(9.0 + step % 4)
        # The approval queue, as with [approval] required = true.
        metrics.approval_waiting.labels(face).set(step % 3)
        for decision in APPROVAL_DECISIONS:
            metrics.approval_decisions.labels(face, decision).inc()
    metrics.generation_duration.observe(1.0 + 0.1 * (step % 5))
    metrics.approval_wait_seconds.observe(600.0 * (1 + step % 12))
    for mode in TRAINING_MODES:
        metrics.train_steps.labels(mode).inc()
        metrics.train_loss.labels(mode).set(3.0 / (1 + step))
        metrics.train_kl.labels(mode).set(0.001 * step)
        metrics.train_learning_rate.labels(mode).set(1e-5)
        metrics.train_tokens_per_second.labels(mode).set(200.0)
    for kind in TRAJECTORY_KINDS:
        metrics.online_trajectories.labels(kind).inc(1 + step % 3)
    metrics.policy_version.set(step)
    metrics.set_training(running=True, mode="online")
    for job in SCHEDULER_JOBS:
        metrics.scheduler_misfires.labels(job).inc()
        for outcome in JOB_OUTCOMES:
            metrics.scheduler_job_runs.labels(job, outcome).inc()
    for endpoint in PROTECTED_ENDPOINTS:
        metrics.http_unauthorized.labels(endpoint).inc()


async def keep_exercising(metrics: Metrics, *, every: float = 0.1) -> None:
    step = 0
    while True:
        exercise(metrics, step)
        step += 1
        await asyncio.sleep(every)


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require_tool("promtool"), *args], input=stdin, capture_output=True, timeout=60
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def prometheus(
    binary: str,
    folder: Path,
    *,
    target: str,
    rule_files: list[Path] = (),  # type: ignore[assignment]
) -> Iterator[str]:
    """A real Prometheus scraping ``target`` four times a second; yields its base URL."""
    port = free_port()
    config = folder / "prometheus.yml"
    rules = "\n".join(f"  - {p}" for p in rule_files)
    config.write_text(
        "global:\n  scrape_interval: 250ms\n  evaluation_interval: 250ms\n"
        + (f"rule_files:\n{rules}\n" if rule_files else "")
        + "scrape_configs:\n  - job_name: plaudit\n"
        + f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = (folder / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(folder / 'prometheus.log').read_text()}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("prometheus did not become ready in 30 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, *, instance: str) -> str:
    for name, value in GRAFANA_VARS.items():
        expr = expr.replace(name, value)
    # Grafana regex-escapes the value; inside a PromQL string the backslash is doubled.
    return expr.replace("$instance", re.escape(instance).replace("\\", "\\\\"))


# A metric selector: a name, optionally followed by {matchers}; not a function call or keyword.
_SELECTOR = re.compile(r"(?<![\w$:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])\s*(\{[^}]*\})?(?!\s*\()")
_NOT_METRICS = {
    "sum", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "offset", "bool", "le", "time", "rate", "increase", "histogram_quantile",
    "avg", "max", "min", "count", "inf", "nan",
}  # fmt: skip


def unscoped_selectors(expr: str) -> list[str]:
    """Metric selectors in ``expr`` that do not filter on the dashboard's $instance."""
    bad = []
    for match in _SELECTOR.finditer(re.sub(r'"[^"]*"', '""', expr)):
        name, matchers = match.group(1), match.group(2)
        if name in _NOT_METRICS or name.isdigit() or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        # Label names inside by (...) are not metrics: skip anything inside parentheses
        # right after by/without/on/ignoring.
        before = expr[: match.start()].rstrip()
        if re.search(r"\b(by|without|on|ignoring)\s*\([^)]*$", before):
            continue
        if not matchers:
            bad.append(name)
    # Matchers are checked against the original text (strings were blanked above).
    for sel in re.finditer(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\{([^}]*)\}", expr):
        if 'instance=~"$instance"' not in sel.group(1):
            bad.append(sel.group(0))
    return bad
