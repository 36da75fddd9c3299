// plaudit's decoding GEMM for x86-64 CPUs with AVX2, FMA and F16C: y (M, N) = x (M, K) @ W^T for
// the few rows of batched decoding (up to 12 per pass over the weights). Built and loaded by
// learner/_native.py.
//
// Decoding multiplies a few rows by every weight of the model once per token, so it is bound by
// how fast the weights stream from memory, not by arithmetic. The weight is packed once into
// panels of 8 output columns, each panel (K, 8) contiguous, so every panel is one sequential
// stream, read from memory once per call (up to 12 rows are computed in one pass over it; more
// rows take more passes, the later ones from cache). Each output is one fused multiply-add
// chain over k = 0..K-1 starting from 0, in every code path below: a row's result has the same
// bits whatever M and the other rows are.
//
// Threads: each takes one contiguous run of groups of 4 panels, as even as the groups allow
// (fixed groups of 8 fp16 panels left SmolLM2's 72-panel layers split 5:4 over two threads).
// Loaded into a process where torch has already loaded its libgomp.so.1, this library binds to
// that same runtime (one thread pool, no fight); the caller passes torch's thread count.
//
// fp16 weights (plaudit_gemm_f16) halve the bytes per token: the same panels in IEEE half
// precision (for 1-2 rows in runs of four interleaved, see `panel_start`), each 16-byte row of a
// panel widened to 8 fp32 lanes by F16C (exact) as it is loaded.
// Activations and accumulation stay fp32, one FMA chain per output in k order as in the fp32
// kernel, so a row's result does not depend on the batch here either. Why fp16 and not bf16 for
// weights that are multiplied in fp32: the same bytes, 3 more bits of mantissa (a weight's
// rounding error 8x smaller) and one conversion instruction per 8 weights; trained weights sit
// far inside fp16's range (learner/_native.py checks it when packing).

#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

namespace {

constexpr int64_t kPanel = 8;     // output columns per panel (one AVX register)
constexpr int64_t kGroup = 4;     // panels per unit of work
constexpr int64_t kRowBlock = 12;  // rows per pass over a panel (12 accumulators)
constexpr int64_t kPrefetch = 128;  // floats ahead in a panel stream (512 bytes)

inline void store_columns(float* y, __m256 acc, int64_t cols) {
  if (cols == kPanel) {
    _mm256_storeu_ps(y, acc);
    return;
  }
  alignas(32) float tmp[kPanel];
  _mm256_store_ps(tmp, acc);
  memcpy(y, tmp, cols * sizeof(float));
}

// 8 weights of a panel row as fp32: fp32 as they are, fp16 widened by F16C (exact).
inline __m256 load8(const float* src) { return _mm256_loadu_ps(src); }
inline __m256 load8(const uint16_t* src) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}

// Where panel q's row k = 0 starts, and the step from one k to the next: panels (K, 8) one after
// another (RUN 1), or in runs of RUN interleaved, (K, 8 RUN) (fp16 RUN 4: one k of four
// panels is one 64-byte cache line, 2 memory streams where 8 separate fp16 panels made 8, each
// line prefetched once; learner/_native.py packs so for decoding 1 or 2 rows, `half_run_for`).
template <int RUN>
constexpr int64_t kStride = RUN * kPanel;
template <int RUN, typename W>
inline const W* panel_start(const W* packed, int64_t K, int64_t q) {
  return packed + (q / RUN) * K * kStride<RUN> + (q % RUN) * kPanel;
}

