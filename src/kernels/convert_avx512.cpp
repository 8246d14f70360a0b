// AVX-512 array converters (kernels/convert.h), 16 elements per step with a masked tail.
#include <immintrin.h>
// GCC 12's own intrinsic headers build "undefined" vectors from uninitialised locals.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cstdint>

#include "kernels/convert_impl.h"
#include "kernels/fp8_avx512.h"

namespace dsv3::avx512 {

using namespace avx512_detail;

void convert_f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    _mm256_mask_storeu_epi16(y + i, m, f32_to_bf16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

void split_f32_to_bf16_pair(const float* x, uint16_t* hi, uint16_t* lo, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    const __m256i h = f32_to_bf16(v);
    _mm256_mask_storeu_epi16(hi + i, m, h);
    _mm256_mask_storeu_epi16(lo + i, m, f32_to_bf16(_mm512_sub_ps(v, bf16_to_f32(h))));
  }
}

void convert_bf16_to_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    _mm512_mask_storeu_ps(y + i, m, bf16_to_f32(_mm256_maskz_loadu_epi16(m, x + i)));
  }
}

// VCVTPS2PH rounds to nearest even (imm), overflows to inf and keeps NaN payloads
// (quieted, top 10 bits), which is what f32_to_f16 does.
void convert_f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i),
                                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

// VCVTPH2PS quiets signalling NaNs; f16_to_f32 keeps the payload bit for bit, so NaN
// lanes are rebuilt with integer operations.
void convert_f16_to_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, x + i);
    const __m512i z = _mm512_cvtepu16_epi32(h);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(z, _mm512_set1_epi32(0x7fff)),
                                                  _mm512_set1_epi32(0x7c00));
    const __m512i bits = _mm512_or_si512(
        _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(z, _mm512_set1_epi32(0x8000)), 16),
                        _mm512_set1_epi32(0x7f800000)),
        _mm512_slli_epi32(_mm512_and_si512(z, _mm512_set1_epi32(0x3ff)), 13));
    const __m512 v = _mm512_mask_mov_ps(_mm512_cvtph_ps(h), nan, _mm512_castsi512_ps(bits));
    _mm512_mask_storeu_ps(y + i, m, v);
  }
}

void convert_e4m3_to_f32(const uint8_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    _mm512_mask_storeu_ps(y + i, m, e4m3_to_f32(_mm_maskz_loadu_epi8(m, x + i)));
  }
}

// Every E4M3 value is exact in BF16, so the F32 bits' top half is the BF16 value.
void convert_e4m3_to_bf16(const uint8_t* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    const __m512i v = _mm512_castps_si512(e4m3_to_f32(_mm_maskz_loadu_epi8(m, x + i)));
    _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
  }
}

void convert_f32_to_e4m3(const float* x, uint8_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    _mm_mask_storeu_epi8(y + i, m, f32_to_e4m3(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

}  // namespace dsv3::avx512
