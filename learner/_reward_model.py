"""A reward model: a Bayesian ridge head on frozen features of the reference model.

Each reward costs hours, so the head has to be right after a handful of them. It reads
features no reward has to teach: the mean over a post's tokens of the residual stream of the
*reference* model (frozen, so a post's features never change while the policy moves) after
the first half of its blocks (a middle layer: the last ones are specialised to predicting the
next token). On those, a linear head:

- ridge regression, its shrinkage chosen by leave-one-out error over a grid (closed form from
  one eigendecomposition, so a refit of a few thousand posts takes milliseconds);
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

import io
import math
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


def feature_layer(model: Transformer) -> int:
    """The block after which features are read: the middle of the model."""
    return max(1, len(model.blocks) // 2)


@torch.inference_mode()
def text_features(
    model: Transformer,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    chunk_size: int = 32,
) -> Tensor:
    """(N, C) float32: per text, the mean over its tokens (BOS first when the tokenizer has
    one, at most `FEATURE_TOKENS`) of the residual stream after `feature_layer(model)`."""
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
        return torch.zeros(0, model.config.n_embd)
    return torch.cat(out)


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
    # The posterior covariance's factor: cov = noise_var * basis diag(1/(eig + lam)) basis'.
    basis: Tensor  # (C, C)
    inv_eig: Tensor  # (C,) 1 / (eigenvalue + lambda)
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
    ) -> RewardHead:
        """Weighted ridge on (features, targets), shrinkage by leave-one-out error."""
        x = features.double()
        y = torch.tensor(list(targets), dtype=torch.float64)
        w = torch.tensor(list(weights), dtype=torch.float64)
        n = x.shape[0]
        if n < 2 or not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(y).all()):
            raise ValueError(f"a reward head needs 2 or more finite examples, got {n}")
        w = w / w.mean()
        center = (w[:, None] * x).sum(0) / w.sum()
        scale = ((w[:, None] * (x - center) ** 2).sum(0) / w.sum()).sqrt().clamp(min=1e-6)
        z = (x - center) / scale
        bias = float((w * y).sum() / w.sum())
        yc = y - bias
        gram = z.T @ (w[:, None] * z)  # (C, C)
        eig, basis = torch.linalg.eigh(gram)
        eig = eig.clamp(min=0.0)
        proj = z @ basis  # (N, C)
        wy = basis.T @ (z.T @ (w * yc))  # (C,)
        unit = max(float(eig.mean()), 1e-12)
        best: tuple[float, float, Tensor] | None = None
        for mult in _LAMBDAS:
            lam = mult * unit
            inv = 1.0 / (eig + lam)
            fitted = proj @ (inv * wy)  # (N,)
            lever = w * (proj**2 @ inv)  # (N,) diagonal of the weighted hat matrix
            loo = (yc - fitted) / (1.0 - lever).clamp(min=1e-6)
            mse = float((w * loo**2).sum() / w.sum())
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


@dataclass
class RewardModelState:
    """A reward model's fitted parts, kept across restarts: the features it was fitted on (one
    row per caller's key) read from the reference model that ``reference`` names (the caller's
    tag: features of another reference are not these), and the head."""

    reference: str
    keys: list[str]
    features: Tensor  # (N, C) float32
    head: RewardHead | None

    def save(self, path: Path) -> None:
        """Written atomically (a crash leaves the old file or the new one)."""
        buffer = io.BytesIO()
        torch.save(
            {
                "reference": self.reference,
                "keys": list(self.keys),
                "features": self.features.detach().cpu().float().contiguous(),
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
            head = data["head"]
            state = cls(
                reference=str(data["reference"]),
                keys=keys,
                features=features,
                head=None if head is None else RewardHead.from_state_dict(head),
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
