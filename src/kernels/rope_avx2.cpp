// AVX2 interleaved-pair rotation (kernels/rope.h): 4 pairs per vector, the same scheme as
// rope_avx512.cpp. cos/sin of the 4 pairs are duplicated into both lanes of each pair,
// the partner of every element comes from an in-lane swap, and out = x·C + swap(x)·S with
// S = (−s, +s, ...): the operations of rope_ref.cpp, so the two are bit-identical.
// AVX2 has no explicit-rounding multiply, and GCC's C++ default -ffp-contract=fast would
// fuse mul+add of plain intrinsics into an FMA (this file is compiled with -mfma, the
// reference without); an empty asm on each product hides it from the fuser.
#include <immintrin.h>

#include <cstdint>

#include "kernels/rope.h"
#include "kernels/simd_avx2.h"

namespace dsv3 {

namespace {

// The product as rounded by a plain multiply, never contracted into a following add.
inline __m256 mul_rounded(__m256 a, __m256 b) {
  __m256 p = _mm256_mul_ps(a, b);
  __asm__("" : "+x"(p));
  return p;
}

// Up to 4 floats (the first n) duplicated pairwise: (v0, v0, v1, v1, v2, v2, v3, v3).
inline __m256 load4_dup(const float* p, int64_t n) {
  const __m128i m = _mm_cmpgt_epi32(_mm_set1_epi32(int(n < 4 ? n : 4)), _mm_setr_epi32(0, 1, 2, 3));
  const __m128 v = n >= 4 ? _mm_loadu_ps(p) : _mm_maskload_ps(p, m);
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
}

}  // namespace

void rope_rows_avx2(float* out, int64_t out_st, int64_t out_sh, const float* x, int64_t x_st,
                    int64_t x_sh, const int32_t* pos, int64_t T, int64_t H, const float* cos,
                    const float* sin, int64_t dim, bool inverse) {
  const int64_t half = dim / 2;
  // Sign flip on even lanes (forward: −s for the even output) or odd lanes (inverse).
  const __m256 neg = _mm256_set1_ps(-0.f), zero = _mm256_setzero_ps();
  const __m256 flip = inverse ? _mm256_unpacklo_ps(zero, neg) : _mm256_unpacklo_ps(neg, zero);
  // Per token, the duplicated cos/sin vectors of up to kBlocks groups of 4 pairs are built
  // once and reused by every head (DeepSeek-V3's 64-wide rope slice is 8 groups).
  constexpr int64_t kBlocks = 16;
  __m256 vc[kBlocks], vs[kBlocks];
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + int64_t(pos[t]) * half;
    const float* s = sin + int64_t(pos[t]) * half;
    for (int64_t i0 = 0; i0 < half; i0 += 4 * kBlocks) {
      const int64_t i1 = half - i0 < 4 * kBlocks ? half : i0 + 4 * kBlocks;
      for (int64_t i = i0; i < i1; i += 4) {
        const int64_t j = (i - i0) / 4;
        vc[j] = load4_dup(c + i, i1 - i);
        vs[j] = _mm256_xor_ps(load4_dup(s + i, i1 - i), flip);
      }
      for (int64_t h = 0; h < H; ++h) {
        const float* xr = x + t * x_st + h * x_sh;
        float* o = out + t * out_st + h * out_sh;
        for (int64_t i = i0; i < i1; i += 4) {
          const int64_t j = (i - i0) / 4, n = 2 * (i1 - i);
          const __m256 v = load8(xr + 2 * i, n);
          const __m256 sw = _mm256_permute_ps(v, 0xB1);  // (x1, x0, x3, x2, ...)
          store8(o + 2 * i, n, _mm256_add_ps(mul_rounded(v, vc[j]), mul_rounded(sw, vs[j])));
        }
      }
    }
  }
}

}  // namespace dsv3
