// AVX-512 FP8 quantisers (kernels/quant.h), bit-identical to quant_ref.cpp: the same
// amax (max is exact in any order; NaN elements are skipped as std::fmax skips them),
// the same scalar scale = amax / 448 floored at FLT_MIN, and q = e4m3(x / scale) with a
// true IEEE division (not a reciprocal multiply, which rounds differently).
#include <immintrin.h>
// GCC 12's own intrinsic headers build "undefined" vectors from uninitialised locals.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cfloat>
#include <cstdint>

#include "core/parallel.h"
#include "kernels/fp8_avx512.h"
#include "kernels/quant_impl.h"

namespace dsv3::avx512 {

namespace {

using namespace avx512_detail;

constexpr int64_t kB = 128;  // kFp8Block
constexpr float kMax = 448.f;

int64_t blocks(int64_t n) { return (n + kB - 1) / kB; }
int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

float scale_for(float amax) {
  const float s = amax / kMax;
  return s >= FLT_MIN ? s : FLT_MIN;
}

__m512 abs_ps(__m512 v) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
}

// Largest |x| over rows [0, rows) x cols [0, cols) of x (row stride ld), NaN skipped.
float tile_amax(const void* x, bool bf16, int64_t ld, int64_t rows, int64_t cols) {
  __m512 m = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; c += 16)
      m = _mm512_max_ps(abs_ps(load16(x, bf16, r * ld + c, cols - c)), m);  // NaN -> keeps m
  return _mm512_reduce_max_ps(m);
}

// q[r*ldq + c] = e4m3(x[r*ld + c] / s) over the tile.
void tile_quantize(const void* x, bool bf16, int64_t ld, int64_t rows, int64_t cols, float s,
                   uint8_t* q, int64_t ldq) {
  const __m512 sv = _mm512_set1_ps(s);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; c += 16)
      _mm_mask_storeu_epi8(q + r * ldq + c, first_lanes(cols - c),
                           f32_to_e4m3(_mm512_div_ps(load16(x, bf16, r * ld + c, cols - c), sv)));
}

const void* offset(const void* x, bool bf16, int64_t i) {
  return static_cast<const char*>(x) + i * (bf16 ? 2 : 4);
}

// Byte-permute indices (vpermi2b) of a 16x16 byte transpose in two steps. A block is 16
// rows of 16 codes, in 4 zmm of 4 rows each (byte r*16 + j of rows 0-7 in the first
// pair, rows 8-15 in the second). Step 1 (one pair, 128 source bytes): lo8 gathers
// columns 0-7 as byte j*8 + r, hi8 columns 8-15. Step 2 (a step-1 result of rows 0-7
// with the one of rows 8-15): cols03 makes columns 0-3 of the pair's 8 as byte jj*16 + r,
// r = 0..15, cols47 columns 4-7.
struct TransposeIdx {
  uint8_t lo8[64], hi8[64], cols03[64], cols47[64];
  constexpr TransposeIdx() : lo8(), hi8(), cols03(), cols47() {
    for (int p = 0; p < 64; ++p) {
      const int j = p / 8, r = p % 8;
      lo8[p] = uint8_t(r * 16 + j);
      hi8[p] = uint8_t(r * 16 + j + 8);
      const int jj = p / 16, rr = p % 16;
      cols03[p] = uint8_t(rr < 8 ? jj * 8 + rr : 64 + jj * 8 + rr - 8);
      cols47[p] = uint8_t(rr < 8 ? (jj + 4) * 8 + rr : 64 + (jj + 4) * 8 + rr - 8);
    }
  }
};
constexpr TransposeIdx kTr;

// Column jj (0..3) of a transposed 4-column register: 16 codes, one per row.
template <int jj>
void store_col(uint8_t* out, __mmask16 rows, __m512i v) {
  _mm_mask_storeu_epi8(out, rows, _mm512_extracti32x4_epi32(v, jj));
}

// stage [128][16] codes (rows x columns of one tile) -> q[(k0 + j)*ldq + r0 + r] for
// r < rows, j < cols: 16 rows at a time by two rounds of vpermi2b, then 16-byte stores.
void store_transposed(const uint8_t (*stage)[16], int64_t rows, int64_t cols, uint8_t* q,
                      int64_t ldq) {
  const __m512i lo8 = _mm512_loadu_si512(kTr.lo8), hi8 = _mm512_loadu_si512(kTr.hi8);
  const __m512i c03 = _mm512_loadu_si512(kTr.cols03), c47 = _mm512_loadu_si512(kTr.cols47);
  for (int64_t r = 0; r < rows; r += 16) {
    const __m512i z0 = _mm512_load_si512(stage[r]), z1 = _mm512_load_si512(stage[r + 4]);
    const __m512i z2 = _mm512_load_si512(stage[r + 8]), z3 = _mm512_load_si512(stage[r + 12]);
    const __m512i a = _mm512_permutex2var_epi8(z0, lo8, z1), b = _mm512_permutex2var_epi8(z0, hi8, z1);
    const __m512i c = _mm512_permutex2var_epi8(z2, lo8, z3), d = _mm512_permutex2var_epi8(z2, hi8, z3);
    const __m512i t[4] = {_mm512_permutex2var_epi8(a, c03, c), _mm512_permutex2var_epi8(a, c47, c),
                          _mm512_permutex2var_epi8(b, c03, d), _mm512_permutex2var_epi8(b, c47, d)};
    const __mmask16 m = first_lanes(rows - r);
    for (int g = 0; g < 4 && 4 * g < cols; ++g) {
      uint8_t* out = q + 4 * g * ldq + r;
      // Columns 4g..4g+3; those past cols belong to the next tile's rows of q (or beyond it).
      store_col<0>(out, m, t[g]);
      if (4 * g + 1 < cols) store_col<1>(out + ldq, m, t[g]);
      if (4 * g + 2 < cols) store_col<2>(out + 2 * ldq, m, t[g]);
      if (4 * g + 3 < cols) store_col<3>(out + 3 * ldq, m, t[g]);
    }
  }
}

}  // namespace

