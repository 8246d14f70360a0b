// AVX-512 GEMV (kernels/gemv.h). Every weight byte is loaded once and converted in
// registers; x is re-laid once per call (BF16) or once per 128-row block of W (FP8, where
// the block scale is folded into x so the inner loop has no per-block work).
//
// Tiles: R rows of W by M rows of x with 2 accumulators each, R·M·2 ≤ 8 chains in flight
// (FMA / VDPBF16PS latency 4-6 cycles, one 512-bit op per cycle on Zen 4); the FP8 LUT
// and BF16 paths at M = 1 take 8 rows with one accumulator each (measured +7-9% over 4
// rows: x is re-read half as often).
// Memory (measured with CPU-time A/B runs on the shared 2-core box, see the report):
// several rows at a time over all of K beat one row at a time (x, 4 bytes per column,
// then streams from L2 at up to 4x the weight bytes) and beat K panels sized for L1 (each
// panel jump restarts the hardware prefetchers). A software prefetch into L2 (T1) ahead on
// each row lifted single-thread FP8 from ≈0.65 to ≈0.85 of the streaming-read bandwidth
// on long rows (T0 at 0.5-2 KiB: no gain; T1 at 2-8 KiB: 0.8-0.88). The distance is
// max(one tile of rows, 8 KiB for BF16 / 16 KiB for FP8): on the model's short rows
// (K = 512: 1 KiB BF16) a fixed 4 KiB landed inside the tile being read — rows the tile
// already streams — and single-thread BF16 2048x512 ran at 0.48 of membw, 0.80-0.90
// with the tile-sized distance (4096x512 FP8: 0.69 -> 0.83-0.92).
//
// FP8 has two in-register conversions (Fp8Path, measured by `dsv3 bench gemv`; the LUT
// one also in a variant without the low half of x, BF16LutX8):
//   F16:     sign-extend the byte to 16 bits, shift left 7 and clear bit 14: that is the
//            F16 bit pattern of e4m3·2^-8 (exact, subnormals included); VCVTPH2PS then FMA
//            with x·s·2^8 in F32. That decodes NaN codes as finite numbers, so a compare
//            flags them and makes the row's outputs NaN.
//   BF16LUT: two VPERMI2B lookups over 128-entry tables give the high and low byte of the
//            BF16 value of each code (exact, NaN included), one VPTERNLOG puts the sign
//            back, VPUNPCK[LH]BW forms the words and VDPBF16PS multiplies them with x·s
//            split into BF16 hi + lo parts (≈16 significant bits, see gemv.h).
#include <immintrin.h>
// GCC 12's own intrinsic headers build "undefined" vectors from uninitialised locals.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cstddef>
#include <cstdint>
#include <cstring>

#include <omp.h>

#include "kernels/gemv_impl.h"