// ROWS rows of x against PANELS consecutive panels from panel q0; ROWS * PANELS accumulators
// (<= 12 of the 16 AVX registers). Several panels per pass give few-row inputs enough
// independent chains to hide the FMA latency, without changing any output's summation order.
// W: float for fp32 panels, uint16_t for fp16 ones.
template <int ROWS, int PANELS, int RUN, typename W>
inline void block(const float* x, int64_t ldx, const W* packed, int64_t q0, int64_t K, float* y,
                  int64_t ldy, int64_t N) {
  constexpr int64_t stride = kStride<RUN>;
  const W* start[PANELS];
  bool fetch[PANELS];  // the first panel of a pass in each run prefetches the run's line
  for (int p = 0; p < PANELS; ++p) {
    start[p] = panel_start<RUN>(packed, K, q0 + p);
    fetch[p] = RUN == 1 || p == 0 || (q0 + p) % RUN == 0;
  }
  __m256 acc[ROWS][PANELS];
  for (int r = 0; r < ROWS; ++r)
    for (int p = 0; p < PANELS; ++p) acc[r][p] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 w[PANELS];
    for (int p = 0; p < PANELS; ++p) {
      const W* src = start[p] + k * stride;
      if (fetch[p])
        _mm_prefetch(reinterpret_cast<const char*>(src) + kPrefetch * sizeof(float), _MM_HINT_T0);
      w[p] = load8(src);
    }
    for (int r = 0; r < ROWS; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * ldx + k);
      for (int p = 0; p < PANELS; ++p) acc[r][p] = _mm256_fmadd_ps(xv, w[p], acc[r][p]);
    }
  }
  for (int p = 0; p < PANELS; ++p) {
    const int64_t n = (q0 + p) * kPanel;
    const int64_t cols = N - n < kPanel ? N - n : kPanel;
    for (int r = 0; r < ROWS; ++r) store_columns(y + r * ldy + n, acc[r][p], cols);
  }
}

// ROWS rows in passes of at most 4 over the same PANELS panels: after the first pass the panels
// come from cache, and 4 rows x PANELS panels of accumulators stay in registers.
template <int ROWS, int PANELS, int RUN, typename W>
inline void by_quads(const float* x, int64_t ldx, const W* packed, int64_t q0, int64_t K,
                     float* y, int64_t ldy, int64_t N) {
  block<(ROWS < 4 ? ROWS : 4), PANELS, RUN>(x, ldx, packed, q0, K, y, ldy, N);
  if constexpr (ROWS > 4)
    by_quads<ROWS - 4, PANELS, RUN>(x + 4 * ldx, ldx, packed, q0, K, y + 4 * ldy, ldy, N);
}

// Panels p0 to p1 for ROWS rows: passes over as many panels as fit, then narrower passes for
// the tail (a single panel per pass is one FMA chain, bound by its latency). fp16 at one row:
// 8 panels per pass, about 7% faster than 4 over SmolLM2's shapes (AMD EPYC, 2 threads).
// fp32 at 5-8 rows: 3 panels in passes of 4 rows (`by_quads`), 11-14% faster than all rows
// over one panel at 6 and 8 rows (SmolLM2's shapes, AMD EPYC, 2 threads, alternating); slower
// at 12 rows and for fp16 panels (12%), which keep the plain passes.
template <int ROWS, int RUN, typename W>
inline void rows_by_group(const float* x, int64_t ldx, const W* packed, int64_t K, float* y,
                          int64_t ldy, int64_t p0, int64_t p1, int64_t N) {
  constexpr bool kQuads = sizeof(W) == 4 && ROWS > 4 && ROWS <= 8;
  constexpr int kOne = sizeof(W) == 2 ? 8 : 4;
  constexpr int kWide = kQuads ? 3 : ROWS == 1 ? kOne : ROWS == 2 ? 4 : ROWS <= 4 ? 2 : 1;
  constexpr int kHalf = kWide > 1 ? kWide / 2 : 1;
  int64_t p = p0;
  for (; p + kWide <= p1; p += kWide) {
    if constexpr (kQuads)
      by_quads<ROWS, kWide, RUN>(x, ldx, packed, p, K, y, ldy, N);
    else
      block<ROWS, kWide, RUN>(x, ldx, packed, p, K, y, ldy, N);
  }
  for (; p + kHalf <= p1; p += kHalf) block<ROWS, kHalf, RUN>(x, ldx, packed, p, K, y, ldy, N);
  for (; p < p1; ++p) block<ROWS, 1, RUN>(x, ldx, packed, p, K, y, ldy, N);
}