void quantize_fp8_1x128(const void* x, bool bf16, int64_t M, int64_t K, int64_t ldx,
                        uint8_t* q, int64_t ldq, float* scale, int threads) {
  const int64_t kb = blocks(K);
  parallel_for(M, threads, [&](int64_t m) {
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t c0 = b * kB, cols = min64(kB, K - c0);
      const void* t = offset(x, bf16, m * ldx + c0);
      const float s = scale_for(tile_amax(t, bf16, ldx, 1, cols));
      scale[m * kb + b] = s;
      tile_quantize(t, bf16, ldx, 1, cols, s, q + m * ldq + c0, ldq);
    }
  });
}

void quantize_fp8_128x128(const void* w, bool bf16, int64_t N, int64_t K, int64_t ldw,
                          uint8_t* q, int64_t ldq, float* scale, int threads) {
  const int64_t nb = blocks(N), kb = blocks(K);
  parallel_for_dynamic(nb * kb, threads, [&](int64_t i) {
    const int64_t r0 = i / kb * kB, c0 = i % kb * kB;
    const int64_t rows = min64(kB, N - r0), cols = min64(kB, K - c0);
    const void* t = offset(w, bf16, r0 * ldw + c0);
    const float s = scale_for(tile_amax(t, bf16, ldw, rows, cols));
    scale[i] = s;
    tile_quantize(t, bf16, ldw, rows, cols, s, q + r0 * ldq + c0, ldq);
  });
}

// Tiles of 128 rows x 16 columns: 16 column-wise amaxes/scales at once, codes staged in a
// [128][16] buffer and written transposed (q[k, m]) so each output row is contiguous; the
// transpose is a vpermi2b byte shuffle (store_transposed), 16 rows at a time.
void quantize_fp8_128x1_t(const void* x, bool bf16, int64_t M, int64_t K, int64_t ldx,
                          uint8_t* q, int64_t ldq, float* scale, int threads) {
  const int64_t mb = blocks(M), kc = (K + 15) / 16;
  parallel_for_dynamic(mb * kc, threads, [&](int64_t i) {
    const int64_t r0 = i / kc * kB, k0 = i % kc * 16;
    const int64_t rows = min64(kB, M - r0), cols = min64(16, K - k0);
    const void* t = offset(x, bf16, r0 * ldx + k0);
    __m512 amax = _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) amax = _mm512_max_ps(abs_ps(load16(t, bf16, r * ldx, cols)), amax);
    __m512 s = _mm512_div_ps(amax, _mm512_set1_ps(kMax));
    // s >= FLT_MIN ? s : FLT_MIN, as scale_for (s is never NaN: amax skips NaN).
    s = _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(s, _mm512_set1_ps(FLT_MIN), _CMP_LT_OQ),
                           _mm512_set1_ps(FLT_MIN));
    alignas(64) float sv[16];
    _mm512_store_ps(sv, s);
    for (int64_t j = 0; j < cols; ++j) scale[(k0 + j) * mb + r0 / kB] = sv[j];
    // Rows past `rows` (up to the next multiple of 16) are zero: the transpose reads them,
    // the stores drop them.
    alignas(64) uint8_t stage[kB][16];
    int64_t r = 0;
    for (; r < rows; ++r)
      _mm_store_si128(reinterpret_cast<__m128i*>(stage[r]),
                      f32_to_e4m3(_mm512_div_ps(load16(t, bf16, r * ldx, cols), s)));
    for (; r % 16; ++r) _mm_store_si128(reinterpret_cast<__m128i*>(stage[r]), _mm_setzero_si128());
    store_transposed(stage, rows, cols, q + k0 * ldq + r0, ldq);
  });
}

void dequantize_fp8_1x128(const uint8_t* q, int64_t M, int64_t K, int64_t ldq,
                          const float* scale, void* out, bool bf16, int64_t ldo, int threads) {
  const int64_t kb = blocks(K);
  parallel_for(M, threads, [&](int64_t m) {
    for (int64_t c = 0; c < K; c += 16) {
      const __m512 v = e4m3_to_f32(_mm_maskz_loadu_epi8(first_lanes(K - c), q + m * ldq + c));
      store16(out, bf16, m * ldo + c, K - c, _mm512_mul_ps(v, _mm512_set1_ps(scale[m * kb + c / kB])));
    }
  });
}

void dequantize_fp8_128x128(const uint8_t* q, int64_t N, int64_t K, int64_t ldq,
                            const float* scale, void* out, bool bf16, int64_t ldo, int threads) {
  const int64_t kb = blocks(K);
  parallel_for(N, threads, [&](int64_t n) {
    for (int64_t c = 0; c < K; c += 16) {
      const __m512 v = e4m3_to_f32(_mm_maskz_loadu_epi8(first_lanes(K - c), q + n * ldq + c));
      store16(out, bf16, n * ldo + c, K - c,
              _mm512_mul_ps(v, _mm512_set1_ps(scale[(n / kB) * kb + c / kB])));
    }
  });
}

}  // namespace dsv3::avx512
