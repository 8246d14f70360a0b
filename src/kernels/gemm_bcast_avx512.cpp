// Skinny-M fprop, y = x·Wᵀ with A = x [M,K] and W [N,K] both K-contiguous, packing only
// the small operand: BF16, and FP8 block-scaled (W E4M3, A E4M3 or BF16).
//
// The packed path (gemm_avx512.cpp) broadcasts A and streams W, so every 32-column panel
// of W is first transposed into [k pair][32] order; with a few dozen rows of A that copy
// is a large share of the call (perf: 17.5% of the time at 64x1408x2048, 2 threads).
// Here the roles swap. The register tile is NB columns of C (NB rows of W) by 16·H rows
// of A: per k pair, H vectors of packed A (16 rows each) and NB broadcasts of a W pair
// read straight from W's rows, NB·H vdpbf16ps. A is packed once per call (all threads
// share it: one barrier), BF16 W never. The tile of C comes out transposed (lanes = rows
// of A) and goes back through a 16x16 register transpose once per K block.
// FP8: W's E4M3 rows of a column group are decoded to BF16 once per K block into a small
// per-thread buffer (no transpose; 64 codes per ~7 instructions, in the decoder's own
// order within each 64, which A's packing follows) that every row tile of A then
// broadcasts from; each 128-K block starts from fresh accumulators and is promoted as
// partial · (sa · sb) into an FP32 sum kept in memory (report §3.3), A's scales being one
// vector per row tile.
//
// Which shapes come here is decided in gemm_avx512.cpp (measured).
// GCC 12 flags _mm512_undefined_ps() inside its own intrinsics as (maybe-)uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#include "core/cpu.h"
#include "core/parallel.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_internal.h"
#include "kernels/simd_avx512.h"

