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


def test_fit_steps_fit_a_preset_from_scratch_and_a_pretrained_model_as_the_daemon() -> None:
    """--fit-steps: a preset is always fitted (150 steps unless said); a pretrained model runs
    as it is unless steps are given, then it is fitted as the daemon's first fit (its own
    recipe, cached apart from the preset's)."""
    bench = load_bench()
    assert bench.parse_args([]).fit == bench.FitRecipe(preset="tiny", steps=150)
    assert bench.parse_args(["--fit-steps", "20"]).fit == bench.FitRecipe(preset="tiny", steps=20)
    assert bench.parse_args(["--model", "smollm2"]).fit is None
    assert bench.parse_args(["--model", "smollm2", "--fit-steps", "0"]).fit is None
    fit = bench.parse_args(["--model", "smollm2", "--fit-steps", "40"]).fit
    assert fit == bench.DaemonFit(model="smollm2", steps=40)
    assert bench.fit_cache_dir("simulated", {}, fit).name.startswith("simulated-smollm2-")
    with pytest.raises(SystemExit, match="--fit-steps 0"):
        bench.parse_args(["--fit-steps", "0"])
    with pytest.raises(SystemExit, match="--fit-steps -1"):
        bench.parse_args(["--model", "smollm2", "--fit-steps", "-1"])
