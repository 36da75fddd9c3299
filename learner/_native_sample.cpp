// plaudit's sampler for fp32 logits on the CPU: one token per row from the distribution
// learner/_engine.py defines (the logits divided by the temperature, then top-k, then top-p, as
// Hugging Face's processors order them), with the token's logprob under that distribution.
// Built into the native library by learner/_native.py; `sample_tokens` calls it.
//
// Why: the PyTorch path runs about 25 tensor ops a row and a top-k over the vocabulary (a
// second, wider one where the 256 most likely tokens hold less than top-p), about 0.7 ms a
// token for SmolLM2's 49,152 logits at one row: 8% of a token decoded from fp16 weights.
// Here: vector passes over the row (its maximum and minimum, then its log-sum-exp), and one
// that files each token's probability into a histogram by how far below the maximum its logit
// is (256 buckets over the row's range, at most 1/8 nat wide), so that the nucleus's cut is
// decided among the tokens of the few buckets where the running mass crosses top_p. Those are
// sorted (largest first, lower id first at a tie) and cut exactly as the PyTorch path cuts:
// prefix masses summed in double and rounded to fp32 (torch's CPU cumsum), a token dropped
// once the mass before it reaches top_p (compared in fp32); the tokens of the buckets before
// them are in whatever the order. Then an inverse-CDF draw with the row's uniform over the
// candidates, most likely first: the same candidates in the same order as the PyTorch path,
// so the same token for the same uniform, float rounding apart. Where a row's nucleus holds
// more than `kSortedCandidates` tokens (a flat row, as an untrained model's), its surely-kept
// tokens stay in id order rather than being sorted: the same distribution, another token for a
// given uniform (the PyTorch path then draws over the whole vocabulary in id order).

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>

#include <algorithm>
#include <vector>

#include "_native_simd.h"

namespace {

using plaudit_simd::exp8;
using plaudit_simd::hsum;

constexpr int kBuckets = 256;   // by distance below the row's maximum logit, over its range...
constexpr float kMaxRange = 32.0f;  // ...or the top 32 nats of it, the last bucket taking the rest
// The cut is decided among the buckets where the running mass goes from top_p - kMargin to
// top_p + kMargin, so that fp32 rounding of the exact cut (within ~1e-7 of the mass) never
// concerns a token outside them.
constexpr double kMargin = 1e-5;
// Surely-kept tokens are sorted (the PyTorch path's order) up to this many.
constexpr size_t kSortedCandidates = 4096;

struct Candidate {
  float value;
  int64_t id;
};

inline bool before(const Candidate& a, const Candidate& b) {
  return a.value > b.value || (a.value == b.value && a.id < b.id);
}

struct Scratch {
  std::vector<float> x;          // the row divided by the temperature
  std::vector<uint8_t> bucket;   // each token's histogram bucket
  std::vector<Candidate> cands;  // the tokens the draw is over
  std::vector<Candidate> edge;   // the tokens of the buckets where the cut falls
};

// One pass over a row: its largest and smallest logits, and whether it can be drawn from (no
// NaN, no +inf, and some value above -inf; tokens at -inf, masked, are fine).
struct RowStats {
  float max, min;
  bool drawable;
};

RowStats row_stats(const float* x, int64_t n) {
  const __m256 inf = _mm256_set1_ps(INFINITY);
  __m256 hi = _mm256_set1_ps(-INFINITY), lo = _mm256_set1_ps(INFINITY), bad = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    hi = _mm256_max_ps(hi, v);
    lo = _mm256_min_ps(lo, v);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, inf, _CMP_EQ_OQ));
  }
  bool ok = _mm256_movemask_ps(bad) == 0;
  alignas(32) float h[8], l[8];
  _mm256_store_ps(h, hi);
  _mm256_store_ps(l, lo);
  float a = h[0], b = l[0];
  for (int j = 1; j < 8; ++j) a = std::max(a, h[j]), b = std::min(b, l[j]);
  for (; i < n; ++i) {
    ok = ok && x[i] == x[i] && x[i] != INFINITY;
    a = std::max(a, x[i]), b = std::min(b, x[i]);
  }
  return {a, b, ok && a > -INFINITY};
}

