"""plaudit.learner: the model, its generation engine, import/export and training."""

from ._engine import (
    Engine,
    KVCache,
    Sample,
    SamplingConfig,
    Step,
    sample_tokens,
    transform_logits,
)
from ._model import PRESETS, ModelConfig, Transformer
from ._runtime import configure_torch

__all__: list[str] = [
    "PRESETS",
    "Engine",
    "KVCache",
    "ModelConfig",
    "Sample",
    "SamplingConfig",
    "Step",
    "Transformer",
    "configure_torch",
    "sample_tokens",
    "transform_logits",
]
