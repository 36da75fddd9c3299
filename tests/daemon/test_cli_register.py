"""Registering the command groups twice (every test module that drives the CLI in-process
does) leaves one of each: Typer appends what it is given, and a doubled app builds every
command again at each invocation (the config property tests ran 3-6x slower in the full run)."""

from __future__ import annotations

from plaudit.daemon import _cli


def names() -> tuple[list[str], list[str | None]]:
    commands = [c.name or getattr(c.callback, "__name__", "") for c in _cli.app.registered_commands]
    return commands, [g.name for g in _cli.app.registered_groups]


def test_registering_twice_lists_each_command_once() -> None:
    _cli._register()
    commands, groups = names()
    _cli._register()
    assert names() == (commands, groups)
    assert len(set(commands)) == len(commands), commands
    assert len(set(groups)) == len(groups), groups
    assert "approvals" in groups and "train" in groups
