"""The `plaudit` command line. Each command group lives in its own `_cli_*.py` module and is
registered here; a command that is not built yet is not listed."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="plaudit",
    help="Teach a language model to write posts an audience likes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here so `plaudit --help` stays one import deep per group.
    from plaudit.daemon import _cli_control, _cli_core

    _cli_core.register(app)
    _cli_control.register(app)
    app.add_typer(_cli_control.train_app, name="train")
    from plaudit.daemon import _cli_export

    _cli_export.register(app)
    from plaudit.daemon import _cli_train

    _cli_train.register(app)
    from plaudit.daemon import _cli_faces

    _cli_faces.register(app)
    from plaudit.daemon import _cli_learner

    _cli_learner.register(app)


def main() -> None:
    _register()
    app()
