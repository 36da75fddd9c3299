"""Fixtures for the controller's tests."""

from __future__ import annotations

from pathlib import Path

import pytest


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
