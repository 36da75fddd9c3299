"""`plaudit faces list` and `plaudit faces check` through the real command line."""

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from plaudit.daemon import _cli_faces


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """plaudit"""

    _cli_faces.register(app)
    return app


def test_faces_list(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["faces", "list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "plaudit 0.1.0" in lines["simulated"] and "plaudit.faces.file:FileFace" in lines["file"]
    data = CliRunner().invoke(app, ["faces", "list", "--json"])
    assert {
        "type": "memory",
        "package": "plaudit 0.1.0",
        "entry_point": "plaudit.faces._memory:MemoryFace",
    } in __import__("json").loads(data.output)["installed"]


def test_faces_check_from_config(app: typer.Typer, tmp_path: Path) -> None:
    config = tmp_path / "plaudit.toml"
    config.write_text(
        '[faces.crowd]\ntype = "simulated"\naudience_size = 250\ntime_scale = 1440\n',
        encoding="utf-8",
    )
    args = ["faces", "check", "crowd", "--config", str(config), "--state-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "face 'crowd' (simulated): OK" in result.output
    assert "audience:" in result.output and "250" in result.output
    assert "280 characters a post" in result.output
    assert (tmp_path / "faces" / "crowd" / "simulated.sqlite3").exists()
    missing = CliRunner().invoke(app, [*args[:2], "nope", *args[3:]])
    assert missing.exit_code == 2
    assert "no face instance 'nope' in the configuration (configured: crowd" in missing.output


def test_faces_check_with_type_and_sets(app: typer.Typer, tmp_path: Path) -> None:
    base = ["faces", "check", "m", "--state-dir", str(tmp_path), "--type", "memory"]
    ok = CliRunner().invoke(app, [*base, "--set", "audience=42", "--set", "account=me", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"audience": 42' in ok.output and '"account": "me"' in ok.output
    bad = CliRunner().invoke(app, [*base, "--set", "audience=-3"])
    assert bad.exit_code == 2
    assert "audience = -3: Input should be greater than or equal to 0" in bad.output
    unknown = CliRunner().invoke(app, ["faces", "check", "m", "--type", "memroy"])
    assert unknown.exit_code == 2 and "Did you mean 'memory'?" in unknown.output


def test_faces_check_help_names_the_argument(app: typer.Typer) -> None:
    # "[faces.<name>]" in the help was read as rich markup and printed "Face instance name ()".
    result = CliRunner().invoke(app, ["faces", "check", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Face instance name: NAME of its faces.NAME table in the config." in result.output
    assert "()" not in result.output
    assert "KEY=VALUE" in result.output and "TYPE" in result.output


def test_faces_check_type_takes_secrets_from_the_credentials_folder(
    app: typer.Typer, tmp_path: Path
) -> None:
    # A secret file for an instance that is only on the command line (--type) used to fail
    # with "faces.m.type = (missing)"; now the file, --type and --set make one table.
    secrets = tmp_path / "credentials"
    secrets.mkdir()
    (secrets / "faces.m.account").write_text("from-the-secret-file\n", encoding="utf-8")
    base = ["faces", "check", "m", "--state-dir", str(tmp_path), "--credentials-dir", str(secrets)]
    ok = CliRunner().invoke(app, [*base, "--type", "memory", "--set", "audience=42", "--json"])
    assert ok.exit_code == 0, ok.output
    info = json.loads(ok.output)
    assert (info["account"], info["audience"]) == ("from-the-secret-file", 42)
    # The command line comes last, as for the daemon: --set wins over the file.
    over = CliRunner().invoke(app, [*base, "--type", "memory", "--set", "account=cli", "--json"])
    assert over.exit_code == 0, over.output
    assert json.loads(over.output)["account"] == "cli"
    # A network face's token from the folder reaches its config: no "missing" error for it.
    (secrets / "faces.m.account").unlink()
    (secrets / "faces.m.access_token").write_text("s3cret-token\n", encoding="utf-8")
    net = CliRunner().invoke(app, [*base, "--type", "mastodon", "--set", "base_url=notaurl"])
    assert net.exit_code == 2
    assert "base_url = 'notaurl'" in net.output
    assert "access_token" not in net.output and "s3cret" not in net.output


def test_faces_check_without_a_state_folder_leaves_nothing_behind(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "plaudit.toml"
    config.write_text('[faces.crowd]\ntype = "simulated"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["faces", "check", "crowd", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "state:" in result.output and "a temporary folder, now removed" in result.output
    assert not home.exists(), "a check without a state folder wrote into the home folder"
