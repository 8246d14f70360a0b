// AVX2 row softmax, logsumexp and argmax (kernels/softmax.h): softmax_avx512.cpp on 8
// lanes. Sums use four 8-lane accumulators (32 partial sums, as the AVX-512 path).
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/simd_avx2.h"
#include "kernels/softmax.h"

namespace dsv3 {

namespace {

// Masked-off lanes read as −inf, so they never win a max.
inline __m256 load8_ninf(const float* p, int64_t n) {
  if (n >= 8) return _mm256_loadu_ps(p);
  const __m256i m = lanes_mask8(n);
  return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(p, m),
                          _mm256_castsi256_ps(m));
}

// Σ exp((x[c] − m)·scale) over [0, C); when y, also stores each exp in y.
inline float sum_exp(float* y, const float* x, int64_t C, float m, float scale) {
  const __m256 vm = _mm256_set1_ps(m), vs = _mm256_set1_ps(scale);
  __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                 _mm256_setzero_ps()};
  int64_t c = 0;
  for (; c + 32 <= C; c += 32)
    for (int j = 0; j < 4; ++j) {
      const __m256 e = exp256(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c + 8 * j), vm), vs));
      if (y) _mm256_storeu_ps(y + c + 8 * j, e);
      s[j] = _mm256_add_ps(s[j], e);
    }
  for (; c < C; c += 8) {
    __m256 e = exp256(_mm256_mul_ps(_mm256_sub_ps(load8(x + c, C - c), vm), vs));
    e = _mm256_and_ps(e, _mm256_castsi256_ps(lanes_mask8(C - c)));  // zero the padding
    if (y) store8(y + c, C - c, e);
    s[0] = _mm256_add_ps(s[0], e);
  }
  return hsum8(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])));
}

}  // namespace

float row_max_avx2(const float* x, int64_t C) {
  // max(x, m) returns m when x is NaN (second operand): NaN is ignored, as in the twin.
  __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    m0 = _mm256_max_ps(_mm256_loadu_ps(x + c), m0);
    m1 = _mm256_max_ps(_mm256_loadu_ps(x + c + 8), m1);
  }
  for (; c < C; c += 8) m0 = _mm256_max_ps(load8_ninf(x + c, C - c), m0);
  return hmax8(_mm256_max_ps(m0, m1));
}

float row_logsumexp_avx2(const float* x, int64_t C) {
  const float m = row_max_avx2(x, C);
  if (m == -INFINITY) return m;
  return m + logf(sum_exp(nullptr, x, C, m, 1.0f));
}

void softmax_forward_avx2(float* y, const float* x, int64_t T, int64_t C, float scale,
                          const int32_t* valid_len) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    float* yr = y + t * C;
    const int64_t len = valid_len ? valid_len[t] : C;
    const float m = row_max_avx2(xr, len);
    if (m == -INFINITY) {  // empty or fully masked by −inf: all zeros, as the twin
      for (int64_t c = 0; c < C; c += 8) store8(yr + c, C - c, _mm256_setzero_ps());
      continue;
    }
    const float s = sum_exp(yr, xr, len, m, scale);
    const __m256 inv = _mm256_set1_ps(float(1.0 / double(s)));
    for (int64_t c = 0; c < len; c += 8)
      store8(yr + c, len - c, _mm256_mul_ps(load8(yr + c, len - c), inv));
    for (int64_t c = len; c < C; c += 8) store8(yr + c, C - c, _mm256_setzero_ps());
  }
}

void softmax_backward_avx2(float* dx, const float* dy, const float* y, int64_t T, int64_t C,
                           float scale) {
  const __m256 vsc = _mm256_set1_ps(scale);
  for (int64_t t = 0; t < T; ++t) {
    const float* g = dy + t * C;
    const float* yr = y + t * C;
    float* d = dx + t * C;
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    int64_t c = 0;
    for (; c + 32 <= C; c += 32)
      for (int j = 0; j < 4; ++j)
        s[j] =
            _mm256_fmadd_ps(_mm256_loadu_ps(g + c + 8 * j), _mm256_loadu_ps(yr + c + 8 * j), s[j]);
    for (; c < C; c += 8) s[0] = _mm256_fmadd_ps(load8(g + c, C - c), load8(yr + c, C - c), s[0]);
    const __m256 vs =
        _mm256_set1_ps(hsum8(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]))));
    for (c = 0; c < C; c += 8) {
      const __m256 v = _mm256_mul_ps(_mm256_mul_ps(vsc, load8(yr + c, C - c)),
                                     _mm256_sub_ps(load8(g + c, C - c), vs));
      store8(d + c, C - c, v);
    }
  }
}

float log_softmax_row_avx2(float* out, const float* x, int64_t C) {
  const float lse = row_logsumexp_avx2(x, C);
  const __m256 v = _mm256_set1_ps(lse);
  for (int64_t c = 0; c < C; c += 8) store8(out + c, C - c, _mm256_sub_ps(load8(x + c, C - c), v));
  return lse;
}

}  // namespace dsv3
