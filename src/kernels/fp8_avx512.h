// Internal: 16-lane AVX-512 conversions between F32 and E4M3 / BF16, bit-identical to the
// scalar functions of core/dtype.h (tests/test_convert.cpp checks every code). Only for
// *_avx512.cpp files; everything here has internal linkage (static), so no AVX-512 code
// can leak into the baseline build through the linker.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace dsv3::avx512_detail {

// E4M3 "fn" from F32, as f32_to_e4m3: round to nearest even, finite values beyond 448
// saturate to ±448, ±inf and NaN become NaN (S.1111.111).
static inline __m128i f32_to_e4m3(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
  // Normal range: drop 20 mantissa bits with round-half-even, then rebias 127 -> 7.
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1));
  __m512i code = _mm512_sub_epi32(
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(a, _mm512_set1_epi32(0x7ffff)), odd), 20),
      _mm512_set1_epi32(120 << 3));
  // Below 2^-6 (E4M3's smallest normal): multiples of 2^-9, nearest even (exact product).
  const __mmask16 sub = _mm512_cmplt_epi32_mask(a, _mm512_set1_epi32(0x3c800000));
  const __m512 scaled = _mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(512.f));
  const __m512i subcode = _mm512_cvtps_epi32(
      _mm512_roundscale_ps(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  code = _mm512_mask_mov_epi32(code, sub, subcode);
  code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epi32_mask(a, _mm512_set1_epi32(0x43e00000)),
                               _mm512_set1_epi32(0x7e));  // |f| > 448
  code = _mm512_mask_mov_epi32(code, _mm512_cmpge_epi32_mask(a, _mm512_set1_epi32(0x7f800000)),
                               _mm512_set1_epi32(0x7f));  // inf, NaN
  return _mm512_cvtepi32_epi8(_mm512_or_si512(code, sign));
}

// F32 from 16 E4M3 codes, as e4m3_to_f32 (exact; NaN codes give ±0x7fc00000).
static inline __m512 e4m3_to_f32(__m128i c) {
  const __m512i z = _mm512_cvtepu8_epi32(c);
  const __m512i mag = _mm512_and_si512(z, _mm512_set1_epi32(0x7f));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(z, _mm512_set1_epi32(0x80)), 24);
  // Normal: exponent field e + 120, mantissa bits in place.
  __m512i bits = _mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32(120 << 23));
  // Subnormal (e == 0): m · 2^-9, exact.
  const __mmask16 sub = _mm512_cmplt_epi32_mask(mag, _mm512_set1_epi32(8));
  bits = _mm512_mask_mov_epi32(
      bits, sub, _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(mag), _mm512_set1_ps(1.f / 512.f))));
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f)),
                               _mm512_set1_epi32(0x7fc00000));
  return _mm512_castsi512_ps(_mm512_or_si512(bits, sign));
}

// BF16 <-> F32 as bf16_to_f32 / f32_to_bf16 (integer rounding: VCVTNEPS2BF16 flushes
// subnormals, the scalar reference does not).
static inline __m512 bf16_to_f32(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline __m256i f32_to_bf16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

static inline __mmask16 first_lanes(int64_t n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
}

// 16 elements (the first n) of an F32 or BF16 array as F32; the rest read as 0.
static inline __m512 load16(const void* base, bool bf16, int64_t i, int64_t n) {
  const __mmask16 m = first_lanes(n);
  if (bf16) return bf16_to_f32(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + i));
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + i);
}
static inline void store16(void* base, bool bf16, int64_t i, int64_t n, __m512 v) {
  const __mmask16 m = first_lanes(n);
  if (bf16) _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + i, m, f32_to_bf16(v));
  else _mm512_mask_storeu_ps(static_cast<float*>(base) + i, m, v);
}

}  // namespace dsv3::avx512_detail
