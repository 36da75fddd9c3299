"""Text in, text out: prompts (or chat conversations) through the tokenizer and the engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
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
    finished: bool  # ended on a stop token


def encode_prompts(
    tokenizer: Tokenizer,
    *,
    prompts: Sequence[str] | None = None,
    messages: Sequence[Conversation] | None = None,
) -> list[list[int]]:
    """Token ids of text prompts (BOS first where the tokenizer adds one, as `transformers`
    does) or of chat conversations rendered by the tokenizer's chat template (which writes any
    BOS itself) with the assistant's turn opened."""
    if (prompts is None) == (messages is None):
        raise ValueError("give either prompts (texts) or messages (conversations), not both")
    if prompts is not None:
        if isinstance(prompts, str):
            raise ValueError("prompts is a list of texts: wrap a single prompt in a list")
        ids = [tokenizer.encode(p, add_bos=tokenizer.add_bos_token) for p in prompts]
    else:
        assert messages is not None
        if messages and isinstance(messages[0], Mapping):
            raise ValueError(
                "messages is a list of conversations (each a list of {'role', 'content'} "
                "dicts): wrap a single conversation in a list"
            )
        ids = [
            tokenizer.encode(tokenizer.apply_chat_template(list(conv)), add_bos=False)
            for conv in messages
        ]
    for i, prompt in enumerate(ids):
        if not prompt:
            # Nothing to condition on: start from BOS where there is one.
            if tokenizer.bos_id is None:
                raise TokenizerError(
                    f"prompt {i} encodes to no tokens and the tokenizer has no BOS token to "
                    "start from: give a non-empty prompt"
                )
            prompt.append(tokenizer.bos_id)
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
) -> list[TextSample]:
    """n samples for each prompt, ordered by prompt then sample. With `stop_at_eos` the
    tokenizer's end-of-generation tokens (EOS, <|im_end|>, ...) join `sampling.stop_tokens`."""
    ids = encode_prompts(tokenizer, prompts=prompts, messages=messages)
    if stop_at_eos:
        stops = tuple(dict.fromkeys((*sampling.stop_tokens, *tokenizer.stop_ids)))
        sampling = dataclasses.replace(sampling, stop_tokens=stops)
    engine = Engine(model=model, dtype=dtype)
    stop_set = set(sampling.stop_tokens)
    out = []
    for s in engine.generate(ids, n=n, sampling=sampling):
        body = s.tokens[:-1] if s.finished and s.tokens[-1] in stop_set else s.tokens
        out.append(
            TextSample(
                text=tokenizer.decode(body),
                tokens=s.tokens,
                logprobs=s.logprobs,
                prompt_index=s.prompt_index,
                finished=s.finished,
            )
        )
    return out
