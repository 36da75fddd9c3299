// plaudit's fused decoding step for llama-family models: every transformer block of one decoding
// step (one new token per row) in one call, for rows whose weights the native GEMM packed
// (_native_gemm.cpp). Built into the same library by learner/_native.py; driven by
// learner/_fused_decode.py.
//
// Why: decoding a token runs ~25 small tensor ops per block around the four GEMMs (norms, RoPE,
// the cache write, attention, SiLU, residual adds). Each costs a few microseconds of dispatch in
// eager PyTorch whatever its size, about 4 ms a token for SmolLM2's 30 blocks at one row: a
// quarter of an fp16-weight token. Here they are plain loops over a few rows.
//
// The arithmetic is that of the PyTorch path (learner/_model.py), in fp32, float rounding apart:
// RMSNorm x * rsqrt(mean(x^2) + eps) * w; RoPE x * cos + rotate_half(x) * sin on the query and
// key heads; keys and values written at the cache's fill column; softmax attention of each
// query head over its key/value head's columns pad[row]..pos (scale 1/sqrt(D)); SwiGLU
// silu(gate) * up with gate and up the two halves of the fused fc output.

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "_native_simd.h"

extern "C" {
void plaudit_gemm(const float* x, int64_t M, const float* packed, int64_t N, int64_t K, float* y,
                  int threads);
void plaudit_gemm_f16(const float* x, int64_t M, const uint16_t* packed, int64_t N, int64_t K,
                      float* y, int threads, int64_t run);
}

namespace {

using plaudit_simd::exp8;
using plaudit_simd::hsum;

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8)
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += a * x over n floats.
inline void axpy(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t C, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* o = out + r * C;
    const float scale = 1.0f / sqrtf(dot(xr, xr, C) / static_cast<float>(C) + eps);
    for (int64_t i = 0; i < C; ++i) o[i] = xr[i] * scale * w[i];
  }
}

// x * cos + rotate_half(x) * sin_signed for one head of D (sin_signed = cat(-sin1, sin2)).
void rope(float* x, const float* cos, const float* sin_signed, int64_t D, float* tmp) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; ++i) {
    tmp[i] = x[i] * cos[i] + x[i + h] * sin_signed[i];
    tmp[i + h] = x[i + h] * cos[i + h] + x[i] * sin_signed[i + h];
  }
  memcpy(x, tmp, D * sizeof(float));
}

// SwiGLU over rows of the fused fc output (rows, 2I): out (rows, I) = silu(gate) * up.
void swiglu(const float* h, int64_t rows, int64_t I, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = h + r * 2 * I;
    const float* u = g + I;
    float* o = out + r * I;
    int64_t i = 0;
    for (; i + 8 <= I; i += 8) {
      const __m256 gv = _mm256_loadu_ps(g + i);
      const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
      const __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
      _mm256_storeu_ps(o + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    for (; i < I; ++i) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
  }
}

struct Dims {
  int64_t rows, C, H, Hkv, D, I, max_len;
};

// One query head of one row over its key/value head's cached columns [first, last].
void attend(const float* q, const float* keys, const float* values, int64_t first, int64_t last,
            int64_t D, float scale, float* scores, float* out) {
  const int64_t n = last - first + 1;
  float m = -INFINITY;
  for (int64_t c = 0; c < n; ++c) {
    scores[c] = dot(q, keys + (first + c) * D, D) * scale;
    m = scores[c] > m ? scores[c] : m;
  }
  const __m256 mv = _mm256_set1_ps(m);
  __m256 sv = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + c), mv));
    _mm256_storeu_ps(scores + c, e);
    sv = _mm256_add_ps(sv, e);
  }
  float sum = hsum(sv);
  for (; c < n; ++c) {
    scores[c] = expf(scores[c] - m);
    sum += scores[c];
  }
  memset(out, 0, D * sizeof(float));
  const float inv = 1.0f / sum;
  for (c = 0; c < n; ++c) axpy(scores[c] * inv, values + (first + c) * D, out, D);
}

}  // namespace

