"""The policy: the learner as the controller sees it. Current weights, the frozen reference
they are anchored to, the online optimizer and the policy version, behind a few calls that the
controller makes from its one torch worker thread (never two at once)."""

from __future__ import annotations

import copy
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ._checkpoint import drop_file, listed_files
from ._data import Example
from ._engine import SamplingConfig
from ._errors import DamagedModelError, ModelLoadError
from ._generate import generate_text
from ._load import (
    _DAMAGE_FIX,
    WEIGHTS_FILE,
    LoadedModel,
    load_model,
    model_folder_writer,
    verify_model_folder,
    write_model_folder,
)
from ._lora import ADAPTERS_FILE, Adapters, LoRAConfig, base_view
from ._model import Transformer
from ._online import (
    OnlineUpdateConfig,
    Trajectory,
    UpdateStats,
    move_scale,
    policy_update,
    remember_reference,
)
from ._reference_cache import ReferenceCache
from ._step_record import StepRecord
from ._tokenizer import Tokenizer
from ._train import FitResult, OfflineTrainConfig, train_in_memory

OPTIMIZER_FILE = "online_optimizer.pt"


# A post cut short by the token budget is cut after its last sentence end (or line break).
_SENTENCE_END = re.compile(r"[.!?…)\"'»\n]\s*$")


@dataclass(frozen=True)
class Candidate:
    prompt: str
    prompt_tokens: list[int]
    text: str  # the post's text: `tokens` decoded, without the stop token
    # Every sampled token, the stop token that ended the post included when the model ended
    # it (so the online update credits ending); all `max_new_tokens` when it ran out.
    tokens: list[int]
    # Behaviour logprobs of `tokens` (float32 arithmetic whatever the generation dtype): under
    # the distribution each was sampled from (temperature, top-k, top-p, renormalised).
    logprobs: list[float]
    finished: bool  # the model ended the post itself (stop token); False: it ran out of tokens
    # Ran out of tokens and was cut after its last complete sentence: `tokens` and `logprobs`
    # are that prefix of what was sampled (a true sample prefix, so its logprobs stay right).
    cut: bool = False
    # The sampling settings the post was drawn with; store them with the post, they belong in
    # its `Trajectory`.
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None


