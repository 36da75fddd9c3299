"""The daemon's configuration: one typed model, loaded once and passed down.

Sources, highest priority first:
1. environment variables ``PLAUDIT_...`` with ``__`` for nesting (``PLAUDIT_HTTP__PORT=9000``);
2. secrets: one file per value in the credentials folder (default ``$CREDENTIALS_DIRECTORY``,
   systemd's LoadCredential), named by the dotted key (``http.token``,
   ``faces.main.access_token``);
3. the TOML file (``--config``, default ``plaudit.toml`` in the working folder when it exists);
   a secret written into it still works, with a warning that names the key;
4. built-in defaults (the simulated audience and SmolLM2).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from plaudit.controller import (
    LoopSettings,
)

DEFAULT_CONFIG_FILE = Path("plaudit.toml")
_SECRET_NAME = re.compile(r"token|password|secret|api_?key|credential", re.I)
# A key that holds a secret by its name (http.token, access_token, app_password, bot_token,
# api_key, client_secret), anchored at the end so that max_new_tokens is not one.
_SECRET_KEY = re.compile(r"(^|_)(token|password|secret|api_?key|credentials?)$", re.I)
# stdlib, not structlog: in the daemon (logging configured before the config is read) the
# warning goes through the one pipeline; where nothing configured logging, Python's last-resort
# handler writes it to stderr, never into a command's stdout.
_log = logging.getLogger("plaudit.config")
# The API token goes in an HTTP header: visible ASCII only, and long enough not to be guessed.
MIN_TOKEN_LENGTH = 16
_TOKEN_FIX = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe())'"


class ConfigError(Exception):
    """The configuration cannot be used; the message names each bad key, its value and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: JSON lines when stdout is not a terminal (journald), coloured text on a terminal.
    format: Literal["auto", "json", "console"] = "auto"


class HttpConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8477, ge=0, le=65535)
    # Bearer token for mutating calls; generated into the state folder at first start if unset.
    token: SecretStr | None = None

    @field_validator("token")
    @classmethod
    def _usable_token(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here, not only when the API starts, so that `config check` sees it too.
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if len(token) < MIN_TOKEN_LENGTH or not all("!" <= c <= "~" for c in token):
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} visible ASCII characters, without spaces "
                f"or control characters; {_TOKEN_FIX}"
            )
        return SecretStr(token)


class ModelConfig(_Section):
    # "smollm2" (embedded), a Hugging Face folder, a .gguf file or a plaudit model folder.
    name: str = "smollm2"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Precision of generation (candidates, playground); training stays float32. bfloat16: on
    # CPUs without AMX where plaudit's native kernel decodes (AVX2), fp32 activations over
    # half-size (fp16) weights (batch-1 decoding 1.7-1.8x fp32, bench/decode_half.py); with
    # AMX, on CUDA, torch's bf16 throughout (pays from about 8 candidates up, bench/generate.py).
    # The behaviour logprobs are those of the logits sampled from, so the online update
    # corrects for it.
    dtype: Literal["float32", "bfloat16"] = "float32"


