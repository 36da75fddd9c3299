"""Fixtures for the controller's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loop_helpers import Loop, settings

from plaudit.controller import LoopSettings


@pytest.fixture(scope="session")
def post_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny test model fitted briefly on 400 corpus tweets: it writes post-like text and
    ends its posts with its end token (the untrained one almost never does), as a policy the
    loop can publish from must. About two seconds on one core."""
    import torch

    from plaudit.faces.simulated import load_corpus
    from plaudit.learner import OfflineTrainConfig, examples_from_texts, train_offline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = OfflineTrainConfig(
            model=str(tiny_model_dir),
            max_steps=120,
            lr=3e-3,
            warmup_steps=5,
            batch_size=16,
            max_seq_len=64,
            eval_every=1000,
            save_every=1000,
            samples=0,
            device="cpu",
            val_split=0.0,
        )
        texts = [p.text for p in load_corpus()[:400]]
        result = train_offline(
            cfg,
            out=tmp_path_factory.mktemp("fit") / "run",
            extra_examples=examples_from_texts(texts, source="corpus"),
        )
    finally:
        torch.set_num_threads(threads)
    folder = result.best_dir or result.last_checkpoint
    assert folder is not None
    return folder


@pytest.fixture
def make_loop(tmp_path: Path, post_model_dir: Path) -> Iterator[Any]:
    import torch

    # A nano model gains nothing from a second thread, and OpenMP threads that spin against a
    # busy neighbour cost 50x (measured: 3 s instead of 0.05 s per cycle on a loaded 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loops: list[Loop] = []

    def make(loop_settings: LoopSettings | None = None) -> Loop:
        loop = Loop(tmp_path / f"loop{len(loops)}", post_model_dir, loop_settings or settings())
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()
    torch.set_num_threads(threads)
