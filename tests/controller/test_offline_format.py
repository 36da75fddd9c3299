"""The daemon's offline fit teaches what posting asks: an instruct model (a chat template) fits
on the posting instruction -> a history post, rendered exactly as the post cycle prompts, with
the loss on the post only; a model without a template fits on the posts as plain text, the
documents it posts after."""

from __future__ import annotations

import random
from typing import Any

from plaudit.controller import SYSTEM, fit_examples
from plaudit.controller._prompts import fit_pairs
from plaudit.learner._data import examples_from_pairs, tokenize

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HISTORY = [f"post number {i}: the sea was {'calm' if i % 2 else 'wild'} today" for i in range(9)]


def test_each_history_post_answers_an_instruction_showing_two_others() -> None:
    pairs = fit_pairs(HISTORY, max_chars=280, rng=random.Random(0))
    assert [post for _, post in pairs] == HISTORY
    for instruction, post in pairs:
        shown = [line[2:] for line in instruction.splitlines() if line.startswith("- ")]
        assert len(shown) == 2 and post not in shown and set(shown) <= set(HISTORY)
        assert "under 280 characters" in instruction
    assert fit_pairs(HISTORY[:2], max_chars=280, rng=random.Random(0)) == []


async def test_an_instruct_model_fits_in_the_posting_format(make_loop: Any) -> None:
    loop = make_loop()
    ctl = loop.controller()
    await ctl.start(schedule=False)
    policy = ctl.ctx.policy
    rt = ctl.faces["mem"]
    # Without a chat template the model posts after plain posts: it fits on plain text.
    plain = ctl.offline_fits.examples([(rt, HISTORY)])
    assert [ex.fmt for ex in plain] == ["text"] * len(HISTORY)

    policy.tokenizer.chat_template = CHATML
    examples = ctl.offline_fits.examples([(rt, HISTORY)])
    assert len(examples) == len(HISTORY) and {ex.fmt for ex in examples} == {"jsonl"}
    data = tokenize(examples, policy.tokenizer, chat_template=True)
    for ex, ids, trained in zip(examples, data.ids, data.trained, strict=True):
        instruction = dict(ex.turns)["prompt"]
        cut = int(trained.argmax())  # the first trained token
        assert not trained[:cut].any() and trained[cut:].all()
        # The untrained prefix is the post cycle's prompt, token for token; the trained part
        # is the post and the template's end of turn.
        prompt = policy.render_prompt(instruction, system=SYSTEM)
        assert policy.tokenizer.decode(ids[:cut].tolist()) == prompt
        assert (
            policy.tokenizer.decode(ids[cut:].tolist())
            == f"{dict(ex.turns)['response']}<|im_end|>\n"
        )
    # The same pairs each time: a fit resumed after a stop sees the data it was fitting.
    again = ctl.offline_fits.examples([(rt, HISTORY)])
    assert [ex.turns for ex in again] == [ex.turns for ex in examples]
    # The benchmark's fit of a pretrained model uses the same rule.
    same = fit_examples([(HISTORY, rt.face.limits.max_length)], chat=True)
    assert [ex.turns for ex in same] == [ex.turns for ex in examples]


def test_pairs_without_a_template_put_the_system_message_first() -> None:
    (ex,) = examples_from_pairs([("Write a post.", " Hello sea. ")], source="t", system="Be brief.")
    assert ex.segments() == [("Be brief.\n\nWrite a post.\n", False), ("Hello sea.", True)]
    assert ex.text == "Hello sea."
