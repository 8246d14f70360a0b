// AVX-512 building blocks shared by the elementwise/row kernels (norm, activation,
// softmax, loss, rope, topk) and the GEMM packing and microkernels. Include ONLY from
// *_avx512.cpp files: everything here is internal-linkage (anonymous namespace), so no
// AVX-512 instruction can leak into code that runs on a CPU without it (CMakeLists.txt).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace dsv3 {
namespace {

// Mask selecting the first n (0..16) lanes.
inline __mmask16 lanes_mask(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
}

// The first n lanes of 32 (n <= 0: none, n >= 32: all).
inline __mmask32 mask32(int64_t n) {
  return n >= 32 ? __mmask32(0xFFFFFFFFu) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1);
}

// Loads / stores of the first lanes selected by m. Masked stores are slow on Zen 4 (a
// full-vector masked store costs several times a plain one), so full vectors take the
// plain instruction; the branch is perfectly predicted inside a row loop.
inline __m512 load16_m(__mmask16 m, const float* p) {
  return m == 0xffff ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}
inline void store16(float* p, __mmask16 m, __m512 v) {
  if (m == 0xffff)
    _mm512_storeu_ps(p, v);
  else
    _mm512_mask_storeu_ps(p, m, v);
}

// In-register transpose of 16 rows of 16 32-bit items: r[i][j] -> r[j][i].
inline void transpose16(__m512 r[16]) {
  __m512 a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // b[4q+j], 128-bit lane L: column 4L+j of rows 4q..4q+3
    const __m512d a0 = _mm512_castps_pd(a[4 * q]), a1 = _mm512_castps_pd(a[4 * q + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * q + 2]), a3 = _mm512_castps_pd(a[4 * q + 3]);
    b[4 * q + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 c01 = _mm512_shuffle_f32x4(b[j], b[4 + j], 0x44);
    const __m512 c23 = _mm512_shuffle_f32x4(b[j], b[4 + j], 0xEE);
    const __m512 d01 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], 0x44);
    const __m512 d23 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], 0xEE);
    r[j] = _mm512_shuffle_f32x4(c01, d01, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(c01, d01, 0xDD);
    r[8 + j] = _mm512_shuffle_f32x4(c23, d23, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(c23, d23, 0xDD);
  }
}

// exp(x) for 16 floats. exp(x) = 2^n · exp(r), n = round(x·log2 e), r = x − n·ln2 with a
// two-part (Cody–Waite) ln2 so r is exact to ~2^-40; |r| ≤ ln2/2 ≈ 0.347, where the degree-7
// Taylor polynomial's truncation error r^8/8! ≤ 5.2e-9 ≈ 0.04 ulp. Horner in FMA adds
// about one rounding per step, dominated by the last two (≈ 1 ulp). scalef applies 2^n
// with a single rounding, so overflow gives +inf, deep underflow 0 and the subnormal range
// is rounded once. Max error over a 400K-point sweep of [-87.3, 88.7] vs double exp:
// 0.89 ulp (glibc expf: 0.50); tests/test_activation.cpp asserts ≤ 2 ulp. NaN
// propagates (min/max are ordered so that a NaN input is returned).
inline __m512 exp512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-104.0f), hi = _mm512_set1_ps(89.0f);
  x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));  // (const, x): NaN in x is returned
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2_hi has 16 significant bits, so n·ln2_hi is exact for |n| < 2^8.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606820309417232e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Round-to-nearest-even F32 -> BF16 by integer arithmetic, bit-identical to f32_to_bf16
// (core/dtype.h) including NaN quieting and subnormals (vcvtneps2bf16 flushes subnormal
// inputs to zero, so it is not used).
inline __m256i f32_to_bf16_512(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
  r = _mm512_srli_epi32(r, 16);
  const __m512i abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7f800000));
  const __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x0040));
  r = _mm512_mask_mov_epi32(r, nan, q);
  return _mm512_cvtepi32_epi16(r);
}

}  // namespace
}  // namespace dsv3
