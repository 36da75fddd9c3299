"""Discovery through real entry points (fake distributions put on sys.path), and the messages
for unknown types, broken plugins and bad configs."""

import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from plaudit.faces import (
    Draft,
    Face,
    FaceConfigError,
    FaceInfo,
    FaceLoadError,
    FaceNotFound,
    FaceRegistry,
    HistoricalPost,
    InstalledFace,
    Limits,
    Published,
    ReactionSnapshot,
    SimulatedClock,
    WallClock,
    discover,
    face_specs,
    read_face_specs,
    utc_datetime,
)
from plaudit.faces.testing import MemoryConfig, MemoryFace


def fake_distribution(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A minimal installed distribution: a .dist-info folder plus its modules."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake_distribution(
        tmp_path,
        "brokenface",
        "[plaudit.faces]\n"
        "broken = brokenface_mod:BrokenFace\n"
        "notaface = brokenface_ok:not_a_face\n"
        "misnamed = brokenface_ok:Misnamed\n",
        {
            "brokenface_mod": "import plaudit_no_such_dependency\n",
            "brokenface_ok": (
                "from plaudit.faces.testing import MemoryFace\n"
                "not_a_face = 42\n"
                "class Misnamed(MemoryFace):\n"
                "    type_name = 'othername'\n"
            ),
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("brokenface_mod", "brokenface_ok"):
        sys.modules.pop(module, None)


def test_builtin_faces_come_through_entry_points() -> None:
    registry = discover()
    by_name = {f.type_name: f for f in registry.installed()}
    assert {"memory", "simulated", "file"} <= set(by_name)
    assert by_name["memory"].face_class is MemoryFace
    assert by_name["simulated"].package.startswith("plaudit ")
    assert by_name["file"].entry_point == "plaudit.faces.file:FileFace"
    again = discover()  # safe to call twice: a fresh, equal registry
    assert [f.type_name for f in again.installed()] == [f.type_name for f in registry.installed()]


def test_broken_plugins_are_reported_not_raised(plugins: Path) -> None:
    registry = discover()
    failed = {f.type_name: f for f in registry.failed()}
    assert {"broken", "notaface", "misnamed"} <= set(failed)
    assert failed["broken"].package == "brokenface 1.0"
    assert "ModuleNotFoundError" in failed["broken"].error
    assert "plaudit_no_such_dependency" in failed["broken"].error
    assert "not a subclass of Face" in failed["notaface"].error
    assert "type_name is 'othername'" in failed["misnamed"].error
    assert "simulated" in {f.type_name for f in registry.installed()}, "others still load"
    with pytest.raises(FaceLoadError) as info:
        registry.create(name="b", type="broken", config={}, state_dir=plugins)
    message = str(info.value)
    assert "Face instance 'b' uses type 'broken'" in message
    assert "brokenface 1.0" in message and "plaudit_no_such_dependency" in message
    assert info.value.package == "brokenface 1.0"


def test_only_loads_the_named_types(plugins: Path) -> None:
    registry = discover(only={"simulated", "memory"})
    assert [f.type_name for f in registry.installed()] == ["memory", "simulated"]
    assert registry.failed() == []
    assert "brokenface_mod" not in sys.modules and "brokenface_ok" not in sys.modules
    # Types that were not loaded are still known, so a typo still gets a suggestion.
    with pytest.raises(FaceNotFound, match="Did you mean 'broken'"):
        registry.get("brokn")


def test_unknown_type_lists_installed_and_suggests() -> None:
    registry = discover()
    with pytest.raises(FaceNotFound) as info:
        registry.create(name="main", type="simulatd", config={}, state_dir=Path("/tmp"))
    message = str(info.value)
    assert message.startswith("Face instance 'main' uses type 'simulatd', which is not installed.")
    assert "Did you mean 'simulated'?" in message
    assert "Installed face types: " in message and "file" in message
    assert info.value.suggestion == "simulated"
    with pytest.raises(FaceNotFound) as far:
        registry.get("zzzzzz")
    assert far.value.suggestion is None and "Did you mean" not in str(far.value)


def test_config_errors_name_instance_key_value_and_allowed(tmp_path: Path) -> None:
    registry = discover(only={"simulated"})
    with pytest.raises(FaceConfigError) as info:
        registry.create(
            name="sim",
            type="simulated",
            config={"audience_size": "lots", "time_scal": 3, "preference": "happy"},
            state_dir=tmp_path,
        )
    message = str(info.value)
    assert "Face instance 'sim' (type 'simulated') has an invalid config" in message
    assert "[faces.sim]" in message
    assert "audience_size = 'lots': Input should be a valid integer" in message
    assert "time_scal = 3: no such key (did you mean 'time_scale'?)" in message
    assert "preference = 'happy': Input should be 'positive', 'negative'" in message
    keys = [p[0] for p in info.value.problems]
    assert sorted(keys) == ["audience_size", "preference", "time_scal"]


class TokenConfig(MemoryConfig):
    token: SecretStr


class TokenFace(MemoryFace):
    type_name = "tokened"
    Config = TokenConfig  # type: ignore[assignment]


def test_missing_and_mistyped_secrets_are_named_but_never_shown(tmp_path: Path) -> None:
    registry = FaceRegistry(
        installed={"tokened": InstalledFace("tokened", TokenFace, "test 0", "t:TokenFace")}
    )
    with pytest.raises(FaceConfigError) as info:
        registry.create(name="bot", type="tokened", config={}, state_dir=tmp_path)
    assert (
        "  - token: missing; a value is required; it is a secret: put it in a credentials file "
        "named faces.bot.token (or set it in the table)"
    ) in str(info.value)
    with pytest.raises(FaceConfigError) as typed:
        registry.create(name="bot", type="tokened", config={"token": 12345}, state_dir=tmp_path)
    assert "token = '<hidden secret>': Input should be a valid string" in str(typed.value)
    assert "12345" not in str(typed.value)
    face = registry.create(
        name="bot", type="tokened", config={"token": "s3cret"}, state_dir=tmp_path
    )
    assert "s3cret" not in repr(face.config)


def test_face_specs_from_toml(tmp_path: Path) -> None:
    config = tmp_path / "plaudit.toml"
    config.write_text(
        '[faces.sim]\ntype = "simulated"\nseed = 4\n\n[faces.out]\ntype = "file"\n'
        'history = ["a.jsonl"]\n',
        encoding="utf-8",
    )
    specs = read_face_specs(config)
    assert specs["sim"].type == "simulated" and specs["sim"].options == {"seed": 4}
    assert specs["out"].options == {"history": ["a.jsonl"]}
    with pytest.raises(FaceConfigError, match=r"Face instance 'x' has no `type`"):
        face_specs({"x": {"seed": 1}})
    config.write_text("[faces.sim\n", encoding="utf-8")
    with pytest.raises(FaceConfigError, match="is not valid TOML"):
        read_face_specs(config)


def test_constructor_rejects_a_config_of_the_wrong_model(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"needs a MemoryConfig config, got dict"):
        MemoryFace(name="m", config={"audience": 1}, state_dir=tmp_path)  # type: ignore[arg-type]


# ---- the clock ---------------------------------------------------------------------------------

NETWORK_CONFIGS: dict[str, dict[str, Any]] = {
    "mastodon": {"base_url": "https://mastodon.example", "access_token": "t"},
    "discord": {"bot_token": "t", "channel_id": "123456789012345678"},
    "telegram": {"bot_token": "1:t", "chat_id": "@plaudit"},
    "bluesky": {"identifier": "bot.example", "app_password": "p"},
}


@pytest.mark.parametrize("type_name", ["memory", "simulated", "file", *NETWORK_CONFIGS])
def test_registry_hands_the_clock_to_builtin_faces(tmp_path: Path, type_name: str) -> None:
    registry = discover(only={type_name})
    clock = SimulatedClock()
    config = NETWORK_CONFIGS.get(type_name, {})
    face = registry.create(name="f", type=type_name, config=config, state_dir=tmp_path, clock=clock)
    assert face.clock is clock
    plain = registry.create(name="f", type=type_name, config=config, state_dir=tmp_path)
    assert isinstance(plain.clock, WallClock), "without a clock a face runs on the real time"


@pytest.mark.parametrize("type_name", list(NETWORK_CONFIGS))
def test_network_faces_wait_on_their_clock(tmp_path: Path, type_name: str) -> None:
    clock = SimulatedClock()
    face = discover(only={type_name}).create(
        name="f", type=type_name, config=NETWORK_CONFIGS[type_name], state_dir=tmp_path, clock=clock
    )
    # Building the HTTP client does no I/O; its limiter and retry waits use the face's clock.
    http = face.xrpc.http if type_name == "bluesky" else face.http  # type: ignore[attr-defined]
    assert http.clock is clock and http.limiter.clock is clock
    assert http.bucket_limiter("route").clock is clock


class OldConfig(MemoryConfig):
    pass


class OldStyleFace(Face[OldConfig]):
    """A third-party face written before the clock: its constructor has no `clock`."""

    type_name = "oldstyle"
    Config = OldConfig

    def __init__(self, *, name: str, config: OldConfig, state_dir: Path) -> None:
        super().__init__(name=name, config=config, state_dir=state_dir)
        self.built_with = type(self.clock)

    @property
    def limits(self) -> Limits:
        return Limits(max_length=100)

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        return
        yield

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        return Published(ref="r", published_at=utc_datetime(self.clock))

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        return []

    async def _check(self) -> FaceInfo:
        return FaceInfo(face=self.name, type_name=self.type_name, account="a", limits=self.limits)


class KwargsFace(OldStyleFace):
    """A face that forwards whatever it is given."""

    type_name = "kwargs"

    def __init__(self, **kwargs: Any) -> None:
        super(OldStyleFace, self).__init__(**kwargs)
        self.built_with = type(self.clock)


async def test_faces_without_a_clock_parameter_get_the_clock_after_construction(
    tmp_path: Path,
) -> None:
    registry = FaceRegistry(
        installed={
            "oldstyle": InstalledFace("oldstyle", OldStyleFace, "old 1", "old:OldStyleFace"),
            "kwargs": InstalledFace("kwargs", KwargsFace, "kw 1", "kw:KwargsFace"),
        }
    )
    clock = SimulatedClock()
    old = registry.create(name="o", type="oldstyle", config={}, state_dir=tmp_path, clock=clock)
    assert isinstance(old, OldStyleFace)
    assert old.built_with is WallClock, "constructed the old way, without clock="
    assert old.clock is clock, "then given the host's clock"
    published = await old.publish(Draft(text="hello"), idempotency_key="k")
    assert published.published_at == utc_datetime(clock)
    # check() stamps checked_at on the face's clock when the face leaves it to the default.
    clock.advance(3600)
    assert (await old.check()).checked_at == utc_datetime(clock)
    (missing,) = await old.reactions(["nowhere"])
    assert not missing.found and missing.read_at == utc_datetime(clock)

    forwarded = registry.create(name="k", type="kwargs", config={}, state_dir=tmp_path, clock=clock)
    assert isinstance(forwarded, KwargsFace)
    assert forwarded.built_with is SimulatedClock, "**kwargs takes clock= at construction"
