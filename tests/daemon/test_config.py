"""Configuration: sources, priorities, and the messages people see."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from plaudit.controller import format_duration, parse_duration
from plaudit.daemon._cli import _register, app
from plaudit.daemon._config import ConfigError, load_settings, resolve_state_dir
from plaudit.daemon._logging import configure_logging

runner = CliRunner()
_register()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_demo() -> None:
    s = load_settings()
    assert s.model.name == "smollm2"
    assert {n: f.type for n, f in s.faces.items()} == {"sim": "simulated"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("6h", 21600), ("1d12h", 129600), ("250ms", 0.25), (45, 45)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_duration_errors_and_format() -> None:
    with pytest.raises(ValueError, match='such as "90s"'):
        parse_duration("6 hours")
    assert format_duration(timedelta(hours=1, minutes=30)) == "1h30m"


def test_toml_env_and_secrets_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(
        tmp_path / "p.toml",
        '[http]\nport = 9000\n[controller]\npost_interval = "30m"\n'
        '[faces.main]\ntype = "mastodon"\nbase_url = "http://127.0.0.1:1"\n',
    )
    secrets = tmp_path / "creds"
    secrets.mkdir()
    (secrets / "http.token").write_text("s3cret-0123456789abcdef\n")
    (secrets / "faces.main.access_token").write_text("tok")
    monkeypatch.setenv("PLAUDIT_HTTP__PORT", "9100")
    s = load_settings(config_file=cfg, secrets_dir=secrets)
    assert s.http.port == 9100  # env beats file
    assert s.controller.post_interval == timedelta(minutes=30)
    assert s.http.token is not None and s.http.token.get_secret_value() == "s3cret-0123456789abcdef"
    assert s.faces["main"].face_options() == {
        "base_url": "http://127.0.0.1:1",
        "access_token": "tok",
    }
    dumped = json.dumps(s.redacted())
    assert "s3cret" not in dumped and "**********" in dumped


def test_credentials_directory_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "http.token").write_text("abc-0123456789abcdef")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    s = load_settings()
    assert s.http.token is not None and s.http.token.get_secret_value() == "abc-0123456789abcdef"


def test_error_names_key_value_and_allowed(tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.toml", '[log]\nlevel = "loud"\n[http]\nport = 70000\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=cfg)
    msg = str(info.value)
    assert "log.level = 'loud'" in msg and "'debug', 'info', 'warning' or 'error'" in msg
    assert "http.port = 70000" in msg and "less than or equal to 65535" in msg


def test_unknown_key_suggests_nearest(tmp_path: Path) -> None:
    cfg = write(tmp_path / "typo.toml", "[sampling]\ntemprature = 0.7\n")
    with pytest.raises(
        ConfigError, match=r"sampling\.temprature: unknown key; did you mean 'temperature'"
    ):
        load_settings(config_file=cfg)
    cfg = write(tmp_path / "typo2.toml", 'modle = "x"\n')
    with pytest.raises(ConfigError, match="modle: unknown key; did you mean 'model'"):
        load_settings(config_file=cfg)


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_file=write(tmp_path / "x.toml", "[http\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "nope.toml")


def test_horizons_must_increase(tmp_path: Path) -> None:
    cfg = write(tmp_path / "h.toml", '[controller]\nhorizons = ["6h", "1h"]\n')
    with pytest.raises(ConfigError, match="increasing order"):
        load_settings(config_file=cfg)


def test_state_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "sd"))
    assert resolve_state_dir(s) == tmp_path / "sd"
    assert resolve_state_dir(s, tmp_path / "cli") == tmp_path / "cli"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert "plaudit" in str(resolve_state_dir(s))


def test_cli_config_check(tmp_path: Path) -> None:
    ok = runner.invoke(
        app, ["config", "check", "-c", str(write(tmp_path / "ok.toml", "[http]\nport = 1234\n"))]
    )
    assert ok.exit_code == 0, ok.output
    assert "configuration is valid" in ok.output and "port = 1234" in ok.output
    bad = runner.invoke(
        app, ["config", "check", "-c", str(write(tmp_path / "b.toml", "[http]\nprot = 1\n"))]
    )
    assert bad.exit_code == 2
    assert "did you mean 'port'" in bad.output


def test_logging_redacts_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="json")
    log = structlog.stdlib.get_logger("t")
    log.info(
        "login",
        token="abc123",
        header="Authorization: Bearer abc123",
        user="me",
        api_key=b"abc123",
        kl_per_token=0.25,
        max_new_tokens=48,
    )
    logging.getLogger("httpx").warning("stdlib goes through the same pipeline")
    logging.getLogger("httpx").warning(
        "HTTP Request: POST https://api.telegram.org/bot123456:AAE-secret_Token/sendMessage"
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert lines[0]["event"] == "login" and lines[0]["user"] == "me"
    assert lines[0]["kl_per_token"] == 0.25 and lines[0]["max_new_tokens"] == 48  # numbers
    assert "abc123" not in json.dumps(lines)
    assert lines[1]["event"] == "stdlib goes through the same pipeline"
    assert lines[1]["logger"] == "httpx" and lines[1]["level"] == "warning"
    assert "AAE-secret_Token" not in lines[2]["event"]
    assert lines[2]["event"].endswith("/bot**********/sendMessage")
