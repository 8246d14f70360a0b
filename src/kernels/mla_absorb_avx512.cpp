// AVX-512 slice products of absorbed MLA decode (kernels/mla_absorb.h has the contract).
//
// Both kernels stage x·s (x times the weight's block scale, one F32 rounding) in a small
// stack panel, then stream the weight slice once per group of ≤ 4 tokens, decoding each
// 16-element vector to F32 in registers and feeding it to one FMA per token.
//
// FP8 E4M3 decode, exact and cheap: the code's 7 magnitude bits placed at bits 7..13 of an
// F16 (exponent field e, top 3 mantissa bits m) read as an F16 whose value is exactly
// decode(code)·2^-8, for normals (2^(e-15)·(1+m/8)) and subnormals (m/8·2^-14) alike, and
// VCVTPH2PS is exact. The 2^8 is folded into x·s. NaN codes (S.1111.111) are patched to an
// F16 NaN so they stay NaN.
// GCC 12 flags the "__Y = __Y" idiom inside its own intrinsic headers when they inline here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "kernels/mla_absorb.h"

namespace dsv3::avx512 {
namespace {

constexpr int kMaxT = 4;      // tokens per pass over the weights
constexpr int kPanel = 512;   // x·s values per token staged on the stack (a multiple of 128)
constexpr int kFp8Block = 128;
constexpr int64_t kAheadRows = 16;  // xw's software prefetch distance, rows

inline __mmask16 lanes(int64_t n) {
  return n <= 0 ? __mmask16(0) : n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
}

// 16 weights from element i of a row, as F32 (E4M3: decode·2^-8); masked-off lanes are 0.
template <DType DT>
inline __m512 load_w(const void* row, int64_t i, __mmask16 m) {
  if constexpr (DT == DType::F32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + i);
  } else if constexpr (DT == DType::BF16) {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (DT == DType::F16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + i));
  } else {
    const __m128i c = _mm_maskz_loadu_epi8(m, static_cast<const uint8_t*>(row) + i);
    const __m256i t = _mm256_slli_epi16(_mm256_cvtepu8_epi16(c), 8);  // S.mag at bits 15..8
    // Arithmetic shift: sign stays at bit 15 (and copies into 14, cleared by the mask).
    __m256i h = _mm256_and_si256(_mm256_srai_epi16(t, 1), _mm256_set1_epi16(int16_t(0xbfff)));
    const __m256i nan_mag = _mm256_set1_epi16(0x7f00);
    const __mmask16 nan = _mm256_cmpeq_epi16_mask(_mm256_and_si256(t, nan_mag), nan_mag);
    h = _mm256_mask_mov_epi16(h, nan, _mm256_set1_epi16(0x7e00));
    return _mm512_cvtph_ps(h);
  }
}

template <DType DT>
constexpr int64_t elem_size() {
  return DT == DType::F32 ? 4 : DT == DType::F8_E4M3 ? 1 : 2;
}

template <DType DT>
inline const void* row_ptr(const MlaAbsorb& p, int64_t r) {
  return static_cast<const char*>(p.w) + r * p.ldw * elem_size<DT>();
}

// Software prefetch of weight rows [r0, r1), columns [c0, c1) (the slices are small and
// read once, cold: without it the kernels wait on each miss, measured 3 GB/s).
template <DType DT>
inline void prefetch_rows(const MlaAbsorb& p, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r) {
    const char* a = static_cast<const char*>(row_ptr<DT>(p, r));
    for (int64_t b = c0 * elem_size<DT>(); b < c1 * elem_size<DT>(); b += 64) _mm_prefetch(a + b, _MM_HINT_T0);
  }
}

// Multiplier for x at weight row r, column block cb (E4M3: scale·2^8, see top).
template <DType DT>
inline float x_mult(const MlaAbsorb& p, int64_t r, int64_t cb) {
  if constexpr (DT == DType::F8_E4M3) return p.scale[(r / kFp8Block) * p.ld_scale + cb] * 256.0f;
  else return 1.0f;
}

// ---- slice_xw: y[t, c] = Σ_d x[t, d] · W[r0 + d, c] ------------------------------------------

