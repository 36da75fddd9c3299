"""The sd_notify protocol against real unix datagram sockets (a file path and an abstract name),
the way systemd receives it: exact bytes, sender credentials, watchdog cadence, a blocked loop."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from plaudit.daemon._systemd import Notifier, TimeoutExtender, watchdog_loop

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


class Receiver:
    """The service manager's end: a bound datagram socket that records every message with its
    arrival time (CLOCK_MONOTONIC) and the sender's pid (SCM_CREDENTIALS, as systemd checks
    NotifyAccess= with)."""

    def __init__(self, bind_to: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, bytes, int | None]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except TimeoutError:
                continue
            except OSError:
                return
            arrived = time.monotonic()
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            with self._cond:
                self.messages.append((arrived, data, pid))
                self._cond.notify_all()

    def wait(self, count: int, timeout: float = 3.0) -> list[bytes]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return [m[1] for m in self.messages]

    def times(self, payload: bytes) -> list[float]:
        with self._cond:
            return [t for t, data, _ in self.messages if data == payload]

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer than that.
    folder = Path(tempfile.mkdtemp(prefix="plaudit-sd-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, short_dir: Path
) -> Iterator[tuple[str, Receiver]]:
    """(NOTIFY_SOCKET value, receiver bound to it) for a file path and an abstract name."""
    if request.param == "path":
        value = str(short_dir / "notify")
        receiver = Receiver(value)
    else:
        name = f"plaudit-test-{uuid.uuid4().hex}"
        value = "@" + name
        receiver = Receiver("\0" + name)
    yield value, receiver
    receiver.close()


def test_each_message_has_the_exact_bytes(notify_socket: tuple[str, Receiver]) -> None:
    value, receiver = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": value})
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("training: step 3/10\nloss 2.10  ")
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.ready(status="config reloaded")
    assert notifier.stopping()
    assert notifier.watchdog()
    assert notifier.extend_timeout(1.5)
    assert notifier.extend_timeout(0.0000001)  # rounds up, never to zero
    got = receiver.wait(8)
    assert got[0] == b"READY=1"
    assert got[1] == b"STATUS=training: step 3/10 loss 2.10"
    first, second = got[2].split(b"\n")
    assert first == b"RELOADING=1"
    key, _, usec = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(usec) <= after
    assert got[3:] == [
        b"READY=1\nSTATUS=config reloaded",
        b"STOPPING=1",
        b"WATCHDOG=1",
        b"EXTEND_TIMEOUT_USEC=1500000",
        b"EXTEND_TIMEOUT_USEC=1",
    ]
    notifier.close()
    assert not notifier.enabled
    assert not notifier.watchdog()


def test_sender_is_this_process(notify_socket: tuple[str, Receiver]) -> None:
    # With NotifyAccess=main systemd drops messages whose sender pid is not the main pid;
    # sending from a thread must still carry the process id.
    value, receiver = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": value})
    thread = threading.Thread(target=notifier.watchdog)
    thread.start()
    thread.join()
    receiver.wait(1)
    assert [pid for _, _, pid in receiver.messages] == [os.getpid()]


def test_a_real_subprocess_notifies_from_the_environment(short_dir: Path) -> None:
    path = str(short_dir / "notify")
    receiver = Receiver(path)
    try:
        code = (
            "from plaudit.daemon._systemd import Notifier\n"
            "n = Notifier()\n"
            "print(n.watchdog_interval())\n"
            "n.ready(status='up'); n.stopping()\n"
        )
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"}
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == "1.5"
        assert receiver.wait(2) == [b"READY=1\nSTATUS=up", b"STOPPING=1"]
        assert {pid for _, _, pid in receiver.messages} == {proc.pid}
    finally:
        receiver.close()


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    notifier = Notifier(environ={"WATCHDOG_USEC": "1000000"})
    with capture_logs() as logs:
        assert not notifier.enabled
        assert not notifier.ready()
        assert not notifier.status("x")
        assert not notifier.reloading()
        assert not notifier.stopping()
        assert not notifier.watchdog()
        assert not notifier.extend_timeout(5)
        assert notifier.watchdog_interval() is None
        with TimeoutExtender(notifier, every=0.01) as extender:
            time.sleep(0.03)
        assert extender.sent == 0
    assert logs == []


def test_the_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not Notifier().enabled
    monkeypatch.setenv("NOTIFY_SOCKET", "@plaudit-nobody-listens")
    assert Notifier().enabled


def test_a_broken_socket_is_logged_once_and_never_raises(short_dir: Path) -> None:
    path = short_dir / "notify"  # nobody has bound it yet
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(path)})
    with capture_logs() as logs:
        for _ in range(5):
            assert not notifier.watchdog()
        assert not notifier.ready()
    assert [(e["event"], e["log_level"]) for e in logs] == [("notify_send_failed", "warning")]
    assert logs[0]["message"] == "WATCHDOG=1"
    assert str(path) in logs[0]["notify_socket"]

    receiver = Receiver(str(path))  # systemd came back: sends work and the next failure logs
    try:
        with capture_logs() as logs:
            assert notifier.watchdog()
            receiver.close()
            path.unlink()
            assert not notifier.watchdog()
            assert not notifier.watchdog()
        assert [e["event"] for e in logs] == ["notify_send_recovered", "notify_send_failed"]
    finally:
        receiver.close()


@pytest.mark.parametrize("value", ["vsock:2:1234", "relative/notify"])
def test_an_unsupported_address_disables_notifications_with_a_warning(value: str) -> None:
    with capture_logs() as logs:
        notifier = Notifier(environ={"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert not notifier.ready()
    assert [e["event"] for e in logs] == ["notify_socket_unsupported"]
    assert "absolute path" in logs[0]["fix"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    env: dict[str, str], expected: float | None
) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": "@plaudit-unused", **env})
    assert notifier.watchdog_interval() == expected


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_bad_durations_are_refused(bad: float) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": "@plaudit-unused"})
    with pytest.raises(ValueError, match="positive number of seconds"):
        notifier.extend_timeout(bad)
    with pytest.raises(ValueError, match="positive number of seconds"):
        TimeoutExtender(notifier, every=bad)
    with pytest.raises(ValueError, match="positive number of seconds"):
        asyncio.run(watchdog_loop(notifier, interval=bad))


async def test_watchdog_pings_at_the_interval(notify_socket: tuple[str, Receiver]) -> None:
    value, receiver = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": value})
    task = asyncio.create_task(watchdog_loop(notifier, interval=0.05))
    await asyncio.sleep(0.525)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    times = receiver.times(b"WATCHDOG=1")
    # One at once, then every 50 ms: 11 in 525 ms; a loaded machine may drop one or two.
    assert 8 <= len(times) <= 12, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.04 <= sum(gaps) / len(gaps) <= 0.065, gaps
    await asyncio.sleep(0.15)
    assert len(receiver.times(b"WATCHDOG=1")) == len(times)  # cancelled means stopped


async def test_a_blocked_event_loop_stops_the_pings(notify_socket: tuple[str, Receiver]) -> None:
    value, receiver = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": value})
    task = asyncio.create_task(watchdog_loop(notifier, interval=0.05))
    await asyncio.sleep(0.2)
    blocked_at = time.monotonic()
    time.sleep(0.6)  # a blocking call on the loop, the bug the watchdog is there to catch
    released_at = time.monotonic()
    await asyncio.sleep(0.2)
    task.cancel()
    times = receiver.times(b"WATCHDOG=1")
    before = [t for t in times if t < blocked_at + 0.05]  # slack for the receiver thread
    during = [t for t in times if blocked_at + 0.05 <= t < released_at]
    after = [t for t in times if t >= released_at]
    assert len(before) >= 3, times
    assert during == [], (blocked_at, released_at, times)
    # Pings resume on schedule after the stall, without a burst to "catch up".
    assert 2 <= len(after) <= 6, after


async def test_an_unhealthy_daemon_gets_no_pings(notify_socket: tuple[str, Receiver]) -> None:
    value, receiver = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": value})
    state = {"healthy": False}
    with capture_logs() as logs:
        task = asyncio.create_task(
            watchdog_loop(notifier, interval=0.03, healthy=lambda: state["healthy"])
        )
        await asyncio.sleep(0.2)
        assert receiver.times(b"WATCHDOG=1") == []
        state["healthy"] = True
        await asyncio.sleep(0.2)
        task.cancel()
    assert len(receiver.times(b"WATCHDOG=1")) >= 3
    # One warning for the whole unhealthy stretch, not one per skipped ping.
    assert [e["event"] for e in logs] == ["watchdog_unhealthy", "watchdog_healthy_again"]


async def test_a_failing_health_check_counts_as_unhealthy(
    notify_socket: tuple[str, Receiver],
) -> None:
    value, receiver = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": value})

    def broken() -> bool:
        raise RuntimeError("store unreadable")

    with capture_logs() as logs:
        task = asyncio.create_task(watchdog_loop(notifier, interval=0.03, healthy=broken))
        await asyncio.sleep(0.1)
        task.cancel()
    assert receiver.times(b"WATCHDOG=1") == []
    events = [e["event"] for e in logs]
    assert events.count("watchdog_unhealthy") == 1
    assert "watchdog_health_check_failed" in events


def _extensions(receiver: Receiver) -> list[tuple[float, int]]:
    return [
        (t, int(data.split(b"=")[1]))
        for t, data, _ in receiver.messages
        if data.startswith(b"EXTEND_TIMEOUT_USEC=")
    ]


async def test_extender_keeps_extending_while_a_thread_loads(
    notify_socket: tuple[str, Receiver],
) -> None:
    value, receiver = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": value})
    loop = asyncio.get_running_loop()
    async with TimeoutExtender(notifier, every=0.1) as extender:
        assert extender.sent == 1  # before the slow work starts
        await loop.run_in_executor(None, time.sleep, 0.45)
    done_at = time.monotonic()
    receiver.wait(extender.sent)
    sent = _extensions(receiver)
    # Immediately, then every 100 ms while the 450 ms load ran: 5.
    assert 4 <= len(sent) == extender.sent <= 6, sent
    assert {usec for _, usec in sent} == {300_000}  # 3x the period: slack for a late tick
    await asyncio.sleep(0.25)
    assert all(t <= done_at + 0.05 for t, _ in _extensions(receiver))  # stopped on exit


def test_extender_works_without_an_event_loop(notify_socket: tuple[str, Receiver]) -> None:
    value, receiver = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": value})
    with TimeoutExtender(notifier, every=0.1) as extender:
        time.sleep(0.45)  # the slow load, before the daemon's loop exists
    done_at = time.monotonic()
    assert 4 <= extender.sent <= 6
    receiver.wait(extender.sent)
    time.sleep(0.25)
    sent = _extensions(receiver)
    assert len(sent) == extender.sent
    assert all(t <= done_at + 0.05 for t, _ in sent)


async def test_extender_gives_up_at_its_limit(notify_socket: tuple[str, Receiver]) -> None:
    # A load that hangs must still end in systemd's timeout.
    value, receiver = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": value})
    with capture_logs() as logs:
        async with TimeoutExtender(notifier, every=0.05, limit=0.12) as extender:
            await asyncio.sleep(0.4)
    receiver.wait(extender.sent)
    sent = _extensions(receiver)
    assert 2 <= len(sent) <= 3, sent
    assert 115_000 <= sent[0][1] <= 120_000  # never asks past the limit
    assert all(usec <= 120_000 for _, usec in sent)
    assert all(t - sent[0][0] < 0.2 for t, _ in sent)  # nothing after the limit
    assert [e["event"] for e in logs] == ["extend_timeout_limit_reached"]
