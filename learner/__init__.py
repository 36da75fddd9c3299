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
from ._errors import (
    ChecksumError,
    ContextLengthError,
    LearnerError,
    ModelExportError,
    ModelLoadError,
    TokenizerError,
)
from ._hf import export_hf
from ._load import LoadedModel, default_cache_dir, load_model, save_model
from ._model import PRESETS, ModelConfig, Transformer
from ._runtime import configure_torch
from ._tokenizer import Tokenizer

__all__: list[str] = [
    "PRESETS",
    "ChecksumError",
    "ContextLengthError",
    "Engine",
    "KVCache",
    "LearnerError",
    "LoadedModel",
    "ModelConfig",
    "ModelExportError",
    "ModelLoadError",
    "Sample",
    "SamplingConfig",
    "Step",
    "Tokenizer",
    "TokenizerError",
    "Transformer",
    "configure_torch",
    "default_cache_dir",
    "export_hf",
    "load_model",
    "sample_tokens",
    "save_model",
    "transform_logits",
]