namespace dsv3::avx512 {

namespace {

constexpr int64_t kBlock = 128;  // FP8 scale block (kernels/quant.h kFp8Block)
// Software prefetch (into L2) distance along each row of W (see the notes at the top).
constexpr int64_t kPrefetchMinBF16 = 8192, kPrefetchMinFP8 = 16384;
// Distance, in bytes along each row, of the software prefetch for a tile of `rows` rows
// `row_bytes` apart: the same place in the next tile at least (see the notes at the top).
int64_t prefetch_bytes(int64_t rows, int64_t row_bytes, int64_t min_bytes) {
  return rows * row_bytes > min_bytes ? rows * row_bytes : min_bytes;
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Masks for the first n lanes (n may be ≤ 0 or beyond the vector).
__mmask64 tail_mask64(int64_t n) {
  return n <= 0 ? __mmask64(0) : n >= 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
}
__mmask16 tail_mask16(int64_t n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
}

void store_y(float* y, float v, bool accumulate) { *y = accumulate ? *y + v : v; }

// Rows are handed out in chunks, dynamically: threads that get descheduled (other work on
// the same cores) do not hold up the rest. A chunk is a power of two ≤ max_rows (so an FP8
// chunk never straddles a 128-row scale block) and there are at least 4 per thread.
int64_t chunk_rows(int64_t N, int threads, int64_t max_rows) {
  int64_t c = max_rows;
  while (c > 4 && N < 4 * threads * c) c /= 2;
  return c;
}

// ---- BF16 -------------------------------------------------------------------------------
// x is stored per 32-column chunk as [x_even(16), x_odd(16)], matching the two halves a
// BF16 word pair splits into with one shift and one mask.
void prep_x_bf16(const float* x, int64_t K, float* xp) {
  const __m512i even_idx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd_idx = _mm512_add_epi32(even_idx, _mm512_set1_epi32(1));
  for (int64_t k = 0; k < K; k += 32) {
    const __m512 a = _mm512_maskz_loadu_ps(tail_mask16(K - k), x + k);
    const __m512 b = _mm512_maskz_loadu_ps(tail_mask16(K - k - 16), x + k + 16);
    _mm512_store_ps(xp + k, _mm512_permutex2var_ps(a, even_idx, b));
    _mm512_store_ps(xp + k + 16, _mm512_permutex2var_ps(a, odd_idx, b));
  }
}

// Accumulators are named variables, not arrays: GCC 12 keeps arrays of more than two
// vectors in memory and stores them every iteration.
// F16 path tiles: four (row of W, row of x) pairs at most, R rows by one row of x or one
// row by M rows of x, two accumulators each.
#define DSV3_INLINE __attribute__((always_inline))
#define DSV3_PAIRS(PAIR)                                                   \
  PAIR(0, 0, 0, a0, b0)                                                    \
  if constexpr (R * M > 1) PAIR(1, R > 1 ? 1 : 0, M > 1 ? 1 : 0, a1, b1) \
  if constexpr (R * M > 2) PAIR(2, R > 1 ? 2 : 0, M > 1 ? 2 : 0, a2, b2) \
  if constexpr (R * M > 3) PAIR(3, R > 1 ? 3 : 0, M > 1 ? 3 : 0, a3, b3)

// Tiles of R rows of W x M rows of x, one accumulator per (row, x row) pair, R·M ≤ 16:
// (8,1), (4,2), (4,3), (4,4) for BF16 ((2,3), (2,4) for FP8), and (1,M) for leftover rows.
// More rows per pass means x (4 bytes per column per x row) is re-read less often per
// weight byte; measured: 8 rows at M = 1 +7-9% over 4; M = 2 at 4 rows 0.26 -> 0.7 of
// membw (FP8) vs one row per pass; BF16 M = 3-4 at 4 rows 0.60-0.75 -> 0.81-0.91 (one
// thread, 2048x512 and 4096x512) vs 2 rows.
// At M = 3-4 the FP8 path is compute-bound (4 VDPBF16PS per x row per 64 codes).
// TILE_ROW(r, A0..A3): converts row r, then feeds x rows 0..M-1 into A0..A(M-1).
#define DSV3_TILE_ROWS(TILE_ROW)                                      \
  if constexpr (M == 1) {                                             \
    TILE_ROW(0, a0, z, z, z) if constexpr (R > 1) TILE_ROW(1, a1, z, z, z) \
    if constexpr (R > 2) { TILE_ROW(2, a2, z, z, z) TILE_ROW(3, a3, z, z, z) } \
    if constexpr (R > 4) { TILE_ROW(4, a4, z, z, z) TILE_ROW(5, a5, z, z, z) \
                           TILE_ROW(6, a6, z, z, z) TILE_ROW(7, a7, z, z, z) } \
  } else if constexpr (M == 2) {                                      \
    TILE_ROW(0, a0, a1, z, z) if constexpr (R > 1) TILE_ROW(1, a2, a3, z, z) \
    if constexpr (R > 2) { TILE_ROW(2, a4, a5, z, z) TILE_ROW(3, a6, a7, z, z) } \
  } else {                                                            \
    TILE_ROW(0, a0, a1, a2, a3) if constexpr (R > 1) TILE_ROW(1, a4, a5, a6, a7) \
    if constexpr (R > 2) { TILE_ROW(2, a8, a9, a10, a11) TILE_ROW(3, a12, a13, a14, a15) } \
  }
#define DSV3_TILE_STORE(r, A0, A1, A2, A3)                                                 \
  {                                                                                        \
    store_y(y + (r), _mm512_reduce_add_ps(A0), accumulate);                                \
    if constexpr (M > 1) store_y(y + ldy + (r), _mm512_reduce_add_ps(A1), accumulate);     \
    if constexpr (M > 2) store_y(y + 2 * ldy + (r), _mm512_reduce_add_ps(A2), accumulate); \
    if constexpr (M > 3) store_y(y + 3 * ldy + (r), _mm512_reduce_add_ps(A3), accumulate); \
  }

template <int R, int M>
void tile_bf16(const uint16_t* w, int64_t ldw, int64_t K, const float* xp, int64_t xstride,
               float* y, int64_t ldy, bool accumulate, int64_t pf) {
  static_assert(R * M <= 16, "GEMV tile too large");
  const __m512i hi_mask = _mm512_set1_epi32(int(0xffff0000u));
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  __m512 a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
  __m512 z = a0;  // unused slots
  auto step = [&](int64_t k, __mmask32 mask) DSV3_INLINE {
#define TILE_ROW(r, A0, A1, A2, A3)                                                                 \
    {                                                                                               \
      _mm_prefetch(reinterpret_cast<const char*>(w + (r) * ldw + k) + pf, _MM_HINT_T1);             \
      const __m512i v = _mm512_maskz_loadu_epi16(mask, w + (r) * ldw + k);                          \
      const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));                              \
      const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));                          \
      A0 = _mm512_fmadd_ps(wo, _mm512_load_ps(xp + k + 16), _mm512_fmadd_ps(we, _mm512_load_ps(xp + k), A0)); \
      if constexpr (M > 1) A1 = _mm512_fmadd_ps(wo, _mm512_load_ps(xp + xstride + k + 16), _mm512_fmadd_ps(we, _mm512_load_ps(xp + xstride + k), A1)); \
      if constexpr (M > 2) A2 = _mm512_fmadd_ps(wo, _mm512_load_ps(xp + 2 * xstride + k + 16), _mm512_fmadd_ps(we, _mm512_load_ps(xp + 2 * xstride + k), A2)); \
      if constexpr (M > 3) A3 = _mm512_fmadd_ps(wo, _mm512_load_ps(xp + 3 * xstride + k + 16), _mm512_fmadd_ps(we, _mm512_load_ps(xp + 3 * xstride + k), A3)); \
    }
    DSV3_TILE_ROWS(TILE_ROW)
#undef TILE_ROW
  };
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) step(k, ~__mmask32(0));
  if (k < K) step(k, (__mmask32(1) << (K - k)) - 1);
  (void)z;
  DSV3_TILE_ROWS(DSV3_TILE_STORE)
}

