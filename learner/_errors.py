"""Every error the learner raises, in one place.

    LearnerError                 base: catch this to handle any learner failure
     ├── ModelLoadError          a model could not be read: missing file, unknown format or
     │    │                      architecture, missing tensor, wrong shape
     │    └── ChecksumError      a pinned file's sha256 differs from the pinned value
     ├── ModelExportError        a model could not be written: target not empty, unsupported config
     ├── TokenizerError          a tokenizer could not be built, loaded or used (no chat template)
     └── ContextLengthError      a token sequence is longer than the model's context window

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
