// Packing for the AVX-512 GEMMs: copies a micro-panel of op(A) or op(B) into the
// contiguous, aligned order the microkernels stream (gemm_internal.h), absorbing the
// transposes, the edge tiles (zero padding) and, for FP8, the E4M3 -> BF16 decode.
// The BF16 kernels consume K in pairs (vdpbf16ps), so a 32-bit "item" is one F32 or one
// pair of BF16 values adjacent in K; both dtypes share the 32-bit transposes below.
// GCC 12 flags _mm512_undefined_ps() inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm_internal.h"

namespace dsv3::detail {

namespace {

constexpr int MR = kMR512, NR = kNR512;

inline __mmask16 mask16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); }
inline __mmask32 mask32(int64_t n) { return n >= 32 ? __mmask32(0xFFFFFFFFu) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1); }

// In-register transpose of 16 rows of 16 32-bit items: r[i][j] -> r[j][i].
inline void transpose16(__m512 r[16]) {
  __m512 a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // b[4q+j], 128-bit lane L: column 4L+j of rows 4q..4q+3
    const __m512d a0 = _mm512_castps_pd(a[4 * q]), a1 = _mm512_castps_pd(a[4 * q + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * q + 2]), a3 = _mm512_castps_pd(a[4 * q + 3]);
    b[4 * q + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 c01 = _mm512_shuffle_f32x4(b[j], b[4 + j], 0x44);
    const __m512 c23 = _mm512_shuffle_f32x4(b[j], b[4 + j], 0xEE);
    const __m512 d01 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], 0x44);
    const __m512 d23 = _mm512_shuffle_f32x4(b[8 + j], b[12 + j], 0xEE);
    r[j] = _mm512_shuffle_f32x4(c01, d01, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(c01, d01, 0xDD);
    r[8 + j] = _mm512_shuffle_f32x4(c23, d23, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(c23, d23, 0xDD);
  }
}

// The transposing pack shared by every operand stored with K contiguous (A not
// transposed, B transposed): `rows` source runs of 32-bit items (row i, items t0..t0+15
// come from load(i, t0)) become dst[item][W], W = the panel width (MR or NR), lanes
// past `rows` zero. 16x16 blocks go through registers.
template <int W, class Load>
void pack_t32(Load load, int rows, int64_t items, uint32_t* dst) {
  for (int c0 = 0; c0 < W; c0 += 16) {
    const int lanes = W - c0 < 16 ? W - c0 : 16;
    for (int64_t t0 = 0; t0 < items; t0 += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = c0 + i < rows ? load(c0 + i, t0) : _mm512_setzero_ps();
      transpose16(r);
      const int64_t nt = items - t0 < 16 ? items - t0 : 16;
      for (int t = 0; t < nt; ++t) {
        float* d = (float*)(dst + (t0 + t) * W + c0);
        if (lanes == 16) _mm512_storeu_ps(d, r[t]);
        else _mm512_mask_storeu_ps(d, mask16(lanes), r[t]);
      }
    }
  }
}

// Runs of F32 (elem_bytes 4) or BF16 (2, two per item) at src + i*ld_bytes, kc elements.
template <int W>
void pack_runs(const char* src, int64_t ld_bytes, int rows, int64_t kc, int elem_bytes, uint32_t* dst) {
  const int per_item = 4 / elem_bytes;
  const int64_t items = (kc + per_item - 1) / per_item;
  pack_t32<W>([&](int i, int64_t t0) {
        const char* p = src + i * ld_bytes + t0 * 4;
        const int64_t left = kc - t0 * per_item;  // source elements left in the run
        return elem_bytes == 4 ? _mm512_maskz_loadu_ps(mask16(left), p)
                               : _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mask32(left), p));
      }, rows, items, dst);
}

// Word indices that interleave two registers of 32 BF16 (rows k and k+1) into pairs:
// out0 = (a0,b0,a1,b1,...,a15,b15), out1 = the same for columns 16..31.
alignas(64) constexpr uint16_t kPairIdx[64] = {
    0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
    8,  40, 9,  41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47,
    16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
    24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};

#include "kernels/gemm_e4m3_avx512.inc"

}  // namespace

void pack_a_f32_avx512(const float* A, int64_t lda, bool trans, int64_t i0, int mr,
                       int64_t k0, int64_t kc, float* dst) {
  if (trans) {  // A stored [K,M]: each k holds the mr values contiguously
    static_assert(MR <= 16, "one masked vector covers a column of the A panel");
    const __mmask16 m = mask16(mr);
    for (int64_t k = 0; k < kc; ++k) {
      _mm512_mask_storeu_ps(dst + k * MR, mask16(MR), _mm512_maskz_loadu_ps(m, A + (k0 + k) * lda + i0));
    }
    return;
  }
  pack_runs<MR>((const char*)(A + i0 * lda + k0), lda * 4, mr, kc, 4, (uint32_t*)dst);
}

