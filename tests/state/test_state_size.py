"""`state_size`: the state folder's bytes by part, from stat alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plaudit.state import STATE_PARTS, Store, state_size


def test_parts_are_summed_by_top_level_name(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Store.open(state):
        pass
    database = sum(p.stat().st_size for p in state.glob("plaudit.sqlite3*"))
    for name, size in [
        ("checkpoints/v000003/model.safetensors", 3000),
        ("checkpoints/v000003/online_optimizer.pt", 6000),
        ("checkpoints/damaged-v000002/model.safetensors", 500),
        ("cache/abc/model.safetensors", 700),
        ("faces/sim/state.json", 11),
        ("offline/run/best/model.safetensors", 40),
        ("http-token", 32),
    ]:
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        (state / name).write_bytes(b"\0" * size)
    os.symlink(tmp_path / "elsewhere", state / "cache" / "link")  # not followed
    sizes = state_size(state)
    assert list(sizes) == list(STATE_PARTS)
    assert sizes == {
        "checkpoints": 9500,
        "database": database,
        "cache": 700,
        "other": 11 + 40 + 32 + sum(p.stat().st_size for p in state.glob("*.pid")),
    }
    assert database > 0


def test_a_missing_folder_is_all_zeros(tmp_path: Path) -> None:
    assert state_size(tmp_path / "nowhere") == dict.fromkeys(STATE_PARTS, 0)


def test_an_entry_that_vanishes_while_it_walks_counts_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "checkpoints" / "v000001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "v000001" / "model.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "x").write_bytes(b"\0" * 10)
    real = os.scandir

    def rotating(path: str | os.PathLike[str]) -> object:
        if str(path).endswith("v000001"):  # rotated out between the listing and the walk
            raise FileNotFoundError(2, "gone", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", rotating)
    assert state_size(tmp_path) == {"checkpoints": 0, "database": 0, "cache": 10, "other": 0}