template <int R, int M>
void range_bf16(const GemvBF16& p, int64_t n0, int64_t n1, const float* xp, int64_t xs) {
  const int64_t pf = prefetch_bytes(R, p.ldw * 2, kPrefetchMinBF16);
  int64_t n = n0;
  for (; n + R <= n1; n += R) tile_bf16<R, M>(p.w + n * p.ldw, p.ldw, p.K, xp, xs, p.y + n, p.ldy, p.accumulate, pf);
  for (; n < n1; ++n) tile_bf16<1, M>(p.w + n * p.ldw, p.ldw, p.K, xp, xs, p.y + n, p.ldy, p.accumulate, pf);
}

// ---- FP8 via F16 ------------------------------------------------------------------------
// Four F32 vectors of e4m3·2^-8 from 64 codes, in memory order.
inline void fp8x64_to_f32(__m512i b, __m512 f[4]) {
  const __m512i keep = _mm512_set1_epi16(int16_t(0xbfff));
  const __m512i lo = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(_mm512_castsi512_si256(b)), 7), keep);
  const __m512i hi = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(b, 1)), 7), keep);
  f[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(lo));
  f[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(lo, 1));
  f[2] = _mm512_cvtph_ps(_mm512_castsi512_si256(hi));
  f[3] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(hi, 1));
}

