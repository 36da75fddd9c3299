"""The policy: the learner as the controller sees it. Current weights, the frozen reference
they are anchored to, the online optimizer and the policy version, behind a few calls that the
controller makes from its one torch worker thread (never two at once)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from plaudit.state import atomic_folder

from ._engine import SamplingConfig
from ._errors import ModelLoadError
from ._generate import generate_text
from ._load import LoadedModel, load_model, write_model_folder
from ._model import Transformer
from ._online import OnlineUpdateConfig, Trajectory, UpdateStats, policy_update, sequence_logprobs
from ._tokenizer import Tokenizer

OPTIMIZER_FILE = "online_optimizer.pt"
_SENTENCE_END = re.compile(r"[.!?…)\"'»\n]\s*$")


@dataclass(frozen=True)
class Candidate:
    prompt: str
    prompt_tokens: list[int]
    text: str
    tokens: list[int]  # the completion the policy is credited with (maybe cut at a sentence end)
    logprobs: list[float]  # behaviour logprobs of `tokens`, as the online update computes them
    finished: bool  # the model ended the post itself (stop token)


class Policy:
    def __init__(
        self,
        *,
        model: Transformer,
        tokenizer: Tokenizer,
        reference: Transformer | None,
        version: int,
        source: str,
        lr: float,
        weight_decay: float = 0.0,
        generation_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model
        self.generation_dtype = generation_dtype
        self.tokenizer = tokenizer
        self.reference = reference
        self.version = version
        self.source = source
        self.lr = lr
        self._weight_decay = weight_decay
        self._optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def load(
        cls,
        spec: str | Path,
        *,
        checkpoint: Path | None = None,
        version: int = 0,
        cache_dir: Path | None = None,
        device: str = "cpu",
        lr: float = 1e-5,
        with_reference: bool = True,
        generation_dtype: torch.dtype = torch.float32,
    ) -> Policy:
        """The base model ``spec`` is the reference; ``checkpoint`` (if any) the current weights."""
        base: LoadedModel = load_model(spec, cache_dir=cache_dir, device=device)
        reference = None
        if with_reference:
            reference = copy.deepcopy(base.model)
            reference.requires_grad_(False).eval()
        model, tokenizer, source = base.model, base.tokenizer, base.source
        if checkpoint is not None:
            current = load_model(checkpoint, device=device)
            model, tokenizer, source = current.model, current.tokenizer, str(checkpoint)
        policy = cls(
            model=model,
            tokenizer=tokenizer,
            reference=reference,
            version=version,
            source=source,
            lr=lr,
            generation_dtype=generation_dtype,
        )
        if checkpoint is not None and (checkpoint / OPTIMIZER_FILE).is_file():
            state = torch.load(checkpoint / OPTIMIZER_FILE, map_location=device, weights_only=True)
            policy.optimizer.load_state_dict(state)
        return policy

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        """The kind of device the weights live on, as training's `device` option names it (an
        offline fit of this policy trains there)."""
        return "cuda" if next(self.model.parameters()).is_cuda else "cpu"

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = self.model.configure_optimizer(
                lr=self.lr, weight_decay=self._weight_decay
            )
        return self._optimizer

    # -- generation -----------------------------------------------------------------------

    def render_prompt(self, instruction: str, *, system: str | None = None) -> str:
        """A chat prompt where the tokenizer has a template. A model without one is a plain
        language model of posts (trained from scratch on them): it gets no instruction, and
        generation starts from its BOS token."""
        if self.tokenizer.chat_template is None:
            return ""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": instruction})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int,
        sampling: SamplingConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Candidate]:
        """n candidates per prompt, each with the behaviour logprobs the online update needs.
        Prompts are encoded and sampled by `generate_text`, like every other generation."""
        self.model.eval()
        # The behaviour logprobs below are recomputed in float32 whatever the engine's dtype.
        samples = generate_text(
            model=self.model,
            tokenizer=self.tokenizer,
            prompts=prompts,
            n=n,
            sampling=sampling,
            dtype=self.generation_dtype,
            should_stop=should_stop,
        )
        completions: list[list[int]] = []
        for s in samples:
            completions.append(s.tokens if s.finished else self._cut_at_sentence_end(s.tokens))
        behaviour = sequence_logprobs(
            self.model,
            [s.prompt_tokens for s in samples],
            completions,
            temperature=sampling.temperature or 1.0,
        )
        out = []
        for s, comp, lps in zip(samples, completions, behaviour, strict=True):
            out.append(
                Candidate(
                    prompt=prompts[s.prompt_index],
                    prompt_tokens=s.prompt_tokens,
                    text=self.tokenizer.decode(comp, skip_special=True).strip(),
                    tokens=comp,
                    logprobs=lps,
                    finished=s.finished,
                )
            )
        return out

    def _cut_at_sentence_end(self, tokens: list[int]) -> list[int]:
        """An unfinished sample is cut after its last complete sentence (never mid-word);
        with no sentence end at all it is returned whole and the length filter decides."""
        for end in range(len(tokens), 0, -1):
            if _SENTENCE_END.search(self.tokenizer.decode(tokens[:end], skip_special=True)):
                return tokens[:end]
        return tokens

    # -- learning -------------------------------------------------------------------------

    def update(
        self,
        batch: Sequence[Trajectory],
        *,
        config: OnlineUpdateConfig,
        should_stop: object = None,
    ) -> UpdateStats:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        stats = policy_update(
            model=self.model,
            reference=self.reference,
            optimizer=self.optimizer,
            batch=batch,
            config=config,
            should_stop=should_stop,
        )
        if stats.steps:
            self.version += 1
        return stats

    def save(self, folder: Path) -> None:
        """A plaudit model folder plus the online optimizer state, written atomically as one
        (replacing `folder`)."""
        with atomic_folder(folder, replace=True) as tmp:
            write_model_folder(tmp, model=self.model, tokenizer=self.tokenizer)
            if self._optimizer is not None:
                torch.save(self._optimizer.state_dict(), tmp / OPTIMIZER_FILE)

    def reset_reference(self) -> None:
        """Anchor to the current weights (after an offline fit: the community's style). The
        online optimizer starts afresh: its moments belong to the old anchor."""
        self.reference = copy.deepcopy(self.model).requires_grad_(False).eval()
        self._optimizer = None

    def adopt(self, model_dir: Path) -> int:
        """Take the weights of the plaudit model folder `model_dir` (an offline fit's best
        model, same architecture and tokenizer) as the current weights, anchor the KL
        reference to them (`reset_reference`) and return the new, bumped version.

        The weights are copied into the existing model, so its device and dtype stay and any
        engine built later samples the new weights; a folder of another shape raises
        `ModelLoadError` and leaves the policy as it was."""
        weights = load_model(model_dir).model.state_dict()
        own = self.model.state_dict()
        # Checked first: load_state_dict would copy the matching tensors before it raised.
        if {k: v.shape for k, v in weights.items()} != {k: v.shape for k, v in own.items()}:
            raise ModelLoadError(
                f"{model_dir} holds another architecture than the policy's model; adopt only "
                f"model folders trained from this policy."
            )
        self.model.load_state_dict(weights)
        self.reset_reference()
        self.version += 1
        return self.version
