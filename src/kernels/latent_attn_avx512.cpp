// AVX-512 partial of latent-cache decode attention (kernels/latent_attn.h has the contract).
//
// One thread's block of positions is walked in tiles of kLatentTile positions. Per tile:
//   1. scores of all M rows against the tile's cache rows, 4 rows × 4 positions per register
//      block (16 accumulators: each loaded cache vector feeds 4 FMAs, each q vector 4), the
//      tile (≤ 32·R floats) staying in L1/L2 while all row blocks reuse it;
//   2. online softmax per row: new max, rescale of the running sum and partial o by
//      exp(old − new), weights exp(z − max) with positions ≥ valid_len zeroed;
//   3. po += P · tile[:, :dc], 4 rows × 64 columns per register block (16 accumulators).
// So the cache is streamed from memory once per call whatever M is.
//
// Stored BF16 and FP8 rows take a path of their own that multiplies in BF16 (VDPBF16PS, two
// products per instruction) and never widens the cache to F32:
//   1. scores: q split once per call into q_hi = bf16(q) and q_lo = bf16(q − q_hi) (q to
//      2^-16 relative), each 32-column step 2 VDPBF16PS per row and position against the
//      stored row itself (BF16) or its E4M3 codes widened exactly to BF16 (FP8; the row's
//      scale multiplies the score afterwards); the same 4 × 4 blocking and lane reduction;
//   2. the same online softmax (l sums the unrounded F32 weights);
//   3. P·V in BF16: the weights times the row scale rounded to BF16 (2^-8 relative, FlashMLA's
//      BF16 P), positions paired for VDPBF16PS: each pair of rows is interleaved once per tile
//      (unpacklo/hi_epi16 within 128-bit lanes), so the partial o of a 32-column chunk is kept
//      in that lane order and put back in column order once per call.
// P·V costs half the instructions of F32 FMAs and the cache is never decoded to memory.
// GCC 12 flags the "__Y = __Y" idiom inside its own intrinsic headers (_mm512_reduce_*) when
// they inline here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/scratch.h"
#include "kernels/fp8_avx512.h"
#include "kernels/gemm_internal.h"
#include "kernels/latent_attn.h"
#include "kernels/simd_avx512.h"

namespace dsv3::avx512 {
namespace {

constexpr int kMR = 4;  // q rows per register block
constexpr int kNS = 4;  // positions per score register block
constexpr int kNV = 4;  // 16-float column vectors per P·V register block
static_assert(kLatentTile % 16 == 0 && kLatentTile <= 32, "softmax step handles ≤ 2 vectors");
static_assert(kMR == 4 && kNS == 4, "score_block's lane reduction is written for 4 × 4");

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Lane 4i + j of the result = the sum of acc[i][j]'s 16 lanes.
inline __m512 reduce_4x4(const __m512 (&acc)[kMR][kNS]) {
  // 16 horizontal sums at once (one reduce per accumulator would cost ~8 dependent ops each):
  // per row, unpack/shuffle sums leave [Σ acc[i][0..3]] per 128-bit lane; then 128-bit lane
  // shuffles across the 4 rows leave out[i][j] in lane 4i + j.
  __m512 t[kMR];
  for (int i = 0; i < kMR; ++i) {
    const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(acc[i][0], acc[i][1]),
                                     _mm512_unpackhi_ps(acc[i][0], acc[i][1]));
    const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(acc[i][2], acc[i][3]),
                                     _mm512_unpackhi_ps(acc[i][2], acc[i][3]));
    t[i] = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xee));
  }
  const __m512 u01 = _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], 0x44),
                                   _mm512_shuffle_f32x4(t[0], t[1], 0xee));
  const __m512 u23 = _mm512_add_ps(_mm512_shuffle_f32x4(t[2], t[3], 0x44),
                                   _mm512_shuffle_f32x4(t[2], t[3], 0xee));
  const __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(u01, u23, 0x88),
                                 _mm512_shuffle_f32x4(u01, u23, 0xdd));
  return v;
}

