"""Building plaudit prints no setuptools warnings and still ships its data files (issue 17,
item 11: every install printed a page of "Package 'plaudit.daemon.static' is absent from the
`packages` configuration")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["daemon", "faces", "controller", "learner", "state"]


def test_the_wheel_builds_without_warnings_and_holds_the_data_files(tmp_path: Path) -> None:
    # A copy of the sources: the build writes an egg-info and build/ next to them.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    build = f"from setuptools import build_meta; print(build_meta.build_wheel({str(out)!r}))"
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", build],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert "plaudit.daemon.static" not in log
    assert "Warning" not in log, log
    wheel = out / done.stdout.strip().splitlines()[-1]
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "plaudit/daemon/static/index.html",
        "plaudit/daemon/static/app.js",
        "plaudit/daemon/static/app.css",
        "plaudit/learner/_native_gemm.cpp",
        "plaudit/learner/_native_layers.cpp",
        "plaudit/learner/_native_sample.cpp",
        "plaudit/learner/_native_simd.h",
        "plaudit/faces/simulated/tweets_GroundTruth.txt.gz",
        *(f"plaudit/{name}/py.typed" for name in PACKAGES),
    ):
        assert data in names, data


def test_the_install_line_brings_the_compiler_the_decoding_kernel_wants() -> None:
    """learner/_native.py compiles its GEMM with the system C++ compiler at first use; without
    one, decoding falls back to torch's slower kernels."""
    readme = (ROOT / "deploy" / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if x.startswith("sudo apt-get install")]
    assert "g++" in line.split()
    assert "`g++` compiles plaudit's own decoding kernel" in readme
