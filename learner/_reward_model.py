"""A reward model: a Bayesian ridge head on frozen features of the reference model.

Each reward costs hours, so the head has to be right after a handful of them. It reads
features no reward has to teach: the mean over a post's tokens of the residual stream of the
*reference* model (frozen, so a post's features never change while the policy moves) after
the first half of its blocks (a middle layer: the last ones are specialised to predicting the
next token), and which words the post holds (`word_features`). On those, a linear head:

- ridge regression, its shrinkage chosen by leave-one-out error over a grid (closed form from
  one eigendecomposition, in float64; the (N, C) products in float32, which made a refit of
  4,500 posts 1.5x faster: 0.78 s at one thread over `tiny`'s 1,280 columns, 1.18 s over
  SmolLM2's 1,600);
- warm-started on the face's history (post, reward) pairs, with a weight below that of the
  bot's own rewarded posts (history posts are written by people, not sampled by the policy);
- a posterior over the weights, N(w, sigma^2 (X'WX + lambda I)^-1) with sigma^2 the
  leave-one-out error, so the choice among candidates can explore by Thompson sampling.

What is fitted is derived: the head from features and targets, the features from the frozen
reference. `RewardModelState` keeps both across a restart, as a cache: reading the features of
the simulated face's 4,200 history posts takes SmolLM2 about 80 s on 2 cores (18.4 s per 1,000
on an Intel Xeon), which the first post after a restart would otherwise wait for.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from plaudit.state import atomic_write_bytes

from ._model import Transformer
from ._tokenizer import Tokenizer

# Shrinkage grid, in units of the mean eigenvalue of X'WX (scale-free).
_LAMBDAS = tuple(10.0**e for e in (-3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3))
# Features of a post read at most this many of its tokens.
FEATURE_TOKENS = 96
# Hashed word-presence columns after the hidden features (`word_features`).
WORD_FEATURES = 1024
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def feature_layer(model: Transformer) -> int:
    """The block after which features are read: the middle of the model."""
    return max(1, len(model.blocks) // 2)


def feature_width(model: Transformer) -> int:
    """Columns of `text_features`: the hidden state's, then `WORD_FEATURES`."""
    return model.config.n_embd + WORD_FEATURES


def hidden_features(features: Tensor) -> Tensor:
    """The hidden-state columns of `text_features`' rows (the words left out)."""
    return features[:, : features.shape[1] - WORD_FEATURES]


def word_features(texts: Sequence[str], dim: int = WORD_FEATURES) -> Tensor:
    """(N, dim) float32 of 0/1: which words (lower-cased, hashed into ``dim`` buckets with a
    digest, so the same in every process) a text contains.

    Why next to the hidden states: the head is fitted on a few thousand posts, and what an
    audience reacts to is often a word (a topic, a name, a feeling) that a mean over the
    residual stream blurs. Measured on the `tiny` reference and the simulated face's 4,200
    history posts, against 2,400 samples of the start in cycles of 8 (their noise-free
    appeal): leave-one-out R² 0.231 -> 0.334, the correlation within a cycle 0.493 -> 0.605,
    the gain of the head's best of 8 over a random one 0.0406 -> 0.0544. Words alone: 0.0477.
    Word pairs as well did worse (0.0480); 2,048 buckets did about the same (0.0549) for
    twice the columns, whose ridge costs grow with their square."""
    out = torch.zeros(len(texts), dim)
    for i, text in enumerate(texts):
        for word in set(_WORD.findall(text.lower())):
            digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
            out[i, int.from_bytes(digest, "little") % dim] = 1.0
    return out


