"""`plaudit faces list` and `plaudit faces check INSTANCE`."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from plaudit.daemon._cli_core import (
    ConfigOption,
    SecretsDirOption,
    fail,
    settings_or_exit,
)

if TYPE_CHECKING:
    from plaudit.daemon._config import Settings

# Not the shared --state-dir: a check without a chosen folder uses a temporary one.
CheckStateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="State folder whose faces/NAME the face gets (default: state_dir in the config, "
        "$STATE_DIRECTORY, else a temporary folder removed after the check).",
        file_okay=False,
    ),
]

faces_app = typer.Typer(help="Face plugins: list them, check an instance.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(faces_app, name="faces")


@faces_app.command("list", short_help="The installed face types and the plugins that failed.")
def list_faces(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """The installed face types with the package each comes from, and the plugins that failed
    to load (with their error)."""
    from plaudit.faces import discover

    registry = discover()
    installed, failed = registry.installed(), registry.failed()
    if as_json:
        data = {
            "installed": [
                {"type": f.type_name, "package": f.package, "entry_point": f.entry_point}
                for f in installed
            ],
            "failed": [
                {"type": f.type_name, "package": f.package, "error": f.error} for f in failed
            ],
        }
        typer.echo(json.dumps(data, indent=2))
        return
    width = max([len(f.type_name) for f in installed] + [4])
    pwidth = max([len(f.package) for f in installed] + [7])
    typer.echo(f"{'TYPE':<{width}}  {'PACKAGE':<{pwidth}}  ENTRY POINT")
    for face in installed:
        typer.echo(f"{face.type_name:<{width}}  {face.package:<{pwidth}}  {face.entry_point}")
    if failed:
        typer.echo("\nfailed to load (instances of these types cannot start):")
        for bad in failed:
            typer.echo(f"  {bad.type_name} from {bad.package} ({bad.entry_point}): {bad.error}")


def _parse_value(raw: str) -> Any:
    """A --set value as TOML (numbers, booleans, arrays, quoted strings), else a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs from the command line into face options."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set {pair!r} is not key=value; for example --set audience_size=500")
        options[key.strip()] = _parse_value(value.strip())
    return options


def _state_folder(settings: Settings, override: Path | None) -> Path | None:
    """The state folder the user chose (--state-dir, the config's `state_dir`, systemd's
    $STATE_DIRECTORY), or None when none was chosen: then the check gets a temporary folder
    instead of the per-user default, so that checking a face never leaves files behind."""
    from plaudit.daemon._config import resolve_state_dir

    if override is None and settings.state_dir is None and not os.environ.get("STATE_DIRECTORY"):
        return None
    return resolve_state_dir(settings, override)


@faces_app.command("check", short_help="Create a face; check its credentials and connectivity.")
def check_face(
    instance: Annotated[
        str,
        typer.Argument(
            metavar="NAME",
            # No square brackets: rich would read "[faces.NAME]" as markup and print "()".
            help="Face instance name: NAME of its faces.NAME table in the config.",
            show_default=False,
        ),
    ],
    config: ConfigOption = None,
    credentials_dir: SecretsDirOption = None,
    state_dir: CheckStateDirOption = None,
    face_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            metavar="TYPE",
            help="Check an instance not in the config: its face type. Secrets for it still "
            "come from the credentials folder (faces.NAME.KEY files).",
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="An option for --type (repeatable); put secrets in the credentials folder.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Create the face from its config, check credentials and connectivity, and print what it
    found: account, audience size, limits. Without a state folder (--state-dir, state_dir in
    the config, $STATE_DIRECTORY) the face gets a temporary one, removed afterwards."""
    from plaudit.daemon._config import ConfigError, load_settings
    from plaudit.faces import (
        FaceConfigError,
        FaceError,
        FaceInfo,
        FaceLoadError,
        FaceNotFound,
        discover,
    )

    if face_type is not None:
        # --type and --set are laid over the instance's table from the config and the
        # credentials folder (a secret file faces.NAME.access_token has no `type` of its own),
        # in the daemon's order: config file, credentials, then the command line.
        table = {**parse_sets(sets or []), "type": face_type}
        try:
            settings = load_settings(
                config_file=config,
                secrets_dir=credentials_dir,
                overrides={"faces": {instance: table}},
            )
        except ConfigError as exc:
            raise fail(str(exc)) from None
    else:
        if sets:
            raise fail("--set needs --type; to change a configured instance, edit its table")
        settings = settings_or_exit(config, credentials_dir)
    spec = settings.faces.get(instance)
    if spec is None:
        known = ", ".join(sorted(settings.faces)) or "none"
        raise fail(
            f"no face instance {instance!r} in the configuration (configured: {known}); "
            "add a [faces.<name>] table or use --type"
        )
    type_name, options = spec.type, spec.face_options()
    chosen = _state_folder(settings, state_dir)
    registry = discover(only={type_name})

    def check(folder: Path) -> FaceInfo:
        try:
            face = registry.create(
                name=instance, type=type_name, config=options, state_dir=folder / "faces" / instance
            )
        except (FaceConfigError, FaceNotFound, FaceLoadError) as exc:
            raise fail(str(exc)) from None

        async def run() -> FaceInfo:
            try:
                return await face.check()
            finally:
                await face.aclose()

        return asyncio.run(run())

    try:
        if chosen is not None:
            info = check(chosen)
        else:
            with tempfile.TemporaryDirectory(prefix="plaudit-faces-check-") as scratch:
                info = check(Path(scratch))
    except FaceError as exc:
        raise fail(f"check failed ({type(exc).__name__}): {exc}", code=1) from None
    if as_json:
        typer.echo(info.model_dump_json(indent=2))
        return
    limits = info.limits
    rows: dict[str, Any] = {
        "account": info.account,
        "audience": info.audience if info.audience is not None else "unknown",
    }
    rate = (
        f", API {limits.request_rate.requests} per {limits.request_rate.per}"
        if limits.request_rate
        else ""
    )
    per_day = f", at most {limits.max_posts_per_day} a day" if limits.max_posts_per_day else ""
    rows["limits"] = (
        f"{limits.max_length} {limits.length_unit} a post, at least {limits.min_interval} "
        f"between posts{per_day}{rate}"
    )
    rows.update(info.details)
    if chosen is None:
        rows["state"] = "a temporary folder, now removed (give --state-dir to keep the state)"
    width = max(len(key) for key in rows) + 2
    typer.echo(f"face {info.face!r} ({info.type_name}): OK")
    for key, value in rows.items():
        typer.echo(f"  {key + ':':<{width}}{value}")
