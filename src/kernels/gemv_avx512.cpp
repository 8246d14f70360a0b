// AVX-512 GEMV (kernels/gemv.h). Every weight byte is loaded once and converted in
// registers; x is re-laid once per call (BF16) or once per 128-row block of W (FP8, where
// the block scale is folded into x so the inner loop has no per-block work).
//
// Tiles (see "Tiles" below): R rows of W by a group of G ≤ 4 rows of x (more rows of x:
// further groups through each tile of W), one accumulator per (row of W, row of x) pair,
// R·G ≤ 16. Every output is computed by the same sequence of operations in every tile
// shape, which is what makes rows of y independent of M (gemv.h, row invariance): that is
// why there is one accumulator per pair at every M (an M = 1 tile with two accumulators
// per row would sum K in a different order than an M = 4 tile with one) and why K tails
// and the final reduction are the same code for every shape.
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
#include <type_traits>
#include <utility>

#include "core/cpu.h"
#include "core/parallel.h"

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

// ---- Tiles ------------------------------------------------------------------------------
// A tile is R rows of W by M rows of x (a group of at most 4 of the call's rows: tile_range),
// one accumulator per (row of W, row of x) pair, R·M ≤ 16. Each step loads and converts a
// vector's worth of columns of each of the R rows once and feeds it to the tile's M rows of
// x, so the weights are streamed from memory once whatever the call's rows (further groups
// re-read the tile's rows from L1, and FP8 converts them again);
// more pairs per tile also mean more independent chains (FMA / VDPBF16PS latency 4-6
// cycles) and, at small M, fewer re-reads of x per weight byte (8 rows at M = 1 measured
// +7-9% over 4).
//
// Row invariance (gemv.h): the accumulator of pair (n, m) sees exactly the same operations
// in every tile shape — Kern::dot on the same converted weights and the same x words, one
// step of Kern::kCols columns at a time from k = 0, the K tail as one masked step, then one
// _mm512_reduce_add_ps — so R and M (and hence the batch size, the row's position in it
// and the split of N over threads and tiles) change only which pairs share a tile, never
// the bits of a result. Keep it so: no per-M accumulator splits, no per-tile tail handling.
//
// Accumulators are named variables, not arrays: GCC 12 keeps arrays of more than two
// vectors in memory and stores them every iteration. Two orders within a step (GCC
// allocates registers in source order; x86 has no pre-RA scheduling):
//   row-major (R > 4, i.e. M = 1): convert a row, feed it to the M rows of x, next row;
//     accumulator i holds (row i / M, x row i % M). x (one row) stays in registers.
//   x-major (R ≤ 4): convert the R rows first, then for each row of x load its words
//     once and feed them to the R rows; accumulator i holds (row i % R, x row i / R).
//     Feeding each row separately reloaded x once per (row, x row) pair — 1 load per
//     VDPBF16PS/FMA — and spilled accumulators at M = 3..8.
// Both give every pair the same operations; only the interleaving between pairs differs.
#define DSV3_INLINE __attribute__((always_inline))
#define DSV3_ACCS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define DSV3_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