// ROWS as a template argument, for the 1 to 12 rows of a pass.
template <int RUN, typename W>
inline void rows(const float* x, int64_t ldx, const W* packed, int64_t K, float* y, int64_t ldy,
                 int64_t p0, int64_t p1, int64_t N, int64_t count) {
  switch (count) {
    case 1: rows_by_group<1, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 2: rows_by_group<2, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 3: rows_by_group<3, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 4: rows_by_group<4, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 5: rows_by_group<5, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 6: rows_by_group<6, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 7: rows_by_group<7, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 8: rows_by_group<8, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 9: rows_by_group<9, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 10: rows_by_group<10, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    case 11: rows_by_group<11, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
    default: rows_by_group<12, RUN>(x, ldx, packed, K, y, ldy, p0, p1, N); break;
  }
}

template <int RUN, typename W>
void group(const float* x, int64_t M, const W* packed, int64_t N, int64_t K, float* y,
           int64_t p0, int64_t p1) {
  for (int64_t m = 0; m < M; m += kRowBlock)
    rows<RUN>(x + m * K, K, packed, K, y + m * N, N, p0, p1, N,
            M - m < kRowBlock ? M - m : kRowBlock);
}

template <int RUN, typename W>
void gemm(const float* x, int64_t M, const W* packed, int64_t N, int64_t K, float* y,
          int threads) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  const int64_t groups = (panels + kGroup - 1) / kGroup;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t p0 = groups * t / T * kGroup;
    const int64_t end = groups * (t + 1) / T * kGroup;
    group<RUN>(x, M, packed, N, K, y, p0, end < panels ? end : panels);
  }
}

}  // namespace

extern "C" {

// Bumped whenever a signature below changes; the loader checks it.
int plaudit_gemm_abi(void) { return 5; }

int64_t plaudit_gemm_panel_width(void) { return kPanel; }

// The panels per run of a layout for fp16 weights (`panel_start`), besides 1.
int64_t plaudit_gemm_half_run(void) { return kGroup; }

// packed (ceil(N/8), K, 8) from wt = W^T (K, N) row-major; the last panel's missing columns 0.
void plaudit_gemm_pack(const float* wt, int64_t K, int64_t N, float* packed, int threads) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t n = p * kPanel;
    const int64_t cols = N - n < kPanel ? N - n : kPanel;
    float* dst = packed + p * K * kPanel;
    for (int64_t k = 0; k < K; ++k) {
      memcpy(dst + k * kPanel, wt + k * N + n, cols * sizeof(float));
      for (int64_t j = cols; j < kPanel; ++j) dst[k * kPanel + j] = 0.0f;
    }
  }
}

// The same panels from W (N, K) row-major itself: panel p reads its 8 rows of W sequentially.
void plaudit_gemm_pack_rows(const float* w, int64_t K, int64_t N, float* packed, int threads) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t n = p * kPanel;
    const int64_t cols = N - n < kPanel ? N - n : kPanel;
    float* dst = packed + p * K * kPanel;
    if (cols < kPanel) memset(dst, 0, K * kPanel * sizeof(float));
    for (int64_t j = 0; j < cols; ++j) {
      const float* row = w + (n + j) * K;
      for (int64_t k = 0; k < K; ++k) dst[k * kPanel + j] = row[k];
    }
  }
}

// y (M, N) = x (M, K) @ W^T, W packed by plaudit_gemm_pack; x and y row-major, contiguous.
void plaudit_gemm(const float* x, int64_t M, const float* packed, int64_t N, int64_t K,
                  float* y, int threads) {
  gemm<1>(x, M, packed, N, K, y, threads);
}

// The same with fp16 weights packed (ceil(N / 8 run), K, 8 run) by learner/_native.py: panels
// in runs of `run` interleaved, run 1 (the fp32 layout) or plaudit_gemm_half_run().
void plaudit_gemm_f16(const float* x, int64_t M, const uint16_t* packed, int64_t N, int64_t K,
                      float* y, int threads, int64_t run) {
  if (run == kGroup)
    gemm<kGroup>(x, M, packed, N, K, y, threads);
  else
    gemm<1>(x, M, packed, N, K, y, threads);
}

}  // extern "C"
