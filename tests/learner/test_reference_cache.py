"""The reference's work on posts kept across online updates (`ReferenceCache`): an update that
finds its posts there computes what one without the cache computes, runs no reference forward
over them, and the cache drops what it kept when the reference changes or its bytes run out."""

from __future__ import annotations

import copy

import pytest
import torch
from test_online import COMPLETIONS, PROMPTS, batch_for, tiny

from plaudit.learner import Transformer
from plaudit.learner._online import OnlineUpdateConfig, Trajectory, UpdateStats, policy_update
from plaudit.learner._reference_cache import ReferenceCache, post_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = OnlineUpdateConfig(max_kl=50.0)  # a bound far off: every step checked, none scaled


def probe_for(model: Transformer) -> list[Trajectory]:
    """Six recent samples: two cycles of three candidates, each cycle sharing its prompt."""
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[2]] * 3
    completions = [[10, 11, 12], [14, 15], [16, 17, 18, 19], [30, 31], [33, 34, 35], [36]]
    return [
        Trajectory(p, c, [-1.0] * len(c), 0.0) for p, c in zip(prompts, completions, strict=True)
    ]


def update(
    model: Transformer,
    reference: Transformer,
    batch: list[Trajectory],
    probe: list[Trajectory],
    cache: ReferenceCache | None,
) -> UpdateStats:
    torch.manual_seed(0)  # the minibatch order
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return policy_update(
        model=model,
        reference=reference,
        optimizer=optimizer,
        batch=batch,
        config=CONFIG,
        probe=probe,
        reference_cache=cache,
    )


def counting_forwards(model: Transformer) -> list[int]:
    """Counts the calls of ``model.hidden_states`` (every forward of the update runs it)."""
    calls = [0]
    inner = model.hidden_states

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls[0] += 1
        return inner(*args, **kwargs)  # type: ignore[arg-type]

    model.hidden_states = counted  # type: ignore[method-assign]
    return calls


def test_an_update_from_the_cache_computes_what_one_without_it_does() -> None:
    reference = tiny(0)
    start = tiny(1, scale=1.2)
    batch = batch_for(start, [1.0, -1.0, 0.5, -0.5])
    probe = probe_for(start)
    cache = ReferenceCache()
    warm = copy.deepcopy(start)
    update(warm, reference, batch, probe, cache)  # fills the cache
    assert len(cache) == len(batch) + len(probe)
    plain, cached = copy.deepcopy(start), copy.deepcopy(start)
    without = update(plain, reference, batch, probe, None)
    calls = counting_forwards(reference)
    hits = cache.hits
    with_cache = update(cached, reference, batch, probe, cache)
    assert calls[0] == 0, "every post was in the cache: the reference ran no forward"
    assert cache.hits - hits == len(batch) + len(probe)
    for field in ("kl_per_post", "kl_per_post_before", "kl_se", "loss", "entropy"):
        assert getattr(with_cache, field) == pytest.approx(getattr(without, field), rel=1e-5)
    for a, b in zip(plain.parameters(), cached.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_chunk_partly_in_the_cache_runs_the_reference_over_the_rest_only() -> None:
    reference = tiny(0)
    start = tiny(1, scale=1.2)
    batch = batch_for(start, [1.0, -1.0, 0.5, -0.5])
    cache = ReferenceCache()
    update(copy.deepcopy(start), reference, batch[:2], [], cache)
    assert len(cache) == 2
    plain, cached = copy.deepcopy(start), copy.deepcopy(start)
    without = update(plain, reference, batch, [], None)
    misses = cache.misses
    with_cache = update(cached, reference, batch, [], cache)
    assert cache.misses - misses == 2 and len(cache) == 4
    assert with_cache.kl_per_post == pytest.approx(without.kl_per_post, rel=1e-5)
    for a, b in zip(plain.parameters(), cached.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_cache_keeps_the_head_input_of_each_completion_position() -> None:
    reference = tiny(0)
    start = tiny(1)
    batch = batch_for(start, [1.0, -1.0, 0.5, -0.5])
    cache = ReferenceCache()
    update(copy.deepcopy(start), reference, batch, [], cache)
    for prompt, completion in zip(PROMPTS, COMPLETIONS, strict=True):
        hidden = cache.get(post_key(prompt, completion))
        assert hidden is not None
        with torch.no_grad():
            full = reference.hidden_states(torch.tensor([prompt + completion[:-1]]), layers=2)
            want = reference.norm_f(full[0, len(prompt) - 1 :])
        torch.testing.assert_close(hidden, want, rtol=1e-5, atol=1e-5)


def test_another_reference_or_one_written_in_place_empties_the_cache() -> None:
    reference = tiny(0)
    cache = ReferenceCache()
    cache.bind(reference)
    cache.put(post_key([1], [2, 3]), torch.ones(2, 4))
    cache.bind(reference)
    assert len(cache) == 1, "the same reference, unchanged: kept"
    with torch.no_grad():
        next(reference.parameters())[0, 0] += 1.0  # an offline fit writing in place
    cache.bind(reference)
    assert len(cache) == 0
    cache.put(post_key([1], [2, 3]), torch.ones(2, 4))
    cache.bind(reference.to(torch.float64))  # the same object, its weights in new storage
    assert len(cache) == 0
    cache.put(post_key([1], [2, 3]), torch.ones(2, 4))
    cache.bind(tiny(0))  # equal weights, another model: a new reference all the same
    assert len(cache) == 0


def test_the_cache_drops_the_least_recently_used_beyond_its_bytes() -> None:
    cache = ReferenceCache(max_bytes=3 * 2 * 4 * 4)  # three entries of (2, 4) fp32
    keys = [post_key([1], [k, k]) for k in range(4)]
    for key in keys[:3]:
        cache.put(key, torch.ones(2, 4))
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], torch.ones(2, 4))
    assert len(cache) == 3 and cache.nbytes == 3 * 32
    assert cache.get(keys[1]) is None, "the least recently used went"
    assert all(cache.get(k) is not None for k in (keys[0], keys[2], keys[3]))
    cache.put(post_key([9], [9]), torch.ones(100, 4))  # larger than the whole cache: not kept
    assert len(cache) == 3
