"""plaudit.learner: the model, its generation engine, import/export and training.

Everything other packages use is exported here; no module outside learner imports a private
`plaudit.learner._x` module."""

from ._checkpoint import TRAINER_STATE, load_trainer_state, resolve_model_dir
from ._data import Example, examples_from_texts, read_file, split_validation
from ._data import dedupe as dedupe_examples
from ._decode import decode_kernel
from ._engine import (
    Engine,
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
    DamagedModelError,
    DataError,
    GenerationInterrupted,
    LearnerError,
    ModelExportError,
    ModelLoadError,
    NonFiniteLossError,
    TokenizerError,
    TrainingError,
    TrainingMemoryError,
)
from ._eval import EvalReport, evaluate
from ._generate import TextSample, encode_prompts, generate_text
from ._grow import grow as grow_model
from ._grow import logit_difference
from ._grow import target_config as grow_target_config
from ._hf import export_hf
from ._kv_cache import KVCache
from ._load import LoadedModel, default_cache_dir, load_model, save_model, verify_model_folder
from ._model import PRESETS, ModelConfig, Transformer
from ._online import OnlineUpdateConfig, Trajectory, UpdateStats
from ._policy import Candidate, Policy, Restored, drop_optimizer_state
from ._reward_model import Prediction, RewardHead, text_features
from ._runtime import configure_torch
from ._step_record import StepRecord
from ._tokenizer import Tokenizer
from ._train import (
    FitResult,
    OfflineTrainConfig,
    fit,
    train_in_memory,
    train_offline,
    use_chat_template,
)

__all__: list[str] = [
    "PRESETS",
    "TRAINER_STATE",
    "Candidate",
    "CheckpointError",
    "ChecksumError",
    "ContextLengthError",
    "DamagedModelError",
    "DataError",
    "Engine",
    "EvalReport",
    "Example",
    "FitResult",
    "GenerationInterrupted",
    "KVCache",
    "LearnerError",
    "LoadedModel",
    "ModelConfig",
    "ModelExportError",
    "ModelLoadError",
    "NonFiniteLossError",
    "OfflineTrainConfig",
    "OnlineUpdateConfig",
    "Policy",
    "Prediction",
    "Restored",
    "RewardHead",
    "Sample",
    "SamplingConfig",
    "Step",
    "StepRecord",
    "TextSample",
    "Tokenizer",
    "TokenizerError",
    "TrainingError",
    "TrainingMemoryError",
    "Trajectory",
    "Transformer",
    "UpdateStats",
    "configure_torch",
    "decode_kernel",
    "dedupe_examples",
    "default_cache_dir",
    "drop_optimizer_state",
    "encode_prompts",
    "evaluate",
    "examples_from_texts",
    "export_hf",
    "fit",
    "generate_text",
    "grow_model",
    "grow_target_config",
    "load_model",
    "load_trainer_state",
    "logit_difference",
    "read_file",
    "resolve_model_dir",
    "sample_tokens",
    "save_model",
    "split_validation",
    "text_features",
    "train_in_memory",
    "train_offline",
    "transform_logits",
    "use_chat_template",
    "verify_model_folder",
]
