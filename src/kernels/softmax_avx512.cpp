// AVX-512 row softmax, logsumexp and argmax (kernels/softmax.h). Same operation sequence
// as softmax_ref.cpp except: exp512 instead of expf (≤ 2 ulp) and float sums over 16 lanes
// instead of double.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as
// "may be used uninitialized" (a false positive); silence it for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/simd_avx512.h"
#include "kernels/softmax.h"

namespace dsv3 {

float row_max_avx512(const float* x, int64_t C) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  __m512 m0 = ninf, m1 = ninf;
  int64_t c = 0;
  // max(x, m) returns m when x is NaN (second operand), so NaN is ignored as in the ref.
  for (; c + 32 <= C; c += 32) {
    m0 = _mm512_max_ps(_mm512_loadu_ps(x + c), m0);
    m1 = _mm512_max_ps(_mm512_loadu_ps(x + c + 16), m1);
  }
  for (; c < C; c += 16)
    m0 = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, lanes_mask(C - c), x + c), m0);
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

namespace {

// Σ exp((x[c] − m)·scale) over [0, C); when y, also stores each exp in y.
inline float sum_exp(float* y, const float* x, int64_t C, float m, float scale) {
  const __m512 vm = _mm512_set1_ps(m), vs = _mm512_set1_ps(scale);
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= C; c += 32) {
    const __m512 e0 = exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + c), vm), vs));
    const __m512 e1 = exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + c + 16), vm), vs));
    if (y) {
      _mm512_storeu_ps(y + c, e0);
      _mm512_storeu_ps(y + c + 16, e1);
    }
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
  }
  for (; c < C; c += 16) {
    const __mmask16 k = lanes_mask(C - c);
    __m512 e = exp512(_mm512_mul_ps(_mm512_sub_ps(load16_m(k, x + c), vm), vs));
    e = _mm512_maskz_mov_ps(k, e);
    if (y) store16(y + c, k, e);
    s0 = _mm512_add_ps(s0, e);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

}  // namespace

float row_logsumexp_avx512(const float* x, int64_t C) {
  const float m = row_max_avx512(x, C);
  if (m == -INFINITY) return m;
  return m + logf(sum_exp(nullptr, x, C, m, 1.0f));
}

void softmax_forward_avx512(float* y, const float* x, int64_t T, int64_t C, float scale,
                            const int32_t* valid_len) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    float* yr = y + t * C;
    const int64_t len = valid_len ? valid_len[t] : C;
    const float m = row_max_avx512(xr, len);
    if (m == -INFINITY) {  // empty or fully masked by −inf: all zeros, as the twin
      for (int64_t c = 0; c < C; c += 16) store16(yr + c, lanes_mask(C - c), _mm512_setzero_ps());
      continue;
    }
    const float s = sum_exp(yr, xr, len, m, scale);
    const __m512 inv = _mm512_set1_ps(float(1.0 / double(s)));
    for (int64_t c = 0; c < len; c += 16) {
      const __mmask16 k = lanes_mask(len - c);
      store16(yr + c, k, _mm512_mul_ps(load16_m(k, yr + c), inv));
    }
    for (int64_t c = len; c < C; c += 16) store16(yr + c, lanes_mask(C - c), _mm512_setzero_ps());
  }
}

void softmax_backward_avx512(float* dx, const float* dy, const float* y, int64_t T, int64_t C,
                             float scale) {
  const __m512 vsc = _mm512_set1_ps(scale);
  for (int64_t t = 0; t < T; ++t) {
    const float* g = dy + t * C;
    const float* yr = y + t * C;
    float* d = dx + t * C;
    __m512 s0 = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 k = lanes_mask(C - c);
      s0 = _mm512_fmadd_ps(load16_m(k, g + c), load16_m(k, yr + c), s0);
    }
    const __m512 s = _mm512_set1_ps(_mm512_reduce_add_ps(s0));
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 k = lanes_mask(C - c);
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(vsc, load16_m(k, yr + c)),
                                     _mm512_sub_ps(load16_m(k, g + c), s));
      store16(d + c, k, v);
    }
  }
}

float log_softmax_row_avx512(float* out, const float* x, int64_t C) {
  const float lse = row_logsumexp_avx512(x, C);
  const __m512 v = _mm512_set1_ps(lse);
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 k = lanes_mask(C - c);
    store16(out + c, k, _mm512_sub_ps(load16_m(k, x + c), v));
  }
  return lse;
}

int64_t argmax_row_avx512(const float* x, int64_t C) {
  // Per lane: the best value and the first index reaching it (strict > keeps the lower
  // index on ties and never takes NaN). Then the best lane value, lowest index among lanes
  // holding it — the first occurrence overall.
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  __m512 best = ninf;
  __m512i idx = _mm512_set1_epi32(0x7fffffff);
  __m512i cur = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (int64_t c = 0; c < C; c += 16) {
    const __m512 v = _mm512_mask_loadu_ps(ninf, lanes_mask(C - c), x + c);
    const __mmask16 gt = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
    best = _mm512_mask_mov_ps(best, gt, v);
    idx = _mm512_mask_mov_epi32(idx, gt, cur);
    cur = _mm512_add_epi32(cur, step);
  }
  const float bv = _mm512_reduce_max_ps(best);
  if (bv == -INFINITY) return 0;
  const __mmask16 at = _mm512_cmp_ps_mask(best, _mm512_set1_ps(bv), _CMP_EQ_OQ);
  return _mm512_mask_reduce_min_epi32(at, idx);
}

}  // namespace dsv3
