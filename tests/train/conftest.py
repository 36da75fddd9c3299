"""Shared fixtures for the offline-training tests: a small synthetic corpus and a tokenizer
trained on it once per session (BPE training is the slow part of a from-scratch run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_corpus import make_posts

from plaudit.learner._tokenizer import Tokenizer


@pytest.fixture(scope="session")
def posts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "posts.txt"
    path.write_text("\n".join(make_posts(300)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    texts = [*make_posts(300), "Q: what is it?\nA: a thing", "User: hi\nAssistant: hello"]
    Tokenizer.train_bpe(texts, vocab_size=320).save(path)
    return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(tokenizer_dir)