// Kern: the weight format. W: element type; X: element type of the prepared x; kCols:
// columns per step; xoff(k): offset of column k in a prepared row of x; V: one row's
// converted weights for one step; load(w, mask, nan): V from kCols codes at w (masked
// lanes read as zero codes); dot(a, v, x): accumulates v · x[xoff(k)...] into a;
// kNanCheck: load() collects lanes with NaN codes in *nan, which make the row's outputs NaN.
template <class Kern, int R, int M>
void tile(const Kern& kern, const typename Kern::W* w, int64_t ldw, int64_t K,
          const typename Kern::X* xs, int64_t xstride, float* y, int64_t ldy, bool accumulate,
          int64_t pf) {
  static_assert(R >= 1 && R <= 8 && M >= 1 && R * M <= 16, "GEMV tile: at most 8 rows, 16 accumulators");
  constexpr int64_t C = Kern::kCols;
  constexpr bool kRowMajor = R > 4;
  // (row of W, row of x) of accumulator i.
  constexpr auto row_of = [](int i) { return kRowMajor ? i / M : i % R; };
  constexpr auto xrow_of = [](int i) { return kRowMajor ? i % M : i / R; };
  using V = typename Kern::V;
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  __m512 a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;
  __mmask64 nan[R] = {};
  auto step = [&](int64_t k, __mmask64 mask) DSV3_INLINE {
    auto load = [&](int r) DSV3_INLINE {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * ldw + k) + pf, _MM_HINT_T1);
      return kern.load(w + r * ldw + k, mask, &nan[r]);
    };
    if constexpr (kRowMajor) {
#define DSV3_DOT(i) \
      if constexpr ((i) < R * M && row_of(i) == row) kern.dot(a##i, v, xs + xrow_of(i) * xstride + Kern::xoff(k));
#define DSV3_ROW(r)                     \
      if constexpr ((r) < R) {          \
        constexpr int row = (r);        \
        const V v = load(row);          \
        DSV3_ACCS(DSV3_DOT)             \
      }
      DSV3_ROWS(DSV3_ROW)
#undef DSV3_ROW
#undef DSV3_DOT
    } else {
      V v0, v1, v2, v3;
      v0 = load(0);
      if constexpr (R > 1) v1 = load(1);
      if constexpr (R > 2) v2 = load(2);
      if constexpr (R > 3) v3 = load(3);
#define DSV3_DOT(i)                                                                              \
      if constexpr ((i) < R * M)                                                                 \
        kern.dot(a##i, row_of(i) == 0 ? v0 : row_of(i) == 1 ? v1 : row_of(i) == 2 ? v2 : v3,    \
                 xs + xrow_of(i) * xstride + Kern::xoff(k));
      DSV3_ACCS(DSV3_DOT)
#undef DSV3_DOT
    }
  };
  int64_t k = 0;
  for (; k + C <= K; k += C) step(k, ~__mmask64(0));
  if (k < K) step(k, tail_mask64(K - k));
#define DSV3_STORE(i)                                                                       \
  if constexpr ((i) < R * M) {                                                              \
    float v = _mm512_reduce_add_ps(a##i);                                                   \
    if constexpr (Kern::kNanCheck) v += nan[row_of(i)] ? __builtin_nanf("") : 0.f;          \
    store_y(y + xrow_of(i) * ldy + row_of(i), v, accumulate);                               \
  }
  DSV3_ACCS(DSV3_STORE)
#undef DSV3_STORE
}

// Rows of W per tile at G rows of x (G ≤ 4: tile_range's groups): as many as 16 accumulators
// allow, at most 8, and at G ≥ 3 at most Kern::kMaxRowsX (the x-major order holds R
// converted rows in registers: 5 LUT rows at G = 3 spilled, and F16 rows take 4 registers
// each).
template <class Kern>
constexpr int tile_rows(int G) {
  return G <= 2 ? 8 : 16 / G < Kern::kMaxRowsX ? 16 / G : Kern::kMaxRowsX;
}

// x rows [0, M) in groups of at most GS: calls f.template operator()<G0, G>() for each
// group (first row G0, G rows), in order.
template <int M, int GS, class F>
DSV3_INLINE inline void for_x_groups(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (f.template operator()<I * GS, (M - I * GS < GS ? M - I * GS : GS)>(), ...);
  }(std::make_integer_sequence<int, (M + GS - 1) / GS>{});
}

// Rows [n0, n1) of W: full tiles, then single rows. M ≤ 4: one tile covers all rows of x.
// M > 4: the rows of x go in groups of kXGroup through each tile of R = tile_rows(4) rows of
// W (its rows read again from L1 for each further group). One tile of up to 8 rows of x
// allows only 2 rows of W, and ran far below the VDPBF16PS rate; before that, at M > 8,
// 16 accumulators had left one row of W per tile. Measured, `dsv3 bench gemv --dtype bf16
// --n 129280 --k 1024` (the vocabulary head's shape; Zen 5, 2 threads), GB/s of W, one tile
// of ≤ 8 rows (two above 8) → groups of 4: M = 8 13.6 → 22.6, 12 10.5 → 16.1, 16 8.2 → 12.0
// (16 rows with the hi+lo pair: 83% of the VDPBF16PS rate); M = 6 even. FP8 at 32768 x 2048
// (the LUT decode is repeated per group): M = 6..8 1.1–1.6x, 12 and 16 1.05–1.1x.
constexpr int kXGroup = 4;
template <class Kern, int M>
void tile_range(const Kern& kern, const typename Kern::W* w, int64_t ldw, int64_t K, int64_t n0,
                int64_t n1, const typename Kern::X* xs, int64_t xstride, float* y, int64_t ldy,
                bool accumulate, int64_t pf_min) {
  constexpr int GS = M <= kXGroup ? M : kXGroup;
  constexpr int R = tile_rows<Kern>(GS);
  const int64_t pf = prefetch_bytes(R, ldw * int64_t(sizeof(typename Kern::W)), pf_min);
  int64_t n = n0;
  for (; n + R <= n1; n += R)
    for_x_groups<M, GS>([&]<int G0, int G>() {
      tile<Kern, R, G>(kern, w + n * ldw, ldw, K, xs + G0 * xstride, xstride, y + G0 * ldy + n, ldy,
                       accumulate, pf);
    });
  for (; n < n1; ++n)
    for_x_groups<M, GS>([&]<int G0, int G>() {
      tile<Kern, 1, G>(kern, w + n * ldw, ldw, K, xs + G0 * xstride, xstride, y + G0 * ldy + n, ldy,
                       accumulate, pf);
    });
}