// xs[k] = x[k] · s[k/128] · 2^8 for one 128-row block of W (the 2^8 undoes the F16 bias).
void prep_x_f16(const float* x, int64_t K, const float* s, float* xs) {
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask16(K - k), x + k);
    _mm512_store_ps(xs + k, _mm512_mul_ps(v, _mm512_set1_ps(s[k / kBlock] * 256.f)));
  }
}

template <int R, int M>
void rows_fp8_f16(const uint8_t* w, int64_t ldw, int64_t K, const float* xs, int64_t xstride,
                  float* y, int64_t ldy, bool accumulate, int64_t pf) {
  static_assert((R == 1 || M == 1) && R * M <= 4, "GEMV tiles: R rows x 1, or 1 row x M");
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  const __m512i c7f = _mm512_set1_epi8(0x7f);
  __mmask64 nan_codes[4] = {0, 0, 0, 0};  // per row: lanes that held a NaN code
  auto step = [&](int64_t k, __mmask64 mask) DSV3_INLINE {
    __m512 f[4][4];
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * ldw + k) + pf, _MM_HINT_T1);
      const __m512i c = _mm512_maskz_loadu_epi8(mask, w + r * ldw + k);
      nan_codes[r] |= _mm512_cmpeq_epi8_mask(_mm512_and_si512(c, c7f), c7f);
      fp8x64_to_f32(c, f[r]);
    }
#define PAIR(j, r, m, a, b)                                                  \
    {                                                                        \
      const float* xm = xs + (m) * xstride + k;                              \
      a = _mm512_fmadd_ps(f[r][0], _mm512_load_ps(xm), a);                   \
      b = _mm512_fmadd_ps(f[r][1], _mm512_load_ps(xm + 16), b);              \
      a = _mm512_fmadd_ps(f[r][2], _mm512_load_ps(xm + 32), a);              \
      b = _mm512_fmadd_ps(f[r][3], _mm512_load_ps(xm + 48), b);              \
    }
    DSV3_PAIRS(PAIR)
#undef PAIR
  };
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) step(k, ~__mmask64(0));
  if (k < K) step(k, tail_mask64(K - k));
#define PAIR(j, r, m, a, b)                                                               \
  store_y(y + (m) * ldy + (r),                                                            \
          _mm512_reduce_add_ps(_mm512_add_ps(a, b)) + (nan_codes[r] ? __builtin_nanf("") : 0.f), \
          accumulate);
  DSV3_PAIRS(PAIR)
#undef PAIR
}

// ---- FP8 via BF16 LUT -------------------------------------------------------------------
// The high and low byte of the BF16 value of each E4M3 magnitude code 0..127.
struct Fp8Lut {
  __m512i hi0, hi1, lo0, lo1;
};

