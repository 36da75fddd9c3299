"""Core commands: config check, status (and run, registered by the daemon module)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from plaudit.daemon._config import Settings
    from plaudit.daemon._control import StatusView

# The config's models (pydantic, the controller's tables) are imported by the commands that
# read a config, not at start: `plaudit generate` and `plaudit models` need neither.

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (default: ./plaudit.toml if present, else built-in defaults).",
        dir_okay=False,
    ),
]
StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="State folder (default: $STATE_DIRECTORY, else a per-user data folder).",
        file_okay=False,
    ),
]
SecretsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--credentials-dir",
        help="Folder with one file per secret (default: $CREDENTIALS_DIRECTORY).",
        file_okay=False,
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear line (or block) to stderr and return the exit to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def warn(message: str) -> None:
    """One warning line on stderr: something works but should be fixed (the message says how)."""
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


def out_of_memory_message(args: list[str]) -> str:
    """The one line for a command that ran out of memory: the command, the model it loaded
    and its size, the process's memory limit, and the fixes."""
    import resource

    command = " ".join(a for a in args[:2] if not a.startswith("-")) or "plaudit"
    model = _option(args, "--model") or _option(args, "--from")
    if model is None and command == "generate":
        model = "smollm2"
    what = ""
    if model == "smollm2":
        what = " for model 'smollm2' (SmolLM2-135M: 135M parameters, about 0.5 GB in float32)"
    elif model is not None:
        size = _size_on_disk(Path(model))
        what = f" for model {model!r}" + (f" ({size / 1e6:,.1f} MB on disk)" if size else "")
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    shown = "none" if limit == resource.RLIM_INFINITY else f"{limit / 2**20:,.0f} MiB"
    return (
        f"out of memory in `plaudit {command}`{what}: the process may use less memory than "
        f"the model needs (address-space limit: {shown}). Raise the limit (ulimit -v, "
        "prlimit --as, systemd MemoryMax=), free memory, or use a smaller --model"
    )


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _size_on_disk(path: Path) -> int:
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


def settings_or_exit(config: Path | None, secrets: Path | None = None) -> Settings:
    from plaudit.daemon._config import ConfigError, load_settings

    try:
        return load_settings(config_file=config, secrets_dir=secrets, warn=warn)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def state_folder_or_exit(config: Path | None, state_dir: Path | None) -> Path:
    """The state folder a command works on: --state-dir, else the config's."""
    from plaudit.daemon._config import resolve_state_dir

    return resolve_state_dir(settings_or_exit(config), state_dir)


config_app = typer.Typer(help="Inspect and validate the configuration.", no_args_is_help=True)


@config_app.command("check", short_help="Validate the configuration; print it, secrets redacted.")
def config_check(
    config: ConfigOption = None,
    credentials_dir: SecretsDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Validate the configuration and print the effective values (secrets redacted)."""
    settings = settings_or_exit(config, credentials_dir)
    _check_deep(settings)
    data = settings.redacted()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    import tomli_w

    source = str(config) if config else "defaults (+ ./plaudit.toml if present, + environment)"
    typer.echo(f"# configuration is valid ({source})")
    typer.echo(tomli_w.dumps(_drop_none(data)))  # type: ignore[arg-type]


def _check_deep(settings: Settings) -> None:
    """What the daemon checks at start beyond the config model: every [offline] knob (by the
    learner) and every face instance's own settings (by its plugin's config model)."""
    from pydantic import ValidationError

    from plaudit.daemon._config import ConfigError, offline_train_config
    from plaudit.faces import FaceConfigError, FaceLoadError, FaceNotFound, discover

    problems = []
    try:
        offline_train_config(settings)
    except ConfigError as exc:
        problems.append(str(exc))
    registry = discover(only={f.type for f in settings.faces.values()})
    for name, spec in settings.faces.items():
        try:
            face_type = registry.get(spec.type, instance=name)
            face_type.Config.model_validate(spec.face_options())
        except (FaceConfigError, FaceLoadError, FaceNotFound) as exc:
            problems.append(str(exc))
        except ValidationError as exc:
            from plaudit.faces import config_error

            problems.append(
                str(
                    config_error(
                        instance=name, type_name=spec.type, model=face_type.Config, exc=exc
                    )
                )
            )
    if problems:
        raise fail("\n".join(problems))


def _drop_none(value: object) -> object:
    # TOML has no null: leave unset optional keys out of the printed config.
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


# Exit codes as `systemctl status` gives them: running, not running, no such daemon.
RUNNING, NOT_RUNNING, NO_STATE = 0, 3, 4


def which_daemon(config: Path | None, state_dir: Path | None) -> tuple[Settings, Path]:
    """The settings and state folder of the daemon a command steers: as given, else (no
    --config, --state-dir, ./plaudit.toml or $STATE_DIRECTORY) the one this user started last
    (its run file), else the defaults."""
    import os

    from plaudit.daemon._config import resolve_state_dir
    from plaudit.daemon._runfile import last

    implicit = (
        config is None
        and state_dir is None
        and not Path("plaudit.toml").is_file()
        and not os.environ.get("STATE_DIRECTORY")
    )
    pointer = last() if implicit else None
    if pointer is not None:
        state_dir = pointer.state_dir
        if pointer.config is not None and pointer.config.is_file():
            config = pointer.config
    settings = settings_or_exit(config)
    return settings, resolve_state_dir(settings, state_dir)


def status(
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Show what plaudit is doing: training state, policy version, posts and rewards. Without
    --config or --state-dir (and no ./plaudit.toml), the daemon this user started last.
    Exits 0 when the daemon runs, 3 when it does not, 4 when there is no plaudit state."""
    from plaudit.state import PostStatus, StateLock, Store, state_size

    settings, folder = which_daemon(config, state_dir)
    view = _status_from_api(folder, settings)
    if view is not None:
        if as_json:
            typer.echo(json.dumps({"state_dir": str(folder), **view.model_dump(mode="json")}))
        else:
            _print_view(view, folder)
        raise typer.Exit(RUNNING)
    if not (folder / "plaudit.sqlite3").exists():
        message = f"no plaudit state in {folder}: start the daemon with `plaudit run` first"
        if as_json:
            typer.echo(json.dumps({"state_dir": str(folder), "daemon": "none", "error": message}))
            raise typer.Exit(NO_STATE)
        raise fail(message, NO_STATE)
    pid = StateLock.running_pid(folder)
    with Store.open(folder) as store:
        control = store.control()
        rewards = store.rewards(limit=10)
        record = {
            "daemon": "running" if pid else "not running",
            "pid": pid,
            "state_dir": str(folder),
            "training": control.training.value,
            "mode": control.mode.value,
            "policy_version": store.policy_version(),
            "posts_published": store.count_posts(status=PostStatus.PUBLISHED),
            "rewards": len(store.rewards(limit=1_000_000)),
            "last_rewards": [r.reward for r in rewards],
            "state_bytes": (sizes := state_size(folder)),
        }
    code = RUNNING if pid else NOT_RUNNING
    if as_json:
        typer.echo(json.dumps(record))
        raise typer.Exit(code)
    lines = {
        "daemon": f"running (pid {pid}; its HTTP API does not answer)" if pid else "not running",
        "state folder": f"{folder} ({_size_text(sizes)})",
        "training": record["training"],
        "mode": record["mode"],
        "policy version": record["policy_version"],
        "posts published": record["posts_published"],
        "rewards": record["rewards"],
        "last rewards": ", ".join(f"{r.reward:+.2f}" for r in rewards) or "none yet",
    }
    width = max(len(k) for k in lines)
    for key, value in lines.items():
        typer.echo(f"{key:<{width}}  {value}")
    raise typer.Exit(code)


