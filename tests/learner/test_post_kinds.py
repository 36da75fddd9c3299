"""Kinds of post: k-means of a history's features, and how many of them a set of posts covers."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from plaudit.learner import PostKinds, effective_number, kinds_covered


def blobs(n_per: int, centres: int, dim: int = 12, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, dim, generator=g) * 6
    rows, labels = [], []
    for c in range(centres):
        rows.append(means[c] + torch.randn(n_per, dim, generator=g))
        labels += [c] * n_per
    return torch.cat(rows), labels


def test_kinds_recover_separated_clusters_and_assign_new_posts_to_them() -> None:
    x, labels = blobs(40, 4)
    kinds = PostKinds.fit(x, k=4)
    assert kinds is not None and kinds.k == 4
    assigned = kinds.assign(x)
    # Up to a renaming, every cluster is one kind.
    pairs = Counter(zip(labels, assigned, strict=True))
    assert len(pairs) == 4 and all(v == 40 for v in pairs.values())
    assert kinds.effective(x) == pytest.approx(4.0)
    # New posts near a cluster (the same centres, other noise) get its kind.
    more, more_labels = blobs(5, 4, seed=0)
    kind_of = {label: kind for label, kind in pairs}
    assert kinds.assign(more) == [kind_of[label] for label in more_labels]
    assert kinds.assign(x[:0]) == []


def test_too_few_posts_give_no_kinds_and_the_fit_is_reproducible() -> None:
    x, _ = blobs(7, 2)  # 14 rows: under 8 per kind for 2 kinds is 16
    assert PostKinds.fit(x, k=2) is None
    y, _ = blobs(30, 5, seed=3)
    a, b = PostKinds.fit(y, k=8, seed=1), PostKinds.fit(y, k=8, seed=1)
    assert a is not None and b is not None and torch.equal(a.centres, b.centres)
    # Identical rows: no spread to cluster, one kind holds them all.
    same = PostKinds.fit(torch.ones(64, 4), k=4)
    assert same is not None and same.effective(torch.ones(64, 4)) == pytest.approx(1.0)


def test_effective_number_counts_equal_kinds_and_corrects_for_the_window() -> None:
    assert effective_number([5]) == pytest.approx(1.0)
    assert effective_number([3, 3, 3, 3]) == pytest.approx(4.0)
    assert 1.0 < effective_number([9, 1]) < 2.0
    with pytest.raises(ValueError, match="positive"):
        effective_number([0, 0])
    with pytest.raises(ValueError, match="at least one"):
        kinds_covered([])
    assert kinds_covered([2] * 100) == pytest.approx(1.0)
    # 100 posts of 16 equal kinds: the plain estimate reads low, the corrected one near 16.
    rng = random.Random(0)
    draws = [[rng.randrange(16) for _ in range(100)] for _ in range(200)]
    plain = sum(effective_number(list(Counter(d).values())) for d in draws) / len(draws)
    corrected = sum(kinds_covered(d) for d in draws) / len(draws)
    assert plain < 15.0 and 15.5 < corrected < 16.5