Fp8Lut make_lut() {
  alignas(64) uint8_t hi[128], lo[128];
  for (int c = 0; c < 128; ++c) {
    uint32_t bits;
    if (c == 0x7f) {
      bits = 0x7fc00000u;  // NaN
    } else {
      const int e = c >> 3, m = c & 7;
      // e4m3: e == 0 is subnormal m·2^-9, else (8+m)·2^(e-10); both exact in F32/BF16.
      float v = e == 0 ? float(m) : float(8 + m);
      for (int ex = e == 0 ? -9 : e - 10; ex != 0; ex += ex < 0 ? 1 : -1) v = ex < 0 ? v * 0.5f : v * 2.f;
      std::memcpy(&bits, &v, 4);
    }
    hi[c] = uint8_t(bits >> 24);
    lo[c] = uint8_t(bits >> 16);
  }
  return {_mm512_load_si512(hi), _mm512_load_si512(hi + 64), _mm512_load_si512(lo),
          _mm512_load_si512(lo + 64)};
}

// xs = x·s per 64-column chunk as 4x32 BF16 words [A_hi, B_hi, A_lo, B_lo]: A holds the
// columns that VPUNPCKLBW puts in the low words of each 128-bit lane (0-7, 16-23, 32-39,
// 48-55), B the others; lo = bf16(xs - hi) carries the next 8 bits.
void prep_x_lut(const float* x, int64_t K, const float* s, uint16_t* xs) {
  for (int64_t k = 0; k < K; k += 64) {
    __m256i h[4], l[4];
    for (int j = 0; j < 4; ++j) {
      const int64_t kk = k + 16 * j;
      const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask16(K - kk), x + kk),
                                     _mm512_set1_ps(s[kk / kBlock]));
      h[j] = (__m256i)_mm512_cvtneps_pbh(v);
      const __m512 back = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h[j]), 16));
      l[j] = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(v, back));
    }
    const __m512i H0 = _mm512_inserti64x4(_mm512_castsi256_si512(h[0]), h[1], 1);
    const __m512i H1 = _mm512_inserti64x4(_mm512_castsi256_si512(h[2]), h[3], 1);
    const __m512i L0 = _mm512_inserti64x4(_mm512_castsi256_si512(l[0]), l[1], 1);
    const __m512i L1 = _mm512_inserti64x4(_mm512_castsi256_si512(l[2]), l[3], 1);
    uint16_t* o = xs + 2 * k;  // 128 words per 64 columns
    _mm512_store_si512(o, _mm512_shuffle_i64x2(H0, H1, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_store_si512(o + 32, _mm512_shuffle_i64x2(H0, H1, _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_store_si512(o + 64, _mm512_shuffle_i64x2(L0, L1, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_store_si512(o + 96, _mm512_shuffle_i64x2(L0, L1, _MM_SHUFFLE(3, 1, 3, 1)));
  }
}

// FP8 LUT tiles, as tile_bf16. kLo: also multiply by the low BF16 part of x·s
// (Fp8Path::BF16Lut, ≈16-bit x); without it x·s is used rounded to BF16 (BF16LutX8).
template <int R, int M, bool kLo>
void tile_fp8_lut(const Fp8Lut& t, const uint8_t* w, int64_t ldw, int64_t K, const uint16_t* xs,
                  int64_t xstride, float* y, int64_t ldy, bool accumulate, int64_t pf) {
  static_assert(R * M <= 16, "GEMV tile too large");
  const __m512i sign = _mm512_set1_epi8(int8_t(0x80));
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  __m512 a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;  // R = 4, M ≥ 3 only
  __m512 z = a0;  // unused slots
  auto step = [&](int64_t k, __mmask64 mask) DSV3_INLINE {
#define DSV3_LUT_DOT(A, j)                                                                  \
    {                                                                                       \
      const uint16_t* xm = xs + (j) * xstride + 2 * k;                                      \
      A = _mm512_dpbf16_ps(A, wa, (__m512bh)_mm512_load_si512(xm));                         \
      A = _mm512_dpbf16_ps(A, wb, (__m512bh)_mm512_load_si512(xm + 32));                    \
      if (kLo) {                                                                            \
        A = _mm512_dpbf16_ps(A, wa, (__m512bh)_mm512_load_si512(xm + 64));                 \
        A = _mm512_dpbf16_ps(A, wb, (__m512bh)_mm512_load_si512(xm + 96));                 \
      }                                                                                     \
    }
#define TILE_ROW(r, A0, A1, A2, A3)                                                                 \
    {                                                                                               \
      _mm_prefetch(reinterpret_cast<const char*>(w + (r) * ldw + k) + pf, _MM_HINT_T1);             \
      const __m512i c = _mm512_maskz_loadu_epi8(mask, w + (r) * ldw + k);                            \
      const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t.hi0, c, t.hi1), c, sign, 0xF8); \
      const __m512i lo = _mm512_permutex2var_epi8(t.lo0, c, t.lo1);                                  \
      const __m512bh wa = (__m512bh)_mm512_unpacklo_epi8(lo, hi);                                    \
      const __m512bh wb = (__m512bh)_mm512_unpackhi_epi8(lo, hi);                                    \
      DSV3_LUT_DOT(A0, 0)                                                                           \
      if constexpr (M > 1) DSV3_LUT_DOT(A1, 1)                                                      \
      if constexpr (M > 2) DSV3_LUT_DOT(A2, 2)                                                      \
      if constexpr (M > 3) DSV3_LUT_DOT(A3, 3)                                                      \
    }
    DSV3_TILE_ROWS(TILE_ROW)
#undef TILE_ROW
#undef DSV3_LUT_DOT
  };
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) step(k, ~__mmask64(0));
  if (k < K) step(k, tail_mask64(K - k));
  (void)z;
  DSV3_TILE_ROWS(DSV3_TILE_STORE)
}

// Rows [n0, n1) of W against M rows of x: x is re-prepared whenever the rows enter a new
// 128-row scale block, then R rows at a time go through the kernel.
// *prepared is the row block whose x·s the scratch holds (-1: none).
template <int R, int M>
void range_fp8(const GemvFP8& p, const Fp8Lut& lut, Fp8Path path, int64_t n0, int64_t n1,
               void* scratch, int64_t xstride, int64_t* prepared) {
  const int64_t kb = (p.K + kBlock - 1) / kBlock;
  float* xf = static_cast<float*>(scratch);
  uint16_t* xh = static_cast<uint16_t*>(scratch);
  for (int64_t b0 = n0; b0 < n1;) {
    const int64_t blk = b0 / kBlock, b1 = (blk + 1) * kBlock < n1 ? (blk + 1) * kBlock : n1;
    const float* s = p.w_scale + blk * kb;
    for (int m = 0; m < M && *prepared != blk; ++m) {
      if (path == Fp8Path::F16) prep_x_f16(p.x + m * p.ldx, p.K, s, xf + m * xstride);
      else prep_x_lut(p.x + m * p.ldx, p.K, s, xh + m * 2 * xstride);
    }
    *prepared = blk;
    int64_t n = b0;
    const uint8_t* w = p.w;
    if (path == Fp8Path::F16) {
      const int64_t pf = prefetch_bytes(R, p.ldw, kPrefetchMinFP8);
      for (; n + R <= b1; n += R) rows_fp8_f16<R, M>(w + n * p.ldw, p.ldw, p.K, xf, xstride, p.y + n, p.ldy, p.accumulate, pf);
      for (; n < b1; ++n) rows_fp8_f16<1, M>(w + n * p.ldw, p.ldw, p.K, xf, xstride, p.y + n, p.ldy, p.accumulate, pf);
    } else {
      constexpr int T = M == 1 ? 8 : M == 2 ? 4 : 2;  // tile rows
      const int64_t pf = prefetch_bytes(T, p.ldw, kPrefetchMinFP8);
      const bool lo = path == Fp8Path::BF16Lut;
      for (; n + T <= b1; n += T)
        lo ? tile_fp8_lut<T, M, true>(lut, w + n * p.ldw, p.ldw, p.K, xh, 2 * xstride, p.y + n, p.ldy, p.accumulate, pf)
           : tile_fp8_lut<T, M, false>(lut, w + n * p.ldw, p.ldw, p.K, xh, 2 * xstride, p.y + n, p.ldy, p.accumulate, pf);
      for (; n < b1; ++n)
        lo ? tile_fp8_lut<1, M, true>(lut, w + n * p.ldw, p.ldw, p.K, xh, 2 * xstride, p.y + n, p.ldy, p.accumulate, pf)
           : tile_fp8_lut<1, M, false>(lut, w + n * p.ldw, p.ldw, p.K, xh, 2 * xstride, p.y + n, p.ldy, p.accumulate, pf);
    }
    b0 = b1;
  }
}

}  // namespace

