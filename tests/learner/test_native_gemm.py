"""plaudit's native decoding GEMM (learner/_native_gemm.cpp): results, batch invariance, and
what happens where it cannot be built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plaudit.learner import _decode, _native
from plaudit.learner._native import (
    FP16_MAX,
    MAX_ROWS,
    half_fits,
    half_round,
    native_gemm,
    native_gemm_unavailable,
)

needs_native = pytest.mark.skipif(
    native_gemm() is None, reason=f"no native GEMM here: {native_gemm_unavailable()}"
)


@needs_native
@pytest.mark.parametrize(("n", "k"), [(1, 1), (13, 37), (48, 32), (200, 64), (1000, 129)])
def test_equals_a_matmul_for_every_row_count(n: int, k: int) -> None:
    """Any N (a partial last panel too) and K, any rows (several passes of 12 too): x @ W.T
    up to rounding."""
    native = native_gemm()
    assert native is not None
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=g)
    packed = native.pack(w.t().contiguous())
    assert packed.shape == ((n + 7) // 8, k, 8)
    for m in [*range(1, MAX_ROWS + 1), 2 * MAX_ROWS + 5]:
        x = torch.randn(m, k, generator=g)
        torch.testing.assert_close(native.linear(x, packed, n), x @ w.t(), rtol=1e-5, atol=1e-5)


@needs_native
def test_takes_any_layout_of_rows() -> None:
    """(B, T, K) inputs and non-contiguous views give (B, T, N), equal to F.linear."""
    native = native_gemm()
    assert native is not None
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 40, generator=g)
    packed = native.pack(w.t())  # a transposed view: packed from its values, not its strides
    x = torch.randn(40, 3, 2, generator=g).permute(1, 2, 0)  # (3, 2, 40), not contiguous
    y = native.linear(x, packed, 24)
    assert y.shape == (3, 2, 24)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-5)
    assert native.linear(torch.empty(0, 40), packed, 24).shape == (0, 24)


@needs_native
def test_a_rows_result_does_not_depend_on_the_batch() -> None:
    """Every output is one multiply-add chain in k order, in every code path: a row gives the
    same bits alone, in any batch, at any position, on 1 or 2 threads."""
    native = native_gemm()
    assert native is not None
    g = torch.Generator().manual_seed(2)
    w = torch.randn(300, 96, generator=g)
    packed = native.pack(w.t().contiguous())
    row = torch.randn(1, 96, generator=g)
    alone = native.linear(row, packed, 300)
    threads = torch.get_num_threads()
    try:
        for m in [*range(2, MAX_ROWS + 1), 2 * MAX_ROWS + 5]:
            for at in {0, m // 2, m - 1}:
                batch = torch.randn(m, 96, generator=g)
                batch[at] = row[0]
                for t in (1, 2):
                    torch.set_num_threads(t)
                    got = native.linear(batch, packed, 300)
                    assert torch.equal(got[at], alone[0]), (m, at, t)
    finally:
        torch.set_num_threads(threads)


@needs_native
@pytest.mark.parametrize(("n", "k"), [(1, 1), (13, 37), (48, 32), (200, 64), (1000, 129)])
def test_fp16_weights_give_fp32_arithmetic_on_the_rounded_weights(n: int, k: int) -> None:
    """fp16-packed panels (half the bytes; odd K and a partial last panel too), any rows, from
    a weight's rows or from a transposed copy: the fp32 product with the weights rounded to
    fp16, not with the fp32 weights."""
    native = native_gemm()
    assert native is not None
    g = torch.Generator().manual_seed(n * 1000 + k + 7)
    w = torch.randn(n, k, generator=g)
    for run in (1, native.half_run):  # single panels; runs of panels interleaved
        packed = native.pack(w.t(), dtype=torch.float16, run=run)
        width = 8 * run
        assert packed.dtype == torch.float16 and packed.shape == (-(-n // width), k, width)
        assert torch.equal(native.pack(w.t().contiguous(), dtype=torch.float16, run=run), packed)
        for m in [*range(1, MAX_ROWS + 1), 2 * MAX_ROWS + 5]:
            x = torch.randn(m, k, generator=g)
            y = native.linear(x, packed, n)
            torch.testing.assert_close(y, x @ half_round(w).t(), rtol=1e-5, atol=1e-5)
            if k > 8:  # enough terms that rounding the weights shows
                assert not torch.allclose(y, x @ w.t(), rtol=1e-5, atol=1e-5)


@needs_native
def test_fp16_a_rows_result_does_not_depend_on_the_batch() -> None:
    """The fp16 kernel keeps one chain per output in k order too (odd K included), in either
    layout of its panels."""
    native = native_gemm()
    assert native is not None
    g = torch.Generator().manual_seed(3)
    w = torch.randn(300, 97, generator=g)
    row = torch.randn(1, 97, generator=g)
    alone = native.linear(row, native.pack(w.t(), dtype=torch.float16), 300)
    threads = torch.get_num_threads()
    try:
        for run in (1, native.half_run):  # and the same bits from either layout
            packed = native.pack(w.t(), dtype=torch.float16, run=run)
            for m in [*range(1, MAX_ROWS + 1), 2 * MAX_ROWS + 5]:
                batch = torch.randn(m, 97, generator=g)
                batch[m // 2] = row[0]
                for t in (1, 2):
                    torch.set_num_threads(t)
                    got = native.linear(batch, packed, 300)[m // 2]
                    assert torch.equal(got, alone[0]), (run, m, t)
    finally:
        torch.set_num_threads(threads)


@needs_native
def test_a_packed_weight_of_other_shape_is_refused() -> None:
    native = native_gemm()
    assert native is not None
    packed = native.pack(torch.randn(33, 16), dtype=torch.float16)  # K = 33
    with pytest.raises(AssertionError, match="the packed weight is"):
        native.linear(torch.randn(2, 32), packed, 16)


def test_half_fits_says_whether_a_weight_stays_finite_in_fp16() -> None:
    """Subnormal-small and range-edge values fit (fp16 holds them, the small ones coarsely);
    one value past the largest finite fp16 does not."""
    w = torch.tensor([[1e-7, -3e-5, 0.02], [FP16_MAX, -FP16_MAX, 1.0]])
    assert half_fits(w) and torch.isfinite(half_round(w)).all()
    w[0, 1] = -70000.0
    assert not half_fits(w) and not torch.isfinite(half_round(w)).all()
    assert half_fits(torch.empty(0, 4))


@pytest.fixture
def fresh_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty build cache, and no library loaded yet in this process (restored after)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _native._load.cache_clear()
    _decode.packed_kernel.cache_clear()
    yield tmp_path / "plaudit" / "native"
    _native._load.cache_clear()
    _decode.packed_kernel.cache_clear()


@needs_native
def test_builds_once_into_the_cache(fresh_build: Path) -> None:
    native = native_gemm()
    assert native is not None and native.path.parent.parent == fresh_build
    built = native.path.stat().st_mtime_ns
    assert [p.name for p in native.path.parent.iterdir()] == ["libplaudit_gemm.so"]  # no temps
    _native._load.cache_clear()
    again = native_gemm()
    assert again is not None and again.path == native.path
    assert again.path.stat().st_mtime_ns == built  # loaded, not rebuilt


@needs_native  # where it builds, a broken compiler is what stops it
def test_a_failing_compiler_is_reported_and_decoding_falls_back(
    fresh_build: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = tmp_path / "broken-c++"
    broken.write_text("#!/bin/sh\necho 'fatal: this compiler is broken' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    assert native_gemm() is None
    why = native_gemm_unavailable()
    assert why is not None and "exit 3" in why and "this compiler is broken" in why
    assert "decoding uses torch's kernels" in caplog.text
    assert not any(p.suffix == ".so" for p in fresh_build.rglob("*"))  # no torn library left
    assert "native" not in _decode.available_kernels()
    monkeypatch.setattr(_decode, "_cpu_vendor", lambda: "AuthenticAMD")
    want = "onednn" if "onednn" in _decode.available_kernels() else None
    assert _decode.packed_kernel() in ([want] if want else [None, "mkl"])
    monkeypatch.setenv(_decode.KERNEL_ENV, "native")
    _decode.packed_kernel.cache_clear()
    with pytest.raises(ValueError, match="PLAUDIT_DECODE_KERNEL='native': building the native"):
        _decode.packed_kernel()


def test_no_compiler_is_reported(fresh_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    monkeypatch.setattr(_native, "_cpu_flags", lambda: {"avx2", "fma", "f16c", "sse2"})
    monkeypatch.setattr(_native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(_native.platform, "system", lambda: "Linux")
    assert native_gemm() is None
    assert "no C++ compiler found" in (native_gemm_unavailable() or "")


def test_a_cpu_without_avx2_is_reported(fresh_build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native, "_cpu_flags", lambda: {"sse2", "fma"})
    monkeypatch.setattr(_native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(_native.platform, "system", lambda: "Linux")
    assert native_gemm() is None
    assert "lacks avx2, f16c" in (native_gemm_unavailable() or "")


@needs_native
def test_a_damaged_cached_library_is_rebuilt(
    fresh_build: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Another name for the compiler gives another cache path: one this process has not
    # loaded (dlopen would hand back a loaded library without reading the file).
    real = _native._compiler()
    assert real is not None
    alias = tmp_path / "c++-alias"
    alias.symlink_to(real)
    monkeypatch.setenv("CXX", str(alias))
    damaged = _native.library_path(str(alias))
    assert damaged.parent.parent == fresh_build
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"\x7fELF but cut short")  # what a crash or a failing disk could leave
    native = native_gemm()
    assert native is not None and native.path == damaged
    assert damaged.stat().st_size > 1000  # rebuilt in place
    x, w = torch.randn(3, 16), torch.randn(8, 16)
    torch.testing.assert_close(native.linear(x, native.pack(w.t()), 8), x @ w.t())