// Calls f.template operator()<M>() with the compile-time value of M in 1..kGemvMaxM.
template <class F>
void with_m(int64_t M, F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((M == I + 1 ? (f.template operator()<I + 1>(), 0) : 0), ...);
  }(std::make_integer_sequence<int, kGemvMaxM>{});
}

// ---- BF16 -------------------------------------------------------------------------------
// x is stored per 32-column chunk as 2x32 BF16 words [hi, lo] in column order: hi =
// bf16(x), lo = bf16(x - hi) carries the next 8 bits (≈16 significant bits, gemv.h). W's
// BF16 words are already the (even, odd) pairs VDPBF16PS multiplies, so a step is one
// load and two VDPBF16PS per pair (hi, then lo, into the same accumulator), with no
// conversion, as in the FP8 LUT path. Widening W to F32 for FMAs instead (a shift and a
// mask per row, 2 FMAs per pair) ran 129280x1024 at M = 8 at 13.6 GB/s against 30 with
// VDPBF16PS (2-core EPYC, `dsv3 bench gemv`); M = 1 stays at bandwidth. VDPBF16PS treats
// subnormal BF16 inputs as zero (|w| < 2^-126 weights contribute nothing).
// At M = 16, or M = 8 with K = 2048, the M rows of hi+lo x (4 bytes per column and row)
// outgrow L1 and the tiles are bound by x streaming from L2, so VDPBF16PS gained little
// there (7168x2048 M = 8: 18.7 -> 19.5 GB/s; M = 16: ≈10 -> ≈11 GB/s on both shapes) —
// figures from before tile_range's groups of 4 rows of x, which took 129280x1024 at M = 8
// from 13.6 to 22.6 GB/s and at M = 16 from 8.2 to 12.0 (docs/PERF.md).
void prep_x_bf16(const float* x, int64_t K, uint16_t* xp) {
  for (int64_t k = 0; k < K; k += 32) {
    const __m512 a = _mm512_maskz_loadu_ps(tail_mask16(K - k), x + k);
    const __m512 b = _mm512_maskz_loadu_ps(tail_mask16(K - k - 16), x + k + 16);
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // words 0-15 from a, 16-31 from b
    const __m512 ah = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
    const __m512 bh = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
    _mm512_store_si512(xp + 2 * k, h);
    _mm512_store_si512(xp + 2 * k + 32, (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, bh), _mm512_sub_ps(a, ah)));
  }
}

struct KernBf16 {
  using W = uint16_t;
  using X = uint16_t;
  static constexpr int64_t kCols = 32;
  static constexpr int kMaxRowsX = 4;
  static constexpr bool kNanCheck = false;
  static int64_t xoff(int64_t k) { return 2 * k; }  // 64 words per 32 columns
  using V = __m512bh;
  DSV3_INLINE V load(const uint16_t* w, __mmask64 mask, __mmask64*) const {
    return (__m512bh)_mm512_maskz_loadu_epi16(__mmask32(mask), w);
  }
  DSV3_INLINE void dot(__m512& a, const V& v, const uint16_t* x) const {
    a = _mm512_dpbf16_ps(a, v, (__m512bh)_mm512_load_si512(x));
    a = _mm512_dpbf16_ps(a, v, (__m512bh)_mm512_load_si512(x + 32));
  }
};

