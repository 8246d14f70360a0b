// AVX-512 interleaved-pair rotation (kernels/rope.h): 8 pairs per vector. cos/sin of the 8
// pairs are duplicated into both lanes of each pair, the partner of every element comes
// from an in-lane swap, and out = x·C + swap(x)·S with S = (−s, +s, ...). Same operations
// as rope_ref.cpp and no FMA, so the two are bit-identical. GCC's C++ default
// -ffp-contract=fast would fuse mul+add of plain intrinsics into an FMA; the products use
// the explicit-rounding form (same instruction, round-to-nearest), which it never fuses.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as
// "may be used uninitialized" (a false positive); silence it for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>

#include "kernels/rope.h"
#include "kernels/simd_avx512.h"

namespace dsv3 {

namespace {
constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
}  // namespace

void rope_rows_avx512(float* out, int64_t out_st, int64_t out_sh, const float* x, int64_t x_st,
                      int64_t x_sh, const int32_t* pos, int64_t T, int64_t H, const float* cos,
                      const float* sin, int64_t dim, bool inverse) {
  const int64_t half = dim / 2;
  const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  // Sign flip on even lanes (forward: −s for the even output) or odd lanes (inverse).
  const __m512i even = _mm512_setr_epi32(
      int(0x80000000u), 0, int(0x80000000u), 0, int(0x80000000u), 0, int(0x80000000u), 0,
      int(0x80000000u), 0, int(0x80000000u), 0, int(0x80000000u), 0, int(0x80000000u), 0);
  const __m512i flip = inverse ? _mm512_slli_epi64(even, 32) : even;
  // Per token, the duplicated cos/sin vectors of up to kBlocks groups of 8 pairs are built
  // once and reused by every head; the heads are then walked contiguously.
  constexpr int64_t kBlocks = 16;
  __m512 vc[kBlocks], vs[kBlocks];
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + int64_t(pos[t]) * half;
    const float* s = sin + int64_t(pos[t]) * half;
    for (int64_t i0 = 0; i0 < half; i0 += 8 * kBlocks) {
      const int64_t i1 = half - i0 < 8 * kBlocks ? half : i0 + 8 * kBlocks;
      for (int64_t i = i0; i < i1; i += 8) {
        const int64_t rem = i1 - i < 8 ? i1 - i : 8;
        const __mmask8 m8 = __mmask8((1u << rem) - 1u);
        const int64_t j = (i - i0) / 8;
        vc[j] =
            _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, c + i)));
        const __m512 sv =
            _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, s + i)));
        vs[j] = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(sv), flip));
      }
      for (int64_t h = 0; h < H; ++h) {
        const float* xr = x + t * x_st + h * x_sh;
        float* o = out + t * out_st + h * out_sh;
        for (int64_t i = i0; i < i1; i += 8) {
          const __mmask16 m16 = lanes_mask(2 * (i1 - i));
          const int64_t j = (i - i0) / 8;
          const __m512 v = load16_m(m16, xr + 2 * i);
          const __m512 sw = _mm512_permute_ps(v, 0xB1);  // (x1, x0, x3, x2, ...)
          const __m512 r = _mm512_add_ps(_mm512_mul_round_ps(v, vc[j], kRn),
                                         _mm512_mul_round_ps(sw, vs[j], kRn));
          store16(o + 2 * i, m16, r);
        }
      }
    }
  }
}

}  // namespace dsv3
