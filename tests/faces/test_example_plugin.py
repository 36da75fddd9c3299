"""The example plugin package (faces/examples/plaudit-face-notebook) is installed the way a
user would install it (pip, its own pyproject.toml, no plaudit source tricks), then its own
tests run in a separate process: the face is found through its `plaudit.faces` entry point and
passes the contract suite."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[2] / "faces" / "examples" / "plaudit-face-notebook"


def test_example_package_installs_and_passes_the_contract(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path / "site"
    # --no-build-isolation: build with this environment's setuptools (no download);
    # --no-deps: plaudit itself is already installed here.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (target / "plaudit_face_notebook-0.1.0.dist-info" / "entry_points.txt").is_file()
    run_dir = tmp_path / "run"  # an empty cwd: the module can only come from `target`
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(source),
            str(source / "tests"),
        ],
        cwd=run_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    out = result.stdout
    assert "test_registered_through_its_entry_point PASSED" in out
    assert "TestNotebookFace::test_publish_is_idempotent PASSED" in out
    assert "TestNotebookFace::test_history_since_until PASSED" in out
    assert " failed" not in out
