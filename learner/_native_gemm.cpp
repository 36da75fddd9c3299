// plaudit's decoding GEMM for x86-64 CPUs with AVX2 and FMA: y (M, N) = x (M, K) @ W^T for
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
// Threads: an OpenMP loop over groups of panels. Loaded into a process where torch has already
// loaded its libgomp.so.1, this library binds to that same runtime (one thread pool, no fight);
// the caller passes torch's thread count.

#include <immintrin.h>
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

// ROWS rows of x against PANELS consecutive panels; ROWS * PANELS accumulators (<= 12 of the
// 16 AVX registers). Several panels per pass give few-row inputs enough independent chains to
// hide the FMA latency, without changing any output's summation order.
template <int ROWS, int PANELS>
inline void block(const float* x, int64_t ldx, const float* panels, int64_t K, float* y,
                  int64_t ldy, int64_t n0, int64_t N) {
  __m256 acc[ROWS][PANELS];
  for (int r = 0; r < ROWS; ++r)
    for (int p = 0; p < PANELS; ++p) acc[r][p] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 w[PANELS];
    for (int p = 0; p < PANELS; ++p) {
      const float* src = panels + (p * K + k) * kPanel;
      _mm_prefetch(reinterpret_cast<const char*>(src + kPrefetch), _MM_HINT_T0);
      w[p] = _mm256_loadu_ps(src);
    }
    for (int r = 0; r < ROWS; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * ldx + k);
      for (int p = 0; p < PANELS; ++p) acc[r][p] = _mm256_fmadd_ps(xv, w[p], acc[r][p]);
    }
  }
  for (int p = 0; p < PANELS; ++p) {
    const int64_t n = n0 + p * kPanel;
    const int64_t cols = N - n < kPanel ? N - n : kPanel;
    for (int r = 0; r < ROWS; ++r) store_columns(y + r * ldy + n, acc[r][p], cols);
  }
}

// Up to kGroup panels starting at panel p0, for ROWS rows: as many panels per pass as fit.
template <int ROWS>
inline void rows_by_group(const float* x, int64_t ldx, const float* packed, int64_t K,
                          float* y, int64_t ldy, int64_t p0, int64_t p1, int64_t N) {
  constexpr int kWide = ROWS == 1 ? 4 : ROWS == 2 ? 4 : ROWS <= 4 ? 2 : 1;
  int64_t p = p0;
  for (; p + kWide <= p1; p += kWide)
    block<ROWS, kWide>(x, ldx, packed + p * K * kPanel, K, y, ldy, p * kPanel, N);
  for (; p < p1; ++p) block<ROWS, 1>(x, ldx, packed + p * K * kPanel, K, y, ldy, p * kPanel, N);
}

void group(const float* x, int64_t M, const float* packed, int64_t N, int64_t K, float* y,
           int64_t p0, int64_t p1) {
  for (int64_t m = 0; m < M; m += kRowBlock) {
    const float* xm = x + m * K;
    float* ym = y + m * N;
    switch (M - m < kRowBlock ? M - m : kRowBlock) {
      case 1: rows_by_group<1>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 2: rows_by_group<2>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 3: rows_by_group<3>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 4: rows_by_group<4>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 5: rows_by_group<5>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 6: rows_by_group<6>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 7: rows_by_group<7>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 8: rows_by_group<8>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 9: rows_by_group<9>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 10: rows_by_group<10>(xm, K, packed, K, ym, N, p0, p1, N); break;
      case 11: rows_by_group<11>(xm, K, packed, K, ym, N, p0, p1, N); break;
      default: rows_by_group<12>(xm, K, packed, K, ym, N, p0, p1, N); break;
    }
  }
}

}  // namespace

extern "C" {

// Bumped whenever a signature below changes; the loader checks it.
int plaudit_gemm_abi(void) { return 1; }

int64_t plaudit_gemm_panel_width(void) { return kPanel; }

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

// y (M, N) = x (M, K) @ W^T, W packed by plaudit_gemm_pack; x and y row-major, contiguous.
void plaudit_gemm(const float* x, int64_t M, const float* packed, int64_t N, int64_t K,
                  float* y, int threads) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  const int64_t groups = (panels + kGroup - 1) / kGroup;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t p0 = g * kGroup;
    const int64_t p1 = p0 + kGroup < panels ? p0 + kGroup : panels;
    group(x, M, packed, N, K, y, p0, p1);
  }
}

}  // extern "C"
