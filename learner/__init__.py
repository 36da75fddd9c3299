"""plaudit.learner: the model, its generation engine, import/export and training.

Everything other packages use is exported here; no module outside learner imports a private
`plaudit.learner._x` module."""

import importlib
from typing import TYPE_CHECKING, Any

# Torch-free: `plaudit models` and the config read them without importing torch.
from ._config import PRESETS, ModelConfig
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

if TYPE_CHECKING:
    from ._checkpoint import TRAINER_STATE, load_trainer_state, resolve_model_dir
    from ._data import (
        Example,
        examples_from_pairs,
        examples_from_texts,
        read_file,
        split_validation,
    )
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
    from ._eval import EvalReport, evaluate
    from ._generate import TextSample, encode_prompts, generate_text
    from ._grow import grow as grow_model
    from ._grow import logit_difference
    from ._grow import target_config as grow_target_config
    from ._hf import export_hf
    from ._kv_cache import KVCache, PromptCache
    from ._load import LoadedModel, default_cache_dir, load_model, save_model, verify_model_folder
    from ._lora import LoRAConfig
    from ._model import Transformer
    from ._online import OnlineUpdateConfig, Trajectory, UpdateStats
    from ._policy import Candidate, Policy, Restored, drop_optimizer_state, strip_to_adapters
    from ._post_kinds import KINDS, PostKinds, effective_number, kinds_covered
    from ._reward_model import (
        WORD_FEATURES,
        Prediction,
        RewardHead,
        RewardModelState,
        feature_width,
        hidden_features,
        text_features,
        word_features,
    )
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

# The rest is imported on first use (PEP 562): importing plaudit.learner costs no torch import
# (1.5-4 s) until a name that needs torch is used.
_LAZY: dict[str, tuple[str, str]] = {
    "TRAINER_STATE": ("._checkpoint", "TRAINER_STATE"),
    "load_trainer_state": ("._checkpoint", "load_trainer_state"),
    "resolve_model_dir": ("._checkpoint", "resolve_model_dir"),
    "Example": ("._data", "Example"),
    "dedupe_examples": ("._data", "dedupe"),
    "examples_from_pairs": ("._data", "examples_from_pairs"),
    "examples_from_texts": ("._data", "examples_from_texts"),
    "read_file": ("._data", "read_file"),
    "split_validation": ("._data", "split_validation"),
    "decode_kernel": ("._decode", "decode_kernel"),
    "Engine": ("._engine", "Engine"),
    "Sample": ("._engine", "Sample"),
    "SamplingConfig": ("._engine", "SamplingConfig"),
    "Step": ("._engine", "Step"),
    "sample_tokens": ("._engine", "sample_tokens"),
    "transform_logits": ("._engine", "transform_logits"),
    "EvalReport": ("._eval", "EvalReport"),
    "evaluate": ("._eval", "evaluate"),
    "TextSample": ("._generate", "TextSample"),
    "encode_prompts": ("._generate", "encode_prompts"),
    "generate_text": ("._generate", "generate_text"),
    "grow_model": ("._grow", "grow"),
    "grow_target_config": ("._grow", "target_config"),
    "logit_difference": ("._grow", "logit_difference"),
    "export_hf": ("._hf", "export_hf"),
    "KVCache": ("._kv_cache", "KVCache"),
    "PromptCache": ("._kv_cache", "PromptCache"),
    "LoadedModel": ("._load", "LoadedModel"),
    "default_cache_dir": ("._load", "default_cache_dir"),
    "load_model": ("._load", "load_model"),
    "save_model": ("._load", "save_model"),
    "verify_model_folder": ("._load", "verify_model_folder"),
    "Transformer": ("._model", "Transformer"),
    "OnlineUpdateConfig": ("._online", "OnlineUpdateConfig"),
    "Trajectory": ("._online", "Trajectory"),
    "UpdateStats": ("._online", "UpdateStats"),
    "Candidate": ("._policy", "Candidate"),
    "LoRAConfig": ("._lora", "LoRAConfig"),
    "Policy": ("._policy", "Policy"),
    "Restored": ("._policy", "Restored"),
    "drop_optimizer_state": ("._policy", "drop_optimizer_state"),
    "strip_to_adapters": ("._policy", "strip_to_adapters"),
    "KINDS": ("._post_kinds", "KINDS"),
    "PostKinds": ("._post_kinds", "PostKinds"),
    "effective_number": ("._post_kinds", "effective_number"),
    "kinds_covered": ("._post_kinds", "kinds_covered"),
    "Prediction": ("._reward_model", "Prediction"),
    "RewardHead": ("._reward_model", "RewardHead"),
    "RewardModelState": ("._reward_model", "RewardModelState"),
    "text_features": ("._reward_model", "text_features"),
    "hidden_features": ("._reward_model", "hidden_features"),
    "word_features": ("._reward_model", "word_features"),
    "feature_width": ("._reward_model", "feature_width"),
    "WORD_FEATURES": ("._reward_model", "WORD_FEATURES"),
    "configure_torch": ("._runtime", "configure_torch"),
    "StepRecord": ("._step_record", "StepRecord"),
    "Tokenizer": ("._tokenizer", "Tokenizer"),
    "FitResult": ("._train", "FitResult"),
    "OfflineTrainConfig": ("._train", "OfflineTrainConfig"),
    "fit": ("._train", "fit"),
    "train_in_memory": ("._train", "train_in_memory"),
    "train_offline": ("._train", "train_offline"),
    "use_chat_template": ("._train", "use_chat_template"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value  # once: later lookups find it without this function
    return value


__all__: list[str] = [
    "KINDS",
    "PRESETS",
    "TRAINER_STATE",
    "WORD_FEATURES",
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
    "LoRAConfig",
    "LoadedModel",
    "ModelConfig",
    "ModelExportError",
    "ModelLoadError",
    "NonFiniteLossError",
    "OfflineTrainConfig",
    "OnlineUpdateConfig",
    "Policy",
    "PostKinds",
    "Prediction",
    "PromptCache",
    "Restored",
    "RewardHead",
    "RewardModelState",
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
    "effective_number",
    "encode_prompts",
    "evaluate",
    "examples_from_pairs",
    "examples_from_texts",
    "export_hf",
    "feature_width",
    "fit",
    "generate_text",
    "grow_model",
    "grow_target_config",
    "hidden_features",
    "kinds_covered",
    "load_model",
    "load_trainer_state",
    "logit_difference",
    "read_file",
    "resolve_model_dir",
    "sample_tokens",
    "save_model",
    "split_validation",
    "strip_to_adapters",
    "text_features",
    "train_in_memory",
    "train_offline",
    "transform_logits",
    "use_chat_template",
    "verify_model_folder",
    "word_features",
]
