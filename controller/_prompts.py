"""Prompts for candidates. Diversity is the point: each prompt shows a different pair of real
posts from the face's history, so that rarely-liked but real behaviours get tried at all. With
the history's scores, a share of the examples comes from its most-liked posts: the content
this audience rewards is then shown, not left as rare as it is in the history (style alone is
what the random examples teach).

A prompt is the posting instruction that lists the examples (for a model with a chat
template) and the examples themselves (for a plain language model of posts, which gets no
instruction: it continues after them as the next post, `Policy.render_prompt`'s ``context``)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plaudit.learner import Policy

SYSTEM = "You write short, original social media posts."
INSTRUCTION = (
    "Here are two posts from this community:\n\n{examples}\n\nWrite one new post in the same "
    "style (under {max_chars} characters). Do not copy them. Reply with the post only."
)
TOPICLESS = (
    "Write one short, original social media post (under {max_chars} characters). "
    "Reply with the post only."
)


# "Most-liked": the top this share of the scored history.
LIKED_FRACTION = 0.1


@dataclass(frozen=True)
class PostPrompt:
    """What one candidate is asked: the instruction (a chat model's user turn, listing the
    examples) and the example posts it shows (a plain model's context)."""

    instruction: str
    examples: tuple[str, ...] = ()

    def render(self, policy: Policy, *, room: int) -> str:
        """The prompt's text for ``policy``: the system message and the instruction as a chat
        turn where its tokenizer has a template, else the examples as the posts before the
        new one, leaving ``room`` tokens (the new post's) in its context."""
        return policy.render_prompt(
            self.instruction, system=SYSTEM, context=self.examples, room=room
        )


def echo_checked(policy: Policy, prompt: str) -> str:
    """What of a candidate's rendered ``prompt`` the talk filter checks it does not echo: a
    chat model's whole prompt; none of a plain model's, which holds only example posts
    (copying those is the novelty filter's business)."""
    return prompt if policy.tokenizer.chat_template is not None else ""


def post_prompts(
    *,
    history: Sequence[str],
    n: int,
    max_chars: int,
    rng: random.Random,
    scores: Sequence[float] = (),
    liked_share: float = 0.0,
) -> list[PostPrompt]:
    """``n`` prompts, each showing two history posts drawn without replacement. With
    ``scores`` (one per history post) each example is, with probability ``liked_share``, one of
    the most-liked posts (the top ``LIKED_FRACTION``), else any post. A history of fewer than
    two posts gives the instruction without examples."""
    if len(history) < 2:
        return [PostPrompt(TOPICLESS.format(max_chars=max_chars))] * n
    posts = list(history)
    liked: list[str] = []
    if liked_share > 0 and len(scores) == len(posts):
        ranked = sorted(range(len(posts)), key=lambda i: scores[i], reverse=True)
        liked = [posts[i] for i in ranked[: max(2, round(len(posts) * LIKED_FRACTION))]]
    out = []
    for _ in range(n):
        a, b = rng.sample(posts, 2)
        if liked and rng.random() < liked_share:
            a = rng.choice(liked)
        if liked and rng.random() < liked_share:
            b = rng.choice([p for p in liked if p != a] or posts)
        if a == b:
            b = rng.choice([p for p in posts if p != a])
        out.append(PostPrompt(_instruction(a, b, max_chars), (a.strip(), b.strip())))
    return out


def fit_pairs(
    history: Sequence[str], *, max_chars: int, rng: random.Random
) -> list[tuple[str, str]]:
    """What the offline fit of an instruct model trains on: the posting instruction, showing
    two other posts of the history, -> one history post as the response. Fitting and posting
    then use one format, so the fit teaches the answer posting asks for (not the history as
    bare text, which left the model's assistant voice in place). Each post is a response once;
    a history of fewer than 3 posts gives none."""
    posts = [p for p in history if p.strip()]
    if len(posts) < 3:
        return []
    out = []
    for i, post in enumerate(posts):
        j, k = rng.sample(range(len(posts) - 1), 2)
        # indices into the history without post i
        a, b = posts[j + (j >= i)], posts[k + (k >= i)]
        out.append((_instruction(a, b, max_chars), post))
    return out


def _instruction(a: str, b: str, max_chars: int) -> str:
    return INSTRUCTION.format(examples=f"- {a.strip()}\n- {b.strip()}", max_chars=max_chars)