namespace dsv3::detail {

namespace {

#include "kernels/gemm_e4m3_avx512.inc"

// Tile: up to kNB = 9 columns of C by 16·kH = 48 rows of A: 27 accumulators, 3 A vectors
// and one broadcast register = 31 of 32 zmm; per k pair 9 broadcasts + 3 vector loads feed
// 27 vdpbf16ps. Measured against the alternatives (GFLOP/s, 2 threads, 64x1408x2048 /
// 64x2048x1408): 14 x 32 (the packed kernel's shape) 320 / 410 — with K = 2048 the 14 W
// rows are 4 KB apart and fight over one L1 set (8 ways); 6 x 64 408 / 378, 7 x 32 418 /
// 410, 9 x 48 383-440 / 415 (best or even on every shape tried).
constexpr int kNB = 9, kH = 3, kTW = 16 * kH;
// K block. Longer is better here (one transpose and masked C update per tile per block;
// W rows come back from L2 for the next row tile): 2 threads, median of 5, 64x2048x7168
// KC 1024 366, 2048 388, 4096 406 GFLOP/s; 64x1408x2048 403 / 403 / 408.
constexpr int64_t kKC = 4096;
// Rows of packed A per block: as many row tiles as fit 512 KB of L2 (BF16). Measured, 2
// threads, median of 5-7, GFLOP/s unblocked -> blocked: 2048^3 404 -> 423, 1024x2048x2048
// 402 -> 428 (packed path 410 / 402), 512x7168x2048 435 -> 425, 64x1408x2048 (one
// block either way) 426 -> 439; per core 4096x2048x1024 194 -> 208.
constexpr int64_t kABlockBytes = 512 * 1024;
constexpr int64_t kChunk = 256;  // K elements per packing unit of A
constexpr int64_t kFp8Blk = 128;  // DeepSeek-V3's promotion interval
constexpr int64_t kWStride = kKC + 64;  // decoded W rows: not 4 KB apart (L1 sets)
// The FMA form's decoded F32 W rows, likewise; a constant, so that the kernel's broadcasts
// address them as one pointer plus displacements.
constexpr int64_t kWStrideF32 = kKC + 16;
static_assert(kKC % kChunk == 0 && kChunk % kFp8Blk == 0, "K blocks hold whole packing chunks");

struct Tile {
  int64_t ks = 0;               // K pairs
  bool tail = false;            // plus one odd K element (BF16; FP8 buffers are zero padded)
  const uint16_t* w = nullptr;  // W row j at element k0 (BF16), or the decoded buffer
  int64_t ldw = 0;
  const float* wf = nullptr;    // FMA form: W's group decoded to F32 (/ 256), rows kWStrideF32 apart
  const uint32_t* a = nullptr;  // packed A: [pair][kTW] items of this row tile from k0
  const float* sa = nullptr;    // FP8: A scales [128-K block][kTW] of this tile from k0
  const float* sb = nullptr;    // FP8: W scales [128-K block][kNB] of this group from k0
  float* c = nullptr;           // C row i0, column j
  int64_t ldc = 0;
  int rows = 0;                 // valid rows of the tile (<= 16·H)
  bool add = false;             // C += instead of C =
  // FP8: the next column group's codes, fetched into L2 a line every other k pair while
  // this tile runs (rows of pf_len bytes, pf_ld apart); null when there is none.
  const uint8_t* pf = nullptr;
  int64_t pf_ld = 0, pf_len = 0;
  int pf_rows = 0;
};

inline __m512i bcast_pair(const uint16_t* p) {
  uint32_t x;
  std::memcpy(&x, p, 4);
  return _mm512_set1_epi32(int(x));
}

// acc[n][h] += a · w, 16 lanes of A, or the low 8 when `half` (the upper 8 stay zero).
// On Zen 4 a 256-bit VDPBF16PS costs half a 512-bit one, so a last vector of A with <= 8
// valid rows runs at the cost of 8 (lane-wise the same operation: the same bits).
template <bool half>
inline __m512 dp(__m512 acc, __m512bh w, const uint32_t* a) {
  if constexpr (half) {
    const __m256 r = _mm256_dpbf16_ps(_mm512_castps512_ps256(acc),
                                      (__m256bh)_mm512_castsi512_si256((__m512i)w),
                                      (__m256bh)_mm256_load_si256((const __m256i*)a));
    return _mm512_zextps256_ps512(r);
  } else {
    return _mm512_dpbf16_ps(acc, w, (__m512bh)_mm512_load_si512(a));
  }
}

// acc[n][h] += W pairs s0..s1-1 of row n x A vectors h (the last one the low 8 lanes only
// when kHalf); kPrefetch: also fetch t.pf.
template <int NB, int H, bool kHalf, bool kPrefetch>
inline void steps(__m512 (&acc)[NB][H], const Tile& t, int64_t s0, int64_t s1) {
  const uint16_t* w = t.w + 2 * s0;
  const uint32_t* a = t.a + s0 * kTW;
  // Prefetch cursor: line q = s / 2 of the next group is row q mod rows, byte 64·(q / rows).
  int64_t pf_row = 0, pf_off = 0;
  if (kPrefetch && t.pf) {
    pf_row = (s0 >> 1) % t.pf_rows;
    pf_off = (s0 >> 1) / t.pf_rows * 64;
  }
  for (int64_t s = s0; s < s1; ++s, a += kTW, w += 2) {
    if (kPrefetch && t.pf && (s & 1) == 0 && pf_off < t.pf_len) {
      _mm_prefetch((const char*)(t.pf + pf_row * t.pf_ld + pf_off), _MM_HINT_T1);
      if (++pf_row == t.pf_rows) {
        pf_row = 0;
        pf_off += 64;
      }
    }
#pragma GCC unroll 14
    for (int n = 0; n < NB; ++n) {
      const __m512bh wv = (__m512bh)bcast_pair(w + n * t.ldw);
#pragma GCC unroll 4
      for (int h = 0; h < H; ++h)
        acc[n][h] = kHalf && h == H - 1 ? dp<true>(acc[n][h], wv, a + 16 * h) : dp<false>(acc[n][h], wv, a + 16 * h);
    }
  }
}

// The FMA form (core/cpu.h Bf16Mode::Fma): F32 items, one element of K per step, NB
// broadcasts of a decoded W value (plain loads) and H vector loads of A per NB·H FMAs. Half
// vectors run whole here (Intel's 256-bit FMAs cost what 512-bit ones do; the lanes past
// the rows are zero either way).
template <int NB, int H, bool kPrefetch>
inline void steps_f32(__m512 (&acc)[NB][H], const Tile& t, int64_t s0, int64_t s1) {
  const float* w = t.wf + s0;
  const float* a = (const float*)t.a + s0 * kTW;
  // Prefetch cursor: line q = s / 4 of the next group is row q mod rows, byte 64·(q / rows).
  int64_t pf_row = 0, pf_off = 0;
  if (kPrefetch && t.pf) {
    pf_row = (s0 >> 2) % t.pf_rows;
    pf_off = (s0 >> 2) / t.pf_rows * 64;
  }
  for (int64_t s = s0; s < s1; ++s, a += kTW, ++w) {
    if (kPrefetch && t.pf && (s & 3) == 0 && pf_off < t.pf_len) {
      _mm_prefetch((const char*)(t.pf + pf_row * t.pf_ld + pf_off), _MM_HINT_T1);
      if (++pf_row == t.pf_rows) {
        pf_row = 0;
        pf_off += 64;
      }
    }
#pragma GCC unroll 14
    for (int n = 0; n < NB; ++n) {
      const __m512 wv = _mm512_set1_ps(w[n * kWStrideF32]);
#pragma GCC unroll 4
      for (int h = 0; h < H; ++h) acc[n][h] = _mm512_fmadd_ps(wv, _mm512_load_ps(a + 16 * h), acc[n][h]);
    }
  }
}

// Writes (or adds) the transposed tile: acc[n][h] lane l is C[16h + l][n].
template <int NB, int H>
inline void store_tile(__m512 (&acc)[NB][H], const Tile& t) {
  const __mmask16 mn = lanes_mask(NB);
#pragma GCC unroll 4
  for (int h = 0; h < H; ++h) {
    __m512 r[16];
#pragma GCC unroll 16
    for (int n = 0; n < 16; ++n) r[n] = n < NB ? acc[n < NB ? n : 0][h] : _mm512_setzero_ps();
    transpose16(r);  // r[l] lane n = C[16h + l][n]
    const int lim = t.rows - 16 * h < 16 ? t.rows - 16 * h : 16;
    for (int l = 0; l < lim; ++l) {
      float* cr = t.c + (16 * h + l) * t.ldc;
      const __m512 v = t.add ? _mm512_add_ps(_mm512_maskz_loadu_ps(mn, cr), r[l]) : r[l];
      _mm512_mask_storeu_ps(cr, mn, v);
    }
  }
}

template <int NB, int H, bool kHalf>
void ukr_bf16(const Tile& t) {
  __m512 acc[NB][H];
#pragma GCC unroll 14
  for (int n = 0; n < NB; ++n)
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) acc[n][h] = _mm512_setzero_ps();
  steps<NB, H, kHalf, false>(acc, t, 0, t.ks);
  if (t.tail) {  // odd K: the pair (W[.., K-1], 0) against A's zero-padded last pair
    const uint32_t* a = t.a + t.ks * kTW;
#pragma GCC unroll 14
    for (int n = 0; n < NB; ++n) {
      const __m512bh wv = (__m512bh)_mm512_set1_epi32(int(t.w[n * t.ldw + 2 * t.ks]));
#pragma GCC unroll 4
      for (int h = 0; h < H; ++h)
        acc[n][h] = kHalf && h == H - 1 ? dp<true>(acc[n][h], wv, a + 16 * h) : dp<false>(acc[n][h], wv, a + 16 * h);
    }
  }
  store_tile(acc, t);
}

template <int NB, int H, bool kHalf, bool kFma>
void ukr_fp8(const Tile& t) {
  constexpr int64_t kSteps = kFma ? kFp8Blk : kFp8Blk / 2;
  alignas(64) float tot[NB][H][16];  // promoted block sums
  __m512 acc[NB][H];
  for (int64_t blk = 0; blk * kSteps < t.ks; ++blk) {
#pragma GCC unroll 14
    for (int n = 0; n < NB; ++n)
#pragma GCC unroll 4
      for (int h = 0; h < H; ++h) acc[n][h] = _mm512_setzero_ps();
    const int64_t s1 = t.ks < (blk + 1) * kSteps ? t.ks : (blk + 1) * kSteps;
    if constexpr (kFma) steps_f32<NB, H, true>(acc, t, blk * kSteps, s1);
    else steps<NB, H, kHalf, true>(acc, t, blk * kSteps, s1);
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
      const __m512 sa = _mm512_load_ps(t.sa + blk * kTW + 16 * h);
#pragma GCC unroll 14
      for (int n = 0; n < NB; ++n) {
        const __m512 s = _mm512_mul_ps(sa, _mm512_set1_ps(t.sb[blk * kNB + n]));
        const __m512 prev = blk > 0 ? _mm512_load_ps(tot[n][h]) : _mm512_setzero_ps();
        _mm512_store_ps(tot[n][h], _mm512_fmadd_ps(acc[n][h], s, prev));
      }
    }
  }
#pragma GCC unroll 14
  for (int n = 0; n < NB; ++n)
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) acc[n][h] = _mm512_load_ps(tot[n][h]);
  store_tile(acc, t);
}

