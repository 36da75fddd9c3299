"""plaudit.learner: the model, its generation engine, import/export and training."""

from ._engine import KVCache
from ._model import PRESETS, ModelConfig, Transformer

__all__: list[str] = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "Transformer",
]