// log(sum(exp(x - mx))) + mx: fp32 lanes over blocks of 256, the blocks summed in double (one
// fp32 sum over all 49k would drift by ~1e-5 of the mass, enough to move the nucleus's cut).
float row_logsumexp(const float* x, int64_t n, float mx) {
  const __m256 mv = _mm256_set1_ps(mx);
  double total = 0.0;
  int64_t i = 0;
  while (i + 8 <= n) {
    __m256 s = _mm256_setzero_ps();
    const int64_t end = i + 256 < n ? i + 256 : n;
    for (; i + 8 <= end; i += 8)
      s = _mm256_add_ps(s, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv)));
    total += hsum(s);
  }
  for (; i < n; ++i) total += expf(x[i] - mx);
  return mx + static_cast<float>(log(total));
}

// Candidates c[0..n) sorted largest first, after tokens of mass `ahead` more likely than all
// of them: mask (to -inf) each one the mass before it (prefix sums in double rounded to fp32,
// minus its own probability, in fp32) reaches top_p, except one tied with the last kept (as
// `_nucleus` keeps every token tied with its cut-off where it cuts over all candidates: a
// flat row, or a top-k of at most 256).
void cut_nucleus(Candidate* c, int64_t n, float lse, float top_p, double ahead = 0.0) {
  double prefix = ahead;
  float last_kept = NAN;
  for (int64_t i = 0; i < n; ++i) {
    const float p = expf(c[i].value - lse);
    prefix += p;
    if (static_cast<float>(prefix) - p >= top_p && c[i].value != last_kept)
      c[i].value = -INFINITY;
    else
      last_kept = c[i].value;
  }
}

// Inverse-CDF draw over c[0..n) (the first finite): the log-softmax of the candidates, the CDF
// of its exponent (prefix sums in double rounded to fp32), the first entry above u * total.
void draw(const Candidate* c, int64_t n, float u01, int64_t* token, float* logp) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, c[i].value);
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += expf(c[i].value - mx);
  const float log_total = static_cast<float>(log(s));
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += expf(c[i].value - mx - log_total);
  const float total_f = static_cast<float>(total);
  const float u = std::min(u01 * total_f, nextafterf(total_f, 0.0f));
  int64_t pick = n - 1;  // reached only by rounding (or non-finite logits)
  double cdf = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    cdf += expf(c[i].value - mx - log_total);
    if (static_cast<float>(cdf) > u) {
      pick = i;
      break;
    }
  }
  *token = c[pick].id;
  *logp = c[pick].value - mx - log_total;
}