@dataclass(frozen=True)
class Restored:
    """What `Policy.restore` took from a checkpoint folder."""

    optimizer: bool  # it carried optimizer state; False: the optimizer starts afresh
    checksums: bool  # its files matched the checksums written at save; False: it had none
    # LoRA only: the checkpoint's adapters did not belong to this policy's base weights (a
    # checkpoint of full fine-tuning, or one older than the reference), so its merged weights
    # became the base and the KL reference (`Policy.load_reference`).
    reanchored: bool = False


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
        lora: LoRAConfig | None = None,
    ) -> None:
        """With ``lora``, online updates train low-rank adapters on ``model``'s attention and
        MLP layers (`Adapters`), its own weights frozen: they are the KL reference (a view of
        the same tensors, no copy), and ``reference`` must be None."""
        self.model = model
        self.generation_dtype = generation_dtype
        self.tokenizer = tokenizer
        self.reference = reference
        self.version = version
        self.source = source
        self.lr = lr
        self._weight_decay = weight_decay
        self._optimizer: torch.optim.Optimizer | None = None
        # The reference's work on posts, kept across online updates (dropped by itself when
        # the reference changes).
        self.reference_cache = ReferenceCache()
        self.lora = lora
        self.adapters: Adapters | None = None
        if lora is not None:  # the base weights, frozen, are the reference
            assert reference is None, "with LoRA the base weights are the reference"
            model.requires_grad_(False)
            self.adapters = Adapters(model, lora)
            self.reference = base_view(model)

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
        reference: Path | None = None,
        lora: LoRAConfig | None = None,
    ) -> Policy:
        """The base model ``spec`` is the reference, or the model folder ``reference`` (one
        `save_reference` wrote: the anchor of a daemon that ran before) where given;
        ``checkpoint`` (if any) holds the current weights (`restore`). Without
        ``with_reference`` there is no reference (``reference`` is then not read; with
        ``lora`` the base weights are the reference all the same, at no cost). A
        ``reference`` of another architecture than ``spec`` raises `ModelLoadError`, a damaged
        reference or checkpoint `DamagedModelError`."""
        base: LoadedModel = load_model(spec, cache_dir=cache_dir, device=device)
        policy = cls(
            model=base.model,
            tokenizer=base.tokenizer,
            reference=None,
            version=version,
            source=base.source,
            lr=lr,
            generation_dtype=generation_dtype,
            lora=lora,
        )
        if with_reference and reference is not None:
            policy.load_reference(reference)
        elif with_reference and lora is None:
            policy.reference = copy.deepcopy(base.model).requires_grad_(False).eval()
        if checkpoint is not None:
            policy.restore(checkpoint, version=version)
        return policy

    def restore(self, folder: Path, *, version: int) -> Restored:
        """Take the weights, tokenizer and online optimizer state of the checkpoint ``folder``
        (one `save` wrote) as the current ones, at ``version``. All or nothing: every file is
        checked first (checksums, finite weights and optimizer moments), and a damaged one
        raises `DamagedModelError` naming it, with the policy left as it was. A checkpoint
        without optimizer state (an older one, `drop_optimizer_state`) leaves the optimizer to
        start afresh at the next update.

        With LoRA the checkpoint's adapters are applied to the base weights (the reference)
        when they were trained on them (`Adapters.fingerprint`); a checkpoint without them (of
        full fine-tuning) or of another base or rank is taken whole: its merged weights become
        the base and the reference (``reanchored``)."""
        listed = listed_files(folder)
        if not _present(folder, WEIGHTS_FILE, listed) and _present(folder, ADAPTERS_FILE, listed):
            # An older LoRA checkpoint stripped to its adapters (`strip_to_adapters`).
            if self.adapters is None:
                raise DamagedModelError(
                    f"{folder} holds LoRA adapters only (an older checkpoint stripped to them); "
                    "only a policy with online.lora_rank set, anchored to the same reference, "
                    "can restore it. Set online.lora_rank back, or use a newer checkpoint.",
                    path=str(folder),
                )
            checked = verify_model_folder(folder)
            return self._restore_adapters(folder, None, listed, version=version, checked=checked)
        device = next(self.model.parameters()).device
        loaded = load_model(folder, device=device)
        if self.adapters is not None:
            return self._restore_adapters(
                folder, loaded, listed, version=version, checked=loaded.checked
            )
        optimizer = None
        # A LoRA checkpoint's optimizer state holds the adapters' moments: not these weights'.
        lora_state = _present(folder, ADAPTERS_FILE, listed)
        if _present(folder, OPTIMIZER_FILE, listed) and not lora_state:
            optimizer = loaded.model.configure_optimizer(
                lr=self.lr, weight_decay=self._weight_decay
            )
            _load_optimizer(optimizer, folder / OPTIMIZER_FILE)
        self.model, self.tokenizer, self.source = loaded.model, loaded.tokenizer, str(folder)
        self.version = version
        self._optimizer = optimizer
        return Restored(optimizer=optimizer is not None, checksums=loaded.checked)

    def _restore_adapters(
        self,
        folder: Path,
        loaded: LoadedModel | None,
        listed: set[str] | None,
        *,
        version: int,
        checked: bool,
    ) -> Restored:
        """``loaded``: the folder's merged weights (None: a folder stripped to adapters)."""
        assert self.adapters is not None and self.lora is not None
        if loaded is not None:
            _check_same_shapes(loaded.model, self.model, folder)
        saved = _read_adapters(folder) if _present(folder, ADAPTERS_FILE, listed) else None
        fits = (
            saved is not None
            and saved["rank"] == self.lora.rank
            and saved["alpha"] == self.lora.alpha
            and _same_sums(saved["fingerprint"], self.adapters.fingerprint())
            and {k: v.shape for k, v in saved["adapters"].items()}
            == {k: v.shape for k, v in self.adapters.state_dict().items()}
        )
        optimizer = None
        if fits:
            assert saved is not None
            if _present(folder, OPTIMIZER_FILE, listed):  # read first: it may be damaged
                optimizer = self._new_optimizer()
                _load_optimizer(optimizer, folder / OPTIMIZER_FILE)
            with torch.no_grad():
                for name, value in saved["adapters"].items():
                    self.adapters.get_parameter(name).copy_(value)
        elif loaded is None:
            raise DamagedModelError(
                f"{folder} holds LoRA adapters only, trained on another base than this "
                "policy's reference (or at another rank), and no weights to take whole; use a "
                "newer checkpoint.",
                path=str(folder),
            )
        else:  # the merged weights are the policy now: anchor to them
            self.model.load_state_dict(loaded.model.state_dict())
            self._anchor_here()
        if loaded is not None:
            self.tokenizer = loaded.tokenizer
        self.source, self.version = str(folder), version
        self._optimizer = optimizer
        return Restored(optimizer=optimizer is not None, checksums=checked, reanchored=not fits)

    def load_reference(self, folder: Path) -> None:
        """Anchor to the model folder ``folder`` (one `save_reference` or `save` wrote). One of
        another architecture than the policy's model raises `ModelLoadError`, a damaged one
        `DamagedModelError`; either way the anchor stays as it was. With LoRA the folder's
        weights become the base weights and the adapters start at zero."""
        anchor = load_model(folder, device=next(self.model.parameters()).device).model
        _check_same_shapes(anchor, self.model, folder)
        if self.adapters is not None:
            self.model.load_state_dict(anchor.state_dict())
            self._anchor_here()
            return
        self.reference = anchor.requires_grad_(False).eval()

    def _anchor_here(self) -> None:
        """LoRA: the base weights as they are now are the reference; the adapters start at
        zero, with a fresh optimizer (its moments belong to the old anchor). A new reference
        object, so caches keyed by the reference (the reward model's features) see the change."""
        assert self.adapters is not None
        self.adapters.zero()
        self.reference = base_view(self.model)
        self._optimizer = None

    @property
    def device(self) -> Literal["cpu", "cuda"]:
        """The kind of device the weights live on, as training's `device` option names it (an
        offline fit of this policy trains there)."""
        return "cuda" if next(self.model.parameters()).is_cuda else "cpu"

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = self._new_optimizer()
        return self._optimizer

    @property
    def move_scale(self) -> float:
        """The factor online steps are taken at, times ``lr``: the product of the pull-backs
        since the reference was set (`scale_steps`; 1.0: none, or no update yet)."""
        return 1.0 if self._optimizer is None else move_scale(self._optimizer)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """The online update's AdamW: over every weight, or with LoRA over the adapters."""
        if self.adapters is None:
            return self.model.configure_optimizer(lr=self.lr, weight_decay=self._weight_decay)
        params = list(self.adapters.parameters())
        return torch.optim.AdamW(
            params, lr=self.lr, betas=(0.9, 0.95), weight_decay=self._weight_decay
        )

    def memory(self) -> dict[str, int]:
        """Bytes the learner holds, each tensor counted once: ``weights`` (the model's),
        ``reference`` (the KL reference's beyond memory it shares with the model: a full copy
        without LoRA, none with it), ``adapters``, ``optimizer`` (its moments),
        ``reference_cache`` (the reference's hidden states kept across online updates)."""
        seen: set[int] = set()

        def fresh(tensors: Iterable[torch.Tensor]) -> int:
            total = 0
            for t in tensors:
                storage = t.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
            return total

        moments = (
            v
            for per_param in (self._optimizer.state.values() if self._optimizer else ())
            for v in per_param.values()
            if isinstance(v, torch.Tensor)
        )
        return {
            "weights": fresh(self.model.state_dict().values()),
            "reference": fresh(self.reference.state_dict().values()) if self.reference else 0,
            "adapters": fresh(self.adapters.parameters()) if self.adapters is not None else 0,
            "optimizer": fresh(moments),
            "reference_cache": self.reference_cache.nbytes,
        }

    # -- generation -----------------------------------------------------------------------

    def render_prompt(
        self,
        instruction: str,
        *,
        system: str | None = None,
        context: Sequence[str] = (),
        room: int = 0,
    ) -> str:
        """A chat prompt where the tokenizer has a template (``context`` is then unused: the
        instruction shows what it should). A model without one is a plain language model of
        posts (trained from scratch on them, packed one after another): it gets no
        instruction but the texts of ``context`` as the documents before the new one, each
        ending with EOS, so it writes the next post in their company (few-shot, in the format
        it was trained on); with no context, generation starts from BOS. Whole texts are kept,
        the last first, while the prompt leaves ``room`` tokens (the new post's) in the model's
        context; special tokens written in a text are taken out (a text cannot end a document
        early)."""
        tok = self.tokenizer
        if tok.chat_template is not None:
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": instruction})
            return tok.apply_chat_template(messages, add_generation_prompt=True)
        if tok.eos_token is None:  # nothing to end an example with (training needs one too)
            return ""
        specials = [t for t in (tok.bos_token, tok.eos_token, tok.pad_token) if t]
        start, end = tok.bos_token or "", tok.eos_token  # a document: BOS text EOS (`_data`)
        limit = self.model.config.max_seq_len - room
        used = 1  # the BOS (or EOS) the new post starts from
        kept: list[str] = []
        for text in reversed(context):
            for special in specials:
                text = text.replace(special, "")
            text = text.strip()
            if not text:
                continue
            n = len(tok.encode(text)) + (2 if tok.bos_id is not None else 1)
            if used + n >= limit:
                break
            kept.insert(0, text)
            used += n
        if not kept:
            return ""
        # encode_prompts puts BOS first; each text ends with EOS, and the new one starts with
        # BOS where the tokenizer has one
        return start.join(f"{text}{end}" for text in kept) + start

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int,
        sampling: SamplingConfig,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Candidate]:
        """n candidates per prompt, each with the behaviour logprobs the online update needs.
        Prompts are encoded and sampled by `generate_text`, like every other generation.

        The behaviour logprobs are the engine's: each token's logprob under the distribution
        it was actually sampled from (temperature, top-k, top-p, renormalised), computed in
        float32 from the engine's float32 logits whatever the generation dtype. A candidate
        the model ended keeps its stop token as its last token (the update credits ending).
        One that ran out of tokens is cut after its last complete sentence (``cut=True``; never
        mid-word on a platform), tokens and logprobs alike; with no sentence end at all it keeps
        every token, ``finished=False`` and ``cut=False``, and the controller drops it."""
        self.model.eval()
        samples = generate_text(
            model=self._sampled(),
            tokenizer=self.tokenizer,
            prompts=prompts,
            n=n,
            sampling=sampling,
            dtype=self.generation_dtype,
            should_stop=should_stop,
        )
        out = []
        for s in samples:
            tokens, logprobs = list(s.tokens), list(s.logprobs)
            body = tokens[:-1] if s.finished else tokens  # a finished sample ends on a stop
            end = None if s.finished else self._sentence_end(tokens)
            if end is not None:
                tokens, logprobs = tokens[:end], logprobs[:end]
                body = tokens
            out.append(
                Candidate(
                    prompt=prompts[s.prompt_index],
                    prompt_tokens=s.prompt_tokens,
                    text=self.tokenizer.decode(body, skip_special=True).strip(),
                    tokens=tokens,
                    logprobs=logprobs,
                    finished=s.finished,
                    cut=end is not None,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k,
                )
            )
        return out

    def _sampled(self) -> Transformer:
        """The model generation samples: with LoRA, adapters merged into a transient copy of
        the adapted layers (the engine copies weights from the state dict, which hooks miss)."""
        if self.adapters is None or self.adapters.is_zero():
            return self.model
        return self.adapters.merged(self.model)

    def _sentence_end(self, tokens: list[int]) -> int | None:
        """How many tokens make up the complete sentences at the start of ``tokens`` (the
        longest prefix that ends a sentence), or None when no prefix does."""
        for end in range(len(tokens), 0, -1):
            if _SENTENCE_END.search(self.tokenizer.decode(tokens[:end], skip_special=True)):
                return end
        return None

    # -- learning -------------------------------------------------------------------------

    def update(
        self,
        batch: Sequence[Trajectory],
        *,
        config: OnlineUpdateConfig,
        should_stop: object = None,
        probe: Sequence[Trajectory] = (),
        between_steps: Callable[[], object] | None = None,
    ) -> UpdateStats:
        """One online update (`policy_update`, ``probe``: recent samples of the policy to
        measure and bound its drift on, ``between_steps``: called after each kept step); the
        version goes up when a step was kept.
        All-or-nothing: if it fails, the weights, the optimizer (its state and learning rate)
        and the version are as they were before the call, and the exception is re-raised."""
        fresh = self._optimizer is None
        optimizer = self.optimizer
        lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = self.lr * move_scale(optimizer)
        try:
            stats = policy_update(
                model=self.model,
                reference=self.reference,
                optimizer=optimizer,
                batch=batch,
                config=config,
                should_stop=should_stop,
                current_version=self.version,
                probe=probe,
                between_steps=between_steps,
                # With LoRA the move from the reference is the adapters' (their B scaled); else
                # every weight's, policy_update's own way.
                toward_reference=self.adapters.shrink if self.adapters is not None else None,
                reference_cache=self.reference_cache,
            )
        except BaseException:
            for group, lr in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            if fresh:
                self._optimizer = None
            raise
        if stats.changed:
            self.version += 1
        return stats

    def remember_reference(
        self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
    ) -> None:
        """Run the KL reference over these posts (token ids) now and keep what online updates
        need of it (`reference_cache`): for a post cycle's candidates, so that the updates that
        measure their drift on them, or train on them once rewarded, skip its forward. Nothing
        without a reference."""
        if self.reference is not None:
            remember_reference(self.reference, self.reference_cache, prompts, completions)

    def save(self, folder: Path) -> None:
        """A plaudit model folder plus the online optimizer state, written atomically as one
        (replacing `folder`)."""
        with model_folder_writer(folder) as tmp:
            write_model_folder(tmp, model=self._sampled(), tokenizer=self.tokenizer)
            if self.adapters is not None:
                assert self.lora is not None
                saved = {
                    "rank": self.lora.rank,
                    "alpha": self.lora.alpha,
                    "fingerprint": self.adapters.fingerprint(),
                    "adapters": {
                        k: v.detach().cpu() for k, v in self.adapters.state_dict().items()
                    },
                }
                torch.save(saved, tmp / ADAPTERS_FILE)
            if self._optimizer is not None:
                torch.save(self._optimizer.state_dict(), tmp / OPTIMIZER_FILE)

    def save_reference(self, folder: Path) -> None:
        """The KL reference as a plaudit model folder, written atomically (replacing
        `folder`), for `Policy.load(..., reference=folder)` after a restart."""
        if self.reference is None:
            raise ValueError("this policy has no reference to save (loaded without one)")
        with model_folder_writer(folder) as tmp:
            write_model_folder(tmp, model=self.reference, tokenizer=self.tokenizer)

    def reset_reference(self) -> None:
        """Anchor to the current weights (after an offline fit: the community's style). The
        online optimizer starts afresh: its moments belong to the old anchor. With LoRA the
        adapters are merged into the base weights, which are the reference: no copy."""
        if self.adapters is not None:
            self.adapters.merge()
            self._anchor_here()
            return
        self.reference = copy.deepcopy(self.model).requires_grad_(False).eval()
        self._optimizer = None

    def fine_tune(
        self,
        config: OfflineTrainConfig,
        *,
        examples: list[Example],
        on_step: Callable[[StepRecord], None] | None = None,
        stop: threading.Event | None = None,
        between_steps: Callable[[], object] | None = None,
        start_step: int = 0,
    ) -> FitResult:
        """Fine-tune the current weights in memory on ``examples`` (and ``config.data``) with
        the offline trainer (`train_in_memory`, on the weights' device; ``config.model`` and
        ``config.device`` do not apply), then keep the best weights by validation loss (else
        the last step's), anchor the KL reference to them and bump the version, as `adopt`
        does. Nothing is written to disk. A fit stopped before its first step changes nothing.
        ``between_steps`` is called after every micro-batch (`fit`'s `between_micro_batches`);
        ``start_step`` continues a stopped fit of the same config from that step.
        With LoRA the adapters are merged first and every weight is fitted (the hooks off);
        the adapters start again at zero on the fitted weights, the new reference.
        All-or-nothing: if it raises (a NaN loss, out of memory), the weights are put back as
        they were and the exception is re-raised."""
        before = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        adapters = self.adapters
        kept: dict[str, torch.Tensor] = {}

        def put_back() -> None:
            self.model.load_state_dict(before)
            if adapters is not None:
                adapters.load_state_dict(kept)

        if adapters is not None:  # the fit trains the whole policy: base plus adapters
            kept = {k: v.detach().clone() for k, v in adapters.state_dict().items()}
            adapters.merge()
            adapters.remove()
            self.model.requires_grad_(True)
        try:
            result = train_in_memory(
                config,
                model=self.model,
                tokenizer=self.tokenizer,
                extra_examples=examples,
                on_step=on_step,
                stop=stop,
                between_micro_batches=between_steps,
                start_step=start_step,
            )
            if result.steps > start_step and result.best_weights is not None:
                self.model.load_state_dict(result.best_weights)
        except BaseException:
            put_back()
            raise
        finally:
            self.model.eval()
            if adapters is not None:
                self.model.requires_grad_(False)
                adapters.install()
        if adapters is not None and result.steps <= start_step:
            put_back()  # nothing fitted: un-merge
        if result.steps > start_step:
            self.reset_reference()
            self.version += 1
        return result

    def adopt(self, model_dir: Path) -> int:
        """Take the weights of the plaudit model folder `model_dir` (an offline fit's best
        model, same architecture and tokenizer) as the current weights, anchor the KL
        reference to them (`reset_reference`) and return the new, bumped version.

        The weights are copied into the existing model, so its device and dtype stay and any
        engine built later samples the new weights; a folder of another shape raises
        `ModelLoadError` and leaves the policy as it was."""
        loaded = load_model(model_dir).model
        # Checked first: load_state_dict would copy the matching tensors before it raised.
        _check_same_shapes(loaded, self.model, model_dir)
        self.model.load_state_dict(loaded.state_dict())
        self.reset_reference()
        self.version += 1
        return self.version