// x rounded to BF16 once (GemvBF16::x_bf16): 32 words per 32 columns, one VDPBF16PS per
// pair — half of KernBf16's multiply work, and half its x footprint in L1.
void prep_x_bf16_hi(const float* x, int64_t K, uint16_t* xp) {
  for (int64_t k = 0; k < K; k += 32) {
    const __m512 a = _mm512_maskz_loadu_ps(tail_mask16(K - k), x + k);
    const __m512 b = _mm512_maskz_loadu_ps(tail_mask16(K - k - 16), x + k + 16);
    _mm512_store_si512(xp + k, (__m512i)_mm512_cvtne2ps_pbh(b, a));
  }
}

struct KernBf16X8 : KernBf16 {
  static int64_t xoff(int64_t k) { return k; }
  DSV3_INLINE void dot(__m512& a, const V& v, const uint16_t* x) const {
    a = _mm512_dpbf16_ps(a, v, (__m512bh)_mm512_load_si512(x));
  }
};

// F32 x, W widened to F32 in registers (VPUNPCK[LH]WD with zero: exact) and FMAs: where
// VDPBF16PS runs at half the FMA rate (core/cpu.h Bf16Mode::Fma) this beats the hi + lo
// pair's two VDPBF16PS per pair, and x is exact. Vector j of a 32-column step holds, in
// 128-bit lane L, columns 8L + 4j .. 8L + 4j + 3; xs[16j + 4L + d] = x[8L + 4j + d].
void prep_x_bf16_f32(const float* x, int64_t K, float* xs) {
  for (int64_t k = 0; k < K; k += 32) {
    const __m512 a = _mm512_maskz_loadu_ps(tail_mask16(K - k), x + k);
    const __m512 b = _mm512_maskz_loadu_ps(tail_mask16(K - k - 16), x + k + 16);
    _mm512_store_ps(xs + k, _mm512_shuffle_f32x4(a, b, 0x88));
    _mm512_store_ps(xs + k + 16, _mm512_shuffle_f32x4(a, b, 0xDD));
  }
}

struct KernBf16F32 {
  using W = uint16_t;
  using X = float;
  static constexpr int64_t kCols = 32;
  static constexpr int kMaxRowsX = 4;
  static constexpr bool kNanCheck = false;
  static int64_t xoff(int64_t k) { return k; }
  struct V { __m512 f[2]; };
  DSV3_INLINE V load(const uint16_t* w, __mmask64 mask, __mmask64*) const {
    const __m512i v = _mm512_maskz_loadu_epi16(__mmask32(mask), w), z = _mm512_setzero_si512();
    return {{_mm512_castsi512_ps(_mm512_unpacklo_epi16(z, v)), _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, v))}};
  }
  DSV3_INLINE void dot(__m512& a, const V& v, const float* x) const {
    a = _mm512_fmadd_ps(v.f[0], _mm512_load_ps(x), a);
    a = _mm512_fmadd_ps(v.f[1], _mm512_load_ps(x + 16), a);
  }
};

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

// One chain through the four F32 vectors of a 64-column step (the same for every tile, see
// above): the F16 and F32Lut paths.
DSV3_INLINE inline void fma_chain4(__m512& a, const __m512 f[4], const float* x) {
  a = _mm512_fmadd_ps(f[0], _mm512_load_ps(x), a);
  a = _mm512_fmadd_ps(f[1], _mm512_load_ps(x + 16), a);
  a = _mm512_fmadd_ps(f[2], _mm512_load_ps(x + 32), a);
  a = _mm512_fmadd_ps(f[3], _mm512_load_ps(x + 48), a);
}

struct KernF16 {
  using W = uint8_t;
  using X = float;
  static constexpr int64_t kCols = 64;
  static constexpr int kMaxRowsX = 2;
  static constexpr bool kNanCheck = true;
  static int64_t xoff(int64_t k) { return k; }
  struct V { __m512 f[4]; };
  __m512i c7f = _mm512_set1_epi8(0x7f);
  DSV3_INLINE V load(const uint8_t* w, __mmask64 mask, __mmask64* nan) const {
    const __m512i c = _mm512_maskz_loadu_epi8(mask, w);
    *nan |= _mm512_cmpeq_epi8_mask(_mm512_and_si512(c, c7f), c7f);
    V v;
    fp8x64_to_f32(c, v.f);
    return v;
  }
  DSV3_INLINE void dot(__m512& a, const V& v, const float* x) const { fma_chain4(a, v.f, x); }
};

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

