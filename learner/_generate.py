"""Text in, text out: prompts (or chat conversations) through the tokenizer and the engine.

The one path from text to samples: `plaudit generate`, the samples of training and evaluation
and the policy's candidates all encode prompts with `encode_prompts` and sample with
`generate_text`, so a model sees the same start of text wherever it is asked to write."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ._engine import Engine, SamplingConfig
from ._errors import TokenizerError
from ._model import Transformer
from ._tokenizer import Tokenizer

Conversation = Sequence[Mapping[str, str]]


@dataclass
class TextSample:
    text: str  # the new text, without the stop token that ended it
    tokens: list[int]  # the new tokens, with that stop token
    logprobs: list[float]  # per token, under the distribution sampled from
    prompt_index: int
    prompt_tokens: list[int]  # the prompt as the model saw it (from `encode_prompts`)
    finished: bool  # ended on a stop token


def encode_prompts(
    tokenizer: Tokenizer,
    *,
    prompts: Sequence[str] | None = None,
    messages: Sequence[Conversation] | None = None,
) -> list[list[int]]:
    """Token ids of text prompts, or of chat conversations rendered by the tokenizer's chat
    template with the assistant's turn opened. One rule for BOS: it goes first when the
    tokenizer has one and the text does not already start with it.

    Why: plaudit trains every text as BOS + text + EOS (`_data.tokenize`), so a prompt must
    start the same way, whatever `add_bos_token` says about the model's pretraining (SmolLM2's
    is false, yet its fine-tuned posts start with BOS). A template that writes BOS itself
    (Llama's, SmolLM2's `<|im_start|>`) must not get a second one. An empty prompt starts from
    BOS, or from EOS without one: packed training puts each text after the previous one's EOS,
    so EOS is where a new text begins."""
    if (prompts is None) == (messages is None):
        raise ValueError("give either prompts (texts) or messages (conversations), not both")
    if prompts is not None:
        if isinstance(prompts, str):
            raise ValueError("prompts is a list of texts: wrap a single prompt in a list")
        texts = list(prompts)
    else:
        assert messages is not None
        if messages and isinstance(messages[0], Mapping):
            raise ValueError(
                "messages is a list of conversations (each a list of {'role', 'content'} "
                "dicts): wrap a single conversation in a list"
            )
        texts = [tokenizer.apply_chat_template(list(conv)) for conv in messages]
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    ids = []
    for i, text in enumerate(texts):
        prompt = tokenizer.encode(text)
        if bos is not None and prompt[:1] != [bos]:
            prompt.insert(0, bos)
        elif not prompt:
            if eos is None:
                raise TokenizerError(
                    f"prompt {i} encodes to no tokens and the tokenizer has neither a BOS nor "
                    "an EOS token to start from: give a non-empty prompt"
                )
            prompt.append(eos)
        ids.append(prompt)
    return ids


def generate_text(
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: Sequence[str] | None = None,
    messages: Sequence[Conversation] | None = None,
    n: int = 1,
    sampling: SamplingConfig,
    stop_at_eos: bool = True,
    dtype: torch.dtype | None = None,
    skip_special: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> list[TextSample]:
    """n samples for each prompt, ordered by prompt then sample. With `stop_at_eos` the
    tokenizer's end-of-generation tokens (EOS, <|im_end|>, ...) join `sampling.stop_tokens`.
    `skip_special` leaves special tokens out of the texts; `should_stop` is asked between
    decoding steps (`GenerationInterrupted` when it says yes)."""
    ids = encode_prompts(tokenizer, prompts=prompts, messages=messages)
    if stop_at_eos:
        stops = tuple(dict.fromkeys((*sampling.stop_tokens, *tokenizer.stop_ids)))
        sampling = dataclasses.replace(sampling, stop_tokens=stops)
    # Dropped on return, before anyone changes the weights: they need no copy.
    engine = Engine(model=model, dtype=dtype, snapshot=False)
    stop_set = set(sampling.stop_tokens)
    out = []
    for s in engine.generate(ids, n=n, sampling=sampling, should_stop=should_stop):
        body = s.tokens[:-1] if s.finished and s.tokens[-1] in stop_set else s.tokens
        out.append(
            TextSample(
                text=tokenizer.decode(body, skip_special=skip_special),
                tokens=s.tokens,
                logprobs=s.logprobs,
                prompt_index=s.prompt_index,
                prompt_tokens=ids[s.prompt_index],
                finished=s.finished,
            )
        )
    return out


def sample_continuations(
    model: Transformer,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int,
) -> list[str]:
    """One continuation per prompt (text of the new tokens, special tokens left out), sampled
    at temperature 0.8, top-p 0.95 with a fixed seed, so evaluations compare like with like."""
    sampling = SamplingConfig(temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens, seed=seed)
    out = generate_text(
        model=model, tokenizer=tokenizer, prompts=prompts, sampling=sampling, skip_special=True
    )
    return [s.text for s in out]