// Lane 4i + j = scale · q_i · c_j over R columns, for kMR rows and kNS positions.
inline __m512 score_block(const float* const* qp, const float* const* cp, int64_t R, float scale) {
  __m512 acc[kMR][kNS];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNS; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t r = 0;
  for (; r + 16 <= R; r += 16) {
    __m512 c[kNS];
    for (int j = 0; j < kNS; ++j) c[j] = _mm512_loadu_ps(cp[j] + r);
    for (int i = 0; i < kMR; ++i) {
      const __m512 qv = _mm512_loadu_ps(qp[i] + r);
      for (int j = 0; j < kNS; ++j) acc[i][j] = _mm512_fmadd_ps(qv, c[j], acc[i][j]);
    }
  }
  if (r < R) {
    const __mmask16 k = lanes_mask(R - r);
    __m512 c[kNS];
    for (int j = 0; j < kNS; ++j) c[j] = _mm512_maskz_loadu_ps(k, cp[j] + r);
    for (int i = 0; i < kMR; ++i) {
      const __m512 qv = _mm512_maskz_loadu_ps(k, qp[i] + r);
      for (int j = 0; j < kNS; ++j) acc[i][j] = _mm512_fmadd_ps(qv, c[j], acc[i][j]);
    }
  }
  return _mm512_mul_ps(_mm512_set1_ps(scale), reduce_4x4(acc));
}

// p rows m .. m + live − 1, columns [k, k + kNS): lane 4i + j of v. Columns up to the tile's
// end (kLatentTile) are in the row; those ≥ n are never read (tile_softmax masks them).
inline void store_scores(float* p, int64_t m, int64_t k, int live, __m512 v) {
  _mm_storeu_ps(p + m * kLatentTile + k, _mm512_castps512_ps128(v));
  if (live > 1) _mm_storeu_ps(p + (m + 1) * kLatentTile + k, _mm512_extractf32x4_ps(v, 1));
  if (live > 2) _mm_storeu_ps(p + (m + 2) * kLatentTile + k, _mm512_extractf32x4_ps(v, 2));
  if (live > 3) _mm_storeu_ps(p + (m + 3) * kLatentTile + k, _mm512_extractf32x4_ps(v, 3));
}

// Address of cache position s's stored row (contiguous or through the block table).
const uint8_t* row_at(const LatentAttn& a, int64_t s, int64_t rb) {
  const uint8_t* base = static_cast<const uint8_t*>(a.cache);
  if (!a.block_table) return base + s * rb;
  return base + int64_t(a.block_table[s / a.block_rows]) * a.block_stride + (s % a.block_rows) * rb;
}

// Prefetch into L2 the stored rows of positions [s, s + n) ∩ [0, end): the next tile's rows
// while this tile computes. Without it a thread waits on each row's misses in turn: the rows
// are short streams (10–20 lines) that the hardware prefetcher picks up late.
// always_inline: GCC 12's IPA pure-const pass finds a function of nothing but prefetches
// "const" and deletes the calls (the prefetches vanished at -O1 and up).
[[gnu::always_inline]] inline void prefetch_rows(const LatentAttn& a, int64_t s, int64_t n, int64_t end, int64_t rb) {
  for (int64_t k = s; k < s + n && k < end; ++k) {
    // Every line the row touches: a row need not start on a line (FP8 rows are R + 4 bytes).
    const uintptr_t r = reinterpret_cast<uintptr_t>(row_at(a, k, rb));
    for (uintptr_t b = r & ~uintptr_t(63); b < r + uintptr_t(rb); b += 64)
      _mm_prefetch(reinterpret_cast<const char*>(b), _MM_HINT_T1);
  }
}

