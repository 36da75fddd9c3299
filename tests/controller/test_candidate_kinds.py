"""The kinds of post the candidates cover, measured as posts are made: the face's history
clustered on the reward model's features, every candidate given its kind as it is scored, the
effective number over the newest candidates exported beside the history's, and started again
when the reference (and so the features) changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from loop_helpers import DAY

from plaudit.controller._reward_model import KINDS_MIN, KINDS_WINDOW
from plaudit.faces import HistoricalPost, Reactions
from plaudit.faces.simulated import load_corpus
from plaudit.learner import kinds_covered


def varied_history(n: int) -> list[HistoricalPost]:
    start = datetime(2024, 6, 1, tzinfo=UTC)
    return [
        HistoricalPost(
            id=f"v{i}",
            text=post.text,
            created_at=start + timedelta(hours=i),
            reactions=Reactions(likes=len(post.text) % 9),
        )
        for i, post in enumerate(load_corpus()[1000 : 1000 + n])
    ]


async def test_the_candidates_kinds_of_post_are_counted_against_the_history(
    make_loop: Any,
) -> None:
    loop = make_loop()
    loop.face.seed(varied_history(200))
    ctl = loop.controller()
    await ctl.start(schedule=False)
    rm = ctl.reward_model
    gauge = loop.metrics.post_kinds

    await ctl.run_until(loop.clock.now() + DAY)  # a day: 6 cycles, 48 candidates
    assert rm.kinds is not None and rm.kinds.k == 16
    history = rm.status()["post_kinds"]["mem"]["history"]
    assert 4.0 < history <= 16.0  # 240 varied posts spread over the kinds
    assert gauge.labels("mem", "history")._value.get() == history
    recent = rm._recent_kinds["mem"]
    generated = loop.store.count_posts(face="mem")
    assert len(recent) == generated < KINDS_MIN  # every candidate, filtered ones too
    assert rm.status()["post_kinds"]["mem"]["candidates"] is None  # not yet: no series
    assert ("mem", "candidates") not in {
        tuple(s.labels.values()) for m in loop.metrics.registry.collect() for s in m.samples
        if s.name == "plaudit_post_kinds"
    }  # fmt: skip

    await ctl.run_until(loop.clock.now() + 2 * DAY)
    generated = loop.store.count_posts(face="mem")
    assert len(recent) == min(generated, KINDS_WINDOW) >= KINDS_MIN
    covered = rm.status()["post_kinds"]["mem"]["candidates"]
    assert covered == kinds_covered(list(recent)) == gauge.labels("mem", "candidates")._value.get()
    assert 1.0 <= covered <= 17.0

    # A new reference (an offline fit adopts one): new features, new kinds, windows anew.
    old = rm.kinds
    ctl.ctx.policy.reset_reference()
    await ctl.run_until(loop.clock.now() + DAY // 4 + 600)
    assert rm.kinds is not old and rm.kinds is not None
    assert len(rm._recent_kinds["mem"]) < KINDS_MIN and "mem" not in rm.candidate_kinds
