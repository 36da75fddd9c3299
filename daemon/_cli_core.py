"""Core commands: run, config check, status."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def status() -> None:
        """Show what a running daemon is doing."""
        typer.echo("not implemented yet")