// The rows of the tile kPrefetchTiles ahead are prefetched while a tile computes, spread
// over its score blocks (a burst of a whole tile's lines asks more of one core's outstanding
// misses than it has). Measured on M 8 × S 8192, R 320, 52 caches cycled, Zen 5, 2 threads:
// BF16 rows 890 µs per call without, 518 one tile ahead, 500 two tiles ahead.
constexpr int64_t kPrefetchTiles = 2;
struct TilePrefetch {
  int64_t next, end, rb, kblocks, per;
  TilePrefetch(const LatentAttn& a, int64_t t0, int64_t n, int64_t s1)
      : next(t0 + kPrefetchTiles * kLatentTile), end(s1), rb(cache_row_bytes(a.dtype, a.R)),
        kblocks((n + kNS - 1) / kNS) {
    const int64_t slots = (a.M + kMR - 1) / kMR * kblocks;
    per = (kLatentTile + slots - 1) / slots;
  }
  // Score block (m, k) of the tile prefetches its share; with more blocks than rows (M > 16)
  // the blocks past the tile's rows prefetch nothing.
  [[gnu::always_inline]] void at(const LatentAttn& a, int64_t m, int64_t k) const {
    const int64_t off = ((m / kMR) * kblocks + k / kNS) * per;
    if (off < kLatentTile) prefetch_rows(a, next + off, std::min(per, kLatentTile - off), end, rb);
  }
};
// ---- F32 rows ------------------------------------------------------------------------------

// p[m, k] = scale · q_m · rows[k] for k < n (n ≤ kLatentTile), all M rows.
void tile_scores(const LatentAttn& a, const float* const* rows, int64_t n, float* p,
                 const TilePrefetch& pf) {
  const float* qp[kMR];
  const float* cp[kNS];
  for (int64_t m = 0; m < a.M; m += kMR) {
    // Rows past M repeat the last row (computed, not stored): no tail variant needed.
    for (int i = 0; i < kMR; ++i) qp[i] = a.q + min64(m + i, a.M - 1) * a.ldq;
    const int live = int(min64(kMR, a.M - m));
    for (int64_t k = 0; k < n; k += kNS) {
      pf.at(a, m, k);
      for (int j = 0; j < kNS; ++j) cp[j] = rows[min64(k + j, n - 1)];
      store_scores(p, m, k, live, score_block(qp, cp, a.R, a.scale));
    }
  }
}

// Online softmax step of row m over the tile: p row becomes exp(z − new max) (0 past the
// valid positions); l and the partial o (orow, olen floats) are rescaled by exp(old − new).
[[gnu::always_inline]] inline void tile_softmax(const LatentAttn& a, int64_t m, int64_t t0, int64_t n, float* mx, float* l,
                  float* orow, int64_t olen, float* prow) {
  int64_t nv = a.valid_len[m] - t0;
  nv = nv < 0 ? 0 : nv > n ? n : nv;
  const __mmask16 k0 = lanes_mask(nv), k1 = lanes_mask(nv > 16 ? nv - 16 : 0);
  if (nv == 0) {
    _mm512_storeu_ps(prow, _mm512_setzero_ps());
    if (kLatentTile > 16) _mm512_storeu_ps(prow + 16, _mm512_setzero_ps());
    return;
  }
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  const __m512 z0 = _mm512_mask_loadu_ps(ninf, k0, prow);
  const __m512 z1 = _mm512_mask_loadu_ps(ninf, k1, prow + 16);
  const float bmax = _mm512_reduce_max_ps(_mm512_max_ps(z0, z1));
  const float old = mx[m], nmax = bmax > old ? bmax : old;
  const __m512 vmax = _mm512_set1_ps(nmax);
  const __m512 e0 = _mm512_maskz_mov_ps(k0, exp512(_mm512_sub_ps(z0, vmax)));
  const __m512 e1 = _mm512_maskz_mov_ps(k1, exp512(_mm512_sub_ps(z1, vmax)));
  _mm512_storeu_ps(prow, e0);
  if (kLatentTile > 16) _mm512_storeu_ps(prow + 16, e1);
  const float sum = _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
  if (nmax != old) {
    const float alpha = std::exp(old - nmax);  // 0 for the first valid tile (old = −inf)
    l[m] = l[m] * alpha + sum;
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t j = 0; j < olen; j += 16) {
      const __mmask16 k = lanes_mask(olen - j);
      store16(orow + j, k, _mm512_mul_ps(va, load16_m(k, orow + j)));
    }
    mx[m] = nmax;
  } else {
    l[m] += sum;
  }
}