// Calls KERNEL<nb, H, kHalf> for a group of nb <= NBW columns.
template <template <int, int, bool> class Kernel, int NBW, int H, bool kHalf>
void by_width(int nb, const Tile& t) {
  if constexpr (NBW > 1) {
    if (nb < NBW) return by_width<Kernel, NBW - 1, H, kHalf>(nb, t);
  }
  Kernel<NBW, H, kHalf>::run(t);
}
template <int NB, int H, bool kHalf> struct Bf16Kernel { static void run(const Tile& t) { ukr_bf16<NB, H, kHalf>(t); } };
template <int NB, int H, bool kHalf> struct Fp8Kernel { static void run(const Tile& t) { ukr_fp8<NB, H, kHalf, false>(t); } };
template <int NB, int H, bool kHalf> struct Fp8FmaKernel { static void run(const Tile& t) { ukr_fp8<NB, H, false, true>(t); } };

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// The loop nest shared by both types. Op provides:
//   kFp8 (bool: per-row A scales per 128-K block, K packed in whole 64-element chunks),
//   kPer (elements of K per 32-bit item of packed A: 2 for BF16 pairs, 1 for F32),
//   w_buf_bytes (per thread);
//   pack_a(i0, rows, k0, kc, dst, stride): 16 rows of A as pairs (pack_rows16_*);
//   a_scale(i, kb): A's scale of row i in 128-K block kb;
//   prepare_w(j, nb, k0, kc, buf, tile): point tile.w / ldw / tail / sb at W's group.
template <template <int, int, bool> class Kernel, class Op>
void bcast_gemm(const Op& op, int64_t M, int64_t N, int64_t K, float* C, int64_t ldc,
                bool accumulate, int threads) {
  // Row tiles: the 16-row vectors of A dealt as evenly as possible over the fewest tiles
  // of <= kH vectors (64 rows: 32 + 32, not 48 + 16, whose one-vector tile is bound by
  // its 9 broadcasts per 9 vdpbf16ps).
  const int64_t vecs = ceil_div(M, 16), tiles_m = ceil_div(vecs, kH);
  const int64_t vq = vecs / tiles_m, vr = vecs % tiles_m;
  // Tile t holds vectors [first_vec(t), first_vec(t + 1)); vector v is in tile_of(v).
  auto first_vec = [&](int64_t t) { return t * vq + min64(t, vr); };
  auto tile_of = [&](int64_t v) { return v < vr * (vq + 1) ? v / (vq + 1) : vr + (v - vr * (vq + 1)) / vq; };
  // Pairs of K packed per row: whole 64-element chunks (FP8's decode order works on them).
  const int64_t ks_all = ceil_div(K, 64) * 64 / Op::kPer, groups = ceil_div(N, kNB);
  const int64_t tile_items = ks_all * kTW;  // packed A: [tile][pair][kTW]
  const int64_t kblocks = op.kFp8 ? ceil_div(K, kFp8Blk) : 0;
  const int64_t chunks = ceil_div(K, kChunk), units = vecs * chunks;
  if (2.0 * double(M) * double(N) * double(K) < 262144.0) threads = 1;
  if (threads > groups) threads = int(groups);
  if (threads < 1) threads = 1;
  const size_t a_bytes = size_t(tiles_m * tile_items) * 4;
  const size_t sa_bytes = size_t(tiles_m * kblocks * kTW) * 4;  // [tile][kb][kTW]
  const size_t w_bytes = (op.w_buf_bytes + 63) / 64 * 64;
  char* ws = (char*)gemm_scratch(a_bytes + sa_bytes + size_t(threads) * w_bytes);
  uint32_t* ap = (uint32_t*)ws;
  float* sap = (float*)(ws + a_bytes);

  parallel_region(threads, [&](Team& team) {
    const int nthr = team.size(), tid = team.tid();
    // Pack A: unit u = (16-row group g, K chunk c), split over the team.
    for (int64_t u = tid; u < units; u += nthr) {
      const int64_t g = u / chunks, c = u % chunks, i0 = g * 16, tg = tile_of(g);
      const int64_t k0 = c * kChunk, kc = min64(kChunk, K - k0), lane0 = (g - first_vec(tg)) * 16;
      const int rows = int(min64(16, M - i0));
      op.pack_a(i0, rows, k0, kc, ap + tg * tile_items + (k0 / Op::kPer) * kTW + lane0, kTW);
      for (int64_t kb = k0 / kFp8Blk; op.kFp8 && kb < ceil_div(k0 + kc, kFp8Blk); ++kb)
        for (int r = 0; r < 16; ++r)
          sap[(tg * kblocks + kb) * kTW + lane0 + r] = r < rows ? op.a_scale(i0 + r, kb) : 0.f;
    }
    team.barrier();
    // Multiply: part t owns a contiguous range of column groups (a smaller team than
    // asked, under nested parallelism, runs the missing parts in turn).
    for (int t = tid; t < threads; t += nthr) {
      const int64_t g0 = groups * t / threads, g1 = groups * (t + 1) / threads;
      char* wbuf = ws + a_bytes + sa_bytes + size_t(t) * w_bytes;
      for (int64_t k0 = 0; k0 < K; k0 += kKC) {
        const int64_t kc = min64(kKC, K - k0);
        Tile tile;
        tile.ks = op.kFp8 ? ceil_div(kc, 64) * 64 / Op::kPer : kc / 2;
        tile.ldc = ldc;
        tile.add = k0 > 0 || accumulate;
        // Row tiles per block of A kept in L2 while the thread's W columns stream past
        // (FP8 would decode its W groups once per block: one block).
        const int64_t fit = kABlockBytes / (kTW * kc * 2);
        const int64_t mct = op.kFp8 ? tiles_m : fit > 1 ? fit : 1;
        for (int64_t tb = 0; tb < tiles_m; tb += mct) {
          const int64_t te = min64(tiles_m, tb + mct);
          for (int64_t g = g0; g < g1; ++g) {
            const int64_t j = g * kNB;
            const int nb = int(min64(kNB, N - j));
            op.prepare_w(j, nb, k0, kc, wbuf, &tile);
            for (int64_t tm = tb; tm < te; ++tm) {
              const int64_t v0 = first_vec(tm), i0 = v0 * 16;
              tile.rows = int(min64(16 * (first_vec(tm + 1) - v0), M - i0));
              tile.a = ap + tm * tile_items + (k0 / Op::kPer) * kTW;
              tile.sa = sap + (tm * kblocks + k0 / kFp8Blk) * kTW;
              tile.c = C + i0 * ldc + j;
              if (tm > tb) tile.pf = nullptr;  // the first row tile has fetched it
              // Vectors of A in this row tile, the last one half when it holds <= 8 rows.
              const bool half = tile.rows % 16 != 0 && tile.rows % 16 <= 8;
              switch (ceil_div(tile.rows, 16) * 2 + (half ? 1 : 0)) {
                case 2: by_width<Kernel, kNB, 1, false>(nb, tile); break;
                case 3: by_width<Kernel, kNB, 1, true>(nb, tile); break;
                case 4: by_width<Kernel, kNB, 2, false>(nb, tile); break;
                case 5: by_width<Kernel, kNB, 2, true>(nb, tile); break;
                case 7: by_width<Kernel, kNB, 3, true>(nb, tile); break;
                default: by_width<Kernel, kNB, 3, false>(nb, tile); break;
              }
            }
          }
        }
      }
    }
  });
}

