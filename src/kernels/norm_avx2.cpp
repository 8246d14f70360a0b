// AVX2 RMSNorm (kernels/norm.h): the AVX-512 kernels' structure on 8 lanes. Row sums use
// four 8-lane accumulators (32 partial sums, as the AVX-512 path), so the tolerance the
// tests derive for one covers the other.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/norm.h"
#include "kernels/simd_avx2.h"

namespace dsv3 {

namespace {

// Σ a[c]·b[c] (or Σ (a[c]·w[c])·b[c] when w) over one row, in float.
inline float dot_row(const float* a, const float* b, const float* w, int64_t C) {
  __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                 _mm256_setzero_ps()};
  int64_t c = 0;
  for (; c + 32 <= C; c += 32)
    for (int j = 0; j < 4; ++j) {
      __m256 a0 = _mm256_loadu_ps(a + c + 8 * j);
      if (w) a0 = _mm256_mul_ps(a0, _mm256_loadu_ps(w + c + 8 * j));
      s[j] = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b + c + 8 * j), s[j]);
    }
  for (; c < C; c += 8) {
    __m256 a0 = load8(a + c, C - c);
    if (w) a0 = _mm256_mul_ps(a0, load8(w + c, C - c));
    s[0] = _mm256_fmadd_ps(a0, load8(b + c, C - c), s[0]);
  }
  return hsum8(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])));
}

inline float row_rstd(const float* x, int64_t C, float eps) {
  return 1.0f / sqrtf(dot_row(x, x, nullptr, C) / float(C) + eps);
}

// Round-to-nearest-even F32 -> BF16 of 8 values, as f32_to_bf16 (core/dtype.h), by
// integer arithmetic (NaN quieted). Written here rather than calling the inline scalar
// function, which must not be instantiated in an ISA-specific file.
inline __m128i f32_to_bf16_8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r =
      _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
  const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));  // abs < 2^31
  const __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x0040));
  r = _mm256_blendv_epi8(r, q, nan);
  // Pack the low 16 bits of each 32-bit lane (values ≤ 0xffff, so unsigned saturation is
  // exact), then fix the lane order of the 128-bit halves.
  const __m256i packed = _mm256_packus_epi32(r, r);
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}

}  // namespace

void rmsnorm_forward_avx2(float* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                          const float* w, int64_t T, int64_t C, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    float* o = out + t * ldo;
    const float r = row_rstd(xr, C, eps);
    const __m256 vr = _mm256_set1_ps(r);
    for (int64_t c = 0; c < C; c += 8)
      store8(o + c, C - c,
             _mm256_mul_ps(_mm256_mul_ps(load8(xr + c, C - c), vr), load8(w + c, C - c)));
    if (rstd) rstd[t] = r;
  }
}

void rmsnorm_forward_bf16_avx2(uint16_t* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                               const float* w, int64_t T, int64_t C, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    uint16_t* o = out + t * ldo;
    const float r = row_rstd(xr, C, eps);
    const __m256 vr = _mm256_set1_ps(r);
    for (int64_t c = 0; c < C; c += 8) {
      const __m256 v = _mm256_mul_ps(_mm256_mul_ps(load8(xr + c, C - c), vr), load8(w + c, C - c));
      const __m128i b = f32_to_bf16_8(v);
      if (C - c >= 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + c), b);
      } else {
        alignas(16) uint16_t tmp[8];
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), b);
        for (int64_t j = 0; j < C - c; ++j) o[c + j] = tmp[j];
      }
    }
    if (rstd) rstd[t] = r;
  }
}

void rmsnorm_backward_dx_avx2(float* dx, int64_t lddx, const float* dout, int64_t lddo,
                              const float* x, int64_t ldx, const float* w, const float* rstd,
                              int64_t T, int64_t C, bool accumulate_dx) {
  for (int64_t t = 0; t < T; ++t) {
    const float* g = dout + t * lddo;
    const float* xr = x + t * ldx;
    float* d = dx + t * lddx;
    const float dot = dot_row(g, xr, w, C);
    const float r = rstd[t];
    const float k = r * r * r * dot / float(C);
    const __m256 vr = _mm256_set1_ps(r), vk = _mm256_set1_ps(k);
    for (int64_t c = 0; c < C; c += 8) {
      const int64_t n = C - c;
      const __m256 gw = _mm256_mul_ps(load8(g + c, n), load8(w + c, n));
      __m256 v = _mm256_sub_ps(_mm256_mul_ps(vr, gw), _mm256_mul_ps(vk, load8(xr + c, n)));
      if (accumulate_dx) v = _mm256_add_ps(load8(d + c, n), v);
      store8(d + c, n, v);
    }
  }
}

void rmsnorm_backward_dw_avx2(float* dw, const float* dout, int64_t lddo, const float* x,
                              int64_t ldx, const float* rstd, int64_t T, int64_t c0, int64_t c1) {
  // Column blocks whose sums stay in L1 while rows stream (see norm_avx512.cpp).
  constexpr int64_t kDwBlock = 512;
  alignas(32) float acc[kDwBlock];
  for (int64_t b = c0; b < c1; b += kDwBlock) {
    const int64_t n = c1 - b < kDwBlock ? c1 - b : kDwBlock;
    for (int64_t c = 0; c < n; c += 8) _mm256_store_ps(acc + c, _mm256_setzero_ps());
    for (int64_t t = 0; t < T; ++t) {
      const __m256 r = _mm256_set1_ps(rstd[t]);
      const float* g = dout + t * lddo + b;
      const float* xr = x + t * ldx + b;
      for (int64_t c = 0; c < n; c += 8) {
        const __m256 p = _mm256_mul_ps(load8(g + c, n - c), load8(xr + c, n - c));
        _mm256_store_ps(acc + c, _mm256_fmadd_ps(p, r, _mm256_load_ps(acc + c)));
      }
    }
    for (int64_t c = 0; c < n; c += 8)
      store8(dw + b + c, n - c, _mm256_add_ps(load8(dw + b + c, n - c), _mm256_load_ps(acc + c)));
  }
}

}  // namespace dsv3
