"""Discovery of face plugins and creation of configured face instances.

`discover()` reads the `plaudit.faces` entry-point group once and returns a `FaceRegistry`; the
built-in faces are found the same way as outside plugins (plaudit's own pyproject.toml declares
them). The registry is built at start-up and passed down: there is no module-level registry.

    registry = discover(only={"simulated"})          # import only what is configured
    face = registry.create(name="sim", type="simulated", config={"seed": 7},
                           state_dir=state / "faces" / "sim", clock=clock)

A plugin that fails to import does not raise at discovery: it is recorded in
`registry.failed()` (shown by `plaudit faces list`) and raises `FaceLoadError` only when a
configured instance needs it.
"""

from __future__ import annotations

import difflib
import inspect
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pydantic

from ._api import Face
from ._clock import Clock
from ._errors import FaceConfigError, FaceLoadError, FaceNotFound
from ._models import FaceConfig

__all__ = [
    "ENTRY_POINT_GROUP",
    "FaceRegistry",
    "FaceSpec",
    "FailedFace",
    "InstalledFace",
    "config_error",
    "discover",
    "face_specs",
    "read_face_specs",
]

ENTRY_POINT_GROUP = "plaudit.faces"


@dataclass(frozen=True)
class InstalledFace:
    """A face type that loaded: its class and the distribution that provides it."""

    type_name: str
    face_class: type[Face[Any]]
    package: str  # "name version" of the distribution that declares the entry point
    entry_point: str  # "module:Class"


@dataclass(frozen=True)
class FailedFace:
    """A face type whose plugin could not be loaded, and why."""

    type_name: str
    package: str
    entry_point: str
    error: str  # "ModuleNotFoundError: No module named 'x'"


