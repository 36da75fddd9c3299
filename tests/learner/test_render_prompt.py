"""A plain language model of posts (no chat template) is prompted with example posts as the
documents before the new one, in the format it was trained on: BOS text EOS, one after another,
the new post starting from BOS."""

from __future__ import annotations

from pathlib import Path

import pytest

from plaudit.learner import Policy, SamplingConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

A = "the harbour at dawn, gulls over the boats"
B = "coffee first, then the rest of the day"


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> Policy:
    return Policy.load(tiny_model_dir, lr=1e-4)


def test_examples_become_the_documents_before_the_new_post(policy: Policy) -> None:
    tok = policy.tokenizer
    assert tok.chat_template is None and tok.bos_id is not None and tok.eos_id is not None
    prompt = policy.render_prompt("write a post", context=(A, B), room=20)
    sampling = SamplingConfig(temperature=0.9, top_p=0.95, max_new_tokens=8, seed=0)
    (cand,) = policy.generate([prompt], n=1, sampling=sampling)
    bos, eos = tok.bos_id, tok.eos_id
    assert cand.prompt_tokens == [bos, *tok.encode(A), eos, bos, *tok.encode(B), eos, bos]
    assert A not in cand.text and B not in cand.text  # the new tokens alone


def test_without_context_generation_starts_from_bos(policy: Policy) -> None:
    assert policy.render_prompt("write a post") == ""
    assert policy.render_prompt("write a post", context=("", "  ")) == ""


def test_whole_examples_are_kept_the_last_first_while_the_new_post_has_room(
    policy: Policy,
) -> None:
    tok = policy.tokenizer
    context = policy.model.config.max_seq_len  # 128
    b_tokens = len(tok.encode(B)) + 2  # BOS + text + EOS
    a_tokens = len(tok.encode(A)) + 2
    # Room for both: both kept.
    both = policy.render_prompt("x", context=(A, B), room=context - a_tokens - b_tokens - 2)
    assert A in both and B in both
    # Room for one: the last (B) kept whole, A left out (never cut mid-post).
    one = policy.render_prompt("x", context=(A, B), room=context - b_tokens - 2)
    assert B in one and A not in one
    ids = tok.encode(one)
    assert len(ids) + 1 + (context - b_tokens - 2) < context  # BOS first (encode_prompts)
    # No room: no examples.
    assert policy.render_prompt("x", context=(A, B), room=context - 1) == ""


def test_special_tokens_written_in_an_example_are_taken_out(policy: Policy) -> None:
    tok = policy.tokenizer
    assert tok.eos_token is not None
    sneaky = f"an early {tok.eos_token} end"
    prompt = policy.render_prompt("x", context=(sneaky,), room=10)
    ids = tok.encode(prompt)
    assert ids.count(tok.eos_id) == 1  # the one that ends the example
    assert tok.decode(ids, skip_special=True).split() == ["an", "early", "end"]
