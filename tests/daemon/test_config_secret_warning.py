"""A secret written into the TOML file is accepted, with a warning that names the key and the fix
(issue 17, item 10: it was accepted silently, though the docs say never)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plaudit.daemon import _cli
from plaudit.daemon._config import load_settings

TOKEN = "a-long-enough-token-1234"
CONFIG = f"""
[http]
token = "{TOKEN}"

[sampling]
max_new_tokens = 32

[faces.main]
type = "mastodon"
base_url = "https://example.social"
access_token = "mastodon-secret"

[faces.sky]
type = "bluesky"
identifier = "bot.example"
app_password = "bluesky-secret"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "plaudit.toml"
    path.write_text(CONFIG)
    return path


def test_each_secret_in_the_file_is_named_with_the_fix(config: Path) -> None:
    warnings: list[str] = []
    settings = load_settings(config_file=config, warn=warnings.append)
    assert settings.http.token is not None  # still accepted
    keys = ["http.token", "faces.main.access_token", "faces.sky.app_password"]
    assert len(warnings) == len(keys)  # max_new_tokens is not a secret
    for key, message in zip(keys, warnings, strict=True):
        assert f"config file {config} holds the secret {key} in plain text" in message
        assert f"move it into the credentials folder as a file named {key}" in message
    assert not any(s in " ".join(warnings) for s in (TOKEN, "mastodon-secret", "bluesky-secret"))


def test_secrets_from_the_credentials_folder_or_the_environment_warn_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "plaudit.toml"
    config.write_text('[faces.main]\ntype = "mastodon"\nbase_url = "https://example.social"\n')
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "faces.main.access_token").write_text("mastodon-secret\n")
    monkeypatch.setenv("PLAUDIT_HTTP__TOKEN", TOKEN)
    warnings: list[str] = []
    settings = load_settings(config_file=config, secrets_dir=credentials, warn=warnings.append)
    assert settings.http.token is not None
    assert settings.faces["main"].face_options()["access_token"] == "mastodon-secret"
    assert warnings == []


def test_by_default_the_warning_goes_to_the_config_logger(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="plaudit.config")
    load_settings(config_file=config)
    messages = [r.getMessage() for r in caplog.records if r.name == "plaudit.config"]
    assert len(messages) == 3
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "plaudit.config")


def test_config_check_warns_on_stderr_and_keeps_stdout_clean(config: Path) -> None:
    _cli._register()
    result = CliRunner().invoke(_cli.app, ["config", "check", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # nothing but the JSON
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"warning: config file {config} holds the secret http.token")