class FaceInstanceConfig(BaseModel):
    """One face instance: ``type`` picks the plugin; the other keys go to its own config model,
    which validates them when the face is created."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str
    enabled: bool = True

    def face_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def offline_train_config(settings: LoopSettings, **overrides: Any) -> Any:
    """The learner's `OfflineTrainConfig` for this configuration (imports torch; the learner
    validates every knob). Raises ConfigError naming the `offline.` key."""
    from plaudit.learner import OfflineTrainConfig

    try:
        return settings.offline.train_config(**overrides)
    except ValidationError as exc:
        message = format_validation_error(
            exc, source="the [offline] table", model=OfflineTrainConfig
        )
        raise ConfigError(message.replace("\n  ", "\n  offline.")) from None


class Settings(BaseSettings, LoopSettings):
    """Everything the daemon reads from its configuration: the loop's tables (`LoopSettings`:
    sampling, controller, online, offline) and the daemon's own."""

    model_config = SettingsConfigDict(
        env_prefix="PLAUDIT_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    state_dir: Path | None = None
    # Dotted keys that came from the credentials folder: always shown redacted.
    _secret_keys: frozenset[str] = PrivateAttr(default_factory=frozenset)
    log: LogConfig = LogConfig()
    http: HttpConfig = HttpConfig()
    model: ModelConfig = ModelConfig()
    faces: dict[str, FaceInstanceConfig] = Field(
        default_factory=lambda: {"sim": FaceInstanceConfig(type="simulated")}
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # File and secrets arrive merged as init data (see load_settings); env overrides them.
        return (env_settings, init_settings)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as JSON-able data, secrets shown as '**********':
        SecretStr fields, and a face's own keys that are secrets by name (token, password,
        secret, key) or came from the credentials folder (faces hold their keys untyped until
        their plugin validates them)."""
        data = self.model_dump(mode="json")
        for name, face in data.get("faces", {}).items():
            for key in face:
                if _SECRET_NAME.search(key) or f"faces.{name}.{key}" in self._secret_keys:
                    face[key] = "**********"
        return data


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML file at ``path``; ConfigError (one line: the file, the problem, the fix) when
    it is missing, unreadable, not UTF-8 or not TOML."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist: check --config") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it "
            "as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _read_secret(entry: Path) -> str:
    try:
        raw = entry.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"credentials file {entry} cannot be read: {exc.strerror}; fix its permissions"
        ) from None
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"credentials file {entry} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
            "write the secret into it as text, or delete the file"
        ) from None
    if not value:
        raise ConfigError(
            f"credentials file {entry} is empty; write the secret into it, or delete the file "
            "to leave the key unset"
        )
    return value


def _read_secrets(folder: Path) -> dict[str, Any]:
    """One file per secret, named by its dotted key: ``faces.main.access_token``."""
    data: dict[str, Any] = {}
    if not folder.is_dir():
        raise ConfigError(f"credentials folder {folder} does not exist or is not a folder")
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        keys = entry.name.split(".")
        node = data
        for depth, key in enumerate(keys[:-1], start=1):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"credentials file {entry} sets a key inside "
                    f"{'.'.join(keys[:depth])}, which the file {folder / '.'.join(keys[:depth])} "
                    "sets as a whole; remove one of the two"
                )
        if isinstance(node.get(keys[-1]), dict):
            raise ConfigError(
                f"credentials file {entry} sets {entry.name} as a whole, which other files set "
                "key by key; remove one of them"
            )
        node[keys[-1]] = _read_secret(entry)
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _known_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The field names allowed at ``loc`` (for suggesting the nearest key to a misspelt one)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        if isinstance(part, str) and part in fields:
            annotation = fields[part].annotation
            args = getattr(annotation, "__args__", ())
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                current = annotation
            elif args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
                current = args[-1]  # dict[str, Model] or Model | None
            else:
                return []
        elif not isinstance(part, str) or current is not None:
            continue
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def format_validation_error(
    exc: ValidationError, *, source: str, model: type[BaseModel] | None = None
) -> str:
    """One line per problem: key, bad value, what is allowed (and the nearest known key)."""
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = _known_keys(model or Settings, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            allowed = f" Known keys here: {', '.join(known)}." if known else ""
            lines.append(f"  {key}: unknown key{hint}{allowed}")
            continue
        value = err.get("input")
        shown = "(missing)" if err["type"] == "missing" else repr(value)
        if _SECRET_NAME.search(key) and err["type"] != "missing":
            shown = "**********"  # a bad secret is still a secret
        if isinstance(value, dict | list) and len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {key} = {shown}: {err['msg']}")
    return "\n".join(lines)


def load_settings(
    *,
    config_file: Path | None = None,
    secrets_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Load and validate the configuration; raise ConfigError with a readable message. What
    is usable but wrong (a secret written into the config file) goes to ``warn``, by default
    a warning on the `plaudit.config` logger."""
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    if config_file is not None:
        data = read_toml(config_file)
        source = str(config_file)
        for message in secrets_in_file(data, config_file):
            (warn or _log.warning)(message)
    if secrets_dir is None and os.environ.get("CREDENTIALS_DIRECTORY"):
        secrets_dir = Path(os.environ["CREDENTIALS_DIRECTORY"])
    secret_keys: frozenset[str] = frozenset()
    if secrets_dir is not None:
        secrets = _read_secrets(secrets_dir)
        secret_keys = frozenset(_dotted(secrets))
        data = _merge(data, secrets)
    if overrides:
        data = _merge(data, overrides)
    # Settings(**data) would take `_env_file`, `_secrets_dir`... as pydantic-settings options.
    options = sorted(key for key in data if key.startswith("_"))
    if options:
        known = ", ".join(sorted(Settings.model_fields))
        raise ConfigError(
            f"invalid configuration ({source}):\n"
            + "\n".join(f"  {key}: unknown key. Known keys here: {known}." for key in options)
        )
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source)) from None
    except SettingsError as exc:  # an environment value that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"PLAUDIT_{field.group(1).upper()}" if field else "a PLAUDIT_ variable"
        raise ConfigError(
            f"invalid configuration (environment): {name} is not valid JSON ({exc}); give a "
            f"table or a list as JSON, or set its keys one by one ({name}__KEY=value)"
        ) from None
    settings._secret_keys = secret_keys
    return settings


def secrets_in_file(data: dict[str, Any], path: Path) -> list[str]:
    """One warning per secret written into the config file (the docs say never: the file is
    read by whoever reads the config, backed up and versioned; the credentials folder is
    systemd's LoadCredential=, readable by the daemon alone)."""
    found = [
        key
        for key, value in _dotted_items(data)
        if _SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value not in (None, "")
    ]
    return [
        f"config file {path} holds the secret {key} in plain text: move it into the "
        f"credentials folder as a file named {key} (--credentials-dir, $CREDENTIALS_DIRECTORY "
        "or systemd's LoadCredential=) and delete it from the config file"
        for key in found
    ]


def _dotted_items(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _dotted_items(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _dotted(tree: dict[str, Any]) -> list[str]:
    return [key for key, _ in _dotted_items(tree)]


def resolve_state_dir(settings: Settings, override: Path | None = None) -> Path:
    """--state-dir, then the config, then systemd's $STATE_DIRECTORY, then a per-user folder."""
    if override is not None:
        return override
    if settings.state_dir is not None:
        return settings.state_dir
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    import platformdirs

    return Path(platformdirs.user_data_dir("plaudit", appauthor=False))