@torch.inference_mode()
def text_features(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    chunk_size: int = 32,
) -> Tensor:
    """(N, `feature_width(model)`) float32: per text, the mean over its tokens (BOS first when
    the tokenizer has one, at most `FEATURE_TOKENS`) of the residual stream after
    `feature_layer(model)`, then its `word_features` (0/1 indicators: `RewardHead.fit`'s
    ``indicators``)."""
    device = next(model.parameters()).device
    layers = feature_layer(model)
    limit = min(FEATURE_TOKENS, model.config.max_seq_len)
    was_training = model.training
    model.eval()
    out: list[Tensor] = []
    try:
        for start in range(0, len(texts), chunk_size):
            ids = [
                (tokenizer.encode(t, add_bos=tokenizer.bos_id is not None) or [0])[:limit]
                for t in texts[start : start + chunk_size]
            ]
            width = max(len(x) for x in ids)
            idx = torch.zeros(len(ids), width, dtype=torch.long, device=device)
            mask = torch.zeros(len(ids), width, dtype=torch.bool, device=device)
            for i, x in enumerate(ids):
                idx[i, : len(x)] = torch.tensor(x, device=device)
                mask[i, : len(x)] = True
            h = model.hidden_states(idx, layers=layers).float()  # (B, T, C), right-padded
            m = mask[..., None].float()
            out.append(((h * m).sum(1) / m.sum(1)).cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, feature_width(model))
    return torch.cat([torch.cat(out), word_features(texts)], dim=1)


