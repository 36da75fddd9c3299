"""Evaluation metrics on hand-checked inputs, and memorisation detection."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from plaudit.learner._data import examples_from_texts
from plaudit.learner._eval import (
    SuffixAutomaton,
    corpus_bleu,
    distinct_n,
    evaluate,
    lcs_length,
    rouge_l,
    score_samples,
)
from plaudit.learner._model import PRESETS, Transformer
from plaudit.learner._tokenizer import Tokenizer


def test_bleu_against_hand_computed_values() -> None:
    # p1 5/6, p2 3/5, p3 1/4, p4 0/3 -> exp-smoothed 1/6; equal lengths: BP 1.
    # BLEU = (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = (1/48) ** 0.25 = 0.379918
    assert corpus_bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(
        37.9918, abs=1e-3
    )
    assert corpus_bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    # Brevity penalty: the hypothesis is the first 4 of 8 reference words: exp(1 - 8/4).
    assert corpus_bleu(["a b c d"], ["a b c d e f g h"]) == pytest.approx(
        100 * (1 / 2.718281828459045), rel=1e-6
    )
    # Corpus level: counts are summed before dividing (not an average of sentence scores).
    two = corpus_bleu(["a b c d e", "x y"], ["a b c d e", "x z"])
    # p1 6/7, p2 4/5, p3 3/3, p4 2/2; lengths 7 = 7
    assert two == pytest.approx(100 * (6 / 7 * 4 / 5) ** 0.25, abs=1e-6)
    assert corpus_bleu(["a"], ["b c d e"]) == 0.0  # no 2-grams at all


def test_rouge_l_and_lcs() -> None:
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # P = 2/3, R = 2/4 -> F = 2PR/(P+R) = 4/7; case and punctuation do not count.
    assert rouge_l("The dog, barked!", "the big dog slept") == pytest.approx(4 / 7)
    assert rouge_l("", "a") == 0.0


def test_distinct_n() -> None:
    texts = ["a b a b", "a c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (a b), (b a), (a c) of 4


def test_suffix_automaton_matches_brute_force() -> None:
    rng = random.Random(0)
    seqs = [[rng.randrange(6) for _ in range(rng.randint(1, 30))] for _ in range(40)]
    sam = SuffixAutomaton(seqs)

    def brute(q: list[int]) -> int:
        best = 0
        for s in seqs:
            for i in range(len(q)):
                for j in range(len(s)):
                    k = 0
                    while i + k < len(q) and j + k < len(s) and q[i + k] == s[j + k]:
                        k += 1
                    best = max(best, k)
        return best

    for _ in range(30):
        q = [rng.randrange(7) for _ in range(rng.randint(1, 25))]
        run, idx = sam.longest_match(q)
        assert run == brute(q)
        if run:
            assert idx is not None
            s = seqs[idx]
            assert any(
                q[i : i + run] == s[j : j + run]
                for i in range(len(q) - run + 1)
                for j in range(len(s) - run + 1)
            )


def test_memorisation_finds_the_copied_post(tokenizer: Tokenizer) -> None:
    from train_corpus import make_posts

    train = make_posts(200, seed=5)
    copied = train[17]
    novel = "completely unseen words xyzzy quux"
    report = score_samples(
        prompts=["", ""],
        posts=[copied, novel],
        references=["a ref", "another ref"],
        train_texts=train,
        tokenizer=tokenizer,
        threshold=8,
    )
    runs = [s.longest_run for s in report.samples]
    assert runs[0] == len(tokenizer.encode(copied)) >= 8
    assert runs[1] < 8
    assert report.memorised_share == 0.5
    assert report.worst[0].text == copied and report.worst[0].closest == copied


def test_evaluate_end_to_end_with_a_tiny_model(tokenizer: Tokenizer) -> None:
    from train_corpus import make_posts

    torch.manual_seed(0)
    model = Transformer(replace(PRESETS["nano"], vocab_size=tokenizer.vocab_size, n_layer=1))
    train = examples_from_texts(make_posts(50), source="t")
    val = examples_from_texts(make_posts(6, seed=9), source="v")
    report = evaluate(
        model=model, tokenizer=tokenizer, train=train, val=val, n_samples=4, max_new_tokens=8
    )
    assert report.val_loss is not None and report.perplexity is not None
    assert report.perplexity == pytest.approx(torch.tensor(report.val_loss).exp().item(), rel=1e-5)
    assert len(report.samples) == 4 and 0 <= report.distinct_1 <= 1
    assert all(s.reference == v.text for s, v in zip(report.samples, val, strict=False))
    assert report.to_dict()["threshold"] == 10 and report.lines()
