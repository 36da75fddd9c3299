"""Low-rank adapters (LoRA, Hu et al. 2021) on a `Transformer`'s attention and MLP layers.

An adapted linear layer computes ``x W^T + scale * (x A^T) B^T``: ``W`` frozen, ``A`` (rank,
in) and ``B`` (out, rank) trained, ``B`` starting at zero so a fresh adapter changes nothing.
The adapters live beside the model, not in it: forward hooks add their term, so the model's
state dict stays that of the base weights and every reader of model folders is unchanged. For
online learning that is the point: the KL reference is the base weights themselves
(`base_view`, a second `Transformer` over the very same tensors), so the reference costs no
second copy of the weights, and the optimizer holds moments of the adapters only.

What sees the adapters: every forward of the adapted model (training, `hidden_states`, the
online update's passes). What does not: `decode_copy` rebuilds a model from the state dict, so
generation samples `merged` weights (a transient copy of the adapted layers)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._model import Transformer

# The linear layers of each block that get an adapter (names end so): attention's fused
# q/k/v and output projection, the MLP's (fused gate/up) input and output projections.
TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
ADAPTERS_FILE = "lora_adapters.pt"


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0  # the adapter's term is scaled by alpha / rank (Hu et al.)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class Adapters(nn.Module):
    """Adapters on every `TARGETS` layer of ``model`` (hooks installed at construction; the
    model's own parameters are left to the caller to freeze). ``a[key]`` (rank, in) starts as
    nn.Linear's init, ``b[key]`` (out, rank) at zero."""

    def __init__(self, model: Transformer, config: LoRAConfig) -> None:
        super().__init__()
        self.config = config
        self.a = nn.ParameterDict()
        self.b = nn.ParameterDict()
        self._layers: dict[str, nn.Linear] = {}  # key -> the adapted layer
        self._names: dict[str, str] = {}  # key -> the layer's name in the model
        self._hooks: list[RemovableHandle] = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.endswith(TARGETS):
                key = name.replace(".", "_")  # ParameterDict keys cannot hold dots
                w = module.weight
                a = torch.empty(config.rank, w.size(1), device=w.device, dtype=w.dtype)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                self.a[key] = nn.Parameter(a)
                b = torch.zeros(w.size(0), config.rank, device=w.device, dtype=w.dtype)
                self.b[key] = nn.Parameter(b)
                self._layers[key], self._names[key] = module, name
        assert self._layers, "this model has no attention or MLP linear layers to adapt"
        self.install()

    def install(self) -> None:
        """Install the hooks that add the adapters' term (done at construction)."""
        assert not self._hooks, "the adapters are installed already"
        for key, layer in self._layers.items():
            self._hooks.append(layer.register_forward_hook(self._hook(key)))

    def _hook(self, key: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]:
        scale = self.config.scale
        a: Tensor = self.a[key]
        b: Tensor = self.b[key]

        def add_adapter(_module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
            low = inputs[0] @ a.t()  # (..., rank)
            return out + (low @ b.t()) * scale  # (..., out)

        return add_adapter

    def pairs(self) -> Iterator[tuple[str, nn.Linear, Tensor, Tensor]]:
        """(the layer's name in the model, the layer, A, B) for every adapted layer."""
        for key, layer in self._layers.items():
            yield self._names[key], layer, self.a[key], self.b[key]

    @torch.no_grad()
    def merged(self, model: Transformer) -> Transformer:
        """A `Transformer` computing what the adapted ``model`` computes, without hooks: the
        adapted layers' weights ``W + scale * B A`` (new tensors), every other tensor shared
        with ``model``. For `decode_copy`, which does not see hooks: each merged weight is
        (out, in) contiguous, the layout `DecodeLinear` copies straight."""
        state = dict(model.state_dict())
        for name, layer, a, b in self.pairs():
            # (out, in) + (out, rank) @ (rank, in)
            state[f"{name}.weight"] = torch.addmm(layer.weight, b, a, alpha=self.config.scale)
        return _sharing(model, state)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapters into their layers' weights (``W += scale * B A``) and zero
        ``B``: the model computes the same, and its base weights now hold it."""
        for _name, layer, a, b in self.pairs():
            layer.weight.addmm_(b, a, alpha=self.config.scale)  # (out, rank) @ (rank, in)
            b.zero_()

    @torch.no_grad()
    def zero(self) -> None:
        """Make every adapter a no-op (``B = 0``), leaving the base weights as they are."""
        for _name, _layer, _a, b in self.pairs():
            b.zero_()

    @torch.no_grad()
    def shrink(self, alpha: float) -> None:
        """Scale every adapter's term by ``alpha`` (``B *= alpha``): the adapted weights move
        to ``W + alpha * scale * B A``, the same share of the way back to the base."""
        for _name, _layer, _a, b in self.pairs():
            b.mul_(alpha)

    def is_zero(self) -> bool:
        return all(not bool(b.any()) for _n, _l, _a, b in self.pairs())

    def remove(self) -> None:
        """Uninstall the hooks: the model computes its base weights alone again."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def fingerprint(self) -> list[float]:
        """Per adapted layer, the float64 sum of its base weight: adapters saved against one
        base are not applied to another (`Policy.restore` checks it)."""
        return [float(layer.weight.detach().double().sum()) for _n, layer, _a, _b in self.pairs()]


def base_view(model: Transformer) -> Transformer:
    """A frozen `Transformer` over ``model``'s own tensors (no copy) without its adapters'
    hooks: the base weights, which an adapted model is anchored to."""
    return _sharing(model, dict(model.state_dict())).requires_grad_(False).eval()


def _sharing(model: Transformer, state: dict[str, Tensor]) -> Transformer:
    """A new `Transformer` of ``model``'s config whose parameters are the tensors ``state``
    names (assigned, not copied) and whose buffers (RoPE tables) are ``model``'s."""
    out = Transformer.uninitialised(model.config)
    out.load_state_dict(state, strict=True, assign=True)
    for name, buf in model.named_buffers():
        setattr(out, name, buf)
    return out