// Columns [c, c + 16·V) (the first `cw` valid) of y for TN tokens, over panel rows [0, dn)
// whose x·s are xs[t][d]. Accumulators TN×V ≤ 16 zmm: each weight vector is decoded once
// and used by TN FMAs; V·TN ≥ 8 independent chains cover 2 FMA ports × 4 cycles latency.
template <DType DT, int TN, int V>
void xw_tile(const MlaAbsorb& p, int64_t t0, int64_t row0, int64_t dn, int64_t c, int64_t cw,
             const float (*xs)[kPanel], bool load_y) {
  __mmask16 m[V];
  for (int v = 0; v < V; ++v) m[v] = lanes(cw - 16 * v);
  __m512 acc[TN][V];
  for (int t = 0; t < TN; ++t)
    for (int v = 0; v < V; ++v)
      acc[t][v] = load_y ? _mm512_maskz_loadu_ps(m[v], p.y + (t0 + t) * p.ldy + c + 16 * v)
                         : _mm512_setzero_ps();
  for (int64_t d = 0; d < dn; ++d) {
    const void* row = row_ptr<DT>(p, row0 + d);
    // The first column tile fetches the whole row kAheadRows below (every column tile
    // reads it, and one sequential sweep is what the hardware streams well).
    if (c == 0 && d + kAheadRows < dn) prefetch_rows<DT>(p, row0 + d + kAheadRows, row0 + d + kAheadRows + 1, 0, p.K);
    __m512 w[V];
    for (int v = 0; v < V; ++v) w[v] = load_w<DT>(row, c + 16 * v, m[v]);
    for (int t = 0; t < TN; ++t) {
      const __m512 xb = _mm512_set1_ps(xs[t][d]);
      for (int v = 0; v < V; ++v) acc[t][v] = _mm512_fmadd_ps(xb, w[v], acc[t][v]);
    }
  }
  for (int t = 0; t < TN; ++t)
    for (int v = 0; v < V; ++v)
      _mm512_mask_storeu_ps(p.y + (t0 + t) * p.ldy + c + 16 * v, m[v], acc[t][v]);
}

template <DType DT, int TN>
void xw_tokens(const MlaAbsorb& p, int64_t t0) {
  constexpr int V = TN <= 2 ? 8 : 4;  // 128 or 64 columns per tile (within one scale block)
  alignas(64) float xs[kMaxT][kPanel];
  prefetch_rows<DT>(p, p.r0, p.r0 + (p.rows < kAheadRows ? p.rows : kAheadRows), 0, p.K);
  for (int64_t c0 = 0; c0 < p.K; c0 += kFp8Block) {
    const int64_t cb = c0 / kFp8Block, c_end = c0 + kFp8Block < p.K ? c0 + kFp8Block : p.K;
    for (int64_t d0 = 0; d0 < p.rows; d0 += kPanel) {
      const int64_t dn = p.rows - d0 < kPanel ? p.rows - d0 : kPanel;
      for (int64_t d = 0; d < dn; ++d) {
        const float s = x_mult<DT>(p, p.r0 + d0 + d, cb);
        for (int t = 0; t < TN; ++t) xs[t][d] = p.x[(t0 + t) * p.ldx + d0 + d] * s;
      }
      for (int64_t c = c0; c < c_end; c += 16 * V)
        xw_tile<DT, TN, V>(p, t0, p.r0 + d0, dn, c, c_end - c, xs, p.accumulate || d0 > 0);
    }
  }
}

template <DType DT>
void xw(const MlaAbsorb& p) {
  if (p.rows == 0) {  // empty sum
    if (!p.accumulate)
      for (int64_t t = 0; t < p.T; ++t)
        for (int64_t c = 0; c < p.K; ++c) p.y[t * p.ldy + c] = 0.0f;
    return;
  }
  for (int64_t t0 = 0; t0 < p.T; t0 += kMaxT) {
    switch (p.T - t0 < kMaxT ? p.T - t0 : kMaxT) {
      case 1: xw_tokens<DT, 1>(p, t0); break;
      case 2: xw_tokens<DT, 2>(p, t0); break;
      case 3: xw_tokens<DT, 3>(p, t0); break;
      default: xw_tokens<DT, 4>(p, t0); break;
    }
  }
}

// ---- slice_xwt: y[t, j] = Σ_c x[t, c] · W[r0 + j, c] -----------------------------------------