def _present(folder: Path, name: str, listed: set[str] | None) -> bool:
    """The checkpoint file ``name`` is there and counts: unlisted beside a listing, it is one
    a drop cut short between its two steps (`drop_file`), so already gone."""
    return (folder / name).is_file() and (listed is None or name in listed)


def _load_optimizer(optimizer: torch.optim.Optimizer, state_file: Path) -> None:
    device = next(p.device for g in optimizer.param_groups for p in g["params"])
    try:
        state = torch.load(state_file, map_location=device, weights_only=True)
        optimizer.load_state_dict(state)
    except Exception as e:  # torch raises many kinds on a damaged zip/pickle
        raise _damaged(state_file, f"cannot be used ({type(e).__name__}: {e})") from e
    _check_finite_moments(optimizer, state_file)


def _read_adapters(folder: Path) -> dict[str, Any]:
    file = folder / ADAPTERS_FILE
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
        if not (
            isinstance(saved, dict)
            and {"rank", "alpha", "fingerprint", "adapters"} <= set(saved)
            and isinstance(saved["adapters"], dict)
        ):
            raise ValueError("not the adapters file Policy.save writes")
    except Exception as e:
        raise _damaged(file, f"cannot be used ({type(e).__name__}: {e})") from e
    for name, value in saved["adapters"].items():
        if not bool(torch.isfinite(value).all()):
            raise _damaged(file, f"holds NaN or infinite values in {name}")
    return saved


