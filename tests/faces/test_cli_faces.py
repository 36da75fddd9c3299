"""`plaudit faces list` and `plaudit faces check` through the real command line."""

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