// po[m, :dc] += Σ_k p[m, k] · rows[k][:dc], all M rows.
void tile_pv(const LatentAttn& a, const float* const* rows, int64_t n, const float* p, float* po) {
  const int64_t dc = a.dc;
  for (int64_t m = 0; m < a.M; m += kMR) {
    const float* pr[kMR];
    float* orow[kMR];
    for (int i = 0; i < kMR; ++i) {
      const int64_t mi = min64(m + i, a.M - 1);
      pr[i] = p + mi * kLatentTile;
      orow[i] = po + mi * dc;
    }
    const int live = int(min64(kMR, a.M - m));  // rows past M are computed, not stored
    for (int64_t j0 = 0; j0 < dc; j0 += 16 * kNV) {
      __mmask16 mk[kNV];
      for (int v = 0; v < kNV; ++v) mk[v] = lanes_mask(dc - j0 - 16 * v > 0 ? dc - j0 - 16 * v : 0);
      __m512 acc[kMR][kNV];
      for (int i = 0; i < kMR; ++i)
        for (int v = 0; v < kNV; ++v) acc[i][v] = load16_m(mk[v], orow[i] + j0 + 16 * v);
      for (int64_t k = 0; k < n; ++k) {
        const float* c = rows[k] + j0;
        __m512 cv[kNV];
        for (int v = 0; v < kNV; ++v) cv[v] = load16_m(mk[v], c + 16 * v);
        for (int i = 0; i < kMR; ++i) {
          const __m512 pb = _mm512_set1_ps(pr[i][k]);
          for (int v = 0; v < kNV; ++v) acc[i][v] = _mm512_fmadd_ps(pb, cv[v], acc[i][v]);
        }
      }
      for (int i = 0; i < live; ++i)
        for (int v = 0; v < kNV; ++v) store16(orow[i] + j0 + 16 * v, mk[v], acc[i][v]);
    }
  }
}

void partial_f32(const LatentAttn& a, int64_t s0, int64_t s1, float* mx, float* l, float* po,
                 float* p) {
  const float* rows[kLatentTile];
  const int64_t rb = cache_row_bytes(a.dtype, a.R);
  for (int64_t t0 = s0; t0 < s1; t0 += kLatentTile) {
    const int64_t n = min64(kLatentTile, s1 - t0);
    for (int64_t k = 0; k < n; ++k) rows[k] = reinterpret_cast<const float*>(row_at(a, t0 + k, rb));
    tile_scores(a, rows, n, p, TilePrefetch(a, t0, n, s1));
    for (int64_t m = 0; m < a.M; ++m)
      tile_softmax(a, m, t0, n, mx, l, po + m * a.dc, a.dc, p + m * kLatentTile);
    tile_pv(a, rows, n, p, po);
  }
}

// ---- BF16 and FP8 rows: arithmetic in BF16 ------------------------------------------------

constexpr int64_t kPairs = kLatentTile / 2;  // position pairs per tile (VDPBF16PS's K pairs)

inline int64_t round32(int64_t x) { return (x + 31) / 32 * 32; }
inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

using detail::e4m3_bf16_table;
#include "kernels/gemm_e4m3_avx512.inc"  // E4m3Lut, e4m3x32_to_bf16: exact E4M3 -> BF16

// A thread's scratch for the BF16 path (grows to the largest call, never shrinks).
struct Bf16Scratch {
  std::vector<uint16_t> qh, ql;  // [M, Rp] q's BF16 hi / lo parts, zero past R
  std::vector<uint16_t> tile;    // [kLatentTile, Rp] FP8 rows widened to BF16
  std::vector<uint32_t> vt;      // [kPairs, dcp] BF16 pairs (row 2k, row 2k + 1) per column
  std::vector<uint32_t> p2;      // [M, kPairs] BF16 weight pairs
  std::vector<float> po;         // [M, dcp] partial o, 32-column chunks in unpack lane order
};

