"""The approval queue: a human in the loop before a post goes out (the `[approval]` table).

With `approval.required`, the post job holds the post it chose instead of publishing it
(status ``awaiting``), at most `max_waiting` per face. A human then decides, on the status
page, with `plaudit approvals ...` or through the API:

- **approve**: the post publishes at the face's next slot: now when the face's last post is a
  post interval old, else when it is (and as the daily cap and quiet hours allow); one per
  interval when several wait;
- **edit and approve**: the human's text publishes. The model did not sample that text, so
  the post never trains the policy; its reward (the audience's reactions) trains the reward
  model, on the text that went out;
- **reject**: never published. A rejection is a judgement of a post the model sampled: it gets
  the reward `rejected_reward` (-2 by default, on the audience's scale of z-scores clipped to
  +-3: with the worst posts the audience saw), which trains the policy and the reward model
  like any reward. It is kept out of the face's score history (it has no score) and out of the
  reward model's correlation with the audience;
- **nobody, within `expire_after`**: "drop" (the default) expires the post, with no reward
  (silence says nothing about it); "publish" approves it as it is.

The queue lives in the store (statuses awaiting and approved), so it survives restarts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plaudit.state import Approval, InvalidTransition, PostStatus, StateError

if TYPE_CHECKING:
    from plaudit.controller._context import FaceRuntime, LoopContext
    from plaudit.state import Post


class ApprovalRefused(Exception):
    """A decision the queue cannot take as asked; the message says why and what to do.
    ``conflict``: the post is no longer (or never was) waiting for a decision."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


class Approvals:
    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx

    @property
    def required(self) -> bool:
        return self.ctx.settings.approval.required

    # -- what the post job asks -------------------------------------------------------------

    def waiting(self, face: str | None = None) -> list[Post]:
        """Posts held for a decision, oldest first."""
        return self.ctx.store.queue(face=face, status=PostStatus.AWAITING)

    def approved(self, face: str | None = None) -> list[Post]:
        """Approved posts not yet published, oldest first."""
        return self.ctx.store.queue(face=face, status=PostStatus.APPROVED)

    def deadline(self, post: Post) -> float:
        held = post.held_at if post.held_at is not None else post.updated_at
        return held + self.ctx.settings.approval.expire_after.total_seconds()

    def next_deadline(self, face: str) -> float | None:
        waiting = self.waiting(face)
        return min(self.deadline(p) for p in waiting) if waiting else None

    def full(self, face: str) -> bool:
        return len(self.waiting(face)) >= self.ctx.settings.approval.max_waiting

    def hold(self, rt: FaceRuntime, post_id: int) -> None:
        self.ctx.store.hold(post_id)
        self.update_gauge(rt.name)

    def expire(self, face: str) -> int:
        """Expire the face's held posts past their deadline; return how many."""
        now = self.ctx.clock.now()
        a = self.ctx.settings.approval
        n = 0
        for post in self.waiting(face):
            if self.deadline(post) <= now:
                self._decide(post, Approval.EXPIRED)
                n += 1
        if n:
            self.ctx.log.info("held posts expired", face=face, posts=n, then=a.on_expiry)
        return n

    # -- a human's decisions -------------------------------------------------------------

    def approve(self, post_id: int, *, text: str | None = None) -> Post:
        """Approve a held post, as it is or with ``text`` (an edit)."""
        post = self._waiting(post_id)
        if text is not None:
            text = text.strip()
            self._check_text(post, text)
        return self._decide(post, Approval.APPROVED, text=text)

    def reject(self, post_id: int) -> Post:
        return self._decide(self._waiting(post_id), Approval.REJECTED)

    def _waiting(self, post_id: int) -> Post:
        """The held post ``post_id``, or a refusal saying what became of it. A post past its
        deadline expires now (the post job may not have run since)."""
        try:
            post = self.ctx.store.get_post(post_id)
        except StateError:
            raise ApprovalRefused(
                f"there is no post {post_id}; list the held posts with `plaudit approvals`"
            ) from None
        if post.status is PostStatus.AWAITING and self.deadline(post) <= self.ctx.clock.now():
            post = self._decide(post, Approval.EXPIRED)
        if post.status is not PostStatus.AWAITING:
            became = post.approval.value if post.approval else post.status.value
            raise ApprovalRefused(
                f"post {post_id} is not waiting for approval (it is {post.status.value}"
                f"{'' if became == post.status.value else f', {became}'}); list the held "
                "posts with `plaudit approvals`",
                conflict=True,
            )
        return post

    def _check_text(self, post: Post, text: str) -> None:
        rt = self.ctx.faces.get(post.face)
        if not text:
            raise ApprovalRefused("the edited text is empty; reject the post instead")
        if rt is None:
            return
        limit = rt.face.limits.max_length
        length = rt.face.measure(text)
        if limit is not None and length > limit:
            raise ApprovalRefused(
                f"the edited text is {length} long and face {post.face!r} takes at most {limit}; "
                "shorten it"
            )

    def _decide(self, post: Post, decision: Approval, *, text: str | None = None) -> Post:
        ctx = self.ctx
        a = ctx.settings.approval
        try:
            if decision is Approval.APPROVED:
                done = ctx.store.approve(post.id, text=text)
            elif decision is Approval.REJECTED:
                done = ctx.store.reject(post.id, reward=a.rejected_reward)
            else:
                done = ctx.store.expire(post.id, publish=a.on_expiry == "publish")
        except InvalidTransition as exc:  # decided meanwhile (another tab, the expiry)
            raise ApprovalRefused(str(exc), conflict=True) from None
        label = done.approval.value if done.approval else decision.value
        m = ctx.metrics
        m.approval_decisions.labels(post.face, label).inc()
        if post.held_at is not None:
            m.approval_wait_seconds.observe(max(0.0, ctx.clock.now() - post.held_at))
        self.update_gauge(post.face)
        ctx.log.info(
            "held post decided",
            face=post.face,
            post_id=post.id,
            decision=label,
            status=done.status.value,
            **({"reward": a.rejected_reward} if done.status is PostStatus.REJECTED else {}),
        )
        return done

    def update_gauge(self, face: str) -> None:
        """plaudit_approval_waiting: set where the queue is on or still holds posts."""
        waiting = len(self.waiting(face))
        if self.required or waiting:
            self.ctx.metrics.approval_waiting.labels(face).set(waiting)
