"""Property tests of the configuration loader (issue 16): any TOML document built from the real
keys and any values, any bytes as a config file, any credentials files: `load_settings` gives
settings or a ConfigError, and `plaudit config check` exits 0 or 2, never with a traceback."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from plaudit.daemon._cli import _register, app
from plaudit.daemon._config import ConfigError, Settings, load_settings

runner = CliRunner()
_register()

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# TOML has no null; its floats include inf and nan, its integers reach 64 bits.
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["0s", "1h", "30m", "1d12h", "99999999999999999999d", "-1s", "1e3s", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
SECTIONS = {
    name: sorted(field.annotation.model_fields)  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
    if name not in ("faces", "state_dir")
}
FACE_KEYS = ["type", "enabled", "history", "published", "reactions", "on_bad_line", "seed"]
FACE_KEYS += ["audience_size", "time_scale", "max_length", "account", "base_url", "token"]


def table(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(
        st.sampled_from(keys) | st.text(min_size=1, max_size=6), values, max_size=4
    )


faces = st.dictionaries(
    st.sampled_from(["sim", "main", "x"]),
    table(FACE_KEYS).map(lambda t: t | {"type": t.get("type", "simulated")}),
    max_size=2,
)
documents = st.fixed_dictionaries(
    {},
    optional={
        **{name: table(keys) for name, keys in SECTIONS.items()},
        "faces": faces,
        "state_dir": values,
        "_env_file": values,
    },
)


def check(path: Path | None = None, creds: Path | None = None) -> None:
    try:
        load_settings(config_file=path, secrets_dir=creds)
    except ConfigError as exc:
        assert str(exc).strip(), "an error says what is wrong"
    args = ["config", "check"]
    args += ["-c", str(path)] if path else []
    args += ["--credentials-dir", str(creds)] if creds else []
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


@PROPERTY
@given(document=documents)
def test_any_document_of_real_keys_gives_settings_or_one_error(document: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(tomli_w.dumps(document), encoding="utf-8")
        check(path)


@PROPERTY
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_a_config_file_give_settings_or_one_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_bytes(raw)
        check(path)


@PROPERTY
@given(
    files=st.dictionaries(
        st.sampled_from(["http.token", "faces.main.token", "faces", "http", "log.level", "a..b"])
        | st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True),
        st.binary(max_size=40) | st.text(max_size=40).map(str.encode),
        max_size=4,
    )
)
def test_any_credentials_files_give_settings_or_one_error(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        creds = Path(tmp) / "creds"
        creds.mkdir()
        for name, content in files.items():
            (creds / name).write_bytes(content)
        check(creds=creds)
