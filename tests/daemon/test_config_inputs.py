"""Configuration inputs that used to end in a traceback or pass unchecked (issue 16, problems 7
and 8): an overflowing, infinite or zero duration, a TOML file that is not UTF-8, a binary or an
empty credentials file, an environment value that is not JSON. Each is one clear error that
names the key or the file and the fix, from `load_settings`, `config check` and `run`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from daemon_helpers import PLAUDIT
from typer.testing import CliRunner

from plaudit.daemon._cli import _register, app
from plaudit.daemon._config import ConfigError, load_settings

runner = CliRunner()
_register()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, toml: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=write(tmp_path / "c.toml", toml))
    return str(info.value)


@pytest.mark.parametrize(
    "value",
    ['"99999999999999999999d"', '"9999999999w"', "inf", "nan", "1e300", '"1' + "0" * 400 + 's"'],
)
def test_a_duration_too_long_or_not_finite_is_one_error(tmp_path: Path, value: str) -> None:
    message = config_error(tmp_path, f"[controller]\npost_interval = {value}\n")
    assert "controller.post_interval" in message
    assert "at most" in message or "finite" in message


@pytest.mark.parametrize(
    "line",
    [
        'post_interval = "0s"',
        "post_interval = 0",
        'collect_interval = "0ms"',
        'learn_interval = "0m"',
        'offline_interval = "0h"',
        'horizons = ["0s", "1h"]',
    ],
)
def test_a_zero_interval_is_refused(tmp_path: Path, line: str) -> None:
    message = config_error(tmp_path, f"[controller]\n{line}\n")
    key = line.split(" ")[0]
    assert f"controller.{key}" in message and "longer than 0s" in message


def test_zero_jitter_stays_allowed(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", '[controller]\npost_jitter = "0s"\nshutdown_timeout = "0s"\n')
    assert load_settings(config_file=cfg).controller.post_jitter.total_seconds() == 0


@pytest.mark.parametrize(
    ("table", "line"),
    [("online", "lr = inf"), ("online", "max_kl = nan"), ("offline", "lr = inf")],
)
def test_infinite_numbers_are_refused(tmp_path: Path, table: str, line: str) -> None:
    message = config_error(tmp_path, f"[{table}]\n{line}\n")
    assert f"{table}.{line.split(' ')[0]}" in message and "finite" in message


def test_a_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('[faces.main]\ntype = "file"\naccount = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml is not UTF-8 text.*save it as UTF-8"):
        load_settings(config_file=cfg)
    result = runner.invoke(app, ["config", "check", "-c", str(cfg)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not UTF-8" in result.output


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"\n  \n", "is empty"),
        (b"\xff\xfe\x00\x01binary\x9c", "is not UTF-8 text"),
        (b"short", "at least 16"),
        (b"has spaces in it, so it is no token", "at least 16"),
        (b"\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0e\x0f\x10\x11\x12\x13\x14\x15", "at least 16"),
    ],
)
def test_a_bad_token_credentials_file_is_one_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http.token").write_bytes(content)
    with pytest.raises(ConfigError, match=problem):
        load_settings(secrets_dir=creds)
    result = runner.invoke(app, ["config", "check", "--credentials-dir", str(creds)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and problem in result.output
    assert "configuration is valid" not in result.output


def test_run_with_an_empty_token_file_says_so_in_one_line(tmp_path: Path) -> None:
    """`config check` used to call it valid, and `run` exited with a JSON traceback."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "http.token").write_bytes(b"")
    done = subprocess.run(
        [*PLAUDIT, "run", "--credentials-dir", str(creds), "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "traceback" not in done.stdout
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("plaudit:")]
    assert "http.token" in line and "is empty" in line


def test_a_secret_file_beside_a_secret_folder_key_is_one_error(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "faces").write_text("a value where a table goes")
    (creds / "faces.main.access_token").write_text("x" * 20)
    with pytest.raises(ConfigError, match="faces"):
        load_settings(secrets_dir=creds)


def test_an_environment_value_that_is_not_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLAUDIT_FACES", "{not json")
    with pytest.raises(ConfigError, match="PLAUDIT_FACES"):
        load_settings()


def test_a_top_level_key_that_is_a_settings_option(tmp_path: Path) -> None:
    """pydantic-settings takes `_env_file`, `_secrets_dir`... as arguments: from a config file
    they are unknown keys like any other."""
    message = config_error(tmp_path, '_env_file = "/etc/passwd"\n')
    assert "_env_file: unknown key" in message


def test_config_check_refuses_a_device_as_the_published_file(tmp_path: Path) -> None:
    """`published = "/dev/full"` grew the daemon to 19 GB; `config check` accepted it."""
    cfg = write(tmp_path / "c.toml", '[faces.out]\ntype = "file"\npublished = "/dev/full"\n')
    result = runner.invoke(app, ["config", "check", "-c", str(cfg)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "published = '/dev/full'" in result.output and "not a regular file" in result.output
    assert "set `published` to a file" in result.output