void gemv_bf16(const GemvBF16& p, int threads, float* scratch) {
  // One x layout shared by all threads (it does not depend on the row).
  const int64_t xs = round_up(p.K, 64) + 64;
  for (int64_t m = 0; m < p.M; ++m) prep_x_bf16(p.x + m * p.ldx, p.K, scratch + m * xs);
  const int64_t chunk = chunk_rows(p.N, threads, 256), chunks = (p.N + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n0 = c * chunk, n1 = n0 + chunk < p.N ? n0 + chunk : p.N;
    switch (p.M) {
      case 1: range_bf16<8, 1>(p, n0, n1, scratch, xs); break;
      case 2: range_bf16<4, 2>(p, n0, n1, scratch, xs); break;
      case 3: range_bf16<4, 3>(p, n0, n1, scratch, xs); break;
      default: range_bf16<4, 4>(p, n0, n1, scratch, xs); break;
    }
  }
}

void gemv_fp8(const GemvFP8& p, Fp8Path path, int threads, float* scratch) {
  // Per-thread x buffers: each holds M rows of x·s for the thread's current row block.
  const int64_t xs = round_up(p.K, 64) + 64;  // floats, or 2·xs BF16 words (hi + lo)
  const int64_t per_thread = gemv_scratch_floats(p.M, p.K);
  const int64_t chunk = chunk_rows(p.N, threads, kBlock), chunks = (p.N + chunk - 1) / chunk;
  const Fp8Lut lut = make_lut();
#pragma omp parallel num_threads(threads)
  {
    void* s = scratch + omp_get_thread_num() * per_thread;
    int64_t prepared = -1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * chunk, n1 = n0 + chunk < p.N ? n0 + chunk : p.N;
      switch (p.M) {
        case 1: range_fp8<4, 1>(p, lut, path, n0, n1, s, xs, &prepared); break;
        case 2: range_fp8<1, 2>(p, lut, path, n0, n1, s, xs, &prepared); break;
        case 3: range_fp8<1, 3>(p, lut, path, n0, n1, s, xs, &prepared); break;
        default: range_fp8<1, 4>(p, lut, path, n0, n1, s, xs, &prepared); break;
      }
    }
  }
}

uint64_t stream_read(const void* p, size_t bytes, int threads) {
  // 256 KiB chunks handed out dynamically (see chunk_rows), 4 independent XOR chains.
  const char* base = static_cast<const char*>(p);
  constexpr size_t kChunk = size_t(1) << 18;
  const int64_t chunks = int64_t(bytes / kChunk);
  uint64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(^ : total)
  {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const char* q = base + size_t(c) * kChunk;
      for (size_t i = 0; i < kChunk; i += 256) {
        a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(q + i));
        a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(q + i + 64));
        a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(q + i + 128));
        a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(q + i + 192));
      }
    }
    const __m512i a = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    alignas(64) uint64_t v[8];
    _mm512_store_si512(v, a);
    for (int i = 0; i < 8; ++i) total ^= v[i];
  }
  for (size_t i = size_t(chunks) * kChunk; i < bytes; ++i) total ^= uint8_t(base[i]);
  return total;
}

}  // namespace dsv3::avx512