// 64 codes -> their BF16 values as two registers of words, in the in-lane order of
// VPUNPCK[LH]BW: a = codes 16L+0..7, b = codes 16L+8..15 of each 128-bit lane L.
DSV3_INLINE inline void lut_bf16x64(const Fp8Lut& t, __m512i sign, __m512i c, __m512i* a, __m512i* b) {
  const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t.hi0, c, t.hi1), c, sign, 0xF8);
  const __m512i lo = _mm512_permutex2var_epi8(t.lo0, c, t.lo1);
  *a = _mm512_unpacklo_epi8(lo, hi);
  *b = _mm512_unpackhi_epi8(lo, hi);
}

// kLo: also multiply by the low BF16 part of x·s (Fp8Path::BF16Lut, ≈16-bit x); without
// it x·s is used rounded to BF16 (BF16LutX8).
// Built once (a kernel object is made per GEMV call, and the decode FFN makes thousands).
const Fp8Lut& lut() {
  static const Fp8Lut t = make_lut();
  return t;
}

template <bool kLo>
struct KernLut {
  using W = uint8_t;
  using X = uint16_t;
  static constexpr int64_t kCols = 64;
  static constexpr int kMaxRowsX = 4;
  static constexpr bool kNanCheck = false;  // the table maps NaN codes to NaN
  static int64_t xoff(int64_t k) { return 2 * k; }  // 128 words per 64 columns
  struct V { __m512bh a, b; };
  Fp8Lut t = lut();
  __m512i sign = _mm512_set1_epi8(int8_t(0x80));
  DSV3_INLINE V load(const uint8_t* w, __mmask64 mask, __mmask64*) const {
    __m512i a, b;
    lut_bf16x64(t, sign, _mm512_maskz_loadu_epi8(mask, w), &a, &b);
    return {(__m512bh)a, (__m512bh)b};
  }
  DSV3_INLINE void dot(__m512& a, const V& v, const uint16_t* x) const {
    a = _mm512_dpbf16_ps(a, v.a, (__m512bh)_mm512_load_si512(x));
    a = _mm512_dpbf16_ps(a, v.b, (__m512bh)_mm512_load_si512(x + 32));
    if constexpr (kLo) {
      a = _mm512_dpbf16_ps(a, v.a, (__m512bh)_mm512_load_si512(x + 64));
      a = _mm512_dpbf16_ps(a, v.b, (__m512bh)_mm512_load_si512(x + 96));
    }
  }
};

// F32Lut: the LUT's BF16 values widened to F32 in registers (VPUNPCK[LH]WD with zero puts
// each word in the top half of a dword: exact) and multiplied by x·s in F32 with FMAs — the
// F16 path's exact F32 x at about half its instructions per code (no VCVTPH2PS, no NaN
// compare: the table maps NaN codes to NaN), for CPUs whose VDPBF16PS runs at half the FMA
// rate (core/cpu.h Bf16Mode::Fma). Vector j of a 64-column step holds, in 128-bit lane L,
// columns 16L + 4j .. 16L + 4j + 3 (VPUNPCKLBW then VPUNPCK[LH]WD, all within lanes).
// xs = x·s per 64-column chunk in that order: xs[16j + 4L + d] = x[16L + 4j + d]·s, a
// 4x4 transpose of 128-bit blocks.
void prep_x_lut32(const float* x, int64_t K, const float* s, float* xs) {
  for (int64_t k = 0; k < K; k += 64) {
    __m512 v[4];
    for (int l = 0; l < 4; ++l) {
      const int64_t kk = k + 16 * l;
      v[l] = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask16(K - kk), x + kk), _mm512_set1_ps(s[kk / kBlock]));
    }
    const __m512 t0 = _mm512_shuffle_f32x4(v[0], v[1], 0x44), t1 = _mm512_shuffle_f32x4(v[0], v[1], 0xEE);
    const __m512 t2 = _mm512_shuffle_f32x4(v[2], v[3], 0x44), t3 = _mm512_shuffle_f32x4(v[2], v[3], 0xEE);
    _mm512_store_ps(xs + k, _mm512_shuffle_f32x4(t0, t2, 0x88));
    _mm512_store_ps(xs + k + 16, _mm512_shuffle_f32x4(t0, t2, 0xDD));
    _mm512_store_ps(xs + k + 32, _mm512_shuffle_f32x4(t1, t3, 0x88));
    _mm512_store_ps(xs + k + 48, _mm512_shuffle_f32x4(t1, t3, 0xDD));
  }
}

