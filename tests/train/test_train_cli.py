"""`plaudit train offline`, `plaudit eval`, `plaudit grow` end to end on a tiny run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from plaudit.daemon._cli import _register, app


def test_train_eval_grow(tmp_path: Path, posts_file: Path, tokenizer_dir: Path) -> None:
    plaudit = Path(sys.executable).parent / "plaudit"
    run = tmp_path / "run"
    args = [
        str(plaudit),
        "train",
        "offline",
        "--model",
        "nano",
        "--data",
        str(posts_file),
        "--tokenizer",
        str(tokenizer_dir),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--max-seq-len",
        "32",
        "--eval-every",
        "3",
        "--samples",
        "1",
        "--out",
        str(run),
        "--device",
        "cpu",
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "data" in events and "sample" in events and events[-1] == "training ended"
    assert lines[-1]["steps"] == 3 and (run / "best/plaudit_model.json").is_file()

    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 1 and "--force" in again.stderr

    _register()
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(run),
            "--data",
            str(posts_file),
            "--samples",
            "3",
            "--max-new-tokens",
            "6",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["model"] == str(run / "best") and len(report["samples"]) == 3
    assert report["val_loss"] > 0 and 0 <= report["memorised_share"] <= 1

    result = runner.invoke(
        app, ["grow", "--from", str(run), "--to", "micro", "--out", str(tmp_path / "grown")]
    )
    assert result.exit_code == 0, result.output
    assert "max |logit difference|" in result.output
    assert (tmp_path / "grown/plaudit_model.json").is_file()


def test_bad_data_message_reaches_the_user(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    plaudit = Path(sys.executable).parent / "plaudit"
    done = subprocess.run(
        [
            str(plaudit),
            "train",
            "offline",
            "--model",
            "nano",
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"{bad}:2: not valid UTF-8 (byte 0xff at column 1)" in done.stderr
