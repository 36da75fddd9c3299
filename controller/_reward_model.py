"""The reward model's room: what it is fitted on, when, and what it does at posting time.

- fitted on the faces' history (each post's score as the face computes it, normalised against
  the history's scores as rewards are against the face's own) and on the bot's rewarded posts
  (their rewards), the latter weighted more (`reward_model.history_weight` per history post);
- refit lazily: at the next post cycle after new rewards arrived, after the reference model
  changed (an offline fit), or at the first cycle after start-up. Everything it is fitted on
  is in the store or the faces' history, so the head and its features are a cache, and a
  restart could refit them from the same data (it keeps them: below);
- at posting time it predicts every candidate's reward (stored as `predicted_reward`, before
  the reward can be known) and chooses the survivor to publish (`reward_model.selection`);
- when rewards arrive, the Spearman correlation of those stored predictions with them, over
  the face's newest rewarded posts, is the metric that says whether to trust it;
- a second head on the same features catches assistant talk the text filter's phrases miss
  (`reward_model.talk_filter`): ridge on labelled candidates (`TALK_EXAMPLES`, 1 = talks
  like a chat assistant) and the faces' history posts (0: people's posts), fitted with the
  first; a survivor it scores above `TALK_THRESHOLD` is filtered ("assistant") before the
  choice. bench/assistant_talk.py measures it (two folds of the labelled set);
- the kinds of post the candidates cover: the faces' history clustered on the same features
  (`PostKinds`, fitted with the first head and again when the reference or the history
  changes), each candidate assigned its kind as it is scored, and the effective number of
  kinds among a face's newest `KINDS_WINDOW` candidates exported beside the history's own, so
  that a policy narrowing onto what was rewarded shows before its posts all read alike.

The features come from the frozen reference model, so a post's features are computed once
(keyed by its text) and cached until the reference changes; after each checkpoint the cache
and the head are written to the state folder (`STATE_FILE`) and a restart anchored to the same
reference takes them back, so its first post does not wait for the history's features again.
The torch work runs on the worker.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plaudit.controller._checkpoints import REFERENCE_KEY
from plaudit.controller._context import LoopContext
from plaudit.controller._rewards import CLIP, SCORE_WINDOW, normalise, spearman
from plaudit.state import RewardSource

if TYPE_CHECKING:
    from torch import Tensor

    from plaudit.learner import PostKinds, RewardHead, Transformer

# Own rewarded posts the head is fitted on, at most (the newest).
MAX_OWN = 2000
# Thompson draws that estimate each survivor's chance of being chosen (`Choice.chance`).
CHANCE_DRAWS = 2000
# In the state folder: the features and the head, for the next start (`RewardModel.save`).
STATE_FILE = "reward_model.pt"
# SmolLM2's posting candidates labelled by hand ("assistant": true when one talks like a chat
# assistant or about its instructions rather than as a member of the community); the texts
# teach any reference, whatever its features.
TALK_EXAMPLES = Path(__file__).with_name("assistant_talk.jsonl")
# A survivor the talk head scores above this (labels 1 / 0) is filtered. bench/assistant_talk.py
# (two folds, SmolLM2, the words beside the hidden state): with the phrases, 11.6% of the
# held-out talk gets through (30.4% with the phrases alone), 11.6% of the candidates labelled
# posts are dropped (6.0%); the head catches 0.21% of real history posts it was not fitted on
# (the phrases 0.21%).
TALK_THRESHOLD = 0.5
# One history post (a person's, so labelled 0) against one labelled candidate.
TALK_HISTORY_WEIGHT = 0.3
# History posts per face the talk head is fitted on (the newest; fewer than the reward head's
# `history_posts`): the 1,000 its figures above were measured with, so that more of them do not
# outweigh the 500 labelled candidates.
TALK_HISTORY_POSTS = 1000
# The kinds of post covered are measured over a face's newest this-many candidates (25 post
# cycles of 8), and shown from `KINDS_MIN` of them on.
KINDS_WINDOW = 200
KINDS_MIN = 64


@functools.cache
def talk_examples(path: Path = TALK_EXAMPLES) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The labelled candidates' texts and labels (1.0: assistant talk); read once per path
    (every refit fits the talk head again)."""
    texts: list[str] = []
    labels: list[float] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            text, label = row["text"], row["assistant"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} line {n} is not a labelled candidate: {exc}") from exc
        if not isinstance(text, str) or not isinstance(label, bool):
            raise ValueError(f"{path} line {n}: want a text and a true/false 'assistant' label")
        texts.append(text)
        labels.append(float(label))
    return tuple(texts), tuple(labels)