struct OpBf16 {
  static constexpr bool kFp8 = false;
  static constexpr int kPer = 2;
  size_t w_buf_bytes = 0;
  const GemmBF16* p;
  void pack_a(int64_t i0, int rows, int64_t k0, int64_t kc, uint32_t* dst, int64_t stride) const {
    pack_rows16_bf16_avx512(p->A, p->lda, i0, rows, k0, kc, dst, stride, false);
  }
  float a_scale(int64_t, int64_t) const { return 1.f; }
  void prepare_w(int64_t j, int, int64_t k0, int64_t kc, char*, Tile* t) const {
    t->w = p->B + j * p->ldb + k0;
    t->ldw = p->ldb;
    t->tail = kc % 2 != 0;
  }
};

// The decode of an FP8 W group (prepare_w) is a phase of its own: W streamed from DRAM
// would stall it at every group, so the next group is fetched into L2 during this one's
// tiles (2 threads, GFLOP/s without -> with, median of 5: 64x16384x2048 (32 MB of codes)
// 338 -> 390, 16x16384x2048 232 -> 279, 32x7168x2048 314 -> 369; cached W: 64x2048x1408
// 391 -> 392, 48x2048x2048 387 -> 389, 16x1408x2048 320 -> 306). Points t->pf at the group
// after columns j..j+nb-1 over [k0, k0+kc), or null when there is none.
void fetch_next_group(const GemmFP8& p, int64_t j, int nb, int64_t k0, int64_t kc, Tile* t) {
  t->pf = nullptr;
  if (j + nb < p.N) {
    t->pf = p.B + (j + nb) * p.ldb + k0;
    t->pf_ld = p.ldb;
    t->pf_len = kc;
    t->pf_rows = int(min64(kNB, p.N - j - nb));
  }
}