// Lane 4i + j = scl[j] · (qh_i + ql_i) · c_j over R columns (c_j BF16 rows), kMR × kNS.
inline __m512 score_block_bf16(const uint16_t* const* qh, const uint16_t* const* ql,
                               const uint8_t* const* cp, int64_t R, __m512 scl) {
  __m512 acc[kMR][kNS];
  for (int i = 0; i < kMR; ++i)
    for (int j = 0; j < kNS; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t r = 0; r < R; r += 32) {
    const __mmask32 k = mask32(R - r);
    __m512bh c[kNS];
    for (int j = 0; j < kNS; ++j)
      c[j] = as_bh(k == 0xFFFFFFFFu ? _mm512_loadu_si512(cp[j] + 2 * r) : _mm512_maskz_loadu_epi16(k, cp[j] + 2 * r));
    for (int i = 0; i < kMR; ++i) {  // q rows are zero-padded to a multiple of 32: plain loads
      const __m512bh h = as_bh(_mm512_loadu_si512(qh[i] + r)), lo = as_bh(_mm512_loadu_si512(ql[i] + r));
      for (int j = 0; j < kNS; ++j) acc[i][j] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[i][j], lo, c[j]), h, c[j]);
    }
  }
  return _mm512_mul_ps(scl, reduce_4x4(acc));
}

// po [M, dcp] (unpack order) += Σ_k p2[m, k] · vt[k], nv 16-lane vectors from column j0.
template <int NV>
inline void pv_block_bf16(const uint32_t* const* pr, float* const* orow, int live, const uint32_t* vt,
                          int64_t dcp, int64_t np, int64_t j0) {
  __m512 acc[kMR][NV];
  for (int i = 0; i < kMR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_loadu_ps(orow[i] + j0 + 16 * v);
  for (int64_t k = 0; k < np; ++k) {
    __m512bh cv[NV];
    for (int v = 0; v < NV; ++v) cv[v] = as_bh(_mm512_loadu_si512(vt + k * dcp + j0 + 16 * v));
    for (int i = 0; i < kMR; ++i) {
      const __m512bh pb = as_bh(_mm512_set1_epi32(int(pr[i][k])));
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], pb, cv[v]);
    }
  }
  for (int i = 0; i < live; ++i)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(orow[i] + j0 + 16 * v, acc[i][v]);
}

// Columns [j, j + 32) of the tile's rows 2k and 2k + 1 (of n) interleaved into BF16 pairs,
// in unpack lane order (lo: the even 4-column groups, hi: the odd ones, within each 128-bit
// lane); columns ≥ dc and a missing odd row read as zeros (its weight is 0, and 0 · garbage
// could be NaN).
struct PairChunk {
  __m512i lo, hi;
};
[[gnu::always_inline]] inline PairChunk pair_chunk(const uint8_t* const* rows, int64_t n, int64_t k,
                                                   int64_t j, int64_t dc) {
  const __mmask32 mk = mask32(dc - j);
  const bool full = mk == 0xFFFFFFFFu;
  const uint8_t* ra = rows[2 * k];
  const uint8_t* rbw = 2 * k + 1 < n ? rows[2 * k + 1] : nullptr;
  const __m512i va = full ? _mm512_loadu_si512(ra + 2 * j) : _mm512_maskz_loadu_epi16(mk, ra + 2 * j);
  const __m512i vb = !rbw ? _mm512_setzero_si512()
                     : full ? _mm512_loadu_si512(rbw + 2 * j) : _mm512_maskz_loadu_epi16(mk, rbw + 2 * j);
  return {_mm512_unpacklo_epi16(va, vb), _mm512_unpackhi_epi16(va, vb)};
}

// Few rows (M ≤ kFuseRows: a decode token's heads of a small model): po [M, dcp] += Σ_k
// p2[m, k] · (rows 2k, 2k + 1 interleaved), the interleave done in registers per 32-column
// chunk for all M rows at once (a block of NR = 4 or 8 rows) instead of through vt — with
// 4-row blocks the vt pass and its reloads were a tenth of the call. Each lane sees the same
// products in the same order as pv_block_bf16 over vt: the same bits.
constexpr int kFuseRows = 8;
template <int NR>
inline void pv_fused_bf16(const uint32_t* p2, float* po, int64_t M, const uint8_t* const* rows, int64_t n,
                          int64_t dc, int64_t dcp) {
  static_assert(NR <= kFuseRows, "16 accumulators at most");
  const int64_t np = (n + 1) / 2;
  const uint32_t* pr[NR];
  float* orow[NR];
  for (int i = 0; i < NR; ++i) {
    const int64_t mi = min64(i, M - 1);  // rows past M repeat the last (computed, not stored)
    pr[i] = p2 + mi * kPairs;
    orow[i] = po + mi * dcp;
  }
  for (int64_t j = 0; j < dcp; j += 32) {
    __m512 acc[NR][2];
    for (int i = 0; i < NR; ++i) {
      acc[i][0] = _mm512_loadu_ps(orow[i] + j);
      acc[i][1] = _mm512_loadu_ps(orow[i] + j + 16);
    }
    for (int64_t k = 0; k < np; ++k) {
      const PairChunk c = pair_chunk(rows, n, k, j, dc);
      const __m512bh c0 = as_bh(c.lo), c1 = as_bh(c.hi);
      for (int i = 0; i < NR; ++i) {
        const __m512bh pb = as_bh(_mm512_set1_epi32(int(pr[i][k])));
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], pb, c0);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], pb, c1);
      }
    }
    for (int i = 0; i < NR && i < M; ++i) {
      _mm512_storeu_ps(orow[i] + j, acc[i][0]);
      _mm512_storeu_ps(orow[i] + j + 16, acc[i][1]);
    }
  }
}

