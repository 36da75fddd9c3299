"""The reward model: features of a frozen model (a middle layer, mean-pooled, padding-free),
the ridge head with leave-one-out shrinkage and its posterior."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from plaudit.learner import (
    ModelConfig,
    RewardHead,
    RewardModelState,
    Tokenizer,
    Transformer,
    feature_width,
    text_features,
    word_features,
)

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "coffee in the morning"] * 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(vocab: int, family: str = "llama") -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab, max_seq_len=64, n_layer=4, n_head=2, n_kv_head=1 if family == "llama" else 2, n_embd=32,
        intermediate_size=64, family=family,
    )  # fmt: skip
    model = Transformer(cfg)
    model.init_weights()
    return model.eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hidden_states_are_the_forward_pass_up_to_a_layer(family: str) -> None:
    model = tiny(100, family)
    idx = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        full = model.hidden_states(idx, layers=len(model.blocks))
        head = model.tok_emb.weight if model.lm_head is None else model.lm_head.weight
        logits = torch.nn.functional.linear(model.norm_f(full), head)
        assert torch.allclose(logits, model(idx), atol=1e-5)
        assert torch.equal(
            model.hidden_states(idx, layers=0), model._embed(idx, torch.arange(9))[0]
        )


def test_text_features_do_not_depend_on_the_batch() -> None:
    tok = Tokenizer.train_bpe(TEXTS, vocab_size=300)
    model = tiny(tok.vocab_size)
    alone = text_features(model, tok, ["a dog"])
    batched = text_features(model, tok, ["a dog", "coffee in the morning with the cat"])
    width = feature_width(model)
    assert alone.shape == (1, width) and batched.shape == (2, width)
    assert torch.allclose(alone[0], batched[0], atol=1e-5)  # right padding is not read
    assert not torch.allclose(batched[0, :32], batched[1, :32])
    assert text_features(model, tok, []).shape == (0, width)
    # the hidden state's columns, then the words'
    torch.testing.assert_close(
        batched[:, 32:], word_features(["a dog", "coffee in the morning with the cat"])
    )


def test_word_features_mark_the_words_a_text_holds_whatever_their_case_or_count() -> None:
    x = word_features(["The sea, the sea!", "the SEA", "a boat on the lake", "", "café au lait"])
    assert x.shape == (5, 1024) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(x[0], x[1]) and x[0].sum() == 2  # "the", "sea": presence, not counts
    assert x[2].sum() == 5 and x[3].sum() == 0 and x[4].sum() == 3  # any script's letters
    assert torch.equal(word_features(["the sea"], dim=64), word_features(["sea the"], dim=64))


def test_indicator_columns_are_centred_not_scaled() -> None:
    # y follows a rare 0/1 column (on in 1% of rows) and a common one, equally, plus noise
    g = torch.Generator().manual_seed(5)
    n = 2000
    rare = (torch.rand(n, generator=g) < 0.01).float()
    common = (torch.rand(n, generator=g) < 0.5).float()
    dense = torch.randn(n, 4, generator=g)
    x = torch.cat([dense, rare[:, None], common[:, None]], dim=1)
    y = (rare + common + dense[:, 0] + torch.randn(n, generator=g)).tolist()
    scaled = RewardHead.fit(x, y, [1.0] * n, n_own=n)
    raw = RewardHead.fit(x, y, [1.0] * n, n_own=n, indicators=2)
    assert torch.equal(raw.scale[-2:], torch.ones(2)) and not torch.equal(
        scaled.scale[-2:], torch.ones(2)
    )
    torch.testing.assert_close(raw.center, scaled.center)
    assert raw.predict(x[:5]).mean != scaled.predict(x[:5]).mean


def synthetic(n: int, dim: int = 16, noise: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g) * torch.linspace(0.5, 3, dim) + 2.0
    true = torch.zeros(dim)
    true[:3] = torch.tensor([1.0, -0.5, 0.25])
    y = ((x - 2.0) / torch.linspace(0.5, 3, dim)) @ true + noise * torch.randn(n, generator=g)
    return x, y


def test_ridge_head_predicts_held_out_posts_and_knows_its_noise() -> None:
    x, y = synthetic(600)
    head = RewardHead.fit(x[:400], y[:400].tolist(), [1.0] * 400, n_own=400)
    pred = torch.tensor(head.predict(x[400:]).mean)
    resid = y[400:] - pred
    assert float(resid.pow(2).mean()) < 0.3**2 * 1.3  # close to the noise floor
    assert 0.5 < head.noise_var / 0.3**2 < 1.5
    assert head.loo_r2 > 0.8 and head.n_own == 400 and head.n_history == 0


def test_uncertainty_shrinks_with_data_and_thompson_draws_centre_on_the_mean() -> None:
    x, y = synthetic(800, seed=1)
    probe = x[:5]
    few = RewardHead.fit(x[100:120], y[100:120].tolist(), [1.0] * 20, n_own=20)
    many = RewardHead.fit(x[100:], y[100:].tolist(), [1.0] * 700, n_own=700)
    assert sum(many.predict(probe).std) < 0.5 * sum(few.predict(probe).std)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([few.thompson(probe, g) for _ in range(400)])  # (400, 5)
    mean, std = few.predict(probe).mean, few.predict(probe).std
    assert torch.allclose(draws.mean(0), torch.tensor(mean), atol=4 * max(std) / 20 + 1e-3)
    assert torch.allclose(draws.std(0), torch.tensor(std), rtol=0.2)


def test_weights_let_own_posts_dominate_history() -> None:
    x, y = synthetic(400, seed=2)
    # the "history" half says the opposite of the own posts
    targets = torch.cat([y[:200], -y[200:]]).tolist()
    weights = [10.0] * 200 + [0.1] * 200
    head = RewardHead.fit(x, targets, weights, n_own=200)
    pred = torch.tensor(head.predict(x[:200]).mean)
    assert float(torch.corrcoef(torch.stack([pred, y[:200]]))[0, 1]) > 0.8


def test_state_dict_round_trip_and_bad_input() -> None:
    x, y = synthetic(50, seed=3)
    head = RewardHead.fit(x, y.tolist(), [1.0] * 50, n_own=10)
    again = RewardHead.from_state_dict(head.state_dict())
    assert again.predict(x[:3]) == head.predict(x[:3])
    with pytest.raises(ValueError, match="2 or more finite"):
        RewardHead.fit(x[:1], y[:1].tolist(), [1.0], n_own=1)
    y[3] = math.nan
    with pytest.raises(ValueError, match="finite"):
        RewardHead.fit(x, y.tolist(), [1.0] * 50, n_own=10)


def test_reward_model_state_round_trip_and_damage(tmp_path: Any) -> None:
    x, y = synthetic(20, seed=4)
    head = RewardHead.fit(x, y.tolist(), [1.0] * 20, n_own=5)
    path = tmp_path / "rm.pt"
    keys = [f"k{i}" for i in range(20)]
    RewardModelState(reference="v000003", keys=keys, features=x.float(), head=head).save(path)
    back = RewardModelState.load(path)
    assert back.reference == "v000003" and back.keys == keys
    torch.testing.assert_close(back.features, x.float())
    assert back.head is not None and back.head.predict(x[:3]) == head.predict(x[:3])
    RewardModelState(reference="base", keys=[], features=torch.zeros(0, 8), head=None).save(path)
    assert RewardModelState.load(path).head is None
    path.write_bytes(path.read_bytes()[:40])  # cut short
    with pytest.raises(ValueError, match="cannot be read as a reward model"):
        RewardModelState.load(path)
    bad = torch.full((2, 8), math.nan)
    RewardModelState(reference="base", keys=["a", "b"], features=bad, head=None).save(path)
    with pytest.raises(ValueError, match="not all finite"):
        RewardModelState.load(path)


def test_thompson_chances_are_how_often_a_draw_chooses_each_post() -> None:
    x, y = synthetic(800, seed=4)
    few = RewardHead.fit(x[100:120], y[100:120].tolist(), [1.0] * 20, n_own=20)
    many = RewardHead.fit(x[100:], y[100:].tolist(), [1.0] * 700, n_own=700)
    probe = x[:6]
    chances = few.thompson_chances(probe, draws=4000, generator=torch.Generator().manual_seed(1))
    assert math.isclose(sum(chances), 1.0, abs_tol=1e-9) and len(chances) == 6
    g = torch.Generator().manual_seed(2)
    picks = torch.tensor(
        [max(range(6), key=few.thompson(probe, g).__getitem__) for _ in range(2000)]
    )
    counted = torch.bincount(picks, minlength=6).double() / 2000
    assert torch.allclose(counted, torch.tensor(chances, dtype=torch.float64), atol=0.04)
    assert sum(c > 0.02 for c in chances) >= 2  # an unsure head spreads its choices
    # A sure head chooses the best predicted post almost always.
    sure = many.thompson_chances(probe, draws=4000, generator=torch.Generator().manual_seed(1))
    best = max(range(6), key=many.predict(probe).mean.__getitem__)
    assert sure[best] > max(chances) and sure[best] > 0.8
    assert many.thompson_chances(probe[:1], draws=10, generator=g) == [1.0]


def test_columns_no_example_varies_are_left_out_and_the_svd_stands_in_for_the_eigensolver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = synthetic(60, seed=6)
    words = torch.zeros(60, 500)
    words[:5, :3] = 1.0  # 3 of 500 word columns ever set
    wide = torch.cat([x, words], dim=1)
    head = RewardHead.fit(wide, y.tolist(), [1.0] * 60, n_own=60, indicators=500)
    assert head.basis.shape == (516, 19) and head.inv_eig.shape == (19,)
    assert torch.count_nonzero(head.weights[19:]) == 0  # nothing learned of the unseen words
    unseen = wide[:4].clone()
    unseen[:, 100:] = 1.0  # words no example held change neither the mean nor the spread
    assert head.predict(unseen) == head.predict(wide[:4])

    def failing(*_: Any) -> Any:
        raise torch.linalg.LinAlgError("failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    by_svd = RewardHead.fit(wide, y.tolist(), [1.0] * 60, n_own=60, indicators=500)
    torch.testing.assert_close(by_svd.weights, head.weights, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        torch.tensor(by_svd.predict(wide[:4]).std), torch.tensor(head.predict(wide[:4]).std)
    )
    narrow = RewardHead.fit(wide[:10], y[:10].tolist(), [1.0] * 10, n_own=10, indicators=500)
    assert narrow.inv_eig.shape == (19,)  # fewer examples than columns: every direction kept


def test_indicator_columns_are_kept_as_bits_and_read_back_exactly(tmp_path: Any) -> None:
    x, _ = synthetic(40, seed=9)
    words = word_features(
        [f"post {i} about {'tea' if i % 3 else 'rain'} {i % 7}" for i in range(40)]
    )
    both = torch.cat([x.float(), words[:, :1021]], dim=1)  # a width that is not a whole byte
    keys = [f"k{i}" for i in range(40)]
    packed, plain = tmp_path / "packed.pt", tmp_path / "plain.pt"
    RewardModelState(reference="base", keys=keys, features=both, head=None, indicators=1021).save(
        packed
    )
    RewardModelState(reference="base", keys=keys, features=both, head=None).save(plain)
    for path in (packed, plain):
        assert torch.equal(RewardModelState.load(path).features, both)
    assert packed.stat().st_size * 4 < plain.stat().st_size
    # Columns said to be 0/1 that are not are kept as they are, not rounded.
    both[0, -1] = 0.5
    RewardModelState(reference="base", keys=keys, features=both, head=None, indicators=1021).save(
        packed
    )
    assert torch.equal(RewardModelState.load(packed).features, both)


def test_the_fit_is_weighted_ridge_and_its_error_is_the_leave_one_out_error() -> None:
    # Against the textbook solve in float64, refitted without each example in turn: the fit's
    # float32 products must not move the weights or the error it chooses shrinkage by. One
    # column sits far from 0 (a hidden unit with a large mean), as centring in float32 must bear.
    x, y = synthetic(80, dim=6, seed=8)
    x[:, 1] += 1000.0
    w = torch.linspace(0.3, 1.0, 80, dtype=torch.float64)
    head = RewardHead.fit(x, y.tolist(), w.tolist(), n_own=80)
    xd, yd = x.double(), y.double()
    wn = w / w.mean()
    center = (wn[:, None] * xd).sum(0) / wn.sum()
    scale = ((wn[:, None] * (xd - center) ** 2).sum(0) / wn.sum()).sqrt()
    z = (xd - center) / scale

    # The closed form's leave-one-out keeps the full data's bias (centre and scale too).
    bias = float((wn * yd).sum() / wn.sum())

    def ridge(keep: torch.Tensor) -> torch.Tensor:
        zk, yk, wk = z[keep], yd[keep] - bias, wn[keep]
        gram = zk.T @ (wk[:, None] * zk) + head.lam * torch.eye(z.shape[1], dtype=torch.float64)
        return torch.linalg.solve(gram, zk.T @ (wk * yk))

    coef = ridge(torch.ones(80, dtype=torch.bool))
    torch.testing.assert_close(head.weights.double(), coef, atol=1e-5, rtol=1e-4)
    loo = []
    for i in range(80):
        keep = torch.ones(80, dtype=torch.bool)
        keep[i] = False
        loo.append(float(yd[i] - bias - z[i] @ ridge(keep)))
    mse = float((wn * torch.tensor(loo, dtype=torch.float64) ** 2).sum() / wn.sum())
    assert head.noise_var == pytest.approx(mse, rel=1e-4)
