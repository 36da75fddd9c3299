"""plaudit.learner: the model, its generation engine, import/export and training."""

from ._data import Example, examples_from_texts, read_file
from ._decode import decode_kernel
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
    CheckpointError,
    ChecksumError,
    ContextLengthError,
    DataError,
    LearnerError,
    ModelExportError,
    ModelLoadError,
    NonFiniteLossError,
    TokenizerError,
    TrainingError,
    TrainingMemoryError,
)
from ._eval import EvalReport, evaluate
from ._hf import export_hf
from ._load import LoadedModel, default_cache_dir, load_model, save_model
from ._model import PRESETS, ModelConfig, Transformer
from ._runtime import configure_torch
from ._tokenizer import Tokenizer
from ._train import FitResult, OfflineTrainConfig, StepRecord, fit, train_offline

__all__: list[str] = [
    "PRESETS",
    "CheckpointError",
    "ChecksumError",
    "ContextLengthError",
    "DataError",
    "Engine",
    "EvalReport",
    "Example",
    "FitResult",
    "KVCache",
    "LearnerError",
    "LoadedModel",
    "ModelConfig",
    "ModelExportError",
    "ModelLoadError",
    "NonFiniteLossError",
    "OfflineTrainConfig",
    "Sample",
    "SamplingConfig",
    "Step",
    "StepRecord",
    "Tokenizer",
    "TokenizerError",
    "TrainingError",
    "TrainingMemoryError",
    "Transformer",
    "configure_torch",
    "decode_kernel",
    "default_cache_dir",
    "evaluate",
    "examples_from_texts",
    "export_hf",
    "fit",
    "load_model",
    "read_file",
    "sample_tokens",
    "save_model",
    "train_offline",
    "transform_logits",
]
