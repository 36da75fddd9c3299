"""The store's side of the approval queue: the statuses a held post goes through, an edit that
keeps the model's text, a rejection's reward (kept out of the face's score history), and a
database from before the queue (schema 5) that migrates with its rewards read as reactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from plaudit.state import (
    SCHEMA_VERSION,
    Approval,
    InvalidTransition,
    NewCandidate,
    PostStatus,
    RewardSource,
    Store,
)


def held(store: Store, text: str = "a post the model wrote") -> int:
    (pid,) = store.add_candidates(
        face="f", cycle_id="c", candidates=[NewCandidate(text=text, tokens=[1, 2])]
    )
    store.choose(pid)
    store.hold(pid)
    return pid


def test_a_held_post_is_approved_edited_rejected_or_expired(tmp_path: Path) -> None:
    clock = [1000.0]
    with Store.open(tmp_path, now=lambda: clock[0]) as store:
        a, b, c, d = (held(store, f"post {i}") for i in range(4))
        assert store.get_post(a).held_at == 1000.0
        assert [p.id for p in store.queue(status=PostStatus.AWAITING)] == [a, b, c, d]
        assert store.count_posts(status=PostStatus.AWAITING) == 4
        clock[0] = 2000.0
        assert store.approve(a).approval is Approval.APPROVED
        edited = store.approve(b, text="a human's words")
        assert (edited.text, edited.original_text, edited.approval) == (
            "a human's words",
            "post 1",
            Approval.EDITED,
        )
        assert edited.edited and not store.get_post(a).edited
        # Approving with the same text is no edit.
        assert store.approve(c, text="post 2").approval is Approval.APPROVED
        assert store.expire(d, publish=False).status is PostStatus.EXPIRED
        assert [p.id for p in store.queue(status=PostStatus.APPROVED)] == [a, b, c]
        # Approved posts publish through an intent, like any other.
        store.record_intent(b, idempotency_key="k")
        store.mark_published(b, ref="r", url=None, published_at=2001.0)
        assert store.get_post(b).approval is Approval.EDITED
        with pytest.raises(InvalidTransition, match="expired and cannot become approved"):
            store.approve(d)
        with pytest.raises(ValueError, match="holds awaiting and approved"):
            store.queue(status=PostStatus.PUBLISHED)


def test_a_rejection_is_a_reward_without_a_score(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        pid = held(store)
        (other,) = store.add_candidates(face="f", cycle_id="c2", candidates=[NewCandidate("x")])
        store.choose(other)
        store.record_intent(other, idempotency_key="k")
        store.mark_published(other, ref="r", url=None, published_at=1.0)
        store.add_reward(post_id=other, face="f", score=0.25, reward=0.5)
        post = store.reject(pid, reward=-2.0)
        assert (post.status, post.approval) == (PostStatus.REJECTED, Approval.REJECTED)
        rewards = {r.post_id: r for r in store.rewards()}
        assert rewards[pid].source is RewardSource.REJECTED and rewards[pid].reward == -2.0
        assert rewards[other].source is RewardSource.REACTIONS
        assert store.scores("f") == [0.25]
        assert [
            r.post_id for r in store.rewards(unused_only=True, source=RewardSource.REJECTED)
        ] == [pid]
        # A rejected post keeps its tokens for the update that trains on its reward.
        assert store.get_post(pid).tokens == [1, 2]


def test_a_database_from_before_the_queue_migrates(tmp_path: Path) -> None:
    from plaudit.state._store import MIGRATIONS

    conn = sqlite3.connect(tmp_path / "plaudit.sqlite3")
    conn.executescript(MIGRATIONS[0])
    conn.executescript(str(MIGRATIONS[1]))
    conn.execute(
        "INSERT INTO posts (id, face, cycle_id, status, text, published_at, created_at, "
        "updated_at) VALUES (1, 'f', 'c', 'published', 't', 0, 0, 0)"
    )
    conn.execute("INSERT INTO rewards VALUES (1, 'f', 1.0, 1.0, NULL, 0)")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    with Store.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        post = store.get_post(1)
        assert (post.held_at, post.approval, post.original_text) == (None, None, None)
        (reward,) = store.rewards()
        assert reward.source is RewardSource.REACTIONS and store.scores("f") == [1.0]
