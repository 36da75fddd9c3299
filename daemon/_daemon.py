"""Process life: ``startup() -> main_loop() -> shutdown()``, uvicorn's server shape.

Signal handlers only put the signal on a queue; the main loop handles them:
SIGTERM/SIGINT graceful stop (a second one exits at once), SIGHUP reload, SIGUSR1 start
(resume) training, SIGUSR2 stop (pause) training. A failed start-up exits non-zero with one
clear line before anything tells systemd it is ready.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from plaudit.daemon._config import (
    ConfigError,
    FaceInstanceConfig,
    Settings,
    load_settings,
    offline_train_config,
    resolve_state_dir,
)
from plaudit.daemon._control import ControlError, DaemonState, TrainingStartRequest
from plaudit.daemon._logging import configure_logging
from plaudit.faces import WallClock

if TYPE_CHECKING:
    from plaudit.controller import Controller, Resumed, TorchWorker
    from plaudit.daemon._http import HttpServer
    from plaudit.daemon._metrics import Metrics
    from plaudit.daemon._service import ControlService
    from plaudit.daemon._systemd import Notifier
    from plaudit.faces import Face, FaceRegistry
    from plaudit.learner import Policy
    from plaudit.state import StateLock, Store

VERSION = "0.1.0"
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class StartupError(Exception):
    """Start-up cannot go on; the message is the one line the operator sees."""


class Daemon:
    def __init__(
        self,
        *,
        config_file: Path | None,
        state_dir: Path | None = None,
        credentials_dir: Path | None = None,
    ) -> None:
        self.config_file = config_file
        self.state_dir_override = state_dir
        self.credentials_dir = credentials_dir
        self.log = structlog.stdlib.get_logger("plaudit.daemon")
        self.state: DaemonState = "starting"
        self.started_at = time.time()
        # The one clock the store, the faces and the controller read (tests drive a simulated one).
        self.clock = WallClock()
        self.signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._status_line = ""
        # Set in startup():
        self.settings: Settings
        self.state_dir: Path
        self.lock: StateLock | None = None
        self.store: Store | None = None
        self.faces: dict[str, Face[Any]] = {}
        self.metrics: Metrics
        self.notifier: Notifier
        self.worker: TorchWorker | None = None
        self.policy: Policy
        self.controller: Controller | None = None
        self.control: ControlService | None = None
        self.http: HttpServer | None = None

    # -- the three phases --------------------------------------------------------------------

    async def run(self) -> int:
        configure_logging()  # until the config names the level and format
        loop = asyncio.get_running_loop()
        for sig in _HANDLED:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.startup()
        except StartupError as exc:
            self.log.error("start-up failed", error=str(exc))
            await self.shutdown()
            print(f"plaudit: {exc}", file=sys.stderr)  # the one line an operator sees
            return 1
        except MemoryError:
            model = self.settings.model.name if hasattr(self, "settings") else "the model"
            message = (
                f"out of memory while starting (loading model {model!r}): give the process "
                "more memory (systemd: MemoryMax=) or configure a smaller model"
            )
            self.log.error("start-up failed", error=message)
            await self.shutdown()
            print(f"plaudit: {message}", file=sys.stderr)
            return 1
        except Exception:
            self.log.exception("start-up failed with an unexpected error")
            await self.shutdown()
            return 1
        await self.main_loop()
        await self.shutdown()
        return 0

    def _on_signal(self, sig: signal.Signals) -> None:
        # Only a flag or a queue entry here; a second stop request escalates at once.
        if sig in (signal.SIGTERM, signal.SIGINT) and self._stopping:
            os.write(2, b"plaudit: second stop signal, exiting now\n")
            os._exit(128 + sig)
        if sig in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        self.signals.put_nowait(sig)

    async def startup(self) -> None:
        self.log.info("starting", version=VERSION, pid=os.getpid())
        try:
            self.settings = load_settings(
                config_file=self.config_file, secrets_dir=self.credentials_dir
            )
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        configure_logging(level=self.settings.log.level, fmt=self.settings.log.format)
        self.log = structlog.stdlib.get_logger("plaudit.daemon")
        try:
            offline_train_config(self.settings)  # every [offline] knob, checked by the learner
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        from plaudit.daemon._systemd import Notifier

        self.notifier = Notifier()
        self.state_dir = resolve_state_dir(self.settings, self.state_dir_override)
        await self._open_state()
        await self._open_faces()
        self._open_metrics()
        await self._load_policy()
        await self._start_controller()
        self._start_control()
        await self._start_http()
        await self._start_background()
        self.state = "running"
        self.notifier.ready()
        self._update_status(force=True)
        self.log.info(
            "ready",
            state_dir=str(self.state_dir),
            faces=list(self.faces),
            policy_version=self.policy.version,
            http=self.http.url if self.http else None,
            startup_s=round(time.time() - self.started_at, 2),
        )

    async def main_loop(self) -> None:
        while True:
            try:
                sig = await asyncio.wait_for(self.signals.get(), timeout=1.0)
            except TimeoutError:
                self._update_status()
                continue
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.log.info("stop requested", signal=sig.name)
                return
            if sig == signal.SIGHUP:
                await self.reload()
            elif sig in (signal.SIGUSR1, signal.SIGUSR2) and self.control is not None:
                try:
                    if sig == signal.SIGUSR1:
                        await self.control.start_training(TrainingStartRequest(mode="online"))
                    else:
                        await self.control.stop_training()
                except ControlError as exc:
                    self.log.warning("signal refused", signal=sig.name, error=str(exc))
                self._update_status()

    async def shutdown(self) -> None:
        """Ordered and time-limited: stop scheduling, let in-flight work finish until the
        deadline, cancel the rest, checkpoint, close faces and store."""
        self.state = "stopping"
        self.log.info("shutting down")
        if hasattr(self, "notifier"):
            self.notifier.stopping()
        timeout = (
            self.settings.controller.shutdown_timeout.total_seconds()
            if hasattr(self, "settings")
            else 10.0
        )
        deadline = time.monotonic() + timeout
        if self.http is not None:
            await self.http.stop(timeout=2.0)
        cancelled = 0
        if self.controller is not None:
            cancelled = await self.controller.stop(deadline=deadline)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if (
            self.controller is not None
            and self.store is not None
            and self.policy.version != self.store.policy_version()
        ):
            try:
                await self.controller.checkpoint(kind="shutdown", run_id=None, metrics={})
            except Exception as exc:
                self.log.error("final checkpoint failed", error=str(exc))
        if self.worker is not None:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.worker.shutdown(wait=True) if self.worker else None
            )
        for name, face in self.faces.items():
            try:
                await face.aclose()
            except Exception as exc:
                self.log.warning("face close failed", face=name, error=str(exc))
        if self.store is not None:
            self.store.close()
        if self.lock is not None:
            self.lock.release()
        self.log.info("stopped", cancelled_jobs=cancelled)

    # -- start-up steps ----------------------------------------------------------------------

    async def _open_state(self) -> None:
        from plaudit.state import StateError, StateLock, Store, clear_stale_temporaries

        self.lock = StateLock(folder=self.state_dir)
        try:
            stale = self.lock.acquire()
        except StateError as exc:
            self.lock = None
            raise StartupError(str(exc)) from None
        except OSError as exc:
            self.lock = None
            raise StartupError(f"cannot use state folder {self.state_dir}: {exc}") from None
        if stale:
            self.log.warning("stale pid file found; the previous daemon did not stop cleanly")
        from plaudit.daemon._runfile import announce

        local = Path("plaudit.toml")  # what load_settings reads when no --config is given
        announce(
            state_dir=self.state_dir,
            config=self.config_file or (local if local.is_file() else None),
        )
        # What writers killed mid-way left (a checkpoint save's temporary folder, say): no one
        # else writes here while we hold the lock, and nothing else would ever remove them.
        for folder in (self.state_dir, self.state_dir / "checkpoints"):
            try:
                left = clear_stale_temporaries(folder)
            except OSError as exc:
                self.log.warning(
                    "cannot clear stale temporary files", folder=str(folder), error=str(exc)
                )
                continue
            if left.removed:
                self.log.warning(
                    "stale temporary files removed", removed=[str(p) for p in left.removed]
                )
            if left.restored:
                self.log.warning(
                    "interrupted replacement undone: the previous version is back",
                    restored=[str(p) for p in left.restored],
                )
        try:
            # quick_check: a damaged database stops the start here, with the file and the
            # fix, rather than failing every job once the daemon is up.
            self.store = Store.open(self.state_dir, now=self.clock.now, check=True)
        except StateError as exc:
            raise StartupError(str(exc)) from None
        interrupted = self.store.interrupt_stale_runs()
        if interrupted:
            self.log.warning("training runs interrupted by the last stop", runs=interrupted)

    async def _open_faces(self) -> None:
        from plaudit.faces import FaceConfigError, FaceLoadError, FaceNotFound, discover

        enabled = {n: f for n, f in self.settings.faces.items() if f.enabled}
        if not enabled:
            raise StartupError("no face is configured: add a [faces.<name>] table with a type")
        registry = discover(only={f.type for f in enabled.values()})
        for name, spec in enabled.items():
            try:
                self.faces[name] = self._create_face(registry, name, spec)
            except FaceLoadError as exc:
                # A broken plugin takes down its own instances, not the daemon.
                self.log.error(
                    "face unavailable: its plugin failed to load", face=name, error=str(exc)
                )
            except (FaceConfigError, FaceNotFound) as exc:
                raise StartupError(str(exc)) from None
        if not self.faces:
            raise StartupError(
                "no usable face: every configured face failed to load (see the errors above)"
            )

    def _create_face(
        self, registry: FaceRegistry, name: str, spec: FaceInstanceConfig
    ) -> Face[Any]:
        """One face instance; its own state lives in <state>/faces/<name>."""
        return registry.create(
            name=name,
            type=spec.type,
            config=spec.face_options(),
            state_dir=self.state_dir / "faces" / name,
            clock=self.clock,
        )

    def _open_metrics(self) -> None:
        from plaudit.daemon._metrics import Metrics

        self.metrics = Metrics(
            faces=list(self.faces),
            version=VERSION,
            model=self.settings.model.name,
            horizons=list(self.settings.controller.horizons),
        )

    async def _load_policy(self) -> None:
        from plaudit.controller import TorchWorker, reference_checkpoint, resume_from_checkpoints
        from plaudit.daemon._systemd import TimeoutExtender
        from plaudit.learner import DamagedModelError, LearnerError, Policy, configure_torch

        assert self.store is not None
        store = self.store
        self.worker = TorchWorker()
        name = self.settings.model.name
        device = "cpu" if self.settings.model.device == "auto" else self.settings.model.device
        cache = Path(os.environ.get("CACHE_DIRECTORY", self.state_dir / "cache"))
        # The KL reference is the model of the last offline fit (kept in its checkpoint), the
        # same one a running daemon anchored to; before any fit, the configured base model.
        reference = reference_checkpoint(store, self.state_dir)
        if reference is not None and not reference.is_dir():
            self.log.warning(
                "the reference checkpoint is missing; anchoring to the base model",
                reference=str(reference),
            )
            reference = None
        self.notifier.status(f"loading model {name}")

        def load() -> tuple[Policy, str | None, Resumed, str | None]:
            import torch

            from plaudit.learner import decode_kernel

            configure_torch()
            dtype = getattr(torch, self.settings.model.dtype)
            try:
                policy = Policy.load(
                    name,
                    cache_dir=cache,
                    device=device,
                    lr=self.settings.online.lr,
                    generation_dtype=dtype,
                    lora=self.settings.online.lora(),
                    with_reference=reference is None,
                )
            except (LearnerError, OSError) as exc:
                raise StartupError(f"cannot load model {name!r}: {exc}") from None
            bad_reference = None
            if reference is not None:
                try:
                    policy.load_reference(reference)
                except DamagedModelError as exc:
                    bad_reference = str(exc)
                    policy.reset_reference()  # the base model: the weights loaded so far
                except (LearnerError, OSError) as exc:
                    raise StartupError(f"cannot load the KL reference: {exc}") from None
            try:
                resumed = resume_from_checkpoints(policy, store)
            except (LearnerError, OSError) as exc:
                raise StartupError(f"cannot restore the latest checkpoint: {exc}") from None
            # Chosen (and the native kernel built) now, not in the first generation.
            try:
                return policy, decode_kernel(torch.device(device), dtype), resumed, bad_reference
            except ValueError as exc:  # PLAUDIT_DECODE_KERNEL names a kernel this host lacks
                raise StartupError(str(exc)) from None

        t0 = time.monotonic()
        # A slow first load (GGUF dequantisation) keeps systemd's start timeout extended.
        async with TimeoutExtender(self.notifier, every=5.0, limit=900.0):
            self.policy, kernel, resumed, bad_reference = await self.worker.run("load", load)
        if bad_reference is not None:
            self.log.error(
                "the KL reference checkpoint is damaged; anchoring to the base model",
                reference=str(reference),
                error=bad_reference,
            )
        self._log_resumed(resumed)
        self.metrics.policy_version.set(self.policy.version)
        self.log.info(
            "model loaded",
            model=name,
            source=self.policy.source,
            policy_version=self.policy.version,
            # False: a checkpoint saved before checksums (the learner warned), or none.
            checksums_checked=bool(resumed.restored and resumed.restored.checksums),
            params=self.policy.model.num_params(),
            decode_kernel=kernel or "matmul",
            load_s=round(time.monotonic() - t0, 2),
        )

    def _log_resumed(self, resumed: Resumed) -> None:
        """Say loudly what start-up had to pass over to find intact weights. The rewards of
        the updates lost with them return to pending when the controller starts."""
        for bad in resumed.set_aside:
            self.log.error(
                "checkpoint damaged; falling back to an older one",
                checkpoint=bad.checkpoint.path,
                policy_version=bad.checkpoint.policy_version,
                error=bad.error,
                moved_to=str(bad.moved_to) if bad.moved_to else None,
            )
        if resumed.missing:  # recorded, newer than what was restored, and gone from disk
            self.log.error(
                "checkpoint folders missing; falling back to an older one",
                missing=len(resumed.missing),
                checkpoints=[c.path for c in resumed.missing[:5]],
            )
        fell_back = bool(resumed.set_aside or resumed.missing)
        if resumed.checkpoint is None:
            if fell_back:
                self.log.error(
                    "no intact checkpoint left: starting from the base model; every reward "
                    "trains again"
                )
            return
        assert resumed.restored is not None
        if resumed.restored.reanchored:
            self.log.warning(
                "KL reference moved to the restored checkpoint",
                checkpoint=resumed.checkpoint.path,
                reason="its weights are not LoRA adapters on the reference loaded (a checkpoint "
                "of full fine-tuning, or of another LoRA rank): they are the base weights and "
                "the reference now, and the drift budget counts from them",
            )
        if not resumed.restored.optimizer:
            (self.log.warning if fell_back else self.log.info)(
                "optimizer reset",
                checkpoint=resumed.checkpoint.path,
                reason="the checkpoint carries no optimizer state; it starts afresh at the next "
                "update",
            )

    async def _start_controller(self) -> None:
        from plaudit.controller import Controller

        assert self.store is not None and self.worker is not None
        control = self.store.control()
        self.metrics.set_training(
            running=control.training.value == "running", mode=control.mode.value
        )
        self.controller = Controller(
            settings=self.settings,
            store=self.store,
            faces=self.faces,
            policy=self.policy,
            worker=self.worker,
            metrics=self.metrics,
            state_dir=self.state_dir,
            clock=self.clock,
        )
        await self.controller.start()

    async def _start_http(self) -> None:
        if not self.settings.http.enabled:
            return
        from plaudit.daemon._auth import ensure_token
        from plaudit.daemon._http import build_app, serve

        token = ensure_token(self.settings.http.token, self.state_dir)
        assert self.control is not None
        app = build_app(control=self.control, metrics=self.metrics, token=token)
        try:
            self.http = await serve(app, host=self.settings.http.host, port=self.settings.http.port)
        except OSError as exc:
            raise StartupError(str(exc.strerror or exc)) from None
        (self.state_dir / "http-url").write_text(self.http.url + "\n")

    async def _start_background(self) -> None:
        from plaudit.daemon._metrics import watch_event_loop_lag
        from plaudit.daemon._systemd import watchdog_loop

        self._tasks.append(asyncio.create_task(watch_event_loop_lag(self.metrics), name="lag"))
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            self._tasks.append(
                asyncio.create_task(
                    watchdog_loop(self.notifier, interval=interval, healthy=lambda: True),
                    name="watchdog",
                )
            )

    def _update_status(self, *, force: bool = False) -> None:
        from plaudit.state import PostStatus

        if self.store is None or self.controller is None:
            return
        control = self.store.control()
        progress = self.controller.progress
        line = (
            f"{self.state}; training {control.training.value} ({control.mode.value}); "
            f"policy v{self.policy.version}; "
            f"{self.store.count_posts(status=PostStatus.PUBLISHED)} posts"
        )
        if progress is not None:
            line += f"; {progress.mode} step {progress.step}"
        if force or line != self._status_line:
            self._status_line = line
            self.notifier.status(line)

    # -- reload ------------------------------------------------------------------------------

    async def reload(self) -> None:
        self.notifier.reloading()
        self.state = "reloading"
        try:
            new = load_settings(config_file=self.config_file, secrets_dir=self.credentials_dir)
            offline_train_config(new)
        except ConfigError as exc:
            self.log.error("reload failed; keeping the running configuration", error=str(exc))
            self.state = "running"
            self.notifier.ready()
            return
        lora = ("lora_rank", "lora_alpha")
        if (
            new.model != self.settings.model
            or set(new.faces) != set(self.settings.faces)
            or any(getattr(new.online, k) != getattr(self.settings.online, k) for k in lora)
        ):
            self.log.warning(
                "model, set of faces or LoRA changed: those changes need a restart; applying "
                "the rest"
            )
        await self._refresh_faces(new)
        self.settings = new
        if self.control is not None:
            self.control.settings = new
        configure_logging(level=new.log.level, fmt=new.log.format)
        assert self.controller is not None
        self.controller.reschedule(new)
        self.state = "running"
        self.notifier.ready()
        self.log.info("configuration reloaded", config=str(self.config_file))

    async def _refresh_faces(self, new: Settings) -> None:
        """Re-create face instances whose settings changed (same names only)."""
        from plaudit.faces import discover

        changed = [
            name
            for name, spec in new.faces.items()
            if name in self.faces and spec != self.settings.faces.get(name)
        ]
        if not changed:
            return
        registry = discover(only={new.faces[n].type for n in changed})
        assert self.controller is not None
        for name in changed:
            spec = new.faces[name]
            try:
                face = self._create_face(registry, name, spec)
            except Exception as exc:
                self.log.error(
                    "face settings invalid; keeping the old ones", face=name, error=str(exc)
                )
                continue
            old = self.faces[name]
            self.faces[name] = face
            self.controller.replace_face(name, face)
            await old.aclose()
            self.log.info("face settings applied", face=name)

    # -- Control: what the HTTP API, the page and the CLI call --------------------------------

    def _start_control(self) -> None:
        """The one ControlService: the HTTP API and SIGUSR1/SIGUSR2 both steer through it."""
        from plaudit.daemon._service import ControlService

        assert self.store is not None and self.controller is not None and self.worker is not None
        self.control = ControlService(
            settings=self.settings,
            store=self.store,
            controller=self.controller,
            policy=self.policy,
            worker=self.worker,
            metrics=self.metrics,
            state=lambda: self.state,
            started_at=self.started_at,
        )


def run_daemon(
    *, config_file: Path | None, state_dir: Path | None, credentials_dir: Path | None
) -> int:
    daemon = Daemon(config_file=config_file, state_dir=state_dir, credentials_dir=credentials_dir)
    return asyncio.run(daemon.run())
