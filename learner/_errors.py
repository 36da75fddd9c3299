"""Every error the learner raises, in one place.

    LearnerError                 base: catch this to handle any learner failure
     ├── ModelLoadError          a model could not be read: missing file, unknown format or
     │    │                      architecture, missing tensor, wrong shape
     │    ├── ChecksumError      a pinned file's sha256 differs from the pinned value
     │    └── DamagedModelError  a saved folder's file was damaged: checksum, size, unreadable,
     │                           NaN/inf weights
     ├── ModelExportError        a model could not be written: target not empty, unsupported config
     ├── TokenizerError          a tokenizer could not be built, loaded or used (no chat template)
     ├── ContextLengthError      a token sequence is longer than the model's context window
     ├── GenerationInterrupted   the caller's stop check ended generation early (shutdown)
     ├── DataError               training data cannot be used: unreadable encoding, mixed
     │                           formats in one file, empty file, too little data for one batch
     ├── CheckpointError         a run folder or checkpoint cannot be used: output exists
     │                           without --force, nothing to resume, damaged trainer state
     └── TrainingError           training cannot go on
          ├── NonFiniteLossError  the loss or gradient became NaN/inf
          └── TrainingMemoryError the device ran out of memory

Callers decide by class, never by message text; messages are full sentences naming the problem
and the fix.
"""

from __future__ import annotations


class LearnerError(Exception):
    """Base class of every error raised by `plaudit.learner`."""


class ModelLoadError(LearnerError):
    """Raised when a model spec cannot be resolved or its files cannot be turned into a model:
    a missing file, an unknown folder layout, a GGUF of an unsupported architecture, a state dict
    with a missing or unexpected tensor, or a tensor of the wrong shape."""


class ChecksumError(ModelLoadError):
    """Raised when a file that plaudit pins by sha256 (the embedded SmolLM2 GGUF) has another
    digest, which means a different or damaged download."""


class DamagedModelError(ModelLoadError):
    """Raised when a model folder (a checkpoint) was damaged after it was written: a file differs
    from the checksum written at save, is truncated, missing or unreadable, or its weights or
    optimizer state hold NaN or infinite values. `path` is the file at fault. The folder as a
    whole is unusable; an older checkpoint or a backup is the fix, not a retry."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ModelExportError(LearnerError):
    """Raised when a model cannot be exported: the target folder is not empty (and overwriting
    was not asked for), or the model's config has no equivalent in the target format."""


class TokenizerError(LearnerError):
    """Raised when a tokenizer cannot be built, loaded or used: missing `tokenizer.json`, GGUF
    tokenizer metadata of an unsupported kind, or a chat request to a tokenizer without a chat
    template."""


class ContextLengthError(LearnerError):
    """Raised when a token sequence (for example a prompt plus the tokens to generate) does not
    fit in the model's context window (`ModelConfig.max_seq_len`)."""


class GenerationInterrupted(LearnerError):
    """Raised when a caller's stop check asked generation to end early (a shutdown)."""


class DataError(LearnerError):
    """Raised when training data cannot be used: a file that is not UTF-8, mixes formats, is
    empty or malformed, or data too small for one batch. `path` and `line` (1-based) name the
    spot when there is one."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class CheckpointError(LearnerError):
    """Raised when a training output folder or checkpoint cannot be used: the output exists and
    neither resuming nor overwriting (`--force`) was asked for, `--resume` finds no checkpoint,
    or a checkpoint's trainer state is damaged or belongs to another configuration."""


class TrainingError(LearnerError):
    """Raised when training cannot go on (bad precision/device combination, a stalled run)."""


class NonFiniteLossError(TrainingError):
    """Raised when the loss or gradient norm becomes NaN or infinite. The weights are not
    updated by that step; the last good checkpoint stays on disk (`checkpoint`)."""

    def __init__(self, message: str, *, step: int, checkpoint: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class TrainingMemoryError(TrainingError):
    """Raised when a training step runs out of device memory; the message says what to reduce
    (micro-batch size, sequence length, model size)."""
