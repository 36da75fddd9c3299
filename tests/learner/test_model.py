"""The transformer: configs, state-dict layout, tied heads, presets, optimizer groups."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from plaudit.learner._model import (
    PRESETS,
    ModelConfig,
    Transformer,
    apply_rope,
    rope_tables,
    signed_sin,
)


def tiny(family: str, **kw: object) -> ModelConfig:
    base: dict[str, object] = dict(
        family=family, vocab_size=61, max_seq_len=32, n_layer=2, n_head=4, n_embd=32
    )
    if family == "gpt2":
        base.update(n_kv_head=4, intermediate_size=128, bias=True)
    else:
        base.update(n_kv_head=2, intermediate_size=48)
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = tiny("llama", rope_theta=500.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown model config keys \['n_heads'\]"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_heads": 4})


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(n_embd=30), "not divisible by n_head"),
        (dict(n_kv_head=3), "not a multiple of n_kv_head"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
    ],
)
def test_config_rejects_bad_values(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny("llama", **kw)


def test_unknown_family_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model family 'mamba'"):
        ModelConfig(family="mamba")  # type: ignore[arg-type]


def test_gpt2_rejects_grouped_query_attention() -> None:
    with pytest.raises(ValueError, match="gpt2 has no grouped-query attention"):
        tiny("gpt2", n_kv_head=2)


def test_llama_state_dict_names_and_shapes() -> None:
    cfg = tiny("llama", tie_embeddings=False)
    sd = Transformer(cfg).state_dict()
    D, C, H = cfg.head_dim, cfg.n_embd, cfg.intermediate_size
    expected = {
        "tok_emb.weight": (cfg.vocab_size, C),
        "norm_f.weight": (C,),
        "lm_head.weight": (cfg.vocab_size, C),
    }
    for i in range(cfg.n_layer):
        expected |= {
            f"blocks.{i}.norm1.weight": (C,),
            f"blocks.{i}.norm2.weight": (C,),
            f"blocks.{i}.attn.qkv.weight": ((cfg.n_head + 2 * cfg.n_kv_head) * D, C),
            f"blocks.{i}.attn.proj.weight": (C, C),
            f"blocks.{i}.mlp.fc.weight": (2 * H, C),
            f"blocks.{i}.mlp.proj.weight": (C, H),
        }
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def test_gpt2_state_dict_names_and_shapes() -> None:
    cfg = tiny("gpt2")
    sd = Transformer(cfg).state_dict()
    C, H = cfg.n_embd, cfg.intermediate_size
    expected = {
        "tok_emb.weight": (cfg.vocab_size, C),
        "pos_emb.weight": (cfg.max_seq_len, C),
        "norm_f.weight": (C,),
        "norm_f.bias": (C,),
    }
    for i in range(cfg.n_layer):
        b = f"blocks.{i}."
        expected |= {
            b + "norm1.weight": (C,),
            b + "norm1.bias": (C,),
            b + "norm2.weight": (C,),
            b + "norm2.bias": (C,),
            b + "attn.qkv.weight": (3 * C, C),
            b + "attn.qkv.bias": (3 * C,),
            b + "attn.proj.weight": (C, C),
            b + "attn.proj.bias": (C,),
            b + "mlp.fc.weight": (H, C),
            b + "mlp.fc.bias": (H,),
            b + "mlp.proj.weight": (C, H),
            b + "mlp.proj.bias": (C,),
        }
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tied_head_round_trips_through_safetensors(family: str, tmp_path: object) -> None:
    torch.manual_seed(0)
    cfg = tiny(family)
    a = Transformer(cfg).eval()
    path = f"{tmp_path}/model.safetensors"
    save_file(a.state_dict(), path)  # refuses shared tensors: there must be none
    b = Transformer(cfg).eval()
    b.load_state_dict(load_file(path), strict=True)
    idx = torch.randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(a(idx), b(idx), rtol=0, atol=0)
        # The head is the embedding: changing one changes the logits through both.
        b.tok_emb.weight.mul_(2)
        assert not torch.allclose(a(idx), b(idx))


def test_forward_shapes_dtype_and_last_only() -> None:
    cfg = tiny("llama")
    model = Transformer(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (3, 7))
    with torch.no_grad():
        full = model(idx)
        last = model(idx, last_only=True)
    assert full.shape == (3, 7, cfg.vocab_size) and full.dtype == torch.float32
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


def test_bf16_model_returns_fp32_logits() -> None:
    cfg = tiny("llama")
    model = Transformer(cfg).eval().to(torch.bfloat16)
    with torch.no_grad():
        logits = model(torch.randint(0, cfg.vocab_size, (1, 5)))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_too_long_sequence_names_both_numbers() -> None:
    cfg = tiny("gpt2")
    model = Transformer(cfg)
    with pytest.raises(AssertionError, match=r"33 tokens .*max_seq_len 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal(family: str) -> None:
    """Changing a later token leaves the logits of earlier positions untouched."""
    cfg = tiny(family)
    model = Transformer(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (1, 10))
    idx2 = idx.clone()
    idx2[0, 6] = (idx[0, 6] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(idx), model(idx2)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_rope_is_relative() -> None:
    """Rotary scores depend on the distance between positions only."""
    cos, sin = rope_tables(head_dim=8, max_seq_len=20, theta=10000.0)
    sin = signed_sin(sin)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> float:
        qi = apply_rope(q, cos[i : i + 1], sin[i : i + 1])
        kj = apply_rope(k, cos[j : j + 1], sin[j : j + 1])
        return float((qi * kj).sum())

    assert score(5, 2) == pytest.approx(score(15, 12), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_grouped_query_equals_repeated_heads() -> None:
    """GQA with 2 kv heads equals full attention whose k/v heads are the repeated ones."""
    torch.manual_seed(0)
    gqa_cfg = tiny("llama", n_kv_head=2)
    gqa = Transformer(gqa_cfg).eval()
    full = Transformer(dataclasses.replace(gqa_cfg, n_kv_head=4)).eval()
    sd = gqa.state_dict()
    H, Hkv, D = 4, 2, gqa_cfg.head_dim
    for i in range(gqa_cfg.n_layer):
        q, k, v = sd[f"blocks.{i}.attn.qkv.weight"].split([H * D, Hkv * D, Hkv * D])
        rep = H // Hkv
        k = k.view(Hkv, D, -1).repeat_interleave(rep, dim=0).reshape(H * D, -1)
        v = v.view(Hkv, D, -1).repeat_interleave(rep, dim=0).reshape(H * D, -1)
        sd[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, k, v])
    full.load_state_dict(sd, strict=True)
    idx = torch.randint(0, gqa_cfg.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(gqa(idx), full(idx), rtol=1e-5, atol=1e-5)


def test_num_params_counts_tied_head_once() -> None:
    tied = Transformer(tiny("llama"))
    untied = Transformer(tiny("llama", tie_embeddings=False))
    V, C = 61, 32
    assert untied.num_params() - tied.num_params() == V * C
    assert tied.num_params(exclude_embeddings=True) == tied.num_params() - V * C
    gpt2 = Transformer(tiny("gpt2"))
    assert gpt2.num_params(exclude_embeddings=True) == gpt2.num_params() - V * C - 32 * C


def test_presets_grow_and_hit_named_sizes() -> None:
    assert list(PRESETS) == ["nano", "micro", "tiny", "small", "medium", "large", "xl", "xxl"]
    with torch.device("meta"):
        sizes = {name: Transformer(cfg).num_params() for name, cfg in PRESETS.items()}
    counts = list(sizes.values())
    assert counts == sorted(counts)
    assert 25e6 < sizes["small"] < 29e6
    assert 80e6 < sizes["medium"] < 90e6
    assert sizes["micro"] < 5e6 and 5e6 <= sizes["tiny"] <= 10e6 and sizes["large"] > 200e6


def test_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    cfg = tiny("llama", n_layer=8, n_embd=128, n_head=4, n_kv_head=4, intermediate_size=512)
    model = Transformer(cfg)
    fc_std = model.blocks[0].mlp.fc.weight.std().item()
    proj_std = torch.cat([b.attn.proj.weight.flatten() for b in model.blocks]).std().item()
    assert fc_std == pytest.approx(0.02, rel=0.05)
    assert proj_std == pytest.approx(0.02 / 4, rel=0.05)  # 1/sqrt(2 * 8)


def test_optimizer_decays_matrices_only_and_learns() -> None:
    torch.manual_seed(0)
    cfg = tiny("gpt2")
    model = Transformer(cfg)
    opt = model.configure_optimizer(lr=3e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"])
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == model.num_params()
    idx = torch.randint(0, cfg.vocab_size, (4, 16))
    losses = []
    for _ in range(30):
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # it starts memorising four sequences