def _status_from_api(folder: Path, settings: Settings) -> StatusView | None:
    """The running daemon's own status; None when no daemon answers on HTTP."""
    from plaudit.daemon import _client

    try:
        client = _client.for_state_dir(folder, token=settings.http.token)
        if client is None:
            return None
        with client:
            return client.status()
    except _client.ClientError as exc:
        raise fail(str(exc), 1) from None


def _size_text(parts: dict[str, int]) -> str:
    """``1.63 GB: checkpoints 1.62 GB, database 3.1 MB, ...`` (decimal units, as du --si)."""

    def size(n: int) -> str:
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if n >= scale:
                return f"{n / scale:.3g} {unit}"
        return f"{n} B"

    each = ", ".join(f"{part} {size(n)}" for part, n in parts.items())
    return f"{size(sum(parts.values()))}: {each}"


def _print_view(view: StatusView, folder: Path) -> None:
    rewards = ", ".join(f"{r:+.2f}" for r in view.last_rewards) or "none yet"
    folder_text = f"{folder} ({_size_text(view.state_bytes)})" if view.state_bytes else str(folder)
    lines: dict[str, object] = {
        "daemon": f"{view.state} (up {view.uptime_seconds / 60:.0f} min)",
        "state folder": folder_text,
        "model": view.model,
        "training": view.training,
        "mode": view.mode,
        "policy version": view.policy_version,
        "last rewards": rewards,
    }
    if view.progress is not None:
        p = view.progress
        total = f"/{p.total_steps}" if p.total_steps else ""
        lines["progress"] = f"{p.mode} step {p.step}{total}, loss {p.loss}"
    rm = view.reward_model
    if rm.enabled:
        rho = ", ".join(f"{face} {r:+.2f}" for face, r in rm.spearman.items()) or "not yet"
        lines["reward model"] = (
            f"{rm.selection}, fitted on {rm.own_posts} rewarded + {rm.history_posts} history "
            f"posts; rank correlation with rewards: {rho}"
        )
        for name, kinds in rm.post_kinds.items():
            covered = f"{kinds.candidates:.1f}" if kinds.candidates is not None else "not yet"
            lines[f"kinds of post {name}"] = (
                f"newest candidates {covered}, history {kinds.history:.1f} (of 16)"
            )
    for face in view.faces:
        lines[f"face {face.name}"] = f"{face.type}, {face.posts_published} posts" + (
            f", last error: {face.last_error}" if face.last_error else ""
        )
    width = max(len(k) for k in lines)
    for key, value in lines.items():
        typer.echo(f"{key:<{width}}  {value}")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
    short = "What the daemon is doing: training, policy, posts, rewards."
    app.command("status", short_help=short)(status)
