"""The Policy the controller drives: candidates with float32 behaviour logprobs whatever the
generation dtype, and prompts for models with and without a chat template."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plaudit.learner._engine import SamplingConfig
from plaudit.learner._online import sequence_logprobs
from plaudit.learner._policy import Policy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_candidates_carry_float32_behaviour_logprobs(
    tiny_model_dir: Path, dtype: torch.dtype
) -> None:
    policy = Policy.load(tiny_model_dir, lr=1e-4, generation_dtype=dtype)
    assert policy.render_prompt("write a post") == ""  # no chat template: start from BOS
    sampling = SamplingConfig(temperature=0.9, top_p=0.95, max_new_tokens=12, seed=3)
    cands = policy.generate(["", ""], n=2, sampling=sampling)
    assert len(cands) == 4
    for c in cands:
        assert c.prompt_tokens == [policy.tokenizer.bos_id]
        assert len(c.logprobs) == len(c.tokens) > 0
        assert all(lp <= 0 for lp in c.logprobs)
    again = sequence_logprobs(
        policy.model, [c.prompt_tokens for c in cands], [c.tokens for c in cands], temperature=0.9
    )
    for c, lps in zip(cands, again, strict=True):
        assert c.logprobs == pytest.approx(lps, abs=1e-5)
    assert next(policy.model.parameters()).dtype == torch.float32  # training weights untouched
