"""Registering the command groups twice (every test module that drives the CLI in-process
does) leaves one of each: Typer appends what it is given, and a doubled app builds every
command again at each invocation (the config property tests ran 3-6x slower in the full run)."""

from __future__ import annotations

from plaudit.daemon import _cli


def test_registering_twice_lists_each_command_once() -> None:
    _cli._register()
    commands = [c.name or c.callback.__name__ for c in _cli.app.registered_commands]  # type: ignore[union-attr]
    groups = [g.name for g in _cli.app.registered_groups]
    _cli._register()
    assert [c.name or c.callback.__name__ for c in _cli.app.registered_commands] == commands  # type: ignore[union-attr]
    assert [g.name for g in _cli.app.registered_groups] == groups
    assert len(set(groups)) == len(groups), groups
    assert "approvals" in groups and "train" in groups
