"""plaudit's own decoding GEMM (`_native_gemm.cpp`), compiled on first use and loaded with ctypes,
with the fused decoding step built on it (`_native_layers.cpp`, driven by `_fused_decode.py`).

Decoding a few rows is bound by streaming the weights from memory; torch's kernels stream them
at about half of what this CPU's memory gives (bench/decode_kernels.py). The C++ kernel reads
each weight once per call from panels packed for it (see the source for the layout and for why
a row's result does not depend on the batch).

Built with the system C++ compiler (`$CXX`, else `c++`) into the user cache folder
(`$XDG_CACHE_HOME/plaudit/native/<hash of sources and flags>/`), once per machine; later processes
load the cached library. Only x86-64 Linux with AVX2, FMA and F16C: elsewhere, or when the
compiler is missing or fails, `native_gemm()` returns None and says why in
`native_gemm_unavailable()`, and the engine uses torch's kernels. No Python headers, no torch
headers: the build takes a second.

Weights pack in fp32 or in fp16 (`pack(..., dtype=torch.float16)`): fp16 halves the bytes each
token streams; the kernel widens them to fp32 in registers (F16C, exact) and multiplies and sums
in fp32, so its result is that of fp32 arithmetic on the fp16-rounded weights (`half_round`).
fp16 rather than bf16 for these weights-only panels: the same bytes, a rounding error 8x
smaller, and faster to widen (one instruction per 8 weights); trained weights sit far inside
fp16's range, and `half_fits` says whether a model's do.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import platformdirs
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

# The GEMM, the fused decoding step built on it (driven by `_fused_decode.py`) and the sampler
# (`_engine.sample_tokens`): one library.
SOURCES = (
    Path(__file__).with_name("_native_gemm.cpp"),
    Path(__file__).with_name("_native_layers.cpp"),
    Path(__file__).with_name("_native_sample.cpp"),
)
HEADERS = (Path(__file__).with_name("_native_simd.h"),)  # included by the sources
ABI = 5  # plaudit_gemm_abi() of the sources this module drives
FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
MAX_ROWS = 12  # rows in one pass over the weights; above, oneDNN is as fast or faster
_BUILD_TIMEOUT_S = 120

_i64, _int, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p


class NativeGemm:
    """The loaded library: `pack` a weight once, then `linear` any number of rows against it
    (it pays from 1 to `MAX_ROWS` rows, which one pass over the weights serves)."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._pack = lib.plaudit_gemm_pack
        self._pack.argtypes = [_ptr, _i64, _i64, _ptr, _int]
        self._pack.restype = None
        self._pack_rows = lib.plaudit_gemm_pack_rows
        self._pack_rows.argtypes = [_ptr, _i64, _i64, _ptr, _int]
        self._pack_rows.restype = None
        self._gemm = lib.plaudit_gemm
        self._gemm.argtypes = [_ptr, _i64, _ptr, _i64, _i64, _ptr, _int]
        self._gemm.restype = None
        self._gemm_f16 = lib.plaudit_gemm_f16
        self._gemm_f16.argtypes = [_ptr, _i64, _ptr, _i64, _i64, _ptr, _int, _i64]
        self._gemm_f16.restype = None
        lib.plaudit_gemm_panel_width.restype = _i64
        lib.plaudit_gemm_half_run.restype = _i64
        # `_fused_decode.FusedBlocks` calls it (see _native_layers.cpp for the arguments).
        self.decode_blocks = lib.plaudit_decode_blocks
        self.decode_blocks.argtypes = [
            _ptr, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _ptr, _i64, _ptr, ctypes.c_float,
            _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr, _int,
        ]  # fmt: skip
        self.decode_blocks.restype = None
        self._sample = lib.plaudit_sample
        self._sample.argtypes = [
            _ptr, _i64, _i64, ctypes.c_float, _i64, ctypes.c_float, _ptr, _ptr, _ptr, _int,
        ]  # fmt: skip
        self._sample.restype = None
        self.panel = int(lib.plaudit_gemm_panel_width())
        self.half_run = int(lib.plaudit_gemm_half_run())  # fp16 panels interleaved in runs

    def pack(self, weight_t: Tensor, dtype: torch.dtype = torch.float32, *, run: int = 1) -> Tensor:
        """The panels of a weight given transposed, (K, N) = (in, out): (ceil(N / 8), K, 8) in
        fp32, or with `dtype=torch.float16` rounded to fp16 (to nearest even), and then with
        `run=self.half_run` in runs of that many panels interleaved, (ceil(N / 8 run), K, 8 run)
        (see _native_gemm.cpp; `half_run_for` says which serves a row count best); missing
        columns are 0. A transposed view of a contiguous (N, K) weight (`weight.t()`) packs
        from the weight's rows, with no transposed copy first."""
        _check(weight_t, "weight_t", dim=2)
        assert dtype in (torch.float32, torch.float16), f"packs fp32 or fp16, not {dtype}"
        assert run == 1 or (run == self.half_run and dtype == torch.float16), (
            f"panels in runs of {run}: only fp16 ones, in runs of 1 or {self.half_run}"
        )
        K, N = weight_t.shape
        rows = weight_t.t().is_contiguous()  # (N, K) memory
        if dtype == torch.float16:
            # Pure torch: padded to whole runs of panels with zeros, then reordered.
            width = self.panel * run
            runs = (N + width - 1) // width
            if rows:
                w = F.pad(weight_t.t().to(torch.float16), (0, 0, 0, runs * width - N))
                return w.view(runs, width, K).transpose(1, 2).contiguous()  # (S, K, 8 run)
            wt = F.pad(weight_t.to(torch.float16), (0, runs * width - N))
            return wt.view(K, runs, width).transpose(0, 1).contiguous()  # (S, K, 8 run)
        panels = (N + self.panel - 1) // self.panel
        packed = torch.empty(panels, K, self.panel)
        if rows:
            w = weight_t.t()
            self._pack_rows(w.data_ptr(), K, N, packed.data_ptr(), torch.get_num_threads())
            return packed
        wt = weight_t.contiguous()
        self._pack(wt.data_ptr(), K, N, packed.data_ptr(), torch.get_num_threads())
        return packed

    def half_run_for(self, rows: int) -> int:
        """The fp16 layout for decoding `rows` rows: runs of `half_run` panels at 1 and 2 rows,
        where the kernel waits on memory (SmolLM2's blocks and head, AMD EPYC, 2 threads,
        alternating: 5-14% and 10-20% faster at one row, 8% and 10-15% at two); single panels
        above, where it computes (runs: 3% slower at 4 rows, 13% at 8)."""
        return self.half_run if rows <= 2 else 1

    def linear(self, x: Tensor, packed: Tensor, out_features: int) -> Tensor:
        """x (..., K) @ W^T -> (..., out_features), W (out_features, K) packed by `pack` in fp32
        or fp16 (the kernel follows the packed dtype). Lean: decoding calls it 121 times a token
        for SmolLM2, where each microsecond here is 0.5% of a token."""
        K = x.size(-1)
        assert x.dtype == torch.float32 and not x.is_cuda, f"x is {x.dtype} on {x.device}"
        width = packed.size(-1)
        assert packed.shape == (-(-out_features // width), K, width), (
            f"x has {K} features and y {out_features}; the packed weight is {tuple(packed.shape)}"
        )
        x2 = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, K).contiguous()  # (M, K)
        M = x2.size(0)
        y = torch.empty(M, out_features)
        if M:
            if packed.dtype == torch.float16:
                self._gemm_f16(
                    x2.data_ptr(), M, packed.data_ptr(), out_features, K, y.data_ptr(),
                    torch.get_num_threads(), width // self.panel,
                )  # fmt: skip
            else:
                self._gemm(
                    x2.data_ptr(), M, packed.data_ptr(), out_features, K, y.data_ptr(),
                    torch.get_num_threads(),
                )  # fmt: skip
        return y if x.dim() == 2 else y.view(*x.shape[:-1], out_features)

    def sample(
        self,
        logits: Tensor,
        *,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        uniform: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """One token per row of fp32 logits (R, V) and its logprob (R,) each, drawn with the
        uniforms (R, 1) from the distribution `_engine.transform_logits` defines (temperature
        > 0; see _native_sample.cpp)."""
        _check(logits, "logits", dim=2)
        assert temperature > 0, "greedy decoding takes the argmax, not a draw"
        R, V = logits.shape
        x = logits.contiguous()
        u = uniform.reshape(R).to(torch.float32).contiguous()
        tokens = torch.empty(R, dtype=torch.long)
        logprobs = torch.empty(R)
        self._sample(
            x.data_ptr(), R, V, temperature, top_k if top_k is not None else 0,
            top_p if top_p is not None else 1.0, u.data_ptr(), tokens.data_ptr(),
            logprobs.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return tokens, logprobs


FP16_MAX = 65504.0  # the largest finite fp16


def half_round(t: Tensor) -> Tensor:
    """fp32 `t` rounded to fp16 and back: the weights an fp16-packed GEMM multiplies by."""
    return t.to(torch.float16).to(torch.float32)


def half_fits(t: Tensor) -> bool:
    """Whether every value of `t` rounds to a finite fp16 (none beyond +-65504; no copy)."""
    t = t.detach()
    return not t.numel() or bool(t.amax() <= FP16_MAX and t.amin() >= -FP16_MAX)


def _check(t: Tensor, name: str, *, dim: int | None) -> None:
    assert t.device.type == "cpu" and t.dtype == torch.float32, (
        f"the native GEMM takes fp32 CPU tensors; {name} is {t.dtype} on {t.device}"
    )
    assert dim is None or t.dim() == dim, f"{name} must have {dim} dims, got {tuple(t.shape)}"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "").strip()
    return shutil.which(cxx) if cxx else (shutil.which("c++") or shutil.which("g++"))


def build_dir() -> Path:
    """Where compiled libraries are cached (one subfolder per source and flags)."""
    return platformdirs.user_cache_path("plaudit") / "native"


def library_path(cxx: str) -> Path:
    """Where the library built by `cxx` from these sources with these flags is cached."""
    text = b"\0".join(source.read_bytes() for source in (*SOURCES, *HEADERS))
    key = hashlib.sha256(text + "\0".join((cxx, *FLAGS)).encode()).hexdigest()
    return build_dir() / key[:16] / "libplaudit_gemm.so"


def _build(cxx: str) -> Path:
    """The compiled library for these sources, compiler and flags: cached, else built now (into a
    temporary file renamed into place, so concurrent builds and crashes leave no torn file)."""
    lib = library_path(cxx)
    folder = lib.parent
    if lib.is_file():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run(
            [cxx, *FLAGS, *map(str, SOURCES), "-o", tmp],
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{cxx} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
            )
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


@functools.cache
def _load() -> NativeGemm | str:
    """The library, or why there is none (logged once per process)."""
    got = _try_load()
    if isinstance(got, str):
        log.warning("%s; decoding uses torch's kernels", got)
    return got


def _try_load() -> NativeGemm | str:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return (
            "the native GEMM is built for x86-64 Linux only, "
            f"this is {platform.system()} {platform.machine()}"
        )
    missing = {"avx2", "fma", "f16c"} - _cpu_flags()
    if missing:
        return f"this CPU lacks {', '.join(sorted(missing))}, which the native GEMM needs"
    cxx = _compiler()
    if cxx is None:
        return "no C++ compiler found to build the native GEMM: install g++, or set CXX"
    lib: ctypes.CDLL | None = None
    for attempt in range(2):
        try:
            path = _build(cxx)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            return f"building the native GEMM into {build_dir()} failed: {e}"
        try:
            lib = ctypes.CDLL(str(path))
            lib.plaudit_gemm_abi.restype = ctypes.c_int
            break
        except (OSError, AttributeError) as e:  # a damaged cached file: rebuild it once
            if attempt:
                return f"cannot load the native GEMM {path} ({e}): delete {path.parent}"
            path.unlink(missing_ok=True)
    assert lib is not None
    abi = lib.plaudit_gemm_abi()
    if abi != ABI:
        return f"{path} has ABI {abi} where this plaudit needs {ABI}: delete {path.parent}"
    return NativeGemm(lib, path)


def native_gemm() -> NativeGemm | None:
    """The native GEMM, built on the first call of the process (about a second, once per
    machine); None where it cannot be (see `native_gemm_unavailable`)."""
    got = _load()
    return None if isinstance(got, str) else got


def native_gemm_unavailable() -> str | None:
    """Why the native GEMM is not available here, or None when it is."""
    got = _load()
    return got if isinstance(got, str) else None
