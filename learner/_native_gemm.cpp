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
//
// bf16 weights (plaudit_gemm_bf16) halve the bytes per token: the same panels, with each pair of
// rows k, k+1 of a panel interleaved column by column, so one 32-byte load holds both rows' 8
// columns as 32-bit words (row k in the low half, row k+1 in the high half). A bf16 is the top
// half of an fp32, so a shift left by 16 (row k) and an AND that clears the low half (row k+1,
// already in place) give two fp32 vectors with no shuffle and no F16C or AVX-512 BF16: AVX2
// only. Activations and accumulation stay fp32, one FMA chain per output in k order as in the
// fp32 kernel, so a row's result does not depend on the batch here either.

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

// The bf16 twin of `block`: panels of (ceil(K/2), 8, 2) bf16, pairs of rows interleaved (see
// the top of the file). Each output is still one FMA chain over k = 0..K-1 in order.
template <int ROWS, int PANELS>
inline void block_bf16(const float* x, int64_t ldx, const uint16_t* panels, int64_t K, float* y,
                       int64_t ldy, int64_t n0, int64_t N) {
  const int64_t pairs = (K + 1) / 2;  // the panel's length in pairs (the last one may be half)
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m256 acc[ROWS][PANELS];
  for (int r = 0; r < ROWS; ++r)
    for (int p = 0; p < PANELS; ++p) acc[r][p] = _mm256_setzero_ps();
  for (int64_t j = 0; j < pairs; ++j) {
    const int64_t k = 2 * j;
    __m256i v[PANELS];
    for (int p = 0; p < PANELS; ++p) {
      const uint16_t* src = panels + (p * pairs + j) * 2 * kPanel;
      _mm_prefetch(reinterpret_cast<const char*>(src) + kPrefetch * sizeof(float), _MM_HINT_T0);
      v[p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    }
    for (int r = 0; r < ROWS; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * ldx + k);
      for (int p = 0; p < PANELS; ++p)
        acc[r][p] =
            _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_slli_epi32(v[p], 16)), acc[r][p]);
    }
    if (k + 1 == K) break;  // odd K: the last pair's high half is padding
    for (int r = 0; r < ROWS; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * ldx + k + 1);
      for (int p = 0; p < PANELS; ++p)
        acc[r][p] = _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_and_si256(v[p], high)),
                                    acc[r][p]);
    }
  }
  for (int p = 0; p < PANELS; ++p) {
    const int64_t n = n0 + p * kPanel;
    const int64_t cols = N - n < kPanel ? N - n : kPanel;
    for (int r = 0; r < ROWS; ++r) store_columns(y + r * ldy + n, acc[r][p], cols);
  }
}

template <int ROWS>
inline void rows_by_group_bf16(const float* x, int64_t ldx, const uint16_t* packed, int64_t K,
                               float* y, int64_t ldy, int64_t p0, int64_t p1, int64_t N) {
  // One row: 8 panels per pass (8 chains), as each chain takes two dependent FMAs per load;
  // 6% faster than 4 on the AMD EPYC for SmolLM2's shapes (one thread, alternating).
  constexpr int kWide = ROWS == 1 ? 8 : ROWS == 2 ? 4 : ROWS <= 4 ? 2 : 1;
  const int64_t stride = (K + 1) / 2 * 2 * kPanel;  // one panel, in bf16 values
  int64_t p = p0;
  for (; p + kWide <= p1; p += kWide)
    block_bf16<ROWS, kWide>(x, ldx, packed + p * stride, K, y, ldy, p * kPanel, N);
  for (; p < p1; ++p)
    block_bf16<ROWS, 1>(x, ldx, packed + p * stride, K, y, ldy, p * kPanel, N);
}

template <typename W>
inline void rows(const float* x, int64_t ldx, const W* packed, int64_t K, float* y, int64_t ldy,
                 int64_t p0, int64_t p1, int64_t N, int64_t count);

#define PLAUDIT_ROWS(fn, W)                                                                 \
  template <>                                                                              \
  inline void rows<W>(const float* x, int64_t ldx, const W* packed, int64_t K, float* y,   \
                      int64_t ldy, int64_t p0, int64_t p1, int64_t N, int64_t count) {     \
    switch (count) {                                                                       \
      case 1: fn<1>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                          \
      case 2: fn<2>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                          \
      case 3: fn<3>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                          \
      case 4: fn<4>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                          \
      case 5: fn<5>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                          \
      case 6: fn<6>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                          \
      case 7: fn<7>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                          \
      case 8: fn<8>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                          \
      case 9: fn<9>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                          \
      case 10: fn<10>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                        \
      case 11: fn<11>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                        \
      default: fn<12>(x, ldx, packed, K, y, ldy, p0, p1, N); break;                        \
    }                                                                                      \
  }
PLAUDIT_ROWS(rows_by_group, float)
PLAUDIT_ROWS(rows_by_group_bf16, uint16_t)
#undef PLAUDIT_ROWS

template <typename W>
void group(const float* x, int64_t M, const W* packed, int64_t N, int64_t K, float* y,
           int64_t p0, int64_t p1) {
  for (int64_t m = 0; m < M; m += kRowBlock)
    rows<W>(x + m * K, K, packed, K, y + m * N, N, p0, p1, N,
            M - m < kRowBlock ? M - m : kRowBlock);
}

template <typename W>
void gemm(const float* x, int64_t M, const W* packed, int64_t N, int64_t K, float* y,
          int threads) {
  constexpr int64_t G = sizeof(W) == 2 ? 2 * kGroup : kGroup;  // bf16: room for 8 panels
  const int64_t panels = (N + kPanel - 1) / kPanel;
  const int64_t groups = (panels + G - 1) / G;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t p0 = g * G;
    const int64_t p1 = p0 + G < panels ? p0 + G : panels;
    group<W>(x, M, packed, N, K, y, p0, p1);
  }
}

}  // namespace

extern "C" {

// Bumped whenever a signature below changes; the loader checks it.
int plaudit_gemm_abi(void) { return 3; }

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
  gemm<float>(x, M, packed, N, K, y, threads);
}

// The same with bf16 weights packed (ceil(N/8), ceil(K/2), 8, 2) by learner/_native.py: pair j
// of panel p holds W^T[2j, 8p + c] at [p, j, c, 0] and W^T[2j + 1, 8p + c] at [p, j, c, 1];
// padding (columns past N, the row past an odd K) is 0.
void plaudit_gemm_bf16(const float* x, int64_t M, const uint16_t* packed, int64_t N, int64_t K,
                       float* y, int threads) {
  gemm<uint16_t>(x, M, packed, N, K, y, threads);
}

}  // extern "C"