struct OpFp8 {
  static constexpr bool kFp8 = true;
  static constexpr int kPer = 2;
  size_t w_buf_bytes = size_t(kNB) * kWStride * 2 + size_t(kKC / kFp8Blk) * kNB * 4;
  const GemmFP8* p;
  void pack_a(int64_t i0, int rows, int64_t k0, int64_t kc, uint32_t* dst, int64_t stride) const {
    if (p->A_bf16) pack_rows16_bf16_avx512(p->A_bf16, p->lda, i0, rows, k0, kc, dst, stride, true);
    else pack_rows16_e4m3_avx512(p->A, p->lda, i0, rows, k0, kc, dst, stride);
  }
  float a_scale(int64_t i, int64_t kb) const { return p->A_bf16 ? 1.f : p->a_scale[i * p->lda_scale + kb]; }
  // Decodes W rows j..j+nb-1 over [k0, k0+kc) into buf (BF16 in e4m3x64_to_bf16's order,
  // as A was packed; zero padded to whole 64-element chunks) and gathers their scales
  // after it.
  void prepare_w(int64_t j, int nb, int64_t k0, int64_t kc, char* buf, Tile* t) const {
    const E4m3Bytes tab;
    uint16_t* w = (uint16_t*)buf;
    for (int n = 0; n < nb; ++n)
      for (int64_t k = 0; k < kc; k += 64) {
        __m512i o0, o1;
        e4m3x64_to_bf16(tab, p->B + (j + n) * p->ldb + k0 + k, kc - k, &o0, &o1);
        _mm512_storeu_si512(w + n * kWStride + k, o0);
        _mm512_storeu_si512(w + n * kWStride + k + 32, o1);
      }
    float* sb = (float*)(buf + size_t(kNB) * kWStride * 2);
    pack_fp8_b_scales(*p, j, nb, kNB, k0, kc, sb);
    fetch_next_group(*p, j, nb, k0, kc, t);
    t->w = w;
    t->ldw = kWStride;
    t->tail = false;
    t->sb = sb;
  }
};