def _package_of(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    if dist is None:
        return "unknown package"
    return f"{dist.metadata['Name']} {dist.version}"


def _load(ep: metadata.EntryPoint) -> InstalledFace | FailedFace:
    package = _package_of(ep)
    try:
        obj = ep.load()
    except Exception as exc:  # a plugin may fail in any way; record it, do not crash
        return FailedFace(ep.name, package, ep.value, f"{type(exc).__name__}: {exc}")
    if not (isinstance(obj, type) and issubclass(obj, Face)):
        return FailedFace(
            ep.name, package, ep.value, f"{ep.value} is {obj!r}, not a subclass of Face"
        )
    declared = getattr(obj, "type_name", None)
    if declared != ep.name:
        return FailedFace(
            ep.name,
            package,
            ep.value,
            f"{obj.__name__}.type_name is {declared!r} but the entry point registers it as "
            f"{ep.name!r}; make them equal",
        )
    config_model = getattr(obj, "Config", None)
    if not (isinstance(config_model, type) and issubclass(config_model, FaceConfig)):
        return FailedFace(
            ep.name,
            package,
            ep.value,
            f"{obj.__name__}.Config is {config_model!r}, not a subclass of FaceConfig",
        )
    return InstalledFace(ep.name, obj, package, ep.value)


def discover(*, only: Collection[str] | None = None) -> FaceRegistry:
    """Read the `plaudit.faces` entry points and load the face classes.

    With `only`, import just those types (the ones the config uses); the others stay known by
    name so that an unknown type can still get a "did you mean" suggestion. Never raises for a
    broken plugin; safe to call any number of times (each call builds a fresh registry)."""
    by_name: dict[str, list[metadata.EntryPoint]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        by_name.setdefault(ep.name, []).append(ep)
    installed: dict[str, InstalledFace] = {}
    failed: dict[str, FailedFace] = {}
    wanted = None if only is None else set(only)
    for name, eps in sorted(by_name.items()):
        if wanted is not None and name not in wanted:
            continue
        if len({_package_of(ep) for ep in eps}) > 1:
            failed[name] = FailedFace(
                name,
                " and ".join(sorted({_package_of(ep) for ep in eps})),
                " / ".join(ep.value for ep in eps),
                f"face type {name!r} is registered by more than one package; uninstall one",
            )
            continue
        result = _load(eps[0])
        if isinstance(result, InstalledFace):
            installed[name] = result
        else:
            failed[name] = result
    return FaceRegistry(installed=installed, failed=failed, known=by_name.keys())


def _allowed_text(error: Mapping[str, Any], model: type[FaceConfig], key: str) -> str:
    kind = error["type"]
    if kind == "missing":
        return "a value is required"
    if kind == "extra_forbidden":
        known = sorted(model.model_fields)
        near = difflib.get_close_matches(key.split(".")[0], known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"no such key{hint}; known keys: {', '.join(known)}"
    return str(error["msg"])


def _is_secret(model: type[FaceConfig], key: str) -> bool:
    field = model.model_fields.get(key.split(".")[0])
    return field is not None and "Secret" in repr(field.annotation)


def config_error(
    *, instance: str, type_name: str, model: type[FaceConfig], exc: pydantic.ValidationError
) -> FaceConfigError:
    """Turn a pydantic ValidationError into a FaceConfigError that names the instance, every
    bad key, its value (never a secret's) and what is allowed."""
    problems: list[tuple[str, object, str]] = []
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(config)"
        allowed = _allowed_text(error, model, key)
        if error["type"] == "missing":
            if _is_secret(model, key):
                allowed += (
                    f"; it is a secret: put it in a credentials file named "
                    f"faces.{instance}.{key} (or set it in the table)"
                )
            lines.append(f"  - {key}: missing; {allowed}")
            problems.append((key, None, allowed))
            continue
        value: object = "<hidden secret>" if _is_secret(model, key) else error.get("input")
        problems.append((key, value, allowed))
        lines.append(f"  - {key} = {value!r}: {allowed}")
    message = (
        f"Face instance '{instance}' (type {type_name!r}) has an invalid config; fix these keys "
        f"in its [faces.{instance}] table:\n" + "\n".join(lines)
    )
    return FaceConfigError(message, face=instance, problems=problems)


class FaceRegistry:
    """The face types found at start-up. Build it with `discover()`; pass it down."""

    def __init__(
        self,
        *,
        installed: Mapping[str, InstalledFace],
        failed: Mapping[str, FailedFace] | None = None,
        known: Collection[str] = (),
    ) -> None:
        self._installed = dict(installed)
        self._failed = dict(failed or {})
        self._known = set(known) | set(self._installed) | set(self._failed)

    def installed(self) -> list[InstalledFace]:
        """The face types that loaded, by name."""
        return [self._installed[k] for k in sorted(self._installed)]

    def failed(self) -> list[FailedFace]:
        """The face types whose plugin failed to load, by name."""
        return [self._failed[k] for k in sorted(self._failed)]

    def get(self, type_name: str, *, instance: str | None = None) -> type[Face[Any]]:
        """The class of face type `type_name`; `FaceLoadError` if its plugin failed to load,
        `FaceNotFound` (with the installed types and the nearest name) if there is none."""
        if type_name in self._installed:
            return self._installed[type_name].face_class
        who = f"Face instance '{instance}' uses type {type_name!r}" if instance else type_name
        if type_name in self._failed:
            bad = self._failed[type_name]
            raise FaceLoadError(
                f"{who}, but its plugin from {bad.package} failed to load ({bad.entry_point}): "
                f"{bad.error}. Reinstall or fix that package, or remove the instance.",
                type_name=type_name,
                package=bad.package,
                error=bad.error,
                face=instance,
            )
        names = sorted(self._known)
        near = difflib.get_close_matches(type_name, names, n=1, cutoff=0.5)
        suggestion = near[0] if near else None
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        available = ", ".join(names) if names else "none"
        subject = f"{who}, which is" if instance else f"Face type {type_name!r} is"
        raise FaceNotFound(
            f"{subject} not installed.{hint} Installed face types: {available}. A face type "
            f"is a package that registers a {ENTRY_POINT_GROUP!r} entry point; install it into "
            "the same environment as plaudit.",
            type_name=type_name,
            installed=names,
            suggestion=suggestion,
            face=instance,
        )

    def create(
        self,
        *,
        name: str,
        type: str,
        config: Mapping[str, Any],
        state_dir: Path,
        clock: Clock | None = None,
    ) -> Face[Any]:
        """Validate `config` with the face's Config model and construct the instance on `clock`
        (None: the face's default, the wall clock).

        Faces written before the clock existed define `__init__(*, name, config, state_dir)`;
        they are constructed without it and get `clock` assigned afterwards, so `face.clock`
        is the host's clock for every face."""
        cls = self.get(type, instance=name)
        try:
            model = cls.Config.model_validate(dict(config))
        except pydantic.ValidationError as exc:
            raise config_error(instance=name, type_name=type, model=cls.Config, exc=exc) from None
        if clock is None:
            return cls(name=name, config=model, state_dir=state_dir)
        if _accepts_clock(cls):
            return cls(name=name, config=model, state_dir=state_dir, clock=clock)
        face = cls(name=name, config=model, state_dir=state_dir)
        face.clock = clock
        return face


def _accepts_clock(cls: type[Face[Any]]) -> bool:
    """Whether the face's constructor takes `clock=` (explicitly or through **kwargs)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # a signature inspect cannot read: do not guess
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "clock" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in params
    )


@dataclass(frozen=True)
class FaceSpec:
    """One configured face instance: `[faces.<name>]` with `type = "..."` and its own keys."""

    name: str
    type: str
    options: Mapping[str, Any]


def face_specs(faces_table: Mapping[str, Any]) -> dict[str, FaceSpec]:
    """Read the `faces` table of a config (`{"sim": {"type": "simulated", ...}, ...}`) into
    specs. Every instance must be a table with a string `type`."""
    specs: dict[str, FaceSpec] = {}
    for name, table in faces_table.items():
        if not isinstance(table, Mapping):
            raise FaceConfigError(
                f"[faces.{name}] must be a table with a `type` key and the face's settings, "
                f"got {table!r}.",
                face=name,
                problems=[("", table, "a table")],
            )
        kind = table.get("type")
        if not isinstance(kind, str) or not kind:
            raise FaceConfigError(
                f"Face instance '{name}' has no `type`; add type = \"simulated\" (or another "
                "installed face type, see `plaudit faces list`) to its [faces."
                f"{name}] table.",
                face=name,
                problems=[("type", kind, "the name of an installed face type")],
            )
        options = {k: v for k, v in table.items() if k != "type"}
        specs[name] = FaceSpec(name=name, type=kind, options=options)
    return specs


def read_face_specs(path: Path) -> dict[str, FaceSpec]:
    """The face instances of a TOML config file (its `[faces.<name>]` tables)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise FaceConfigError(f"Cannot read config file {path}: {exc.strerror}.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise FaceConfigError(f"Config file {path} is not valid TOML: {exc}.") from exc
    table = data.get("faces", {})
    if not isinstance(table, Mapping):
        raise FaceConfigError(f"In {path}, `faces` must be a table of [faces.<name>] tables.")
    return face_specs(table)