def _same_sums(saved: Sequence[float], own: Sequence[float]) -> bool:
    return len(saved) == len(own) and all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(saved, own, strict=True)
    )


def drop_optimizer_state(folder: Path) -> int:
    """Make the checkpoint ``folder`` (one `Policy.save` wrote) weights only: its online
    optimizer state (about twice the weights) is deleted and unlisted from its checksums,
    crash-safely (`drop_file`); `Policy.restore` of it starts the optimizer afresh. Returns the
    bytes freed (0: it had none). A damaged checksums.json raises `DamagedModelError`."""
    return drop_file(folder, OPTIMIZER_FILE)


def strip_to_adapters(folder: Path) -> int:
    """Make the LoRA checkpoint ``folder`` (one `Policy.save` of a LoRA policy wrote) adapters
    only: its online optimizer state and its merged weights are deleted and unlisted from its
    checksums, crash-safely (`drop_file`), leaving the adapters (SmolLM2 at rank 8: 8 MB
    against 513 MB of weights), the tokenizer and the manifest. Only a LoRA policy anchored to
    the base the adapters were trained on restores it (`Policy.restore`). A folder without
    adapters (full fine-tuning) is left as it is. Returns the bytes freed."""
    if not _present(folder, ADAPTERS_FILE, listed_files(folder)):
        return 0
    return drop_file(folder, OPTIMIZER_FILE) + drop_file(folder, WEIGHTS_FILE)


def _damaged(file: Path, what: str) -> DamagedModelError:
    """A checkpoint file that cannot be used: what is wrong with it, and the fix."""
    return DamagedModelError(f"{file} {what}; {_DAMAGE_FIX}.", path=str(file))


def _check_finite_moments(optimizer: torch.optim.Optimizer, file: Path) -> None:
    """NaN or infinite moments would turn the first update's step into NaN weights."""
    for per_param in optimizer.state.values():
        for value in per_param.values():
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
                raise _damaged(file, "holds NaN or infinite optimizer moments")


def _check_same_shapes(loaded: Transformer, own: Transformer, folder: Path) -> None:
    a = {k: v.shape for k, v in loaded.state_dict().items()}
    if a != {k: v.shape for k, v in own.state_dict().items()}:
        raise ModelLoadError(
            f"{folder} holds another architecture than the policy's model; use only model "
            f"folders trained from this policy."
        )
