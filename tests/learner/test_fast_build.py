"""Models built for loaded weights skip random init and never touch the meta device (whose
first use imports torch's reference implementations and sympy: about 2 s of a CLI start)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from plaudit.learner import ModelConfig, Transformer
from plaudit.learner._decode import decode_copy
from plaudit.learner._load import build_model


def tiny(family: str, **kw: object) -> ModelConfig:
    base: dict[str, object] = dict(
        family=family,
        vocab_size=64,
        max_seq_len=32,
        n_layer=2,
        n_head=4,
        n_kv_head=2 if family == "llama" else 4,
        n_embd=32,
        intermediate_size=48,
        bias=family == "gpt2",
    )
    return ModelConfig(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_uninitialised_draws_no_random_numbers_and_computes_buffers(family: str) -> None:
    cfg = tiny(family)
    torch.manual_seed(0)
    reference = Transformer(cfg)
    state = torch.random.get_rng_state()
    empty = Transformer.uninitialised(cfg)
    assert torch.equal(state, torch.random.get_rng_state())  # no init drew from the RNG
    assert not any(t.is_meta for t in empty.state_dict(keep_vars=True).values())
    for name, buffer in reference.named_buffers():  # the RoPE tables, computed for real
        assert torch.equal(buffer, dict(empty.named_buffers())[name])
    assert [n for n, _ in empty.named_parameters()] == [n for n, _ in reference.named_parameters()]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("tied", [True, False])
def test_build_model_holds_exactly_the_loaded_weights(family: str, tied: bool) -> None:
    cfg = tiny(family, tie_embeddings=tied)
    torch.manual_seed(1)
    source = Transformer(cfg).eval()
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    built = build_model(cfg, sd, source=Path("test")).eval()
    assert (built.lm_head is None) == tied
    for name, tensor in built.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name
    idx = torch.randint(0, cfg.vocab_size, (2, 9))
    torch.testing.assert_close(built(idx), source(idx), rtol=0, atol=0)
    fast = decode_copy(built, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(fast(idx), source(idx), rtol=1e-5, atol=1e-5)


def test_loading_and_decoding_import_no_sympy() -> None:
    # In a fresh process: the meta device's first init call imports sympy (seconds).
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import torch
        from plaudit.learner import ModelConfig, Transformer
        from plaudit.learner._load import build_model
        from plaudit.learner._decode import decode_copy
        cfg = ModelConfig(family="llama", vocab_size=64, max_seq_len=32, n_layer=2, n_head=4,
                          n_kv_head=2, n_embd=32, intermediate_size=48)
        sd = Transformer(cfg).state_dict()
        model = build_model(cfg, sd, source=Path("x"))
        decode_copy(model, device=torch.device("cpu"), dtype=torch.float32)
        print("sympy" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_config_counts_the_parameters_a_model_has(family: str, tied: bool, bias: bool) -> None:
    cfg = tiny(family, tie_embeddings=tied, bias=bias)
    model = Transformer.uninitialised(cfg)
    for exclude in (False, True):
        assert cfg.num_params(exclude_embeddings=exclude) == model.num_params(
            exclude_embeddings=exclude
        )


def test_plaudit_models_builds_no_model_and_imports_no_torch() -> None:
    # The table's counts come from the configs: no meta-device model (and its sympy import),
    # and plaudit.learner imports torch only when a name that needs it is used (4 s before).
    code = textwrap.dedent(
        """
        import sys
        from plaudit.daemon._cli import main
        sys.argv = ["plaudit", "models", "--json"]
        try:
            main()
        except SystemExit:
            pass
        print("sympy" in sys.modules or "torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "False", out.stderr
    assert '"name": "small"' in out.stdout and '"params": 26' in out.stdout


def test_every_export_of_the_learner_resolves() -> None:
    """The package imports its torch-bound names on first use: each one in __all__ resolves,
    to the object its module defines."""
    import plaudit.learner as learner

    for name in learner.__all__:
        value = getattr(learner, name)
        assert value is not None, name
    assert learner.Policy.__module__ == "plaudit.learner._policy"
    assert learner.grow_model.__name__ == "grow"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        learner.Nope  # noqa: B018
