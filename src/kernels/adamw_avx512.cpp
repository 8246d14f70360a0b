// AVX-512 AdamW update (kernels/adamw.h): the scalar twin's operations, 16 lanes at a time,
// each as its own instruction (mul, add, sqrt, div, sub: all correctly rounded, no FMA), so
// the bits are the twin's. The scalar loop ran ~3 ns per parameter (sqrtss and divss one
// element at a time); this one is bound by the 28 bytes per parameter it streams (F32 moments).
#include <immintrin.h>

// No multiply-add contraction (GCC contracts a * b + c, intrinsics included, under its
// default -ffp-contract=fast when FMA is enabled): the twin and the vector path must round
// every operation separately to give the same bits.
#pragma GCC optimize("fp-contract=off")
// GCC 12 flags the "__Y = __Y" idiom inside its own intrinsic headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <cstdint>

#include "kernels/adamw.h"
#include "kernels/fp8_avx512.h"
#include "kernels/simd_avx512.h"

namespace dsv3::avx512 {
namespace {

struct Coef {
  __m512 b1, omb1, b2, omb2, eps, ss, ibc2, wd, gs;
  explicit Coef(const AdamWCoef& c)
      : b1(_mm512_set1_ps(c.b1)), omb1(_mm512_set1_ps(1.0f - c.b1)), b2(_mm512_set1_ps(c.b2)),
        omb2(_mm512_set1_ps(1.0f - c.b2)), eps(_mm512_set1_ps(c.eps)), ss(_mm512_set1_ps(c.step_size)),
        ibc2(_mm512_set1_ps(c.inv_bc2)), wd(_mm512_set1_ps(c.wd)), gs(_mm512_set1_ps(c.gscale)) {}
};

// m, v updated in place (F32 registers); returns the new p.
inline __m512 step16(const Coef& k, __m512 p, __m512 g_in, __m512& m, __m512& v) {
  const __m512 g = _mm512_mul_ps(g_in, k.gs);
  m = _mm512_add_ps(_mm512_mul_ps(k.b1, m), _mm512_mul_ps(k.omb1, g));
  v = _mm512_add_ps(_mm512_mul_ps(k.b2, v), _mm512_mul_ps(_mm512_mul_ps(k.omb2, g), g));
  const __m512 den = _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(v, k.ibc2)), k.eps);
  const __m512 upd = _mm512_add_ps(_mm512_div_ps(_mm512_mul_ps(k.ss, m), den), _mm512_mul_ps(k.wd, p));
  return _mm512_sub_ps(p, upd);
}

}  // namespace

// Four accumulators of 8 doubles: lanes 0–7, 8–15, 16–23, 24–31 of the twin's 32. A masked
// tail loads zeros, and adding +0 leaves a lane (a sum of squares, never −0) unchanged.
double sum_squares(const float* x, int64_t n) {
  __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
  for (int64_t i = 0; i < n; i += 32) {
    for (int h = 0; h < 2; ++h) {
      const int64_t left = n - i - 16 * h;
      const __m512 v = load16_m(left > 0 ? lanes_mask(left) : __mmask16(0), x + i + 16 * h);
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
      const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
      acc[2 * h] = _mm512_fmadd_pd(lo, lo, acc[2 * h]);
      acc[2 * h + 1] = _mm512_fmadd_pd(hi, hi, acc[2 * h + 1]);
    }
  }
  const __m512d a = _mm512_add_pd(_mm512_add_pd(acc[0], acc[2]), _mm512_add_pd(acc[1], acc[3]));
  alignas(64) double lane[8];
  _mm512_store_pd(lane, a);
  for (int w = 4; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) lane[j] += lane[j + w];
  return lane[0];
}

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16) {
  const Coef k(c);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mk = lanes_mask(n - i);
    __m512 mm = load16_m(mk, m + i), vv = load16_m(mk, v + i);
    const __m512 pp = step16(k, load16_m(mk, p + i), load16_m(mk, g + i), mm, vv);
    store16(m + i, mk, mm);
    store16(v + i, mk, vv);
    store16(p + i, mk, pp);
    if (p16) _mm256_mask_storeu_epi16(p16 + i, mk, f32_to_bf16_512(pp));
  }
}

void adamw_update(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16) {
  const Coef k(c);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mk = lanes_mask(n - i);
    using avx512_detail::bf16_to_f32;
    __m512 mm = bf16_to_f32(_mm256_maskz_loadu_epi16(mk, m + i)), vv = bf16_to_f32(_mm256_maskz_loadu_epi16(mk, v + i));
    const __m512 pp = step16(k, load16_m(mk, p + i), load16_m(mk, g + i), mm, vv);
    _mm256_mask_storeu_epi16(m + i, mk, f32_to_bf16_512(mm));
    _mm256_mask_storeu_epi16(v + i, mk, f32_to_bf16_512(vv));
    store16(p + i, mk, pp);
    if (p16) _mm256_mask_storeu_epi16(p16 + i, mk, f32_to_bf16_512(pp));
  }
}

}  // namespace dsv3::avx512
