"""Load bench/online.py (a script, not a package) as a module in tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench" / "online.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plaudit_bench_online", BENCH)
    assert spec is not None and spec.loader is not None, f"cannot load {BENCH}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