void pack_b_f32_avx512(const float* B, int64_t ldb, bool trans, int64_t j0, int nr,
                       int64_t k0, int64_t kc, float* dst) {
  if (trans) {
    pack_runs<NR>((const char*)(B + j0 * ldb + k0), ldb * 4, nr, kc, 4, (uint32_t*)dst);
    return;
  }
  const __mmask16 m0 = mask16(nr), m1 = mask16(nr > 16 ? nr - 16 : 0);
  for (int64_t k = 0; k < kc; ++k) {
    const float* s = B + (k0 + k) * ldb + j0;
    _mm512_store_ps(dst + k * NR, _mm512_maskz_loadu_ps(m0, s));
    _mm512_store_ps(dst + k * NR + 16, _mm512_maskz_loadu_ps(m1, s + 16));
  }
}

void pack_a_bf16_avx512(const uint16_t* A, int64_t lda, bool trans, int64_t i0, int mr,
                        int64_t k0, int64_t kc, uint32_t* dst) {
  const int64_t ks = (kc + 1) / 2;
  if (trans) {  // A stored [K,M]: interleave rows k and k+1
    uint16_t* d16 = (uint16_t*)dst;
    for (int64_t s = 0; s < ks; ++s) {
      const uint16_t* r0 = A + (k0 + 2 * s) * lda + i0;
      const bool has1 = 2 * s + 1 < kc;
      for (int r = 0; r < MR; ++r) {
        d16[(s * MR + r) * 2] = r < mr ? r0[r] : 0;
        d16[(s * MR + r) * 2 + 1] = (r < mr && has1) ? r0[lda + r] : 0;
      }
    }
    return;
  }
  pack_runs<MR>((const char*)(A + i0 * lda + k0), lda * 2, mr, kc, 2, dst);
}

void pack_b_bf16_avx512(const uint16_t* B, int64_t ldb, bool trans, int64_t j0, int nr,
                        int64_t k0, int64_t kc, uint32_t* dst) {
  if (trans) {
    pack_runs<NR>((const char*)(B + j0 * ldb + k0), ldb * 2, nr, kc, 2, dst);
    return;
  }
  // B stored [K,N]: item (s, c) = (B[2s][c], B[2s+1][c]); a two-source word permute
  // interleaves rows 2s and 2s+1.
  const __m512i idx0 = _mm512_load_si512(kPairIdx), idx1 = _mm512_load_si512(kPairIdx + 32);
  const __mmask32 m = mask32(nr);
  const int64_t ks = (kc + 1) / 2;
  for (int64_t s = 0; s < ks; ++s) {
    const uint16_t* r0 = B + (k0 + 2 * s) * ldb + j0;
    const __m512i v0 = _mm512_maskz_loadu_epi16(m, r0);
    const __m512i v1 = 2 * s + 1 < kc ? _mm512_maskz_loadu_epi16(m, r0 + ldb) : _mm512_setzero_si512();
    _mm512_store_si512(dst + s * NR, _mm512_permutex2var_epi16(v0, idx0, v1));
    _mm512_store_si512(dst + s * NR + 16, _mm512_permutex2var_epi16(v0, idx1, v1));
  }
}

// FP8: the decode is fused into the loads of the BF16 packing (each 32-code load
// becomes one register of BF16 pairs).
void pack_a_e4m3_avx512(const uint8_t* A, int64_t lda, int64_t i0, int mr, int64_t k0,
                        int64_t kc, uint32_t* dst) {
  const E4m3Lut lut;
  pack_t32<MR>([&](int i, int64_t t0) {
        return _mm512_castsi512_ps(e4m3x32_to_bf16(lut, A + (i0 + i) * lda + k0 + 2 * t0, kc - 2 * t0));
      }, mr, (kc + 1) / 2, dst);
}

// B is the big operand of skinny-M GEMMs, so its decode is fused into the transpose /
// interleave: each 32-code load becomes one register of BF16 pairs directly.
void pack_b_e4m3_avx512(const uint8_t* B, int64_t ldb, bool trans, int64_t j0, int nr,
                        int64_t k0, int64_t kc, uint32_t* dst) {
  const E4m3Lut lut;
  const int64_t items = (kc + 1) / 2;
  if (trans) {  // column c = the K-contiguous run B + (j0+c)*ldb + k0
    pack_t32<NR>([&](int c, int64_t t0) {
          return _mm512_castsi512_ps(e4m3x32_to_bf16(lut, B + (j0 + c) * ldb + k0 + 2 * t0, kc - 2 * t0));
        }, nr, items, dst);
    return;
  }
  // B stored [K,N]: decode rows 2s and 2s+1, interleave them into pairs.
  const __m512i idx0 = _mm512_load_si512(kPairIdx), idx1 = _mm512_load_si512(kPairIdx + 32);
  for (int64_t s = 0; s < items; ++s) {
    const uint8_t* r0 = B + (k0 + 2 * s) * ldb + j0;
    const __m512i v0 = e4m3x32_to_bf16(lut, r0, nr);
    const __m512i v1 = 2 * s + 1 < kc ? e4m3x32_to_bf16(lut, r0 + ldb, nr) : _mm512_setzero_si512();
    _mm512_store_si512(dst + s * NR, _mm512_permutex2var_epi16(v0, idx0, v1));
    _mm512_store_si512(dst + s * NR + 16, _mm512_permutex2var_epi16(v0, idx1, v1));
  }
}

}  // namespace dsv3::detail
