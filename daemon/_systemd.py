"""systemd's notify protocol (sd_notify(3)), written with the standard library only.

The service manager passes ``$NOTIFY_SOCKET``: a unix datagram socket, either a file path or,
with a leading ``@``, a name in the abstract namespace. Each message is one datagram of
newline-separated ``KEY=VALUE`` lines. Outside systemd the variable is unset and every call is
a no-op, so the daemon calls the same methods in a terminal and under systemd.

What plaudit sends, and when (the daemon decides the when):

- ``READY=1`` once the model and faces are up; ``STATUS=...`` a one-line summary at any time;
- ``WATCHDOG=1`` from :func:`watchdog_loop`, a task on the event loop, so a blocked loop stops
  the pings and systemd restarts the service (``WatchdogSec=`` in the unit);
- ``RELOADING=1`` with ``MONOTONIC_USEC=`` on SIGHUP, then ``READY=1`` when the reload is done;
- ``STOPPING=1`` when shutdown begins;
- ``EXTEND_TIMEOUT_USEC=...`` while slow start-up or shutdown work runs
  (:class:`TimeoutExtender`), so ``TimeoutStartSec=`` can stay short for the normal case.

A broken socket never takes the daemon down: a failed send is logged once (again only after
a send has worked in between) and reported by the ``False`` return value.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from plaudit.daemon._logging import get_logger

__all__ = ["Notifier", "TimeoutExtender", "watchdog_loop"]

_log = get_logger("plaudit.systemd")

# A send blocks only while the manager's receive queue is full; a stuck manager must not stall
# the event loop for long, so give up after this (the message is dropped and logged).
_SEND_TIMEOUT = 1.0


def _monotonic_usec() -> int:
    # CLOCK_MONOTONIC, the clock systemd compares MONOTONIC_USEC against (not time.monotonic's
    # unspecified clock, though on Linux they agree).
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE field inside the datagram.
    return " ".join(text.split())


class Notifier:
    """Messages to the service manager on ``$NOTIFY_SOCKET``; a no-op when it is unset.

    Thread-safe: the event loop and a :class:`TimeoutExtender` thread may send at once.
    """

    def __init__(self, *, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._environ = dict(env)
        raw = env.get("NOTIFY_SOCKET") or None
        self._address: str | None = None
        if raw is not None:
            if raw.startswith("@"):
                self._address = "\0" + raw[1:]  # abstract namespace
            elif raw.startswith("/"):
                self._address = raw
            else:
                # vsock: addresses (systemd 254+, VMs) and relative paths are not supported.
                _log.warning(
                    "notify_socket_unsupported",
                    notify_socket=raw,
                    fix="systemd passes an absolute path or an @abstract name; "
                    "unset NOTIFY_SOCKET to run without notifications",
                )
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False
        self._closed = False

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (running under systemd with Type=notify)."""
        return self._address is not None and not self._closed

    # -- messages ------------------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: READY=1, with an optional STATUS= line."""
        return self._send("READY=1", *self._status_field(status))

    def status(self, text: str) -> bool:
        """A one-line summary for ``systemctl status`` (newlines become spaces)."""
        return self._send(*self._status_field(text))

    def reloading(self, status: str | None = None) -> bool:
        """A reload began: RELOADING=1 plus MONOTONIC_USEC=, which systemd 253+ uses to match
        the message to the reload request; send :meth:`ready` when the reload is done."""
        return self._send(
            "RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}", *self._status_field(status)
        )

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began: STOPPING=1."""
        return self._send("STOPPING=1", *self._status_field(status))

    def watchdog(self) -> bool:
        """One keep-alive ping: WATCHDOG=1."""
        return self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the current start/stop/runtime timeout fires.

        systemd reads EXTEND_TIMEOUT_USEC as "the next message comes within this time", so
        send it again before it runs out (see :class:`TimeoutExtender`).
        """
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"extend_timeout needs a positive number of seconds, not {seconds!r}")
        return self._send(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None when systemd
        expects none: no socket, no WatchdogSec=, or the watchdog belongs to another process
        (``$WATCHDOG_PID`` names a different pid, as in a child that inherited the variables)."""
        if not self.enabled:
            return None
        usec_text = self._environ.get("WATCHDOG_USEC")
        if not usec_text:
            return None
        pid_text = self._environ.get("WATCHDOG_PID")
        if pid_text:
            try:
                pid = int(pid_text)
            except ValueError:
                _log.warning("watchdog_pid_invalid", watchdog_pid=pid_text)
                return None
            if pid != os.getpid():
                return None
        try:
            usec = int(usec_text)
        except ValueError:
            usec = 0
        if usec <= 0:
            _log.warning(
                "watchdog_usec_invalid",
                watchdog_usec=usec_text,
                fix="WATCHDOG_USEC must be a positive number of microseconds (WatchdogSec=)",
            )
            return None
        return usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket; later calls are no-ops."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    # -- plumbing ------------------------------------------------------------------------------

    @staticmethod
    def _status_field(text: str | None) -> tuple[str, ...]:
        return () if text is None else (f"STATUS={_one_line(text)}",)

    def _send(self, *fields: str) -> bool:
        if self._address is None or not fields:
            return False
        data = "\n".join(fields).encode("utf-8")
        with self._lock:
            if self._closed:
                return False
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    self._sock.settimeout(_SEND_TIMEOUT)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                if not self._failing:
                    self._failing = True
                    _log.warning(
                        "notify_send_failed",
                        notify_socket=self._environ.get("NOTIFY_SOCKET"),
                        message=fields[0],
                        error=str(exc) or type(exc).__name__,
                        note="further failures are not logged until a send works again",
                    )
                return False
            if self._failing:
                self._failing = False
                _log.info("notify_send_recovered", message=fields[0])
            return True


async def watchdog_loop(
    notifier: Notifier,
    *,
    interval: float,
    healthy: Callable[[], bool] = lambda: True,
) -> None:
    """Ping the watchdog every ``interval`` seconds while ``healthy()`` says so; runs until
    cancelled. Run it as a task on the daemon's event loop: if the loop blocks, the pings stop
    and systemd acts (restart, WatchdogSignal=). ``healthy()`` must be quick and must not
    block; when it returns False (or raises) the ping is skipped, so a wedged daemon whose loop
    still turns is also caught. Use ``notifier.watchdog_interval()`` for ``interval``."""
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError(
            f"watchdog interval must be a positive number of seconds, not {interval!r}"
        )
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    unhealthy = False
    while True:
        try:
            ok = bool(healthy())
        except Exception as exc:
            _log.exception("watchdog_health_check_failed", error=repr(exc))
            ok = False
        if ok:
            notifier.watchdog()
            if unhealthy:
                _log.info("watchdog_healthy_again")
            unhealthy = False
        elif not unhealthy:
            unhealthy = True
            _log.warning("watchdog_unhealthy", note="pings stop until the health check passes")
        # A fixed schedule, not sleep(interval) after the work: pings stay evenly spaced. After
        # a stall (the loop was blocked), start the schedule again from now instead of bursting.
        next_at += interval
        now = loop.time()
        if next_at < now:
            next_at = now + interval
        await asyncio.sleep(next_at - now)


class TimeoutExtender:
    """Keep sending EXTEND_TIMEOUT_USEC while slow work runs (a model load, a checkpoint at
    shutdown), so systemd's start or stop timeout does not fire in the middle of it.

    Works as ``async with`` (a task on the event loop; the work itself runs in a thread, e.g.
    ``await loop.run_in_executor(worker, load_model)``) and as plain ``with`` (a background
    thread, for work done before the event loop starts). Every ``every`` seconds it asks for
    ``every * 3`` more seconds, leaving slack for a late tick. ``limit`` bounds the total time
    it keeps extending, so a load that hangs forever still ends in systemd's timeout::

        async with TimeoutExtender(notifier, every=5, limit=600):
            model = await loop.run_in_executor(worker, load_model)
    """

    def __init__(
        self, notifier: Notifier, *, every: float = 5.0, limit: float | None = None
    ) -> None:
        if not (every > 0 and math.isfinite(every)):
            raise ValueError(f"every must be a positive number of seconds, not {every!r}")
        if limit is not None and not limit > 0:
            raise ValueError(f"limit must be a positive number of seconds or None, not {limit!r}")
        self._notifier = notifier
        self._every = every
        self._limit = limit
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.sent = 0  # messages sent, for logs and tests

    def _tick(self, started: float) -> bool:
        """Send one extension; False once the limit is reached."""
        elapsed = time.monotonic() - started
        if self._limit is not None and elapsed >= self._limit:
            _log.warning(
                "extend_timeout_limit_reached",
                limit_s=self._limit,
                note="no more extensions; systemd's timeout applies from here",
            )
            return False
        # Never ask beyond the limit: the last extension ends where the limit does.
        extend = self._every * 3
        if self._limit is not None:
            extend = min(extend, self._limit - elapsed)
        if self._notifier.extend_timeout(extend):
            self.sent += 1
        return True

    # -- async ---------------------------------------------------------------------------------

    async def _run_async(self, started: float) -> None:
        while True:
            await asyncio.sleep(self._every)
            if not self._tick(started):
                return

    async def __aenter__(self) -> TimeoutExtender:
        if not self._notifier.enabled:
            return self
        started = time.monotonic()
        # The first extension goes out before the slow work starts.
        if self._tick(started):
            self._task = asyncio.get_running_loop().create_task(
                self._run_async(started), name="plaudit-extend-timeout"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- sync ----------------------------------------------------------------------------------

    def _run_thread(self, started: float) -> None:
        while not self._stop.wait(self._every) and self._tick(started):
            pass

    def __enter__(self) -> TimeoutExtender:
        if not self._notifier.enabled:
            return self
        started = time.monotonic()
        self._stop.clear()
        if self._tick(started):
            self._thread = threading.Thread(
                target=self._run_thread, args=(started,), name="plaudit-extend-timeout", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
