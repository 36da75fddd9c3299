"""The plugin guide (faces/README.md) stays true: its tagged code samples run here, and every
sample and the example package import only what `plaudit.faces` exports.

A block preceded by `<!-- guide-test: NAME -->` is run as written: `taste-face` becomes the
module `taste` (the guide's test block imports it), `taste-face-tests` runs in this module so
that pytest collects its contract class and test, and `journal` is completed below."""

import ast
import importlib
import re
import sys
import tomllib
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest

import plaudit.faces
from plaudit.faces import Draft, FaceInfo, Limits, Published, Rejected, utc_datetime

ROOT = Path(__file__).parents[2]
GUIDE = ROOT / "faces" / "README.md"
EXAMPLE = ROOT / "faces" / "examples" / "plaudit-face-notebook"


def guide_blocks() -> dict[str, str]:
    text = GUIDE.read_text(encoding="utf-8")
    found = re.findall(r"<!-- guide-test: ([\w-]+) -->\n```python\n(.*?)\n```", text, re.S)
    return dict(found)


BLOCKS = guide_blocks()

# The corpus face as the module `taste`, then its tests (TestTasteFace, the appeal test) here.
_taste = types.ModuleType("taste")
exec(compile(BLOCKS["taste-face"], f"{GUIDE}:taste-face", "exec"), _taste.__dict__)
sys.modules["taste"] = _taste
exec(compile(BLOCKS["taste-face-tests"], f"{GUIDE}:taste-face-tests", "exec"), globals())


def test_the_guide_has_its_tested_blocks() -> None:
    assert set(BLOCKS) == {"taste-face", "taste-face-tests", "journal"}
    assert "TestTasteFace" in globals()  # collected by pytest: the contract suite runs on it


def _postcard_face() -> tuple[type[Any], type[Any]]:
    """The guide's journal sample, completed with the hooks it leaves out and a platform that
    counts what it is sent; and its config class."""
    namespace: dict[str, Any] = {}
    exec(compile(BLOCKS["journal"], f"{GUIDE}:journal", "exec"), namespace)
    config: type[Any] = namespace["PostcardConfig"]
    sample: type[Any] = namespace["PostcardFace"]

    class Postcards(sample):  # type: ignore[misc,valid-type]
        type_name = "postcards"
        Config = config
        sent: ClassVar[list[str]] = []  # the platform: every text it got, across restarts
        refuse = False

        @property
        def limits(self) -> Limits:
            return Limits(max_length=100)

        async def _send(self, text: str, *, key: str) -> Published:
            if self.refuse:
                raise Rejected("No postcards today.", reason="closed")
            self.sent.append(text)
            return Published(ref=f"card-{len(self.sent)}", published_at=utc_datetime(self.clock))

        async def _history(self, *, since: Any, until: Any, limit: Any) -> Any:
            return
            yield

        async def _reactions(self, refs: Any) -> list[Any]:
            return []

        async def _check(self) -> FaceInfo:
            return FaceInfo(face=self.name, type_name="postcards", account="a", limits=self.limits)

    return Postcards, config


async def test_journal_sample_keeps_idempotency_across_a_restart(tmp_path: Path) -> None:
    cls, config = _postcard_face()
    face = cls(name="p", config=config(), state_dir=tmp_path)
    first = await face.publish(Draft(text="Greetings"), idempotency_key="k1")
    await face.aclose()
    again = cls(name="p", config=config(), state_dir=tmp_path)  # a restart
    assert await again.publish(Draft(text="Greetings"), idempotency_key="k1") == first
    assert cls.sent == ["Greetings"], "the same key must not reach the platform twice"
    again.refuse = True
    with pytest.raises(Rejected):
        await again.publish(Draft(text="Refused"), idempotency_key="k2")
    again.refuse = False
    await again.publish(Draft(text="Refused"), idempotency_key="k2")  # discarded: may resend
    assert cls.sent == ["Greetings", "Refused"]
    await again.aclose()


# ---- only public names -------------------------------------------------------------------


def _python_sources() -> list[tuple[str, str]]:
    """Every Python code block of the guide and every module of the example package."""
    text = GUIDE.read_text(encoding="utf-8")
    sources = [(f"{GUIDE.name} block {i}", b) for i, b in enumerate(_blocks(text))]
    sources += [(str(p.relative_to(ROOT)), p.read_text("utf-8")) for p in EXAMPLE.rglob("*.py")]
    return sources


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)\n```", text, re.S)


def _imports(source: str) -> list[tuple[str, list[str]]]:
    """(module, names) of each `from plaudit... import` and `import plaudit...` line. Abridged
    blocks are not all valid Python, so the lines are read on their own."""
    found = []
    for statement in re.findall(r"^(?:from|import) plaudit[^\n(]*(?:\([^)]*\))?", source, re.M):
        tree = ast.parse(statement)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                found.append((node.module, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names]
    return found


def test_guide_and_example_import_only_public_names() -> None:
    problems = []
    checked = 0
    for where, source in _python_sources():
        for module, names in _imports(source):
            checked += 1
            if any(part.startswith("_") for part in module.split(".")):
                problems.append(f"{where}: imports the private module {module}")
                continue
            exported = set(getattr(importlib.import_module(module), "__all__", ()))
            problems += [
                f"{where}: {name} is not in {module}.__all__"
                for name in names
                if name not in exported
            ]
    assert checked >= 8, "the guide's samples should import from plaudit"
    assert not problems, "\n".join(problems)


def test_plugin_authors_need_no_private_module() -> None:
    # What the guide tells a plugin author to use, importable from the public package.
    for name in ("PublishJournal", "JournalEntry", "JournalState", "SimulatedAudience", "Clock"):
        assert name in plaudit.faces.__all__, name
    from plaudit.faces.simulated import __all__ as simulated

    assert "load_corpus" in simulated


# ---- the kit's extra -----------------------------------------------------------------------


def test_facekit_extra_brings_what_the_kit_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    facekit = project["optional-dependencies"]["facekit"]
    names = {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower() for req in facekit}
    base = {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower() for req in project["dependencies"]}
    kit = ast.parse((ROOT / "faces" / "testing.py").read_text("utf-8"))
    third_party = {
        alias.name.split(".")[0]
        for node in ast.walk(kit)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(kit)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    third_party -= set(sys.stdlib_module_names) | {"plaudit"}
    assert third_party <= names | base, f"the kit imports {third_party}; facekit has {names}"
    assert names == {"pytest"}, "the facekit extra brings the kit's needs and nothing else"
    assert "pip install 'plaudit[facekit]'" in GUIDE.read_text("utf-8")
