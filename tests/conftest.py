"""Shared fixtures: a tiny model folder built here (no hub, no big weights)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def build_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    """A nano-sized Llama-family model with a BPE tokenizer trained on 400 tweets."""
    import torch

    from plaudit.faces.simulated._corpus import load_corpus
    from plaudit.learner import ModelConfig, Transformer
    from plaudit.learner._load import save_model
    from plaudit.learner._tokenizer import Tokenizer

    texts = [p.text for p in load_corpus()[:400]]
    tokenizer = Tokenizer.train_bpe(texts, vocab_size=512)
    torch.manual_seed(seed)
    config = ModelConfig(
        family="llama",
        vocab_size=tokenizer.vocab_size,
        max_seq_len=128,
        n_layer=2,
        n_head=2,
        n_kv_head=1,
        n_embd=32,
        intermediate_size=64,
    )
    model = Transformer(config)
    model.init_weights()
    save_model(folder, model=model, tokenizer=tokenizer)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test (tiny models gain nothing from a second, and OpenMP
    threads spinning against a busy neighbour cost far more); the count is put back after.
    A module takes it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _ieee_floats_after_each_test() -> Iterator[None]:
    """Training code sets flush-to-zero on the thread that runs it (a big speed-up on CPU);
    in tests that thread is pytest's own, and hypothesis (schemathesis) refuses to run with
    subnormals flushed. Each test leaves the process as it found it."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_flush_denormal(False)


@pytest.fixture
def cuda_full_fp32() -> Iterator[None]:
    """For the `gpu` tests: TF32 matmuls would drift past the 1e-4 their comparisons allow."""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
