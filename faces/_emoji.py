"""Emoji reactions (Discord, Telegram) as the common `Reactions`: one rule, written once.

Every reaction counts as a like except the configured negative ones, which are summed into
`extra["negative"]` (the faces' default score weighs it -1); every reaction's own count is kept
in `extra` too, under "emoji:<emoji>", "custom:<name or id>" or the platform's word ("paid")."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from ._models import Reactions, ScoreWeights

__all__ = ["DEFAULT_NEGATIVE", "emoji_reactions", "emoji_score_weights"]

DEFAULT_NEGATIVE: tuple[str, ...] = ("👎", "💩", "🤮", "🤬", "😡")


def emoji_reactions(
    counts: Mapping[str, int], *, negative: Collection[str], replies: int = 0
) -> Reactions:
    """`counts` maps "emoji:👍" / "custom:..." / "paid" to a count."""
    bad_keys = {f"emoji:{e}" for e in negative}
    clean = {key: max(int(n), 0) for key, n in counts.items()}
    bad = sum(n for key, n in clean.items() if key in bad_keys)
    return Reactions(
        likes=sum(clean.values()) - bad, replies=replies, extra={"negative": bad, **clean}
    )


def emoji_score_weights() -> ScoreWeights:
    """The default weights of emoji faces: the defaults, and -1 for a negative reaction."""
    return ScoreWeights(extra={"negative": -1.0})