void partial_bf16(const LatentAttn& a, int64_t s0, int64_t s1, float* mx, float* l, float* po_out,
                  float* p) {
  thread_local Bf16Scratch sc;
  const int64_t M = a.M, R = a.R, dc = a.dc, Rp = round32(R), dcp = round32(dc);
  const bool fp8 = a.dtype == CacheDtype::FP8;
  const int64_t rb = cache_row_bytes(a.dtype, R);
  uint16_t* qh = grow(sc.qh, M * Rp);
  uint16_t* ql = grow(sc.ql, M * Rp);
  uint16_t* tile = fp8 ? grow(sc.tile, kLatentTile * Rp) : nullptr;
  uint32_t* vt = grow(sc.vt, kPairs * dcp);
  uint32_t* p2 = grow(sc.p2, M * kPairs);
  float* po = zeros(sc.po, M * dcp);
  // q = q_hi + q_lo to 2^-16 relative (each part rounded to nearest even).
  for (int64_t m = 0; m < M; ++m) {
    const float* q = a.q + m * a.ldq;
    for (int64_t r = 0; r < Rp; r += 16) {
      const __mmask16 k = lanes_mask(R - r > 0 ? R - r : 0);
      const __m512 x = _mm512_maskz_loadu_ps(k, q + r);
      const __m256i h = f32_to_bf16_512(x);
      const __m512 hf = avx512_detail::bf16_to_f32(h);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qh + m * Rp + r), h);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ql + m * Rp + r), f32_to_bf16_512(_mm512_sub_ps(x, hf)));
    }
  }
  const uint8_t* rows[kLatentTile];
  // Each position's row scale: 1 for BF16 rows; FP8 rows overwrite the first n of a tile
  // (entries past n keep an earlier tile's finite scale and meet only zero weights).
  alignas(64) float rs[kLatentTile];
  for (int64_t k = 0; k < kLatentTile; ++k) rs[k] = 1.0f;
  const E4m3Lut lut;
  for (int64_t t0 = s0; t0 < s1; t0 += kLatentTile) {
    const int64_t n = min64(kLatentTile, s1 - t0);
    for (int64_t k = 0; k < n; ++k) {
      const uint8_t* src = row_at(a, t0 + k, rb);
      if (!fp8) {
        rows[k] = src;
        continue;
      }
      __builtin_memcpy(&rs[k], src + R, sizeof(float));
      uint16_t* dst = tile + k * Rp;
      for (int64_t r = 0; r < R; r += 32)
        _mm512_storeu_si512(dst + r, e4m3x32_to_bf16(lut, src + r, R - r));
      rows[k] = reinterpret_cast<const uint8_t*>(dst);
    }
    // 1. Scores.
    {
      const TilePrefetch pf(a, t0, n, s1);
      const uint16_t* qhp[kMR];
      const uint16_t* qlp[kMR];
      const uint8_t* cp[kNS];
      for (int64_t m = 0; m < M; m += kMR) {
        const int live = int(min64(kMR, M - m));
        for (int i = 0; i < kMR; ++i) {
          const int64_t mi = min64(m + i, M - 1);
          qhp[i] = qh + mi * Rp;
          qlp[i] = ql + mi * Rp;
        }
        for (int64_t k = 0; k < n; k += kNS) {
          pf.at(a, m, k);
          float sj[kNS];
          for (int j = 0; j < kNS; ++j) {
            cp[j] = rows[min64(k + j, n - 1)];
            sj[j] = a.scale * rs[min64(k + j, n - 1)];
          }
          const __m512 scl = _mm512_setr_ps(sj[0], sj[1], sj[2], sj[3], sj[0], sj[1], sj[2], sj[3],
                                            sj[0], sj[1], sj[2], sj[3], sj[0], sj[1], sj[2], sj[3]);
          store_scores(p, m, k, live, score_block_bf16(qhp, qlp, cp, R, scl));
        }
      }
    }
    // 2. Online softmax, then the weights times the row scales as BF16 pairs.
    const __m512 rs0 = _mm512_load_ps(rs), rs1 = _mm512_load_ps(rs + 16);
    for (int64_t m = 0; m < M; ++m) {
      float* prow = p + m * kLatentTile;
      tile_softmax(a, m, t0, n, mx, l, po + m * dcp, dcp, prow);
      const __m512 w0 = _mm512_mul_ps(_mm512_loadu_ps(prow), rs0);
      const __m512 w1 = _mm512_mul_ps(_mm512_loadu_ps(prow + 16), rs1);
      _mm512_storeu_si512(p2 + m * kPairs, (__m512i)_mm512_cvtne2ps_pbh(w1, w0));
    }
    // 3. Rows 2k and 2k + 1 interleaved (a missing odd row as zeros: its weight is 0, and
    // 0 · garbage could be NaN), then P·V.
    if (M <= kFuseRows) {
      if (M <= 4)
        pv_fused_bf16<4>(p2, po, M, rows, n, dc, dcp);
      else
        pv_fused_bf16<8>(p2, po, M, rows, n, dc, dcp);
      continue;
    }
    const int64_t np = (n + 1) / 2;
    for (int64_t k = 0; k < np; ++k)
      for (int64_t j = 0; j < dcp; j += 32) {
        const PairChunk c = pair_chunk(rows, n, k, j, dc);
        _mm512_storeu_si512(vt + k * dcp + j, c.lo);
        _mm512_storeu_si512(vt + k * dcp + j + 16, c.hi);
      }
    for (int64_t m = 0; m < M; m += kMR) {
      const uint32_t* pr[kMR];
      float* orow[kMR];
      for (int i = 0; i < kMR; ++i) {
        const int64_t mi = min64(m + i, M - 1);
        pr[i] = p2 + mi * kPairs;
        orow[i] = po + mi * dcp;
      }
      const int live = int(min64(kMR, M - m));
      int64_t j0 = 0;
      for (; j0 + 64 <= dcp; j0 += 64) pv_block_bf16<4>(pr, orow, live, vt, dcp, np, j0);
      if (j0 < dcp) pv_block_bf16<2>(pr, orow, live, vt, dcp, np, j0);
    }
  }
  // Back to column order: chunk lane 4L + e of the lo half holds column 8L + e, of the hi
  // half column 8L + 4 + e (e < 4).
  const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < dcp; j += 32) {
      const __m512 lo = _mm512_loadu_ps(po + m * dcp + j), hi = _mm512_loadu_ps(po + m * dcp + j + 16);
      float* o = po_out + m * dc + j;
      store16(o, lanes_mask(dc - j), _mm512_permutex2var_ps(lo, i0, hi));
      if (dc - j > 16) store16(o + 16, lanes_mask(dc - j - 16), _mm512_permutex2var_ps(lo, i1, hi));
    }
}

}  // namespace

void latent_attn_partial(const LatentAttn& a, int64_t s0, int64_t s1, float* mx, float* l,
                         float* po, float* p) {
  for (int64_t m = 0; m < a.M; ++m) {
    mx[m] = -INFINITY;
    l[m] = 0;
  }
  if (a.dtype != CacheDtype::F32) return partial_bf16(a, s0, s1, mx, l, po, p);
  for (int64_t j = 0; j < a.M * a.dc; ++j) po[j] = 0;
  partial_f32(a, s0, s1, mx, l, po, p);
}

}  // namespace dsv3::avx512
