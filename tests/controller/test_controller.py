"""The controller on its own, on a simulated clock: a real store, a real tiny policy on the one
torch worker, and the in-memory face with a rule for its audience. A simulated week runs in
seconds; every rule of posting and every piece of reward bookkeeping is checked against what
the face itself recorded."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from loop_helpers import DAY, HOUR, history, settings

from plaudit.controller import (
    Controller,
    LoopSettings,
    QuietHours,
)
from plaudit.faces import (
    Draft,
    RateLimited,
    Transient,
)
from plaudit.learner import Policy
from plaudit.state import PostStatus


async def test_a_simulated_week(make_loop: Any) -> None:
    loop = make_loop()
    ctl = loop.controller()
    await ctl.start(schedule=False)
    start = loop.clock.now()
    t0 = time.monotonic()
    counts = await ctl.run_until(start + 7 * DAY)
    wall = time.monotonic() - t0
    print(f"a simulated week: {wall:.1f} s, jobs {counts}")

    published = loop.published()
    times = sorted(p.published_at for p in published)
    # Every 4 h +- 20 min for a week, capped at 6 a day: 40 to 42 posts.
    assert 38 <= len(published) <= 43, counts
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 4 * HOUR - 20 * 60 - 1
    # The face's own record and the store agree: one face post per published post, no duplicate.
    assert len(loop.face.posts()) == len(history()) + len(published)
    assert {p.face_ref for p in published} == {
        p.id for p in loop.face.posts() if not p.id.startswith("h")
    }
    # Each post published a day before the end has its three snapshots and exactly one reward.
    rewards = loop.store.rewards(limit=10_000)
    assert len({r.post_id for r in rewards}) == len(rewards)
    settled = [p for p in published if p.published_at <= loop.clock.now() - DAY - 600]
    assert {r.post_id for r in rewards} >= {p.id for p in settled}
    for post in settled:
        assert len(loop.store.snapshots(post.id)) == 3
    # Learning ran on those rewards: updates, checkpoints, every used reward used once.
    assert ctl.ctx.policy.version >= 5
    assert loop.store.latest_checkpoint() is not None
    used = loop.store.rewards(limit=10_000)
    assert len(used) - len(loop.store.rewards(unused_only=True, limit=10_000)) >= 20
    # The reward model: warm-started on the face's history, refit on rewards, a prediction
    # stored for every candidate (before its reward), its correlation with them exported.
    head = ctl.reward_model.head
    assert head is not None and head.n_history == len(history()) and head.n_own >= 20
    candidates = loop.store.posts(limit=10_000)
    assert all(p.predicted_reward is not None for p in candidates)
    rho = loop.metrics.reward_model_spearman.labels("mem")._value.get()
    assert -1.0 <= rho <= 1.0 and ctl.reward_model.correlation["mem"] == rho
    # Each update measured its drift on the newest candidates, not on its stale batch.
    updates = [r for r in loop.store.runs(kind="online") if r.status == "completed"]
    assert updates and all(r.metrics["kl_measured_on"] == "probe" for r in updates)
    assert counts["post"].get("error", 0) == 0
    assert wall < 120


async def test_failed_publish_keeps_its_intent_and_goes_out_before_new_posts(
    make_loop: Any,
) -> None:
    loop = make_loop()
    ctl = loop.controller()
    await ctl.start(schedule=False)
    for _ in range(4):  # every inline attempt of the first cycle fails for now (a 5xx)
        loop.face.fail_next(Transient("502 from the server", face="mem"))
    outcome = await ctl.run_job("post:mem")
    assert outcome == "error"
    [kept] = loop.store.in_flight(face="mem")
    assert loop.face.publish_calls and {k for k, _ in loop.face.publish_calls} == {
        kept.idempotency_key
    }
    candidates = loop.store.count_posts(face="mem")
    # The retry is due within minutes (backoff), not a whole post interval later.
    due = ctl.due()["post:mem"]
    assert due - loop.clock.now() <= 120
    loop.face.fail_next(Transient("503 from the server", face="mem"))
    loop.face.fail_next(Transient("503 from the server", face="mem"))
    loop.face.fail_next(Transient("503 from the server", face="mem"))
    loop.face.fail_next(Transient("503 from the server", face="mem"))
    await ctl.run_until(due)
    # Failed again: the next try backs off further; still no new candidates generated.
    second_due = ctl.due()["post:mem"]
    assert second_due - loop.clock.now() > due - kept.created_at
    assert loop.store.count_posts(face="mem") == candidates
    await ctl.run_until(second_due)
    # Published now, under the key of its intent, and no new post was generated in that cycle.
    assert loop.store.in_flight(face="mem") == []
    post = loop.store.get_post(kept.id)
    assert post.status is PostStatus.PUBLISHED
    assert loop.store.count_posts(face="mem") == candidates
    assert {k for k, _ in loop.face.publish_calls} == {kept.idempotency_key}
    assert len(loop.face.posts()) == len(history()) + 1
    # The next post comes a full interval later, and it is a new one.
    next_due = ctl.due()["post:mem"]
    assert next_due - loop.clock.now() >= 4 * HOUR - 20 * 60 - 1
    await ctl.run_until(next_due)
    assert len(loop.published()) == 2


async def test_rate_limits_are_waited_on_the_clock_or_kept(make_loop: Any) -> None:
    loop = make_loop()
    ctl = loop.controller()
    await ctl.start(schedule=False)
    # A short limit is waited out inside the cycle, on the simulated clock.
    loop.face.fail_next(RateLimited("slow down", face="mem", retry_after=30.0))
    before = loop.clock.now()
    assert await ctl.run_job("post:mem") == "success"
    assert loop.clock.slept >= 30.0 and loop.clock.now() - before >= 30.0
    assert loop.metrics.rate_limit_wait_seconds.labels("mem")._value.get() == 30.0
    # A long one keeps the intent; the retry waits at least the limit.
    await ctl.run_until(ctl.due()["post:mem"] - 1)
    loop.face.fail_next(RateLimited("come back later", face="mem", retry_after=2 * HOUR))
    await ctl.run_until(ctl.due()["post:mem"])
    [kept] = loop.store.in_flight(face="mem")
    assert ctl.due()["post:mem"] - loop.clock.now() >= 2 * HOUR - 1
    await ctl.run_until(loop.clock.now() + 2 * HOUR + 1)
    assert loop.store.get_post(kept.id).status is PostStatus.PUBLISHED
    assert len(loop.published()) == 2
    # Waits the face makes inside its own calls (its limiter, a reset its HTTP client waited
    # out) count too: it reports them, the loop adds what they grew by.
    loop.face.rate_limit_waited_seconds = lambda: 12.5  # type: ignore[method-assign]
    await ctl.run_until(ctl.due()["post:mem"])
    assert loop.metrics.rate_limit_wait_seconds.labels("mem")._value.get() == 30.0 + 12.5


async def test_quiet_hours_and_the_daily_cap_hold_for_a_week(make_loop: Any) -> None:
    quiet = QuietHours(start=datetime(2026, 1, 1, 22).time(), end=datetime(2026, 1, 1, 6).time())
    loop = make_loop(
        settings(
            post_interval=timedelta(hours=1),
            post_jitter=timedelta(0),
            daily_cap=3,
            quiet_hours=quiet,
            learn_interval=timedelta(days=30),
        )
    )
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 7 * DAY)
    times = sorted(p.published_at for p in loop.published())
    assert len(times) >= 7 * 3 - 3
    for t in times:
        local = datetime.fromtimestamp(t).astimezone().time()
        assert not (local >= quiet.start or local < quiet.end), local
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + DAY) <= 3


async def test_restart_recovers_an_in_flight_post_under_its_key(make_loop: Any) -> None:
    loop = make_loop()
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_job("post:mem")
    # A crash right after the face accepted a post but before the store heard of it: the intent
    # is recorded and the face has the post under that key.
    [cand] = loop.store.add_candidates(
        face="mem",
        cycle_id="crashed",
        candidates=[
            _candidate("a post that was in flight when the daemon died", loop.policy.version)
        ],
    )
    loop.store.choose(cand)
    loop.store.record_intent(cand, idempotency_key="plaudit-mem-crash")
    await loop.face.publish(
        Draft(text="a post that was in flight when the daemon died"),
        idempotency_key="plaudit-mem-crash",
    )
    loop.clock.advance(600)
    restarted = loop.controller(seed=1)
    await restarted.start(schedule=False)
    assert restarted.due()["post:mem"] == loop.clock.now()  # a kept intent is due at once
    generated = loop.store.count_posts(face="mem")
    assert await restarted.run_job("post:mem") == "success"
    assert loop.store.get_post(cand).status is PostStatus.PUBLISHED
    assert loop.store.count_posts(face="mem") == generated  # nothing new generated
    texts = [p.text for p in loop.face.posts()]
    assert texts.count("a post that was in flight when the daemon died") == 1


async def test_each_reward_is_recorded_once_even_when_reactions_fail(make_loop: Any) -> None:
    loop = make_loop(settings(learn_interval=timedelta(days=30)))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    start = loop.clock.now()
    await ctl.run_until(start + DAY)
    # The face fails every other reactions call for the next two days.
    for _ in range(200):
        loop.face.fail_next(Transient("reactions timed out", face="mem"))
        loop.face.fail_next(Transient("reactions timed out", face="mem"))
        await ctl.run_until(loop.clock.now() + 15 * 60)
        if loop.clock.now() > start + 3 * DAY:
            break
    await ctl.run_until(start + 5 * DAY)
    published = loop.published()
    rewards = loop.store.rewards(limit=10_000)
    assert len({r.post_id for r in rewards}) == len(rewards)
    settled = {p.id for p in published if p.published_at <= loop.clock.now() - DAY - 600}
    assert settled and settled <= {r.post_id for r in rewards}
    for post in published:
        horizons = [s.horizon_s for s in loop.store.snapshots(post.id)]
        assert len(horizons) == len(set(horizons))


async def test_jobs_due_together_run_offline_first_and_posts_wait_for_the_first_fit(
    make_loop: Any,
) -> None:
    loop = make_loop(settings(offline_interval=timedelta(days=7)))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    assert ctl.first_fit_pending
    assert "post:mem" not in ctl.due()
    assert ctl.next_job() == ("offline", loop.clock.now())


def _candidate(text: str, version: int) -> Any:
    from plaudit.state import NewCandidate

    return NewCandidate(
        text=text,
        prompt="",
        prompt_tokens=[1],
        tokens=[5, 6],
        logprobs=[-1.0, -2.0],
        policy_version=version,
    )


async def test_an_offline_fit_becomes_the_reference_a_restart_loads(
    make_loop: Any, post_model_dir: Path
) -> None:
    from plaudit.controller import OfflineConfig, reference_checkpoint

    loop = make_loop(
        LoopSettings(
            controller=settings(offline_interval=timedelta(days=7)).controller,
            sampling=settings().sampling,
            offline=OfflineConfig(max_steps=3, batch_size=4, max_seq_len=32, lr=1e-3),
        )
    )
    ctl = loop.controller()
    await ctl.start(schedule=False)
    assert reference_checkpoint(loop.store, loop.state_dir) is None
    assert await ctl.run_job("offline") == "success"
    folder = reference_checkpoint(loop.store, loop.state_dir)
    assert folder is not None and folder.is_dir()
    # Later checkpoints rotate the old ones out, never the reference's.
    for _ in range(4):
        loop.policy.version += 1
        await ctl.checkpoint(kind="online", run_id=None, metrics={})
    assert folder.is_dir()
    restarted = Policy.load(post_model_dir, reference=folder)
    assert restarted.reference is not None and loop.policy.reference is not None
    for (name, a), b in zip(
        restarted.reference.state_dict().items(),
        loop.policy.reference.state_dict().values(),
        strict=True,
    ):
        assert a.equal(b), name


async def test_a_failed_checkpoint_spends_the_rewards_and_a_restart_returns_them(
    make_loop: Any, post_model_dir: Path
) -> None:
    loop = make_loop(settings(learn_interval=timedelta(days=30)))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 2 * DAY)
    assert len(loop.store.rewards(unused_only=True)) >= 4
    before = loop.policy.version

    def disk_full(folder: Path) -> None:
        raise OSError(28, "No space left on device")

    loop.policy.save = disk_full  # type: ignore[method-assign]
    assert await ctl.run_job("learn") == "error"
    assert loop.policy.version == before + 1  # the update itself went through
    spent = [r for r in loop.store.rewards() if r.used_in_version == before + 1]
    assert spent and loop.store.rewards(unused_only=True) == []  # not trained on twice
    # A restart runs the weights of the last checkpoint (version `before`): the update is lost
    # with the process, and its rewards wait for the next one.
    restarted = Controller(
        settings=loop.settings,
        store=loop.store,
        faces={"mem": loop.face},
        policy=Policy.load(post_model_dir, version=before),
        worker=loop.worker,
        metrics=loop.metrics,
        state_dir=loop.state_dir,
        clock=loop.clock,
    )
    await restarted.start(schedule=False)
    assert {r.post_id for r in loop.store.rewards(unused_only=True)} == {r.post_id for r in spent}


async def test_stop_then_start_during_the_first_fit_runs_only_the_steps_left(
    make_loop: Any,
) -> None:
    """A first fit stopped part-way keeps its weights; Start picks it up where it stopped (the
    steps left, not a second whole fit), and posting waits for it again meanwhile."""
    from plaudit.controller import OfflineConfig

    loop = make_loop(
        LoopSettings(
            controller=settings(offline_interval=timedelta(hours=1)).controller,
            sampling=settings().sampling,
            offline=OfflineConfig(max_steps=30, batch_size=4, max_seq_len=32, lr=1e-3),
        )
    )
    ctl = loop.controller()
    await ctl.start(schedule=False)
    assert ctl.first_fit_pending
    worker = ctl.ctx.worker
    boundary = worker.step_boundary

    def stop_after_two_steps() -> None:
        # What Stop does, at a known step: polled from the event loop, a fit of this size
        # on an idle core could finish between two polls.
        boundary()
        if (p := ctl.progress) is not None and p.step >= 2:
            worker.stop_training.set()

    worker.step_boundary = stop_after_two_steps  # type: ignore[method-assign]
    assert await ctl.run_job("offline") == "skipped"
    worker.step_boundary = boundary  # type: ignore[method-assign]
    ctl.resume()  # Start
    assert ctl.first_fit_pending and "post:mem" not in ctl.due()
    assert await ctl.run_job("offline") == "success"
    assert not ctl.first_fit_pending and "post:mem" in ctl.due()
    first, second = sorted(loop.store.runs(kind="offline"), key=lambda r: r.id)
    assert (first.status, second.status) == ("interrupted", "completed")
    assert second.metrics["steps_before"] == first.metrics["steps"] > 0
    assert await ctl.run_job("offline") == "skipped"  # not due again for an hour
    ctl.request_offline({})  # a requested fit is a whole one: as many steps as both together
    assert await ctl.run_job("offline") == "success"
    whole = max(loop.store.runs(kind="offline"), key=lambda r: r.id)
    assert whole.metrics["steps_before"] == 0
    assert whole.metrics["steps"] == first.metrics["steps"] + second.metrics["steps"]


async def test_a_plain_model_writes_after_two_history_posts(make_loop: Any) -> None:
    """The tiny model has no chat template: each candidate's prompt is two history posts, each
    BOS text EOS, and the new post starts from BOS (the format it was fitted on)."""
    loop = make_loop()
    ctl = loop.controller()
    await ctl.start(schedule=False)
    await ctl.run_until(loop.clock.now() + 3 * HOUR)
    candidates = loop.store.posts(limit=100)
    assert candidates
    tok = ctl.ctx.policy.tokenizer
    known = {p.text for p in history()}
    for post in candidates:
        ids = post.prompt_tokens
        assert ids[0] == ids[-1] == tok.bos_id and ids.count(tok.eos_id) == 2
        shown = [tok.decode(part).strip() for part in _documents(ids, tok.bos_id, tok.eos_id)]
        assert len(shown) == 2 and set(shown) <= known


def _documents(ids: list[int], bos: int | None, eos: int | None) -> list[list[int]]:
    out: list[list[int]] = []
    doc: list[int] = []
    for t in ids:
        if t == eos:
            out.append(doc)
            doc = []
        elif t != bos:
            doc.append(t)
    return out