extern "C" {

// Every block of a llama-family model for one decoding step of `rows` rows, in place on the
// residual stream x (rows, C). Per block l, weights[4 l .. 4 l + 3] are the packed qkv, attention
// output, fc (gate and up fused) and down projections (fp32 panels with f16_run 0, fp16 ones in
// runs of f16_run panels otherwise) and norms[2 l], norms[2 l + 1] the two RMSNorm weights. cos and sin_signed (rows, D) hold each
// row's RoPE tables at its position. k_cache and v_cache are (n_layer, rows, Hkv, max_len, D):
// this step's keys and values go to column pos, and row r attends to columns pad[r]..pos.
// scratch holds at least rows * (2 C + (H + 2 Hkv) D + 3 I + H max_len) + threads * D floats.
void plaudit_decode_blocks(float* x, int64_t rows, int64_t n_layer, int64_t C, int64_t H,
                           int64_t Hkv, int64_t D, int64_t I, const void* const* weights,
                           int64_t f16_run, const float* const* norms, float eps, const float* cos,
                           const float* sin_signed, float* k_cache, float* v_cache,
                           int64_t max_len, int64_t pos, const int64_t* pad, float* scratch,
                           int threads) {
  const int64_t QKV = (H + 2 * Hkv) * D, rep = H / Hkv;
  float* xn = scratch;                // (rows, C) normed input of a projection
  float* qkv = xn + rows * C;         // (rows, QKV)
  float* att = qkv + rows * QKV;      // (rows, C) attention output, head by head
  float* h = att + rows * C;          // (rows, 2 I) fc output
  float* act = h + rows * 2 * I;      // (rows, I)
  float* scores = act + rows * I;     // (rows * H, max_len)
  float* tmp = scores + rows * H * max_len;  // threads * D
  float* out = qkv;  // (rows, C): a projection's output, once qkv is spent
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  auto gemm = [&](const float* in, const void* w, int64_t N, int64_t K, float* y) {
    if (f16_run)
      plaudit_gemm_f16(in, rows, static_cast<const uint16_t*>(w), N, K, y, threads, f16_run);
    else
      plaudit_gemm(in, rows, static_cast<const float*>(w), N, K, y, threads);
  };
  const int64_t layer_stride = rows * Hkv * max_len * D;
  for (int64_t l = 0; l < n_layer; ++l) {
    const void* const* w = weights + 4 * l;
    rms_norm(x, norms[2 * l], eps, rows, C, xn);
    gemm(xn, w[0], QKV, C, qkv);
    float* kl = k_cache + l * layer_stride;
    float* vl = v_cache + l * layer_stride;
    for (int64_t r = 0; r < rows; ++r) {
      float* q = qkv + r * QKV;
      for (int64_t head = 0; head < H + Hkv; ++head)  // query and key heads
        rope(q + head * D, cos + r * D, sin_signed + r * D, D, tmp);
      for (int64_t g = 0; g < Hkv; ++g) {
        const int64_t at = ((r * Hkv + g) * max_len + pos) * D;
        memcpy(kl + at, q + (H + g) * D, D * sizeof(float));
        memcpy(vl + at, q + (H + Hkv + g) * D, D * sizeof(float));
      }
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && rows * H > 1)
    for (int64_t t = 0; t < rows * H; ++t) {
      const int64_t r = t / H, head = t % H, g = head / rep;
      const int64_t base = (r * Hkv + g) * max_len * D;
      attend(qkv + r * QKV + head * D, kl + base, vl + base, pad[r], pos, D, scale,
             scores + t * max_len, att + r * C + head * D);
    }
    gemm(att, w[1], C, C, out);
    for (int64_t i = 0; i < rows * C; ++i) x[i] += out[i];
    rms_norm(x, norms[2 * l + 1], eps, rows, C, xn);
    gemm(xn, w[2], 2 * I, C, h);
    swiglu(h, rows, I, act);
    gemm(act, w[3], C, I, out);
    for (int64_t i = 0; i < rows * C; ++i) x[i] += out[i];
  }
}

}  // extern "C"
