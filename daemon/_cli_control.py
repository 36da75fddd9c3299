"""`plaudit run` and the commands that steer a running daemon (`train start|stop`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from plaudit.daemon._cli_core import (
    ConfigOption,
    SecretsDirOption,
    StateDirOption,
    fail,
    settings_or_exit,
)

if TYPE_CHECKING:
    from plaudit.daemon._config import Settings


def run(
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
    credentials_dir: SecretsDirOption = None,
) -> None:
    """Run the daemon: post, collect reactions, learn (stop with Ctrl-C or SIGTERM)."""
    from plaudit.daemon._daemon import run_daemon

    # What systemd's unit sets (UMask=0077), also when started by hand: the state folder,
    # the database, the journals and the checkpoints are the daemon user's alone.
    os.umask(os.umask(0o077) | 0o077)

    code = run_daemon(config_file=config, state_dir=state_dir, credentials_dir=credentials_dir)
    raise typer.Exit(code)


def _daemon_pid(config: Path | None, state_dir: Path | None) -> tuple[int, Path, Settings]:
    from plaudit.daemon._config import resolve_state_dir
    from plaudit.state import StateLock

    settings = settings_or_exit(config)
    folder = resolve_state_dir(settings, state_dir)
    pid = StateLock.running_pid(folder)
    if pid is None:
        raise fail(
            f"no plaudit daemon is running on state folder {folder}: start it with `plaudit run` "
            f"(or give the daemon's --state-dir / --config)",
            1,
        )
    return pid, folder, settings


def _steer(
    action: Literal["start", "stop"],
    mode: str,
    config: Path | None,
    state_dir: Path | None,
) -> None:
    pid, folder, settings = _daemon_pid(config, state_dir)
    from plaudit.daemon import _client

    try:
        client = _client.for_state_dir(folder, token=settings.http.token)
        if client is not None:
            with client:
                status = (
                    client.start_training(mode) if action == "start" else client.stop_training()
                )
    except _client.ClientError as exc:
        raise fail(str(exc), 1) from None
    if client is not None:
        typer.echo(f"training {status.training} ({status.mode}), policy v{status.policy_version}")
        return
    if action == "start" and mode != "online":
        raise fail("offline runs are started through the HTTP API; enable [http] in the config", 1)
    os.kill(pid, signal.SIGUSR1 if action == "start" else signal.SIGUSR2)
    typer.echo(f"sent {'SIGUSR1' if action == 'start' else 'SIGUSR2'} to plaudit (pid {pid})")


train_app = typer.Typer(help="Train models and steer training of a running daemon.")

ModeOption = Annotated[
    str,
    typer.Option("--mode", help="online (learn from reactions) or offline (fit on history)."),
]


@train_app.command("start")
def train_start(
    mode: ModeOption = "online",
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Start (resume) training in a running daemon."""
    if mode not in ("online", "offline"):
        raise fail(f"--mode must be online or offline, not {mode!r}")
    _steer("start", mode, config, state_dir)


@train_app.command("stop", short_help="Stop (pause) training in a running daemon.")
def train_stop(config: ConfigOption = None, state_dir: StateDirOption = None) -> None:
    """Stop (pause) training in a running daemon; posting and collecting go on."""
    _steer("stop", "online", config, state_dir)


def register(app: typer.Typer) -> None:
    app.command("run", short_help="Run the daemon: post, collect reactions, learn.")(run)