def fit_talk_head(labelled: Tensor, labels: Sequence[float], history: Tensor) -> RewardHead:
    """The talk head: ridge on the labelled candidates' features (their labels) and the
    history posts' (label 0, each at `TALK_HISTORY_WEIGHT`)."""
    import torch

    from plaudit.learner import WORD_FEATURES, RewardHead

    targets = [*labels, *([0.0] * len(history))]
    weights = [1.0] * len(labels) + [TALK_HISTORY_WEIGHT] * len(history)
    x = torch.cat([labelled, history])
    return RewardHead.fit(x, targets, weights, n_own=len(labels), indicators=WORD_FEATURES)


def _key(text: str) -> str:
    """A post's features depend on its text alone (and the reference): keyed by its digest."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Choice:
    index: int  # into the candidates
    predicted: list[float]  # every candidate's predicted reward (posterior mean)
    # The chance the chosen survivor had of being chosen by the rule (1 / survivors for a
    # uniform choice); None for greedy, which chooses with certainty and cannot be corrected.
    chance: float | None = None
    # Survivors the talk head caught (`TALK_THRESHOLD`): filtered, not chosen among.
    talk: tuple[int, ...] = ()
    # Every candidate's kind of post (`PostKinds`); empty before the kinds are fitted.
    kinds: tuple[int, ...] = ()


class RewardModel:
    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx
        self.head: RewardHead | None = None
        self.talk: RewardHead | None = None  # the talk head (`reward_model.talk_filter`)
        # What the talk head was fitted for: its inputs (the labelled candidates, the faces'
        # history) do not change with rewards, so a refit fits it again only when these do.
        self._talk_for: tuple[object, tuple[tuple[str, int], ...]] | None = None
        # The kinds of post, fitted on the same inputs (the reference, the faces' history).
        self.kinds: PostKinds | None = None
        self._kinds_for: tuple[object, tuple[tuple[str, int], ...]] | None = None
        self.history_kinds: dict[str, float] = {}  # face -> its history's effective number
        self.candidate_kinds: dict[str, float] = {}  # face -> its newest candidates'
        self._recent_kinds: dict[str, deque[int]] = {}
        self.stale = True  # refit before the next prediction
        self.correlation: dict[str, float] = {}  # face -> Spearman, where measured
        self._features: dict[str, Tensor] = {}  # a text's digest -> (C,)
        self._reference: object = None  # the model the cached features came from
        # face -> (its history scores, (their count, posts used), those posts' targets)
        self._targets: dict[str, tuple[list[float], tuple[int, int], list[float]]] = {}

    @property
    def enabled(self) -> bool:
        return self.ctx.settings.reward_model.enabled

    @property
    def _frozen(self) -> Transformer:
        """The model features are read from: the KL reference, or the policy before it has one."""
        policy = self.ctx.policy
        return policy.reference if policy.reference is not None else policy.model

    def rewards_arrived(self) -> None:
        self.stale = True

    def trust(self, face: str) -> float:
        """How much say the head has on ``face``, 0..1: its measured Spearman correlation with
        the face's rewards (0 when not positive), 1 until measured or with `trust` off."""
        rho = self.correlation.get(face)
        if not self.ctx.settings.reward_model.trust or rho is None:
            return 1.0
        return max(0.0, min(1.0, rho))

    # -- fitting ---------------------------------------------------------------------------

    def _examples(self) -> tuple[list[str], list[float], list[float], int]:
        """Texts, targets, weights, and how many are own posts (the first ones)."""
        ctx, rm = self.ctx, self.ctx.settings.reward_model
        texts: list[str] = []
        targets: list[float] = []
        weights: list[float] = []
        for reward in ctx.store.rewards(limit=MAX_OWN):
            texts.append(ctx.store.get_post(reward.post_id).text)
            targets.append(reward.reward)
            weights.append(1.0)
        n_own = len(texts)
        for name, rt in ctx.faces.items():
            history = rt.history[: rm.history_posts]
            if len(rt.history_scores[: rm.history_posts]) != len(history):
                continue  # a face whose history has no reactions
            texts.extend(history)
            targets.extend(self._history_targets(name, rt.history_scores, len(history)))
            weights.extend([rm.history_weight] * len(history))
        return texts, targets, weights, n_own

    def _history_targets(self, face: str, scores: list[float], n: int) -> list[float]:
        """The first ``n`` history posts' targets, judged as rewards are: each score against
        the other scores around it (SCORE_WINDOW each side). Kept per face and worked out
        again only when its scores change: for 4,200 posts they took 0.6 s of the event loop
        at every refit."""
        kept = self._targets.get(face)
        if kept is not None and kept[0] is scores and kept[1] == (len(scores), n):
            return kept[2]
        scores_n = scores[:n]
        targets = [
            normalise(
                score, scores_n[max(0, i - SCORE_WINDOW) : i] + scores_n[i + 1 : i + SCORE_WINDOW]
            )
            for i, score in enumerate(scores_n)
        ]
        self._targets[face] = (scores, (len(scores), n), targets)
        return targets

    def _reference_tag(self) -> str:
        """Names the reference the features are read from, across restarts: the checkpoint
        that holds it, or the base model."""
        return self.ctx.store.get_value(REFERENCE_KEY) or "base"

    def _talk_sets(self) -> tuple[list[str], Sequence[float], list[str]]:
        """The talk head's labelled texts, their labels and the history texts."""
        labelled, labels = talk_examples()
        history_posts = min(self.ctx.settings.reward_model.history_posts, TALK_HISTORY_POSTS)
        history = [t for rt in self.ctx.faces.values() for t in rt.history[:history_posts]]
        return list(labelled), labels, history

    def _kinds_sets(self) -> dict[str, list[str]]:
        """Each face's history posts the kinds are fitted on (those the head is)."""
        history_posts = self.ctx.settings.reward_model.history_posts
        return {name: rt.history[:history_posts] for name, rt in self.ctx.faces.items()}

    def _fit(self, texts: list[str], targets: list[float], weights: list[float], n_own: int,
             talk: tuple[list[str], Sequence[float], list[str]] | None,
             kinds: dict[str, list[str]] | None,
             ) -> tuple[RewardHead, RewardHead | None, tuple[PostKinds | None, dict[str, float]]
                        | None]:  # fmt: skip
        """On the worker: features of the texts not yet cached, then the head (and the talk
        head, from ``talk``'s labelled and history texts; the kinds of post, from ``kinds``'
        history texts per face, with each face's effective number)."""
        import torch

        from plaudit.learner import (
            WORD_FEATURES,
            PostKinds,
            RewardHead,
            hidden_features,
        )

        x = self._cached_features(texts)
        head = RewardHead.fit(x, targets, weights, n_own=n_own, indicators=WORD_FEATURES)
        talk_head = None
        if talk is not None:
            labelled, labels, history = talk
            talk_head = fit_talk_head(
                self._cached_features(labelled), labels, self._cached_features(history)
            )
        if kinds is None:
            return head, talk_head, None
        per_face = {
            name: hidden_features(self._cached_features(t)) for name, t in kinds.items() if t
        }
        fitted = PostKinds.fit(torch.cat(list(per_face.values()))) if per_face else None
        # face -> its history's effective number of kinds
        spread = {n: fitted.effective(f) for n, f in per_face.items()} if fitted else {}
        return head, talk_head, (fitted, spread)

    def _cached_features(self, texts: list[str]) -> Tensor:
        """On the worker: (N, C) features of ``texts``, read for those not cached yet."""
        import torch

        from plaudit.learner import feature_width, text_features

        reference = self._frozen
        if reference is not self._reference:  # a new reference: every feature changes
            self._features.clear()
            self._reference = reference
        keys = [_key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._features}
        if missing:
            feats = text_features(reference, self.ctx.policy.tokenizer, list(missing.values()))
            for k, f in zip(missing, feats, strict=True):
                self._features[k] = f
        if not keys:
            return torch.zeros(0, feature_width(reference))
        return torch.stack([self._features[k] for k in keys])

    # -- kept across restarts --------------------------------------------------------------

    def save(self) -> None:
        """On the worker (after a checkpoint): the features and the head into the state
        folder's `STATE_FILE`, for the next start; only features of the current reference."""
        import torch

        from plaudit.learner import WORD_FEATURES, RewardModelState

        if not self._features or self._frozen is not self._reference:
            return
        keys = list(self._features)
        RewardModelState(
            reference=self._reference_tag(),
            keys=keys,
            features=torch.stack([self._features[k] for k in keys]),
            head=self.head,
            indicators=WORD_FEATURES,
        ).save(self.ctx.state_dir / STATE_FILE)

    def resume(self) -> int:
        """On the worker, at start: the features (and head) the last run kept, when they were
        read from the reference this run anchors to. A cache: a file that cannot be read is
        reported and passed over (the features are read again). Returns how many it took."""
        from plaudit.learner import RewardModelState, feature_width

        path = self.ctx.state_dir / STATE_FILE
        if not path.is_file():
            return 0
        try:
            state = RewardModelState.load(path)
        except ValueError as exc:
            self.ctx.log.warning("reward model state not used; fitted afresh", error=str(exc))
            return 0
        if state.reference != self._reference_tag():
            return 0  # kept before an offline fit: another reference's features
        if state.features.shape[1] != feature_width(self._frozen):
            return 0  # kept by a version of plaudit that read other features
        self._reference = self._frozen
        self._features = dict(zip(state.keys, state.features, strict=True))
        self.head = state.head  # until the refit at the first post cycle (features cached)
        return len(state.keys)

    async def refit(self) -> None:
        """Fit the head on what the store and the faces' history hold now (on the worker)."""
        from plaudit.learner import feature_width

        texts, targets, weights, n_own = self._examples()
        self.stale = False
        if len(texts) < 2:
            self.head = self.talk = None
            return
        reference = self._frozen
        histories = tuple((name, len(rt.history)) for name, rt in self.ctx.faces.items())
        talk_for = (reference, histories)  # (a model compares by identity)
        talk_filter = self.ctx.settings.reward_model.talk_filter
        fit_talk = talk_filter and (self.talk is None or self._talk_for != talk_for)
        fit_kinds = self._kinds_for != talk_for
        head, talk, kinds = await self.ctx.worker.run_soon(
            "reward_model", self._fit, texts, targets, weights, n_own,
            self._talk_sets() if fit_talk else None,
            self._kinds_sets() if fit_kinds else None,
        )  # fmt: skip
        self.head = head
        if not talk_filter:
            self.talk = self._talk_for = None
        elif fit_talk:
            self.talk, self._talk_for = talk, talk_for
        if kinds is not None:
            self._adopt_kinds(*kinds, fitted_for=talk_for)
        talk = self.talk
        self.ctx.log.info(
            "reward model fitted",
            own=head.n_own,
            history=head.n_history,
            loo_r2=round(head.loo_r2, 3),
            noise_sd=round(math.sqrt(head.noise_var), 3),
            lam=float(f"{head.lam:.3g}"),
            features=feature_width(reference),
            talk_loo_r2=round(talk.loo_r2, 3) if talk is not None else None,
        )

    def _adopt_kinds(self, kinds: PostKinds | None, history: dict[str, float], *,
                     fitted_for: tuple[object, tuple[tuple[str, int], ...]]) -> None:  # fmt: skip
        """New kinds (a new reference or history): the candidates' windows start again, as
        their kinds were another clustering's."""
        self.kinds, self._kinds_for = kinds, fitted_for
        self._recent_kinds.clear()
        self.candidate_kinds.clear()
        self.history_kinds = history
        for face, value in history.items():
            self.ctx.metrics.post_kinds.labels(face, "history").set(value)

    def _record_kinds(self, face: str, kinds: Sequence[int]) -> None:
        from plaudit.learner import kinds_covered

        if not kinds:
            return
        recent = self._recent_kinds.setdefault(face, deque(maxlen=KINDS_WINDOW))
        recent.extend(kinds)
        if len(recent) >= KINDS_MIN:
            value = kinds_covered(list(recent))
            self.candidate_kinds[face] = value
            self.ctx.metrics.post_kinds.labels(face, "candidates").set(value)

    # -- posting ---------------------------------------------------------------------------

    async def choose(self, texts: list[str], survivors: list[int], *, face: str) -> Choice | None:
        """Every candidate's predicted reward and the survivor to publish; None when there
        is no head (disabled, or nothing to fit on yet): the caller chooses uniformly. A head
        without trust on ``face`` (`trust`: its predictions ran against the rewards) predicts
        but chooses at random."""
        if not self.enabled:
            return None
        policy = self.ctx.policy
        reference = self._frozen
        if self.stale or reference is not self._reference:
            await self.refit()
        head, talk_head, kinds_map = self.head, self.talk, self.kinds
        if head is None:
            return None
        selection = self.ctx.settings.reward_model.selection
        seed = self.ctx.rng.randrange(2**63)

        def predict() -> tuple[list[float], list[float], list[int], list[float], list[int]]:
            import torch

            from plaudit.learner import hidden_features, text_features

            x = text_features(reference, policy.tokenizer, texts)
            # Rewards are clipped z-scores: a prediction beyond the clip is extrapolation (a
            # candidate unlike anything fitted on) and says no more than the clip.
            mean = [max(-CLIP, min(CLIP, v)) for v in head.predict(x).mean]
            generator = torch.Generator().manual_seed(seed)
            draw = head.thompson(x, generator)
            talk: list[int] = []
            if talk_head is not None and survivors:
                scores = talk_head.predict(x[survivors]).mean
                talk = [i for i, v in zip(survivors, scores, strict=True) if v > TALK_THRESHOLD]
            kept = [i for i in survivors if i not in talk]
            chances = (
                head.thompson_chances(x[kept], draws=CHANCE_DRAWS, generator=generator)
                if selection == "thompson" and kept
                else []
            )
            kinds = kinds_map.assign(hidden_features(x)) if kinds_map is not None else []
            return mean, draw, talk, chances, kinds

        mean, draw, talk, chances, kinds = await self.ctx.worker.run_soon("reward_model", predict)
        if kinds_map is self.kinds:  # not refitted meanwhile
            self._record_kinds(face, kinds)
        survivors = [i for i in survivors if i not in talk]
        base = Choice(index=-1, predicted=mean, talk=tuple(talk), kinds=tuple(kinds))
        if not survivors:
            return base
        if selection == "uniform" or self.trust(face) == 0.0:
            index = self.ctx.rng.choice(survivors)
            return replace(base, index=index, chance=1.0 / len(survivors))
        if selection == "greedy":
            return replace(base, index=max(survivors, key=lambda i: mean[i]))
        index = max(survivors, key=lambda i: draw[i])
        # The chosen one won a draw, so its chance is not 0 whatever the estimate says.
        chance = max(chances[survivors.index(index)], 1.0 / CHANCE_DRAWS)
        return replace(base, index=index, chance=chance)

    # -- when rewards arrive ---------------------------------------------------------------

    def measure(self, face: str) -> float | None:
        """The Spearman correlation of stored predictions with the rewards that came, over
        the face's newest rewarded posts that carry a prediction; None below 3 of them."""
        window = self.ctx.settings.reward_model.correlation_window
        pairs: list[tuple[float, float]] = []
        # The audience's rewards only: a rejection's is a constant, not a reaction.
        for reward in self.ctx.store.rewards(source=RewardSource.REACTIONS, limit=4 * window):
            if reward.face != face:
                continue
            post = self.ctx.store.get_post(reward.post_id)
            if post.predicted_reward is not None:
                pairs.append((post.predicted_reward, reward.reward))
            if len(pairs) == window:
                break
        rho = spearman([p for p, _ in pairs], [r for _, r in pairs]) if len(pairs) >= 3 else None
        if rho is None or not math.isfinite(rho):
            return None
        self.correlation[face] = rho
        self.ctx.metrics.reward_model_spearman.labels(face).set(rho)
        return rho

    def status(self) -> dict[str, Any]:
        head = self.head
        return {
            "enabled": self.enabled,
            "selection": self.ctx.settings.reward_model.selection,
            "fitted": head is not None,
            "own_posts": head.n_own if head else 0,
            "history_posts": head.n_history if head else 0,
            "loo_r2": head.loo_r2 if head else None,
            "talk_filter": self.talk is not None,
            "spearman": dict(self.correlation),
            "post_kinds": {
                face: {"history": value, "candidates": self.candidate_kinds.get(face)}
                for face, value in self.history_kinds.items()
            },
        }