def _eigh_gram(z: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of z' diag(w) z, in float64; by the SVD of diag(sqrt w) z
    where the eigensolver does not converge (it can fail on many nearly repeated eigenvalues)."""
    try:
        eig, basis = torch.linalg.eigh((z.T @ (w[:, None] * z)).double())
        return eig, basis
    except RuntimeError:  # torch.linalg.LinAlgError (its subclass, not exported to mypy)
        _, sv, vh = torch.linalg.svd((w.sqrt()[:, None] * z).double())  # vh: (K, K)
        eig = torch.zeros(z.shape[1], dtype=torch.float64)
        eig[: sv.shape[0]] = sv**2
        return eig, vh.T


@dataclass
class Prediction:
    mean: list[float]  # the posterior mean of each post's reward
    std: list[float]  # its posterior standard deviation (the head's uncertainty only)


@dataclass
class RewardHead:
    """A fitted head: predictions are ``bias + ((x - center) / scale) @ weights``."""

    center: Tensor  # (C,)
    scale: Tensor  # (C,)
    weights: Tensor  # (C,)
    bias: float
    # The posterior covariance's factor: cov = noise_var * basis diag(1/(eig + lam)) basis',
    # over the K columns that varied in the examples (the others' rows are 0).
    basis: Tensor  # (C, K)
    inv_eig: Tensor  # (K,) 1 / (eigenvalue + lambda)
    noise_var: float  # leave-one-out mean squared error (weighted)
    lam: float
    loo_r2: float  # 1 - LOO MSE / variance of the targets: how much the head explains
    n_own: int  # the bot's own rewarded posts it was fitted on
    n_history: int  # history posts it was fitted on

    @classmethod
    def fit(
        cls,
        features: Tensor,
        targets: Sequence[float],
        weights: Sequence[float],
        *,
        n_own: int,
        indicators: int = 0,
    ) -> RewardHead:
        """Weighted ridge on (features, targets), shrinkage by leave-one-out error. Columns
        are centred and scaled to unit spread, but for the last ``indicators`` (0/1 columns,
        such as `word_features`), which are centred only: scaled, a word in a handful of posts
        would weigh as much as a common one and fit their noise (the same measurement as
        `word_features`: within-cycle correlation 0.564 scaled, 0.605 not)."""
        # The (N, C) products run in float32 (half the time of float64; their rounding,
        # about 1e-7 of the largest eigenvalue, is far below the smallest shrinkage tried,
        # 1e-3 of the mean one); the eigendecomposition and the shrinkage search in float64.
        x = features.float()
        y = torch.tensor(list(targets), dtype=torch.float64)
        w = torch.tensor(list(weights), dtype=torch.float64)
        n = x.shape[0]
        if n < 2 or not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(y).all()):
            raise ValueError(f"a reward head needs 2 or more finite examples, got {n}")
        w = w / w.mean()  # sums to n
        w32 = w.float()
        center = (w32 @ x) / n
        z = x - center
        spread = ((w32 @ z.square()) / n).sqrt()
        scale = spread.clamp(min=1e-6)
        if indicators:
            scale[x.shape[1] - indicators :] = 1.0
        # Columns the same in every example (a word none of them holds) say nothing: they
        # are left out of the solve (a fitted weight of 0, no posterior spread), which also
        # keeps the eigensolver off a large block of exactly repeated zero eigenvalues (on
        # which LAPACK's divide-and-conquer failed to converge).
        varied = spread > 0
        varied[0] |= not bool(varied.any())  # none varies: one column, so there is a solve
        zv = z[:, varied].div_(scale[varied])
        bias = float((w * y).sum() / n)
        yc = y - bias
        eig, basis_v = _eigh_gram(zv, w32)
        eig = eig.clamp(min=0.0)
        proj = (zv @ basis_v.float()).double()  # (N, K)
        wy = basis_v.T @ (zv.T @ (w32 * yc.float())).double()  # (K,)
        basis = torch.zeros(x.shape[1], basis_v.shape[1], dtype=basis_v.dtype)
        basis[varied] = basis_v  # (C, K): rows of 0 for the columns left out
        unit = max(float(eig.mean()), 1e-12)
        proj2 = proj**2
        best: tuple[float, float, Tensor] | None = None
        for mult in _LAMBDAS:
            lam = mult * unit
            inv = 1.0 / (eig + lam)
            fitted = proj @ (inv * wy)  # (N,)
            lever = w * (proj2 @ inv)  # (N,) diagonal of the weighted hat matrix
            loo = (yc - fitted) / (1.0 - lever).clamp(min=1e-6)
            mse = float((w * loo**2).sum() / n)
            if best is None or mse < best[0]:
                best = (mse, lam, inv)
        assert best is not None
        mse, lam, inv = best
        var_y = float((w * yc**2).sum() / w.sum())
        return cls(
            center=center.float(),
            scale=scale.float(),
            weights=(basis @ (inv * wy)).float(),
            bias=bias,
            basis=basis.float(),
            inv_eig=inv.float(),
            noise_var=mse,
            lam=lam,
            loo_r2=1.0 - mse / var_y if var_y > 0 else 0.0,
            n_own=n_own,
            n_history=n - n_own,
        )

    def _z(self, features: Tensor) -> Tensor:
        return (features.float() - self.center) / self.scale

    def predict(self, features: Tensor) -> Prediction:
        z = self._z(features)
        mean = self.bias + z @ self.weights
        # var = noise_var * sum_k (z . basis_k)^2 / (eig_k + lam)
        var = self.noise_var * ((z @ self.basis) ** 2 @ self.inv_eig)
        return Prediction(mean=mean.tolist(), std=var.clamp(min=0).sqrt().tolist())

    def _posterior_scores(self, features: Tensor, noise: Tensor) -> Tensor:
        """(n, d): each post's reward under d draws of the weights from the posterior, one per
        column of the standard-normal ``noise`` (k, d): w + sigma B diag(inv_eig)^1/2 noise."""
        z = self._z(features)
        spread = (z @ self.basis) * self.inv_eig.sqrt()  # (n, k)
        mean = self.bias + z @ self.weights  # (n,)
        return mean.unsqueeze(1) + math.sqrt(self.noise_var) * (spread @ noise)

    def thompson(self, features: Tensor, generator: torch.Generator) -> list[float]:
        """Each post's reward under one draw of the weights from the posterior: choosing the
        argmax explores where the head is unsure and exploits where it is sure."""
        noise = torch.randn(self.inv_eig.shape[0], 1, generator=generator)
        return self._posterior_scores(features, noise)[:, 0].tolist()

    def thompson_chances(
        self, features: Tensor, *, draws: int, generator: torch.Generator
    ) -> list[float]:
        """Each post's chance of being the argmax under a draw of the weights (what
        `thompson` then choosing the best gives it), estimated from ``draws`` draws; they sum
        to 1. A post a learner trains on was chosen with this chance, not uniformly, and the
        chance is what corrects for that."""
        n = features.shape[0]
        if n == 1:
            return [1.0]
        noise = torch.randn(self.inv_eig.shape[0], draws, generator=generator)
        scores = self._posterior_scores(features, noise)
        wins = torch.bincount(scores.argmax(dim=0), minlength=n).double()
        return (wins / draws).tolist()

    def state_dict(self) -> dict[str, object]:
        return {
            "center": self.center,
            "scale": self.scale,
            "weights": self.weights,
            "bias": self.bias,
            "basis": self.basis,
            "inv_eig": self.inv_eig,
            "noise_var": self.noise_var,
            "lam": self.lam,
            "loo_r2": self.loo_r2,
            "n_own": self.n_own,
            "n_history": self.n_history,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> RewardHead:
        return cls(**state)  # type: ignore[arg-type]


def _pack_bits(x: Tensor) -> Tensor:
    """(N, D) of 0/1 -> (N, ceil(D / 8)) uint8, eight columns a byte."""
    pad = (-x.shape[1]) % 8
    bits = torch.nn.functional.pad(x.to(torch.uint8), (0, pad)).view(x.shape[0], -1, 8)
    return (bits << torch.arange(8, dtype=torch.uint8)).sum(-1, dtype=torch.uint8)


def _unpack_bits(packed: Tensor, width: int) -> Tensor:
    """`_pack_bits` undone: (N, width) float32 of 0/1."""
    bits = (packed[..., None] >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(packed.shape[0], -1)[:, :width].float()


@dataclass
class RewardModelState:
    """A reward model's fitted parts, kept across restarts: the features it was fitted on (one
    row per caller's key) read from the reference model that ``reference`` names (the caller's
    tag: features of another reference are not these), and the head. The last ``indicators``
    columns (0/1, such as `word_features`) are stored as bits: for SmolLM2's features of 4,500
    posts the file is 21 MB instead of 39."""

    reference: str
    keys: list[str]
    features: Tensor  # (N, C) float32
    head: RewardHead | None
    indicators: int = 0

    def save(self, path: Path) -> None:
        """Written atomically (a crash leaves the old file or the new one)."""
        features = self.features.detach().cpu().float().contiguous()
        split = features.shape[1] - self.indicators
        flags = features[:, split:]
        packed = self.indicators > 0 and bool(((flags == 0) | (flags == 1)).all())
        buffer = io.BytesIO()
        torch.save(
            {
                "reference": self.reference,
                "keys": list(self.keys),
                "features": features[:, :split].contiguous() if packed else features,
                **({"indicators": self.indicators, "bits": _pack_bits(flags)} if packed else {}),
                "head": None if self.head is None else self.head.state_dict(),
            },
            buffer,
        )
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> RewardModelState:
        """Raises ValueError naming the file when it cannot be read or does not hold a state
        (a cache: the caller refits without it)."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            keys = [str(k) for k in data["keys"]]
            features = data["features"]
            indicators = int(data.get("indicators", 0))
            if indicators:
                bits = data["bits"]
                if bits.dtype != torch.uint8 or bits.shape != (len(keys), (indicators + 7) // 8):
                    raise ValueError(f"{indicators} indicator columns in bits of {bits.shape}")
                features = torch.cat([features, _unpack_bits(bits, indicators)], dim=1)
            head = data["head"]
            state = cls(
                reference=str(data["reference"]),
                keys=keys,
                features=features,
                head=None if head is None else RewardHead.from_state_dict(head),
                indicators=indicators,
            )
        except Exception as e:  # torch raises many kinds on a damaged zip/pickle
            raise ValueError(
                f"{path} cannot be read as a reward model ({type(e).__name__}: {e})"
            ) from e
        if (
            not isinstance(features, Tensor)
            or features.dim() != 2
            or features.shape[0] != len(keys)
        ):
            raise ValueError(
                f"{path}: {len(keys)} keys against features of shape "
                f"{tuple(getattr(features, 'shape', ()))}"
            )
        if not bool(torch.isfinite(features).all()):
            raise ValueError(f"{path}: the features are not all finite")
        return state