// The FMA form: A packed as F32 (16-row vectors per element of K), W's group decoded to F32
// once per K block; E4M3 values come / 256 (gemm_pack_avx512.cpp), so their scales * 256.
struct OpFp8Fma {
  static constexpr bool kFp8 = true;
  static constexpr int kPer = 1;
  size_t w_buf_bytes = size_t(kNB) * kWStrideF32 * 4 + size_t(kKC / kFp8Blk) * kNB * 4;
  const GemmFP8* p;
  void pack_a(int64_t i0, int rows, int64_t k0, int64_t kc, uint32_t* dst, int64_t stride) const {
    pack_rows16_fp8a_f32_avx512(*p, i0, rows, k0, kc, (float*)dst, stride);
  }
  float a_scale(int64_t i, int64_t kb) const {
    return p->A_bf16 || p->A_f32 ? 1.f : p->a_scale[i * p->lda_scale + kb] * kE4m3F32Bias;
  }
  void prepare_w(int64_t j, int nb, int64_t k0, int64_t kc, char* buf, Tile* t) const {
    float* w = (float*)buf;
    decode_e4m3_rows_f32_avx512(p->B + j * p->ldb + k0, p->ldb, nb, kc, w, kWStrideF32);
    float* sb = (float*)(buf + size_t(kNB) * kWStrideF32 * 4);
    pack_fp8_b_scales(*p, j, nb, kNB, k0, kc, sb);
    for (int64_t q = 0; q < ceil_div(kc, kFp8Blk) * kNB; ++q) sb[q] *= kE4m3F32Bias;
    fetch_next_group(*p, j, nb, k0, kc, t);
    t->wf = w;
    t->tail = false;
    t->sb = sb;
  }
};

}  // namespace

void gemm_bcast_bf16_avx512(const GemmBF16& p, int threads) {
  OpBf16 op;
  op.p = &p;
  bcast_gemm<Bf16Kernel>(op, p.M, p.N, p.K, p.C, p.ldc, p.accumulate, threads);
}

void gemm_bcast_fp8_avx512(const GemmFP8& p, int threads) {
  if (p.A_f32 || bf16_mode() == Bf16Mode::Fma) {
    OpFp8Fma op;
    op.p = &p;
    return bcast_gemm<Fp8FmaKernel>(op, p.M, p.N, p.K, p.C, p.ldc, p.accumulate, threads);
  }
  OpFp8 op;
  op.p = &p;
  bcast_gemm<Fp8Kernel>(op, p.M, p.N, p.K, p.C, p.ldc, p.accumulate, threads);
}

}  // namespace dsv3::detail
