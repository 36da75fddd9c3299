"""`plaudit state backup DEST` and `plaudit state restore SRC`: the whole state folder, copied
so that it can be put back elsewhere (the database by SQLite's online backup API, safe while the
daemon runs; checkpoint paths are relative to the folder)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from plaudit.daemon._cli_core import ConfigOption, StateDirOption, fail, state_folder_or_exit

state_app = typer.Typer(
    help="Back up and restore the state folder (database, checkpoints, faces' state).",
    no_args_is_help=True,
)


@state_app.command("backup", short_help="Copy the state folder into DEST, also while it runs.")
def backup(
    dest: Annotated[
        Path, typer.Argument(metavar="DEST", help="A new folder to write the backup into.")
    ],
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Copy the state folder into DEST, also while the daemon runs: the database through
    SQLite's backup API (checked with quick_check first), the checkpoints (checked against their
    checksums), the faces' own state and the HTTP token. Not copied: the model cache."""
    from plaudit.learner import DamagedModelError, verify_model_folder
    from plaudit.state import StateError, backup_state

    os.umask(os.umask(0o077) | 0o077)  # a backup holds the token: its owner's alone
    folder = state_folder_or_exit(config, state_dir)
    try:
        report = backup_state(folder, dest)
    except StateError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(f"backed up {folder} to {dest}: {', '.join(report.copied)}")
    for name in report.vanished:
        typer.echo(f"left out {name}: the daemon removed it during the copy (an old checkpoint)")
    checked: list[str] = []
    unchecked: list[str] = []
    damaged: list[str] = []
    checkpoints = dest / "checkpoints"
    for ckpt in sorted(checkpoints.iterdir()) if checkpoints.is_dir() else []:
        if not ckpt.is_dir() or ckpt.name.startswith("damaged-"):
            continue
        try:
            (checked if verify_model_folder(ckpt) else unchecked).append(ckpt.name)
        except DamagedModelError as exc:
            damaged.append(str(exc))
    if checked:
        typer.echo(f"checkpoints matching their checksums: {', '.join(checked)}")
    if unchecked:
        typer.echo(f"checkpoints saved before checksums (not checked): {', '.join(unchecked)}")
    if damaged:
        raise fail("damaged checkpoints in the backup:\n" + "\n".join(damaged), 1)


@state_app.command("restore")
def restore(
    src: Annotated[
        Path, typer.Argument(metavar="SRC", help="A folder `plaudit state backup` wrote.")
    ],
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a state folder that is not empty (its contents are moved aside into "
            "<state>/.before-restore-<time>/, never deleted).",
        ),
    ] = False,
) -> None:
    """Restore a backup into the state folder. Refused while a daemon runs on it: stop the
    daemon (`systemctl stop plaudit`), restore, start it again."""
    from plaudit.state import StateError, restore_state

    os.umask(os.umask(0o077) | 0o077)
    folder = state_folder_or_exit(config, state_dir)
    try:
        report = restore_state(src, folder, force=force)
    except StateError as exc:
        raise fail(str(exc), 1) from None
    owner = _give_to_folder_owner(folder)
    typer.echo(f"restored {src} into {folder}: {', '.join(report.copied)}")
    if owner is not None:
        typer.echo(f"files given to the state folder's owner (uid {owner})")
    if report.previous is not None:
        typer.echo(
            f"the previous contents are in {report.previous}: remove that folder once the "
            f"daemon runs well on the restored state"
        )


def _give_to_folder_owner(folder: Path) -> int | None:
    """Run as root (sudo) on a folder a service user owns (systemd's StateDirectory), give
    everything restored to that user, whom the daemon runs as; its uid, or None when there was
    nothing to change."""
    st = folder.stat()
    if os.geteuid() != 0 or st.st_uid == 0:
        return None
    for where, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            os.chown(Path(where, name), st.st_uid, st.st_gid, follow_symlinks=False)
    return st.st_uid


def register(app: typer.Typer) -> None:
    app.add_typer(state_app, name="state", short_help="Back up and restore the state folder.")