// Rows [j, j + R) of the slice for TN tokens over panel columns [c0, c0 + cw), x·s in xs.
// R×TN ≤ 16 accumulators; each weight vector decoded once, used by TN FMAs.
template <DType DT, int TN, int R>
void xwt_tile(const MlaAbsorb& p, int64_t t0, int64_t j, int64_t c0, int64_t cw,
              const float (*xs)[kPanel], bool load_y) {
  __m512 acc[R][TN];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TN; ++t) acc[r][t] = _mm512_setzero_ps();
  const void* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = row_ptr<DT>(p, p.r0 + j + r);
  // The rows two tiles on, this panel's columns.
  if (j + 3 * R <= p.rows) prefetch_rows<DT>(p, p.r0 + j + 2 * R, p.r0 + j + 3 * R, c0, c0 + cw);
  for (int64_t c = 0; c < cw; c += 16) {
    const __mmask16 m = lanes(cw - c);
    __m512 xv[TN];
    for (int t = 0; t < TN; ++t) xv[t] = _mm512_maskz_loadu_ps(m, xs[t] + c);
    for (int r = 0; r < R; ++r) {
      const __m512 w = load_w<DT>(rows[r], c0 + c, m);
      for (int t = 0; t < TN; ++t) acc[r][t] = _mm512_fmadd_ps(xv[t], w, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TN; ++t) {
      float* y = p.y + (t0 + t) * p.ldy + j + r;
      const float s = _mm512_reduce_add_ps(acc[r][t]);
      *y = load_y ? *y + s : s;
    }
}

template <DType DT, int TN>
void xwt_tokens(const MlaAbsorb& p, int64_t t0) {
  constexpr int R = TN <= 2 ? 8 : 4;
  alignas(64) float xs[kMaxT][kPanel];
  prefetch_rows<DT>(p, p.r0, p.r0 + (p.rows < 2 * R ? p.rows : 2 * R), 0, p.K < kPanel ? p.K : kPanel);
  for (int64_t c0 = 0; c0 < p.K; c0 += kPanel) {
    const int64_t cw = p.K - c0 < kPanel ? p.K - c0 : kPanel;
    const bool load_y = p.accumulate || c0 > 0;
    // Rows in runs that share one scale row (r0 need not be a multiple of 128).
    for (int64_t j = 0; j < p.rows;) {
      const int64_t r = p.r0 + j, next = (r / kFp8Block + 1) * kFp8Block - p.r0;
      const int64_t j_end = next < p.rows ? next : p.rows;
      for (int64_t c = 0; c < cw; ++c) {
        const float s = x_mult<DT>(p, r, (c0 + c) / kFp8Block);
        for (int t = 0; t < TN; ++t) xs[t][c] = p.x[(t0 + t) * p.ldx + c0 + c] * s;
      }
      for (; j + R <= j_end; j += R) xwt_tile<DT, TN, R>(p, t0, j, c0, cw, xs, load_y);
      for (; j < j_end; ++j) xwt_tile<DT, TN, 1>(p, t0, j, c0, cw, xs, load_y);
    }
  }
}

template <DType DT>
void xwt(const MlaAbsorb& p) {
  if (p.K == 0) {  // empty sum
    if (!p.accumulate)
      for (int64_t t = 0; t < p.T; ++t)
        for (int64_t j = 0; j < p.rows; ++j) p.y[t * p.ldy + j] = 0.0f;
    return;
  }
  for (int64_t t0 = 0; t0 < p.T; t0 += kMaxT) {
    switch (p.T - t0 < kMaxT ? p.T - t0 : kMaxT) {
      case 1: xwt_tokens<DT, 1>(p, t0); break;
      case 2: xwt_tokens<DT, 2>(p, t0); break;
      case 3: xwt_tokens<DT, 3>(p, t0); break;
      default: xwt_tokens<DT, 4>(p, t0); break;
    }
  }
}

}  // namespace

void slice_xw(const MlaAbsorb& p) {
  switch (p.dtype) {
    case DType::F32: xw<DType::F32>(p); break;
    case DType::BF16: xw<DType::BF16>(p); break;
    case DType::F16: xw<DType::F16>(p); break;
    default: xw<DType::F8_E4M3>(p); break;
  }
}

void slice_xwt(const MlaAbsorb& p) {
  switch (p.dtype) {
    case DType::F32: xwt<DType::F32>(p); break;
    case DType::BF16: xwt<DType::BF16>(p); break;
    case DType::F16: xwt<DType::F16>(p); break;
    default: xwt<DType::F8_E4M3>(p); break;
  }
}

}  // namespace dsv3::avx512
