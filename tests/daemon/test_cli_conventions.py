"""The command line follows the conventions people know (issue 17, item 8): `--version`, `-h`
on every command, `plaudit generate PROMPT` or stdin with a note while the model loads, and help
text that reads whole: no `<bool>` after flags, sentences not broken mid-line, nothing cut off."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import PLAUDIT
from typer.testing import CliRunner

from plaudit.daemon import _cli, _cli_learner

COMMANDS = [
    [],
    ["run"],
    ["status"],
    ["generate"],
    ["models"],
    ["export"],
    ["eval"],
    ["grow"],
    ["config"],
    ["config", "check"],
    ["train"],
    ["train", "start"],
    ["train", "stop"],
    ["train", "offline"],
    ["faces"],
    ["faces", "list"],
    ["state"],
    ["state", "backup"],
    ["state", "restore"],
]


@pytest.fixture(scope="module")
def cli() -> Any:
    _cli._register()
    return _cli.app


def invoke(app: Any, *args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=input, terminal_width=80)


def test_version_comes_from_the_package_metadata() -> None:
    done = subprocess.run([*PLAUDIT, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"plaudit {version('plaudit')}\n"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "plaudit")
def test_h_is_help_on_every_command(cli: Any, command: list[str]) -> None:
    short, long = invoke(cli, *command, "-h"), invoke(cli, *command, "--help")
    assert short.exit_code == 0, short.output
    assert short.output == long.output
    assert short.output.startswith("Usage: ")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "plaudit")
def test_help_shows_no_type_after_flags_and_cuts_nothing(cli: Any, command: list[str]) -> None:
    out = invoke(cli, *command, "-h").output
    assert "<bool>" not in out
    assert "…" not in out
    if "Commands:" in out:
        # One line per command: a summary that fits, not a first sentence cut with "..." or
        # a docstring's own line breaks.
        listing = out.split("Commands:\n", 1)[1].splitlines()
        for line in listing:
            assert re.match(r"  [a-z]+ +\S", line), f"a continued or empty line: {line!r}"
            if command != ["faces"]:  # daemon/_cli_faces.py: another item's
                assert not line.endswith("..."), line


def test_help_paragraphs_are_rewrapped_not_broken_mid_sentence(cli: Any) -> None:
    out = invoke(cli, "status", "-h").output
    # Rich mode kept the docstring's line breaks: "... posts and rewards. Without" / "--config".
    first = out.split("\n\n")[1]
    assert all(len(line) > 60 for line in first.splitlines()[:-1]), first


def test_format_help_is_whole(cli: Any) -> None:
    out = " ".join(invoke(cli, "train", "offline", "-h").output.split())
    assert "--format FORMAT How the --data files are laid out: text" in out
    assert "qa (Q: / A: turns), dialogue (User: / Assistant: turns), jsonl" in out
    assert "or auto: detected per file (the default)." in out


def generate(app: Any, model: Path, *args: str, input: str | None = None) -> Any:
    flags = ["--model", str(model), "--max-new-tokens", "4", "--temperature", "0", "--json"]
    return CliRunner().invoke(app, ["generate", *args, *flags], input=input)


def records(result: Any) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_generate_takes_the_prompt_as_an_argument_option_or_stdin(
    cli: Any, tiny_model_dir: Path
) -> None:
    by_argument = records(generate(cli, tiny_model_dir, "Once upon"))
    by_option = records(generate(cli, tiny_model_dir, "--prompt", "Once upon"))
    by_stdin = records(generate(cli, tiny_model_dir, input="Once upon\n"))
    by_dash = records(generate(cli, tiny_model_dir, "-", input="Once upon"))
    assert len(by_argument) == 1
    assert by_argument == by_option == by_stdin == by_dash
    both = records(generate(cli, tiny_model_dir, "-", "--prompt", "Hello", input="Once upon"))
    assert [r["prompt_index"] for r in both] == [0, 1]
    assert both[0] == by_argument[0]
    assert both[1] == {**records(generate(cli, tiny_model_dir, "Hello"))[0], "prompt_index": 1}
    assert both[1]["logprobs"] != both[0]["logprobs"]  # each prompt reached the model


def test_generate_without_a_prompt_says_how_to_give_one(
    cli: Any, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = generate(cli, tiny_model_dir, input="")
    assert empty.exit_code == 2
    assert "the prompt read from stdin is empty" in empty.stderr
    monkeypatch.setattr(_cli_learner, "_interactive", lambda stream: True)
    at_terminal = generate(cli, tiny_model_dir)
    assert at_terminal.exit_code == 2
    assert at_terminal.stderr.startswith("error: no prompt: give one as an argument")


def test_generate_notes_on_a_terminal_that_it_loads_then_erases_the_note(
    cli: Any, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cli_learner, "_interactive", lambda stream: stream is sys.stderr)
    result = generate(cli, tiny_model_dir, "Once upon")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"\r\x1b[Kloading {tiny_model_dir} ...")
    assert result.stderr.endswith("\r\x1b[K")  # erased: the samples stand alone
    assert len(records(result)) == 1


def test_generate_writes_nothing_to_stderr_when_it_is_not_a_terminal(
    cli: Any, tiny_model_dir: Path
) -> None:
    result = generate(cli, tiny_model_dir, "Once upon")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
