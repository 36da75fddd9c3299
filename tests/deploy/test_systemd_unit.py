"""deploy/plaudit.service: `systemd-analyze verify` is clean, `systemd-analyze security` rates it
2.0 or lower, and the unit agrees with the code it runs (config keys, timeouts, torch, Python)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from plaudit.daemon._config import Settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "plaudit.service"
INSTALLED_BIN = "/opt/plaudit/.venv/bin/plaudit"
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    """The tool's path; skipped where it is missing, except in CI, where it must be there."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(
                "systemd-analyze is missing in CI: install Debian's systemd package "
                "(.ci/run does: apt-get install -y --no-install-recommends systemd)"
            )
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    return tool


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; keys repeat in units (Environment=, ...)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=VALUE line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span as used in the unit ("90s", "2min", "1h 30min")."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart= points at this checkout's plaudit, because verify
    checks that the binary exists and this machine has no /opt/plaudit."""
    plaudit = Path(sys.prefix) / "bin" / "plaudit"
    assert plaudit.exists(), f"{plaudit} missing: run `make install`"
    text = UNIT.read_text()
    assert INSTALLED_BIN in text
    copy = tmp_path / "plaudit.service"  # verify wants the real unit name
    copy.write_text(text.replace(INSTALLED_BIN, str(plaudit)))
    return copy


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_verify_is_clean(runnable_unit: Path) -> None:
    # Dependencies (network-online.target, ...) belong to the host, not to this unit.
    proc = run_tool("verify", "--recursive-errors=no", "--man=no", str(runnable_unit))
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", output


def test_verify_would_catch_a_broken_unit(runnable_unit: Path) -> None:
    # The clean result above means something: the same call reports what systemd rejects.
    text = runnable_unit.read_text()
    assert "\nWatchdogSec=" in text
    runnable_unit.write_text(re.sub(r"\nWatchdogSec=\S+", "\nWatchdogSec=soon", text))
    proc = run_tool("verify", "--recursive-errors=no", "--man=no", str(runnable_unit))
    output = proc.stdout + proc.stderr
    assert "Failed to parse sec value, ignoring: soon" in output, output


def test_security_exposure_is_at_most_2(runnable_unit: Path) -> None:
    proc = run_tool("security", "--offline=true", str(runnable_unit))
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, proc.stdout[-2000:]
    score = float(match.group(1))
    print(f"systemd-analyze security: {score}")
    assert score <= MAX_EXPOSURE, proc.stdout


def test_notify_reload_is_not_available_on_this_systemd(tmp_path: Path) -> None:
    # Why the unit says Type=notify plus ExecReload=kill -HUP: Type=notify-reload arrived in
    # systemd 253. When the tool here is 253 or newer this test tells us to switch.
    version = int(re.findall(r"systemd (\d+)", run_tool("--version").stdout)[0])
    unit = tmp_path / "probe.service"
    unit.write_text("[Service]\nType=notify-reload\nExecStart=/bin/true\n")
    output = run_tool("verify", "--recursive-errors=no", "--man=no", str(unit))
    rejected = "Failed to parse service type" in output.stdout + output.stderr
    if version >= 253:
        assert not rejected
        pytest.skip(
            f"systemd {version} supports Type=notify-reload: the unit could use it "
            "(the daemon already sends RELOADING=1 with MONOTONIC_USEC)"
        )
    assert rejected, output


def test_the_unit_runs_the_installed_daemon_as_a_notify_service(
    service: dict[str, list[str]],
) -> None:
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["ExecStart"] == [f"{INSTALLED_BIN} run --config /etc/plaudit/plaudit.toml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert service["DynamicUser"] == ["yes"]
    for key in ("StateDirectory", "CacheDirectory", "ConfigurationDirectory"):
        assert service[key] == ["plaudit"]
    assert seconds(service["WatchdogSec"][0]) >= 10


def test_stop_timeout_leaves_room_for_the_daemons_own_deadline(
    service: dict[str, list[str]],
) -> None:
    # systemd must not SIGKILL the daemon while it still keeps its own graceful deadline
    # (controller.shutdown_timeout) plus one training step and a checkpoint after it.
    stop = seconds(service["TimeoutStopSec"][0])
    daemon_deadline = Settings().controller.shutdown_timeout.total_seconds()
    assert stop >= daemon_deadline + 30, (stop, daemon_deadline)


def unit_environment(service: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in service.get("Environment", []):
        for assignment in line.split():
            key, _, value = assignment.partition("=")
            env[key] = value
    return env


def test_a_watchdog_abort_leaves_every_threads_stack_in_the_journal(
    service: dict[str, list[str]],
) -> None:
    # The unit promises that WatchdogSignal=SIGABRT prints where each thread was stuck: run a
    # Python with the unit's environment, abort it the way systemd would, read its stderr.
    assert service["WatchdogSignal"] == ["SIGABRT"]
    env = {**os.environ, **unit_environment(service)}
    env.pop("XDG_CACHE_HOME", None)  # a systemd specifier (%C), meaningless here
    code = textwrap.dedent(
        """
        import threading, time
        def training_step():
            time.sleep(60)
        threading.Thread(target=training_step, daemon=True).start()
        print("up", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGABRT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in err
    assert "in training_step" in err, err  # the worker thread's stack, not only the main one


def test_credential_lines_name_config_keys_and_their_files() -> None:
    # The config loader reads $CREDENTIALS_DIRECTORY/<dotted key>: a credential under any
    # other name would be ignored or rejected. The unit ships the lines commented out (a
    # missing source file fails the start); check each example all the same.
    from plaudit.faces._registry import discover

    lines = re.findall(r"^#?LoadCredential=(\S+)$", UNIT.read_text(), re.M)
    assert len(lines) >= 3, lines
    registry = discover()
    for line in lines:
        cred_id, _, source = line.partition(":")
        assert source == f"/etc/plaudit/credentials/{cred_id}", line
        parts = cred_id.split(".")
        if parts[0] == "faces":
            _, instance, key = parts
            model = registry.get(instance).Config  # the examples name instances by type
        else:
            section, key = parts
            model = type(getattr(Settings(), section))
        assert key in model.model_fields, f"{cred_id}: no such config key"
        assert "SecretStr" in str(model.model_fields[key].annotation), f"{cred_id} is no secret"


def test_no_write_execute_ban_while_torch_needs_it() -> None:
    # MemoryDenyWriteExecute=yes would forbid memory that becomes executable. Apply the same
    # policy with prctl(PR_SET_MDWE) (Linux 6.3+) and run a bf16 matmul (oneDNN's JIT): while
    # it fails, the unit must leave MemoryDenyWriteExecute off.
    service = parse_unit(UNIT.read_text())["Service"]
    probe = textwrap.dedent(
        """
        import ctypes, sys
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            sys.exit(10 + ctypes.get_errno())
        import torch
        a = torch.randn(64, 64, dtype=torch.bfloat16)
        (a @ a).sum().item()
        print("bf16 matmul ran under MDWE")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ONEDNN_VERBOSE": "1"},  # prints one "exec" line per oneDNN call
    )
    if proc.returncode == 10 + errno.EINVAL:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3): cannot probe the W^X policy")
    if proc.returncode == 0 and ",exec," not in proc.stdout:
        # Without AVX-512 (an AVX2-only CPU) torch multiplies bf16 with its own kernel and
        # never calls oneDNN, so nothing JIT-compiles and the probe cannot tell; the unit
        # must still run on the CPUs where oneDNN does.
        pytest.skip(
            "torch runs bf16 matmuls without oneDNN on this CPU "
            f"({torch.backends.cpu.get_cpu_capability()}): no JIT code to probe W^X with"
        )
    if proc.returncode == 0:
        assert service["MemoryDenyWriteExecute"] == ["no"]
        pytest.fail(
            "torch now runs bf16 matmuls under a write-xor-execute policy: consider "
            "MemoryDenyWriteExecute=yes in deploy/plaudit.service (and check bf16 attention)"
        )
    assert "could not create a primitive" in proc.stderr, proc.stderr[-2000:]
    assert service["MemoryDenyWriteExecute"] == ["no"]
