"""deploy/examples/{mastodon,bluesky}.toml: valid as a whole (daemon config and the face's own
keys), with every secret left to the credentials folder, the way the systemd unit passes it."""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path

import pydantic
import pytest
from typer.testing import CliRunner

from plaudit.daemon._cli import _register, app
from plaudit.daemon._config import load_settings
from plaudit.faces import FaceConfigError
from plaudit.faces._registry import discover

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
REAL_TIME = ["mastodon.toml", "bluesky.toml"]
runner = CliRunner()
_register()


def secret_keys(model: type[pydantic.BaseModel]) -> list[str]:
    """The fields of a face config that hold secrets (SecretStr, optional or not)."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = typing.get_args(annotation) or (annotation,)
        if pydantic.SecretStr in args:
            out.append(name)
    return out


@pytest.mark.parametrize("name", REAL_TIME)
def test_config_check_accepts_the_example_with_its_secrets(name: str, tmp_path: Path) -> None:
    # Without the secrets, config check names each missing one and where it goes.
    missing = runner.invoke(app, ["config", "check", "--config", str(EXAMPLES / name)])
    assert missing.exit_code == 2
    assert "it is a secret: put it in a credentials file named faces." in missing.output
    raw = tomllib.loads((EXAMPLES / name).read_text())
    registry = discover()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for instance, table in raw["faces"].items():
        for key in secret_keys(registry.get(table["type"], instance=instance).Config):
            (credentials / f"faces.{instance}.{key}").write_text(f"test-{key}\n")
    result = runner.invoke(
        app,
        [
            "config",
            "check",
            "--config",
            str(EXAMPLES / name),
            "--credentials-dir",
            str(credentials),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "configuration is valid" in result.output
    assert "test-" not in result.output  # secrets are redacted


@pytest.mark.parametrize("name", REAL_TIME)
def test_the_example_runs_in_real_time(name: str) -> None:
    c = load_settings(config_file=EXAMPLES / name).controller
    assert c.post_interval.total_seconds() >= 3600
    assert [h.total_seconds() for h in c.horizons] == [3600, 6 * 3600, 24 * 3600]
    assert c.daily_cap >= 1 and c.quiet_hours is not None


@pytest.mark.parametrize("name", REAL_TIME)
def test_faces_validate_with_secrets_from_the_credentials_folder(name: str, tmp_path: Path) -> None:
    raw = tomllib.loads((EXAMPLES / name).read_text())
    registry = discover()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    expected: dict[str, list[str]] = {}
    for instance, table in raw["faces"].items():
        model = registry.get(table["type"], instance=instance).Config
        secrets = secret_keys(model)
        assert secrets, f"{table['type']} has no secret field: is this the right face?"
        leaked = sorted(set(secrets) & set(table))
        assert not leaked, f"{name}: secrets belong in the credentials folder, not {leaked}"
        for key in secrets:
            # The file name the unit's LoadCredential= gives it, and the README documents.
            (credentials / f"faces.{instance}.{key}").write_text(f"test-{key}\n")
        expected[instance] = secrets
    settings = load_settings(config_file=EXAMPLES / name, secrets_dir=credentials)
    for instance, spec in settings.faces.items():
        face = registry.create(
            name=instance,
            type=spec.type,
            config=spec.face_options(),
            state_dir=tmp_path / "state" / instance,
        )
        for key in expected[instance]:
            assert getattr(face.config, key).get_secret_value() == f"test-{key}"


@pytest.mark.parametrize("name", REAL_TIME)
def test_without_the_secret_the_face_names_the_missing_key(name: str, tmp_path: Path) -> None:
    settings = load_settings(config_file=EXAMPLES / name)
    registry = discover()
    for instance, spec in settings.faces.items():
        secrets = secret_keys(registry.get(spec.type).Config)
        with pytest.raises(FaceConfigError, match=secrets[0]):
            registry.create(
                name=instance, type=spec.type, config=spec.face_options(), state_dir=tmp_path
            )
