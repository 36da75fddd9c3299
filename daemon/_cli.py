"""The `plaudit` command line. Each command group lives in its own `_cli_*.py` module and is
registered here; a command that is not built yet is not listed."""

from __future__ import annotations

import functools
import gc
import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="plaudit",
    help="Teach a language model to write posts an audience likes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain Click help, as most command-line tools print it: flags without a `<bool>` type,
    # docstrings re-wrapped into paragraphs (Rich mode kept their line breaks mid-sentence) and
    # long words wrapped rather than cut off with an ellipsis. Sub-commands inherit both.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"plaudit {version('plaudit')}")
    except PackageNotFoundError:  # run from a source tree that was never installed
        typer.echo("plaudit (version unknown: the package is not installed; pip install -e .)")
    raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print plaudit's version and exit.",
        ),
    ] = False,
) -> None:
    pass


@functools.cache
def _register() -> None:
    """Add every command group to `app`, once: Typer appends what it is given, so a second call
    would list each command twice and make every later invocation build them all again."""
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
    from plaudit.daemon import _cli_state

    _cli_state.register(app)
    from plaudit.daemon import _cli_approvals

    _cli_approvals.register(app)


def main() -> None:
    _register()
    try:
        app()
        return
    except MemoryError:
        pass  # reported below, once the handler's traceback (what filled memory) is freed
    from plaudit.daemon._cli_core import fail, out_of_memory_message

    gc.collect()
    fail(out_of_memory_message(sys.argv[1:]))  # prints the one line
    raise SystemExit(1)
