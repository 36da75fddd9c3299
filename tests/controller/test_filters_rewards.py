"""Candidate filters and reward normalisation."""

from __future__ import annotations

import math

import pytest

from plaudit.controller._filters import FilterConfig, NoveltyIndex, reject_reason
from plaudit.controller._rewards import normalise, selection_kl, spearman


def reason(
    text: str,
    *,
    own: list[str] = (),
    training: list[str] = (),
    batch: list[str] = (),
    max_length: int = 280,
    prompt: str = "",
) -> str | None:
    own_idx, train_idx = NoveltyIndex(n=6), NoveltyIndex(n=6)
    own_idx.extend(own)
    train_idx.extend(training)
    return reject_reason(
        text,
        config=FilterConfig(blocklist=("badword",)),
        max_length=max_length,
        measure=len,
        own_posts=own_idx,
        training_posts=train_idx,
        batch_seen=batch,
        prompt=prompt,
    )


def test_each_reason() -> None:
    assert reason("   ") == "empty"
    assert reason("too short") == "too_short"
    assert reason("a perfectly fine post " * 20, max_length=100) == "too_long"
    assert reason("this post contains a BadWord somewhere") == "blocklist"
    assert reason("Hello there, lovely people!", own=["hello there lovely people"]) == "duplicate"
    assert reason("Hello there, lovely people!", batch=["Hello there lovely people"]) == "duplicate"
    copied = "the quick brown fox jumps over the lazy dog"
    assert reason(f"Wow: {copied} today", training=[copied]) == "novelty"
    assert reason("Here is a new post for your community: sunny!") == "assistant"
    assert reason("I'd be happy to help you with your social media posts!") == "assistant"
    instruction = "Write one post about the weather that people will love to read"
    assert reason("Sure, people will love to read this", prompt=instruction) == "assistant"
    assert reason("about the weather that people will love it", prompt=instruction) == "assistant"
    assert reason("A brand new sentence about sunny mornings") is None


def test_novelty_needs_a_long_shared_run() -> None:
    # Five shared words is style; six is a copy.
    assert reason("I love the quick brown fox so much", training=["the quick brown fox so"]) is None
    assert (
        reason("I love the quick brown fox so much", training=["love the quick brown fox so"])
        == "novelty"
    )


def test_normalise_is_a_clipped_z_score_with_early_shrinkage() -> None:
    assert normalise(5.0, []) == 0.0
    assert normalise(5.0, [1.0]) == 0.0
    history = [0.01, 0.02, 0.03, 0.02, 0.01]
    assert normalise(0.05, history) > 1.0
    assert normalise(0.0, history) < 0
    assert normalise(100.0, history) == 3.0
    # Near-identical early scores: the spread floor keeps the reward small.
    assert abs(normalise(1.001, [1.0, 1.0, 1.0])) < 0.05
    assert normalise(3.0, [1.0, 2.0]) == pytest.approx((3.0 - 1.5) / 0.7071067811865476)
    with pytest.raises(ValueError, match="finite"):
        normalise(float("nan"), history)


def test_selection_kl_is_log_n_minus_n_minus_1_over_n() -> None:
    assert selection_kl(1) == 0.0
    assert selection_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert selection_kl(8) == pytest.approx(math.log(8) - 7 / 8)


def test_spearman_ranks_with_ties() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their mean rank: ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(0.8660254)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1, 2], [2, 1]))
    with pytest.raises(ValueError, match="pairs"):
        spearman([1, 2, 3], [1, 2])


def test_real_posts_are_rarely_taken_for_assistant_talk() -> None:
    """Under 2% of real posts (the simulated face's 4,200 human tweets) are caught."""
    from plaudit.controller import talks_like_assistant
    from plaudit.faces.simulated import load_corpus

    texts = [p.text for p in load_corpus()]
    caught = sum(talks_like_assistant(t) for t in texts)
    assert len(texts) == 4200 and caught / len(texts) < 0.02, caught


@pytest.mark.parametrize(
    "text",
    [
        "Here's a new post in your style:\n\nLoving the rain today!",
        "So how about one more:\n\nCoffee first, then the world.",
        "I'm ready to help! What can I do to help you craft a post?",
        "Hi [Your Name], I hope you're doing well.",
        "Your message is spot on, I've only edited 10% of the original text.",
        "You're right, no copy...",
        "A 280-character post is too long for this.",
        "Sure! Here is the revised version.",
    ],
)
def test_assistant_talk_is_caught(text: str) -> None:
    from plaudit.controller import talks_like_assistant

    assert talks_like_assistant(text)


def test_repeating_an_example_post_is_no_echo_but_repeating_the_instruction_is() -> None:
    from plaudit.controller import post_prompts, talks_like_assistant

    example = "the cat sat on the warm windowsill all afternoon long"
    (asked,) = post_prompts(
        history=[example, "another post about the weather"], n=1, max_chars=280,
        rng=__import__("random").Random(0),
    )  # fmt: skip
    prompt = asked.instruction
    # A copy of an example is the novelty filter's business, not assistant talk.
    assert not talks_like_assistant(f"Look: {example}", prompt)
    # Repeating six words of the instruction itself is an echo.
    custom = "Tell me something about the harbour at dawn with the gulls"
    assert talks_like_assistant("Something about the harbour at dawn with the gulls.", custom)
