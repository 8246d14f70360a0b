// AVX-512 RMSNorm (kernels/norm.h). Row sums use two 16-lane accumulators (two FMA
// chains in flight); the per-element arithmetic follows norm_ref.cpp operation for
// operation, so the twins differ by the rounding of the sums (and at most one rounding per
// element where GCC fuses r·g − k·x into an FMA).
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as
// "may be used uninitialized" (a false positive); silence it for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/norm.h"
#include "kernels/simd_avx512.h"

namespace dsv3 {

namespace {

// Σ a[c]·b[c] (or Σ a[c]·b[c]·w[c] when w) over one row, in float.
inline float dot_row(const float* a, const float* b, const float* w, int64_t C) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= C; c += 32) {
    __m512 a0 = _mm512_loadu_ps(a + c), a1 = _mm512_loadu_ps(a + c + 16);
    if (w) {
      a0 = _mm512_mul_ps(a0, _mm512_loadu_ps(w + c));
      a1 = _mm512_mul_ps(a1, _mm512_loadu_ps(w + c + 16));
    }
    s0 = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b + c), s0);
    s1 = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b + c + 16), s1);
  }
  for (; c < C; c += 16) {
    const __mmask16 m = lanes_mask(C - c);
    __m512 a0 = load16_m(m, a + c);
    if (w) a0 = _mm512_mul_ps(a0, load16_m(m, w + c));
    s0 = _mm512_fmadd_ps(a0, load16_m(m, b + c), s0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

inline float row_rstd(const float* x, int64_t C, float eps) {
  const float ss = dot_row(x, x, nullptr, C);
  return 1.0f / sqrtf(ss / float(C) + eps);
}

}  // namespace

void rmsnorm_forward_avx512(float* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                            const float* w, int64_t T, int64_t C, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    float* o = out + t * ldo;
    const float r = row_rstd(xr, C, eps);
    const __m512 vr = _mm512_set1_ps(r);
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = lanes_mask(C - c);
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(load16_m(m, xr + c), vr), load16_m(m, w + c));
      store16(o + c, m, v);
    }
    if (rstd) rstd[t] = r;
  }
}

void rmsnorm_forward_bf16_avx512(uint16_t* out, int64_t ldo, float* rstd, const float* x,
                                 int64_t ldx, const float* w, int64_t T, int64_t C, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    uint16_t* o = out + t * ldo;
    const float r = row_rstd(xr, C, eps);
    const __m512 vr = _mm512_set1_ps(r);
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = lanes_mask(C - c);
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(load16_m(m, xr + c), vr), load16_m(m, w + c));
      const __m256i b = f32_to_bf16_512(v);
      if (m == 0xffff)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + c), b);
      else
        _mm256_mask_storeu_epi16(o + c, m, b);
    }
    if (rstd) rstd[t] = r;
  }
}

void rmsnorm_backward_dx_avx512(float* dx, int64_t lddx, const float* dout, int64_t lddo,
                                const float* x, int64_t ldx, const float* w, const float* rstd,
                                int64_t T, int64_t C, bool accumulate_dx) {
  for (int64_t t = 0; t < T; ++t) {
    const float* g = dout + t * lddo;
    const float* xr = x + t * ldx;
    float* d = dx + t * lddx;
    const float dot = dot_row(g, xr, w, C);
    const float r = rstd[t];
    const float k = r * r * r * dot / float(C);
    const __m512 vr = _mm512_set1_ps(r), vk = _mm512_set1_ps(k);
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = lanes_mask(C - c);
      const __m512 gw = _mm512_mul_ps(load16_m(m, g + c), load16_m(m, w + c));
      __m512 v = _mm512_sub_ps(_mm512_mul_ps(vr, gw), _mm512_mul_ps(vk, load16_m(m, xr + c)));
      if (accumulate_dx) v = _mm512_add_ps(load16_m(m, d + c), v);
      store16(d + c, m, v);
    }
  }
}

void rmsnorm_backward_dw_avx512(float* dw, const float* dout, int64_t lddo, const float* x,
                                int64_t ldx, const float* rstd, int64_t T, int64_t c0, int64_t c1) {
  // Blocks of kDwBlock columns: the block's sums stay in L1 while the rows stream through
  // contiguously (walking one column down T rows instead would stride by the row length,
  // 28 KB for C = 7168, and hit the same L1 set every row). Each column still sums its
  // rows in order t = 0, 1, ..., so the result does not depend on the blocking.
  constexpr int64_t kDwBlock = 512;
  alignas(64) float acc[kDwBlock];
  for (int64_t b = c0; b < c1; b += kDwBlock) {
    const int64_t n = c1 - b < kDwBlock ? c1 - b : kDwBlock;
    for (int64_t c = 0; c < n; c += 16) _mm512_store_ps(acc + c, _mm512_setzero_ps());
    for (int64_t t = 0; t < T; ++t) {
      const __m512 r = _mm512_set1_ps(rstd[t]);
      const float* g = dout + t * lddo + b;
      const float* xr = x + t * ldx + b;
      for (int64_t c = 0; c < n; c += 16) {
        const __mmask16 m = lanes_mask(n - c);
        const __m512 p = _mm512_mul_ps(load16_m(m, g + c), load16_m(m, xr + c));
        _mm512_store_ps(acc + c, _mm512_fmadd_ps(p, r, _mm512_load_ps(acc + c)));
      }
    }
    for (int64_t c = 0; c < n; c += 16) {
      const __mmask16 m = lanes_mask(n - c);
      store16(dw + b + c, m, _mm512_add_ps(load16_m(m, dw + b + c), _mm512_load_ps(acc + c)));
    }
  }
}

}  // namespace dsv3