struct KernLut32 {
  using W = uint8_t;
  using X = float;
  static constexpr int64_t kCols = 64;
  static constexpr int kMaxRowsX = 2;  // 4 registers per converted row, as F16
  static constexpr bool kNanCheck = false;  // the table maps NaN codes to NaN
  static int64_t xoff(int64_t k) { return k; }
  struct V { __m512 f[4]; };
  Fp8Lut t = lut();
  __m512i sign = _mm512_set1_epi8(int8_t(0x80));
  DSV3_INLINE V load(const uint8_t* w, __mmask64 mask, __mmask64*) const {
    __m512i a, b;
    lut_bf16x64(t, sign, _mm512_maskz_loadu_epi8(mask, w), &a, &b);
    const __m512i z = _mm512_setzero_si512();
    return {{_mm512_castsi512_ps(_mm512_unpacklo_epi16(z, a)), _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, a)),
             _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, b)), _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, b))}};
  }
  DSV3_INLINE void dot(__m512& a, const V& v, const float* x) const { fma_chain4(a, v.f, x); }
};

// Rows [n0, n1) of W against M rows of x: x is re-prepared whenever the rows enter a new
// 128-row scale block, then the block's rows go through the tiles.
// *prepared is the row block whose x·s the scratch holds (-1: none).
template <int M, class Kern>
void range_fp8(const GemvFP8& p, const Kern& kern, int64_t n0, int64_t n1, typename Kern::X* xs,
               int64_t xstride, int64_t* prepared) {
  const int64_t kb = (p.K + kBlock - 1) / kBlock;
  for (int64_t b0 = n0; b0 < n1;) {
    const int64_t blk = b0 / kBlock, b1 = (blk + 1) * kBlock < n1 ? (blk + 1) * kBlock : n1;
    const float* s = p.w_scale + blk * kb;
    for (int m = 0; m < M && *prepared != blk; ++m) {
      if constexpr (std::is_same_v<Kern, KernF16>) prep_x_f16(p.x + m * p.ldx, p.K, s, xs + m * xstride);
      else if constexpr (std::is_same_v<Kern, KernLut32>) prep_x_lut32(p.x + m * p.ldx, p.K, s, xs + m * xstride);
      else prep_x_lut(p.x + m * p.ldx, p.K, s, xs + m * xstride);
    }
    *prepared = blk;
    tile_range<Kern, M>(kern, p.w, p.ldw, p.K, b0, b1, xs, xstride, p.y, p.ldy, p.accumulate, kPrefetchMinFP8);
    b0 = b1;
  }
}

template <class Kern>
void gemv_fp8_with(const GemvFP8& p, const Kern& kern, int threads, float* scratch) {
  // Per-thread x buffers: each holds M rows of x·s for the thread's current row block.
  const int64_t xs = round_up(p.K, 64) + 64;  // floats, or 2·xs BF16 words (hi + lo)
  const int64_t xstride = std::is_same_v<typename Kern::X, float> ? xs : 2 * xs;
  const int64_t per_thread = gemv_scratch_floats(p.M, p.K);
  const int64_t chunk = chunk_rows(p.N, threads, kBlock), chunks = (p.N + chunk - 1) / chunk;
  auto run_chunk = [&](typename Kern::X* s, int64_t* prepared, int64_t c) {
    const int64_t n0 = c * chunk, n1 = n0 + chunk < p.N ? n0 + chunk : p.N;
    with_m(p.M, [&]<int M>() { range_fp8<M>(p, kern, n0, n1, s, xstride, prepared); });
  };
  if (threads == 1) {
    // On the calling thread, no region: the decode FFN calls this once per 128-row block of
    // each expert from inside its own parallel region (model/moe.cpp ffn_tasks_decode), where
    // a nested one-thread region per call cost as much as a block's work.
    auto* s = reinterpret_cast<typename Kern::X*>(scratch);
    int64_t prepared = -1;
    for (int64_t c = 0; c < chunks; ++c) run_chunk(s, &prepared, c);
    return;
  }
  parallel_region(threads, [&](Team& team) {
    auto* s = reinterpret_cast<typename Kern::X*>(scratch + team.tid() * per_thread);
    int64_t prepared = -1;
    team.for_dynamic(chunks, [&](int64_t c) { run_chunk(s, &prepared, c); });
  });
}

}  // namespace

