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
// GCC 12 flags the "__Y = __Y" idiom inside its own intrinsic headers (_mm512_reduce_*) when
// they inline here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/fp8_avx512.h"
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

// out[i][j] = scale · q_i · c_j over R columns, for kMR rows and kNS positions.
inline void score_block(const float* const* qp, const float* const* cp, int64_t R, float scale,
                        float (*out)[kNS]) {
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
  _mm512_storeu_ps(&out[0][0], _mm512_mul_ps(_mm512_set1_ps(scale), v));
}

// Address of cache position s's stored row (contiguous or through the block table).
const uint8_t* row_at(const LatentAttn& a, int64_t s, int64_t rb) {
  const uint8_t* base = static_cast<const uint8_t*>(a.cache);
  if (!a.block_table) return base + s * rb;
  return base + int64_t(a.block_table[s / a.block_rows]) * a.block_stride + (s % a.block_rows) * rb;
}

// dst [R] = stored row src decoded, bit-identical to cache_decode_row (BF16: exact widening;
// FP8: exact E4M3 value times the row's scale, one rounding).
void decode_row(float* dst, const uint8_t* src, int64_t R, CacheDtype d) {
  using namespace avx512_detail;
  if (d == CacheDtype::BF16) {
    // Byte addressing: a stored row need not be 2-byte aligned (unaligned vector loads).
    int64_t r = 0;
    for (; r + 16 <= R; r += 16)
      _mm512_storeu_ps(dst + r, bf16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * r))));
    if (r < R) {
      const __mmask16 k = lanes_mask(R - r);
      _mm512_mask_storeu_ps(dst + r, k, bf16_to_f32(_mm256_maskz_loadu_epi16(k, src + 2 * r)));
    }
    return;
  }
  float s;
  __builtin_memcpy(&s, src + R, sizeof(float));
  const __m512 vs = _mm512_set1_ps(s);
  int64_t r = 0;
  for (; r + 16 <= R; r += 16)
    _mm512_storeu_ps(dst + r, _mm512_mul_ps(e4m3_to_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + r))), vs));
  if (r < R) {
    const __mmask16 k = lanes_mask(R - r);
    _mm512_mask_storeu_ps(dst + r, k, _mm512_mul_ps(e4m3_to_f32(_mm_maskz_loadu_epi8(k, src + r)), vs));
  }
}

// rows[k] = the F32 values of position t0 + k, k < n: the stored row itself for an F32 cache,
// else its decoded copy in tb [n, R].
void tile_rows(const LatentAttn& a, int64_t t0, int64_t n, float* tb, const float** rows) {
  const int64_t rb = cache_row_bytes(a.dtype, a.R);
  for (int64_t k = 0; k < n; ++k) {
    const uint8_t* src = row_at(a, t0 + k, rb);
    if (a.dtype == CacheDtype::F32) {
      rows[k] = reinterpret_cast<const float*>(src);
    } else {
      decode_row(tb + k * a.R, src, a.R, a.dtype);
      rows[k] = tb + k * a.R;
    }
  }
}

// p[m, k] = scale · q_m · rows[k] for k < n (n ≤ kLatentTile), all M rows.
void tile_scores(const LatentAttn& a, const float* const* rows, int64_t n, float* p) {
  const float* qp[kMR];
  const float* cp[kNS];
  float out[kMR][kNS];
  for (int64_t m = 0; m < a.M; m += kMR) {
    // Rows past M repeat the last row (computed, not stored): no tail variant needed.
    for (int i = 0; i < kMR; ++i) qp[i] = a.q + min64(m + i, a.M - 1) * a.ldq;
    for (int64_t k = 0; k < n; k += kNS) {
      for (int j = 0; j < kNS; ++j) cp[j] = rows[min64(k + j, n - 1)];
      score_block(qp, cp, a.R, a.scale, out);
      for (int i = 0; i < kMR && m + i < a.M; ++i)
        for (int j = 0; j < kNS && k + j < n; ++j) p[(m + i) * kLatentTile + k + j] = out[i][j];
    }
  }
}

// Online softmax step of row m over the tile: p row becomes exp(z − new max) (0 past the
// valid positions); l and the partial o are rescaled by exp(old max − new max).
void tile_softmax(const LatentAttn& a, int64_t m, int64_t t0, int64_t n, float* mx, float* l,
                  float* po, float* prow) {
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
    float* o = po + m * a.dc;
    const __m512 va = _mm512_set1_ps(alpha);
    for (int64_t j = 0; j < a.dc; j += 16) {
      const __mmask16 k = lanes_mask(a.dc - j);
      store16(o + j, k, _mm512_mul_ps(va, load16_m(k, o + j)));
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

}  // namespace

void latent_attn_partial(const LatentAttn& a, int64_t s0, int64_t s1, float* mx, float* l,
                         float* po, float* p, float* tb) {
  const float* rows[kLatentTile];
  for (int64_t m = 0; m < a.M; ++m) {
    mx[m] = -INFINITY;
    l[m] = 0;
  }
  for (int64_t j = 0; j < a.M * a.dc; ++j) po[j] = 0;
  for (int64_t t0 = s0; t0 < s1; t0 += kLatentTile) {
    const int64_t n = min64(kLatentTile, s1 - t0);
    tile_rows(a, t0, n, tb, rows);
    tile_scores(a, rows, n, p);
    for (int64_t m = 0; m < a.M; ++m) tile_softmax(a, m, t0, n, mx, l, po, p + m * kLatentTile);
    tile_pv(a, rows, n, p, po);
  }
}

}  // namespace dsv3::avx512
