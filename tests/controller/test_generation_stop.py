"""Generation stops between decoding steps when asked (a daemon shutting down)."""

from __future__ import annotations

import pytest
import torch

from plaudit.learner import ModelConfig, Transformer
from plaudit.learner._engine import Engine, SamplingConfig
from plaudit.learner._errors import GenerationInterrupted


def test_should_stop_interrupts_between_steps() -> None:
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=64,
            max_seq_len=64,
            n_layer=1,
            n_head=2,
            n_kv_head=2,
            n_embd=16,
            intermediate_size=32,
        )
    ).eval()
    engine = Engine(model=model)
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    sampling = SamplingConfig(temperature=1.0, max_new_tokens=40, seed=0)
    with pytest.raises(GenerationInterrupted):
        engine.generate([[1, 2, 3]], n=2, sampling=sampling, should_stop=stop_after_three)
    assert len(asked) == 4  # checked once per step, stopped at the first yes
    # Never asked to stop: the same call runs to the end.
    out = engine.generate([[1, 2, 3]], n=2, sampling=sampling, should_stop=lambda: False)
    assert [len(s.tokens) for s in out] == [40, 40]