void gemv_bf16(const GemvBF16& p, int threads, float* scratch) {
  // One x layout shared by all threads (it does not depend on the row): 2·xs BF16 words
  // per row of x (hi + lo) in the xs floats of scratch the row has.
  const int64_t xs = 2 * (round_up(p.K, 64) + 64);
  auto* xp = reinterpret_cast<uint16_t*>(scratch);
  auto run = [&]<class Kern>(const Kern& kern) {
    const int64_t chunk = chunk_rows(p.N, threads, 256), chunks = (p.N + chunk - 1) / chunk;
    auto run_chunk = [&](int64_t c) {
      const int64_t n0 = c * chunk, n1 = n0 + chunk < p.N ? n0 + chunk : p.N;
      with_m(p.M, [&]<int M>() {
        if constexpr (std::is_same_v<typename Kern::X, float>)  // the same bytes as F32
          tile_range<Kern, M>(kern, p.w, p.ldw, p.K, n0, n1, scratch, xs / 2, p.y, p.ldy, p.accumulate, kPrefetchMinBF16);
        else
          tile_range<Kern, M>(kern, p.w, p.ldw, p.K, n0, n1, xp, xs, p.y, p.ldy, p.accumulate, kPrefetchMinBF16);
      });
    };
    if (threads == 1) {  // no region (see gemv_fp8_with)
      for (int64_t c = 0; c < chunks; ++c) run_chunk(c);
      return;
    }
    parallel_for_dynamic(chunks, threads, run_chunk);
  };
  if (p.x_bf16) {
    for (int64_t m = 0; m < p.M; ++m) prep_x_bf16_hi(p.x + m * p.ldx, p.K, xp + m * xs);
    run(KernBf16X8{});
  } else if (bf16_mode() == Bf16Mode::Fma) {
    for (int64_t m = 0; m < p.M; ++m) prep_x_bf16_f32(p.x + m * p.ldx, p.K, scratch + m * (xs / 2));
    run(KernBf16F32{});
  } else {
    for (int64_t m = 0; m < p.M; ++m) prep_x_bf16(p.x + m * p.ldx, p.K, xp + m * xs);
    run(KernBf16{});
  }
}

void gemv_fp8(const GemvFP8& p, Fp8Path path, int threads, float* scratch) {
  if (path == Fp8Path::F16) gemv_fp8_with(p, KernF16{}, threads, scratch);
  else if (path == Fp8Path::F32Lut) gemv_fp8_with(p, KernLut32{}, threads, scratch);
  else if (path == Fp8Path::BF16LutX8) gemv_fp8_with(p, KernLut<false>{}, threads, scratch);
  else gemv_fp8_with(p, KernLut<true>{}, threads, scratch);
}

uint64_t stream_read(const void* p, size_t bytes, int threads) {
  // 256 KiB chunks handed out dynamically (see chunk_rows), 4 independent XOR chains.
  const char* base = static_cast<const char*>(p);
  constexpr size_t kChunk = size_t(1) << 18;
  const int64_t chunks = int64_t(bytes / kChunk);
  uint64_t total = 0;
  // Chunks [c0, c1) into one XOR-folded word.
  auto read = [&](int64_t c0, int64_t c1, Team* team) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    auto chunk = [&](int64_t c) {
      const char* q = base + size_t(c) * kChunk;
      for (size_t i = 0; i < kChunk; i += 256) {
        a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(q + i));
        a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(q + i + 64));
        a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(q + i + 128));
        a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(q + i + 192));
      }
    };
    if (team) {
      team->for_dynamic(c1 - c0, [&](int64_t i) { chunk(c0 + i); });
    } else {
      for (int64_t c = c0; c < c1; ++c) chunk(c);
    }
    const __m512i a = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    alignas(64) uint64_t v[8];
    _mm512_store_si512(v, a);
    uint64_t t = 0;
    for (int i = 0; i < 8; ++i) t ^= v[i];
    return t;
  };
  if (threads == 1) {
    total = read(0, chunks, nullptr);  // no region (Model::prefault runs on serve's main thread)
  } else {
    std::atomic<uint64_t> folded{0};
    parallel_region(threads, [&](Team& team) { folded.fetch_xor(read(0, chunks, &team), std::memory_order_relaxed); });
    total = folded.load();
  }
  for (size_t i = size_t(chunks) * kChunk; i < bytes; ++i) total ^= uint8_t(base[i]);
  return total;
}

}  // namespace dsv3::avx512