void sample_row(const float* logits, int64_t V, float temperature, int64_t top_k, float top_p,
                float u01, int64_t* token, float* logp, Scratch& s) {
  s.x.resize(V);
  float* x = s.x.data();
  if (temperature == 1.0f) {
    std::copy(logits, logits + V, x);
  } else {
    for (int64_t i = 0; i < V; ++i) x[i] = logits[i] / temperature;
  }
  const RowStats stats = row_stats(x, V);
  if (!stats.drawable) {  // no distribution to draw from (a NaN model): its first largest
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (x[i] > x[best] || x[best] != x[best]) best = i;
    *token = best;
    *logp = NAN;
    return;
  }
  std::vector<Candidate>& c = s.cands;
  const bool cut = top_p < 1.0f;
  if (top_k > 0 && top_k < V) {
    c.resize(V);
    for (int64_t i = 0; i < V; ++i) c[i] = {x[i], i};
    std::nth_element(c.begin(), c.begin() + (top_k - 1), c.end(), before);
    c.resize(top_k);
    std::sort(c.begin(), c.end(), before);
    if (cut) {
      float mx = c[0].value;
      double sum = 0.0;
      for (const Candidate& k : c) sum += expf(k.value - mx);
      cut_nucleus(c.data(), top_k, mx + static_cast<float>(log(sum)), top_p);
    }
    draw(c.data(), top_k, u01, token, logp);
    return;
  }
  if (!cut) {  // the whole vocabulary, in id order
    c.resize(V);
    for (int64_t i = 0; i < V; ++i) c[i] = {x[i], i};
    draw(c.data(), V, u01, token, logp);
    return;
  }
  const float mx = stats.max, mn = stats.min;
  const float lse = row_logsumexp(x, V, mx);
  // Each token's probability filed by its distance below the maximum, in buckets spanning the
  // row's range (at most its top 32 nats).
  const float range = std::min(mx - mn, kMaxRange);
  const float per = range > 0.0f ? (kBuckets - 1) / range : 0.0f;
  s.bucket.resize(V);
  uint8_t* bucket = s.bucket.data();
  double mass[kBuckets] = {};
  const __m256 mv = _mm256_set1_ps(mx), lv = _mm256_set1_ps(lse), pv = _mm256_set1_ps(per);
  alignas(32) float p8[8], d8[8];
  for (int64_t i = 0; i < V; i += 8) {
    const int64_t m = V - i < 8 ? V - i : 8;
    if (m == 8) {
      const __m256 xv = _mm256_loadu_ps(x + i);
      _mm256_store_ps(p8, exp8(_mm256_sub_ps(xv, lv)));
      _mm256_store_ps(d8, _mm256_mul_ps(_mm256_sub_ps(mv, xv), pv));
    } else {
      for (int64_t j = 0; j < m; ++j) {
        p8[j] = expf(x[i + j] - lse);
        d8[j] = (mx - x[i + j]) * per;
      }
    }
    for (int64_t j = 0; j < m; ++j) {
      // NaN and distances beyond the last bucket's start go to the last bucket.
      const int b = d8[j] < kBuckets - 1 ? static_cast<int>(d8[j]) : kBuckets - 1;
      bucket[i + j] = static_cast<uint8_t>(b);
      mass[b] += p8[j];
    }
  }
  // Buckets before `first` hold tokens surely kept (all of them together hold less than
  // top_p); those after `last` tokens surely dropped (the mass before them reaches top_p).
  int first = -1, last = kBuckets - 1;
  double running = 0.0;
  for (int b = 0; b < kBuckets; ++b) {
    running += mass[b];
    if (first < 0 && running >= top_p - kMargin) first = b;
    if (running >= top_p + kMargin) {
      last = b;
      break;
    }
  }
  if (first < 0) first = last;
  c.clear();
  s.edge.clear();
  double kept = 0.0;  // the mass of the surely-kept tokens
  for (int64_t t = 0; t < V; ++t) {
    if (bucket[t] < first) {
      c.push_back({x[t], t});
    } else if (bucket[t] <= last) {
      s.edge.push_back({x[t], t});
    }
  }
  if (c.size() <= kSortedCandidates) std::sort(c.begin(), c.end(), before);
  for (const Candidate& k : c) kept += expf(k.value - lse);
  std::sort(s.edge.begin(), s.edge.end(), before);
  cut_nucleus(s.edge.data(), static_cast<int64_t>(s.edge.size()), lse, top_p, kept);
  c.insert(c.end(), s.edge.begin(), s.edge.end());
  draw(c.data(), static_cast<int64_t>(c.size()), u01, token, logp);
}

}  // namespace

extern "C" {

// One token per row of `logits` (rows, V) fp32, row-major: temperature > 0; top_k 0 for none;
// top_p >= 1 for none; `uniform` (rows,) in [0, 1). Writes `tokens` (rows,) and `logprobs`
// (rows,): each token's logprob under the distribution it was drawn from.
void plaudit_sample(const float* logits, int64_t rows, int64_t V, float temperature,
                    int64_t top_k, float top_p, const float* uniform, int64_t* tokens,
                    float* logprobs, int threads) {
#pragma omp parallel num_threads(threads) if (threads > 1 && rows > 1)
  {
    thread_local Scratch scratch;  // kept between calls: no allocation per token
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      sample_row(logits + r * V, V, temperature, top_k, top_p, uniform[r], tokens + r,
                 logprobs + r, scratch);
  }
}

}  // extern "C"
