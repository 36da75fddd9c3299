"""bench/online.py refuses what it cannot finish before it runs, not after."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from bench_helpers import load_bench


def test_out_without_matplotlib_is_refused_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--out draws a PNG: without matplotlib the run would end in a traceback after hours, so
    the arguments are refused at once, naming the fix."""
    bench = load_bench()
    real = importlib.util.find_spec

    def without_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        return None if name == "matplotlib" else real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_matplotlib)
    with pytest.raises(SystemExit, match=r"matplotlib.*pip install -e '\.\[bench\]'"):
        bench.parse_args(["--quick", "--out", str(tmp_path / "out")])
    options = bench.parse_args(["--quick", "--json"])  # no --out: no PNG, nothing refused
    assert options.out is None
