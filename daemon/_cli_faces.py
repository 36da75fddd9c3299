"""`plaudit faces list` and `plaudit faces check INSTANCE`."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from plaudit.daemon._cli_core import (
    ConfigOption,
    SecretsDirOption,
    StateDirOption,
    fail,
    settings_or_exit,
)

faces_app = typer.Typer(help="Face plugins: list them, check an instance.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(faces_app, name="faces")


@faces_app.command("list")
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


@faces_app.command("check")
def check_face(
    instance: Annotated[str, typer.Argument(help="Face instance name ([faces.<name>]).")],
    config: ConfigOption = None,
    credentials_dir: SecretsDirOption = None,
    state_dir: StateDirOption = None,
    face_type: Annotated[
        str | None,
        typer.Option("--type", help="Check an instance not in the config: its face type."),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value option for --type (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Create the face from its config, check credentials and connectivity, and print what it
    found: account, audience size, limits."""
    from plaudit.daemon._config import resolve_state_dir
    from plaudit.faces import FaceConfigError, FaceError, FaceLoadError, FaceNotFound, discover

    settings = settings_or_exit(config, credentials_dir)
    if face_type is not None:
        type_name, options = face_type, parse_sets(sets or [])
    else:
        if sets:
            raise fail("--set needs --type; to change a configured instance, edit its table")
        spec = settings.faces.get(instance)
        if spec is None:
            known = ", ".join(sorted(settings.faces)) or "none"
            raise fail(
                f"no face instance {instance!r} in the configuration (configured: {known}); "
                "add a [faces.<name>] table or use --type"
            )
        type_name, options = spec.type, spec.face_options()
    folder: Path = resolve_state_dir(settings, state_dir) / "faces" / instance
    registry = discover(only={type_name})
    try:
        face = registry.create(name=instance, type=type_name, config=options, state_dir=folder)
    except (FaceConfigError, FaceNotFound, FaceLoadError) as exc:
        raise fail(str(exc)) from None

    async def run() -> Any:
        try:
            return await face.check()
        finally:
            await face.aclose()

    try:
        info = asyncio.run(run())
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
    width = max(len(key) for key in rows) + 2
    typer.echo(f"face {info.face!r} ({info.type_name}): OK")
    for key, value in rows.items():
        typer.echo(f"  {key + ':':<{width}}{value}")
