// AVX2 building blocks for the row kernels (the fallback for CPUs without AVX-512: most
// laptops). Include ONLY from *_avx2.cpp files; everything is internal-linkage.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace dsv3 {
namespace {

// Lane mask (all-ones in the first n of 8 lanes) for maskload/maskstore, which never
// touch memory in masked-off lanes.
inline __m256i lanes_mask8(int64_t n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n < 8 ? n : 8)), idx);
}
inline __m256 load8(const float* p, int64_t n) {
  return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes_mask8(n));
}
inline void store8(float* p, int64_t n, __m256 v) {
  if (n >= 8)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, lanes_mask8(n), v);
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 BF16 -> 8 F32 (exact: a BF16 is the high half of an F32).
inline __m256 load8_bf16(const uint16_t* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// 8 E4M3 codes -> 8 F32 = e4m3 · 2^-8, exactly: sign-extend the bytes to 16 bits, shift left
// 7, clear bit 14 — the F16 bit pattern of e4m3 · 2^-8, subnormals included — and widen
// with VCVTPH2PS. NaN codes (S.1111.111) come out as finite numbers: callers check the
// codes with has_e4m3_nan and make the affected outputs NaN.
inline __m256 load8_e4m3_scaled(const uint8_t* p) {
  const __m128i h = _mm_slli_epi16(_mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))), 7);
  return _mm256_cvtph_ps(_mm_and_si128(h, _mm_set1_epi16(int16_t(0xBFFF))));
}

// Whether codes w[0..K) hold an E4M3 NaN (S.1111.111).
inline bool has_e4m3_nan(const uint8_t* w, int64_t K) {
  const __m256i c7f = _mm256_set1_epi8(0x7F);
  __m256i any = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32)
    any = _mm256_or_si256(any, _mm256_cmpeq_epi8(
        _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)), c7f), c7f));
  bool nan = !_mm256_testz_si256(any, any);
  for (; k < K; ++k) nan |= (w[k] & 0x7F) == 0x7F;
  return nan;
}

// exp(x) for 8 floats: the same range reduction and polynomial as exp512
// (simd_avx512.h). Without scalef, 2^n is applied as two exact power-of-two factors
// 2^(n−⌊n/2⌋)·2^⌊n/2⌋ (each a normal float for n ∈ [−150, 128]), so the only rounding is
// the final one: overflow gives +inf, the subnormal range is rounded once. NaN propagates
// through the polynomial.
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(89.0f), _mm256_max_ps(_mm256_set1_ps(-104.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606820309417232e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}

}  // namespace
}  // namespace dsv3
