// Packing for the AVX-512 GEMMs: copies a micro-panel of op(A) or op(B) into the
// contiguous, aligned order the microkernels stream (gemm_internal.h), absorbing the
// transposes, the edge tiles (zero padding) and, for FP8, the E4M3 -> BF16 decode.
// The BF16 kernels consume K in pairs (vdpbf16ps), so a 32-bit "item" is one F32 or one
// pair of BF16 values adjacent in K; both dtypes share the 32-bit transposes below.
// GCC 12 flags _mm512_undefined_ps() inside its own intrinsics as maybe-uninitialized (and,
// in the ASan build, the "__Y = __Y" idiom of _mm512_unpacklo_ps as uninitialized).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm_internal.h"
#include "kernels/simd_avx512.h"

namespace dsv3::detail {

namespace {

constexpr int MR = kMR512, NR = kNR512;

inline __mmask16 mask16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); }

// The transposing pack of the K-contiguous operands whose panel is k-major (B transposed,
// the broadcast path's rows of A; a K-contiguous A of the packed path is blocked instead,
// gemm_internal.h): `rows` source runs of 32-bit items (row i, items t0..t0+15
// come from load(i, t0)) become dst[item * stride + lane], lane < W = the panel width
// (MR, NR or 16), lanes past `rows` zero; stride defaults to W. 16x16 blocks go through
// registers.
template <int W, class Load>
void pack_t32(Load load, int rows, int64_t items, uint32_t* dst, int64_t stride = W) {
  for (int c0 = 0; c0 < W; c0 += 16) {
    const int lanes = W - c0 < 16 ? W - c0 : 16;
    for (int64_t t0 = 0; t0 < items; t0 += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) r[i] = c0 + i < rows ? load(c0 + i, t0) : _mm512_setzero_ps();
      transpose16(r);
      const int64_t nt = items - t0 < 16 ? items - t0 : 16;
      for (int t = 0; t < nt; ++t) {
        float* d = (float*)(dst + (t0 + t) * stride + c0);
        if (lanes == 16) _mm512_storeu_ps(d, r[t]);
        else _mm512_mask_storeu_ps(d, mask16(lanes), r[t]);
      }
    }
  }
}

// The blocked A panel (gemm_internal.h) of `rows` source runs loaded as pack_t32's: each
// vector of 16 items stored as it is, no transpose. A load past the run's end must be zeros
// (the last block's items past kc).
template <class Load>
void pack_blocked(Load load, int rows, int64_t items, uint32_t* dst) {
  for (int r = 0; r < rows; ++r)
    for (int64_t t0 = 0; t0 < items; t0 += 16) _mm512_store_ps((float*)(dst + t0 * MR + r * 16), load(r, t0));
}

// Runs of F32 (elem_bytes 4) or BF16 (2, two per item) at src + i*ld_bytes, kc elements,
// into a k-major panel of width W, or (Blocked) the blocked A panel.
template <int W, bool Blocked = false>
void pack_runs(const char* src, int64_t ld_bytes, int rows, int64_t kc, int elem_bytes, uint32_t* dst) {
  const int per_item = 4 / elem_bytes;
  const int64_t items = (kc + per_item - 1) / per_item;
  const auto load = [&](int i, int64_t t0) {
    const char* p = src + i * ld_bytes + t0 * 4;
    const int64_t left = kc - t0 * per_item;  // source elements left in the run
    return elem_bytes == 4 ? _mm512_maskz_loadu_ps(mask16(left), p)
                           : _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mask32(left), p));
  };
  if constexpr (Blocked)
    pack_blocked(load, rows, items, dst);
  else
    pack_t32<W>(load, rows, items, dst);
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
  pack_runs<MR, true>((const char*)(A + i0 * lda + k0), lda * 4, mr, kc, 4, (uint32_t*)dst);
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

namespace {

// Two rows of mr (<= 16) BF16 values as 16 items (lo = row a, hi = row b), the A panel of
// a transposed A: item r = (A[k][i0+r], A[k+1][i0+r]).
inline void store_pairs(uint32_t* dst, __m256i a, __m256i b) {
  const __m512i v = _mm512_or_si512(_mm512_cvtepu16_epi32(a), _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
  _mm512_mask_storeu_epi32(dst, mask16(MR), v);
}

}  // namespace

void pack_a_bf16_avx512(const uint16_t* A, int64_t lda, bool trans, int64_t i0, int mr,
                        int64_t k0, int64_t kc, uint32_t* dst) {
  const int64_t ks = (kc + 1) / 2;
  if (trans) {  // A stored [K,M]: interleave rows k and k+1
    const __mmask16 m = mask16(mr);
    for (int64_t s = 0; s < ks; ++s) {
      const uint16_t* r0 = A + (k0 + 2 * s) * lda + i0;
      const __m256i a = _mm256_maskz_loadu_epi16(m, r0);
      const __m256i b = 2 * s + 1 < kc ? _mm256_maskz_loadu_epi16(m, r0 + lda) : _mm256_setzero_si256();
      store_pairs(dst + s * MR, a, b);
    }
    return;
  }
  pack_runs<MR, true>((const char*)(A + i0 * lda + k0), lda * 2, mr, kc, 2, dst);
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

// Items t0..t0+15 of a run whose 32-item chunks are loaded by chunk(c0) as two registers
// (items c0..c0+15, c0+16..c0+31); with perm64 the items come in the order of
// e4m3x64_to_bf16's output (gemm_e4m3_avx512.inc): item s of a chunk is its pair
// 8·((s mod 16) / 4) + 4·(s >= 16) + s mod 4.
template <class Chunk>
inline __m512 perm64_items(Chunk chunk, int64_t t0) {
  alignas(64) static constexpr int32_t kIdx[32] = {0,  1,  2,  3,  8,  9,  10, 11, 16, 17, 18,
                                                   19, 24, 25, 26, 27, 4,  5,  6,  7,  12, 13,
                                                   14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  __m512i r0, r1;
  chunk(t0 / 32 * 32, &r0, &r1);
  const __m512i idx = _mm512_load_si512(kIdx + (t0 % 32 == 0 ? 0 : 16));
  return _mm512_castsi512_ps(_mm512_permutex2var_epi32(r0, idx, r1));
}

void pack_rows16_bf16_avx512(const uint16_t* A, int64_t lda, int64_t i0, int rows, int64_t k0,
                             int64_t kc, uint32_t* dst, int64_t stride, bool perm64) {
  auto load = [&](int i, int64_t t0) {  // 32 BF16 = 16 items from item t0 of row i
    return _mm512_maskz_loadu_epi16(mask32(kc - 2 * t0), A + (i0 + i) * lda + k0 + 2 * t0);
  };
  if (perm64) {
    pack_t32<16>([&](int i, int64_t t0) {
          return perm64_items([&](int64_t c0, __m512i* r0, __m512i* r1) {
                *r0 = load(i, c0);
                *r1 = load(i, c0 + 16);
              }, t0);
        }, rows, (kc + 63) / 64 * 32, dst, stride);
    return;
  }
  pack_t32<16>([&](int i, int64_t t0) { return _mm512_castsi512_ps(load(i, t0)); }, rows,
               (kc + 1) / 2, dst, stride);
}

// FP8: the decode is fused into the loads of the BF16 packing (each 32-code load
// becomes one register of BF16 pairs).
void pack_a_e4m3_avx512(const uint8_t* A, int64_t lda, int64_t i0, int mr, int64_t k0,
                        int64_t kc, uint32_t* dst) {
  const E4m3Lut lut;
  pack_blocked([&](int i, int64_t t0) {
        return _mm512_castsi512_ps(e4m3x32_to_bf16(lut, A + (i0 + i) * lda + k0 + 2 * t0, kc - 2 * t0));
      }, mr, (kc + 1) / 2, dst);
}

void pack_rows16_e4m3_avx512(const uint8_t* A, int64_t lda, int64_t i0, int rows, int64_t k0,
                             int64_t kc, uint32_t* dst, int64_t stride) {
  const E4m3Lut lut;
  pack_t32<16>([&](int i, int64_t t0) {
        return perm64_items([&](int64_t c0, __m512i* r0, __m512i* r1) {
              const uint8_t* src = A + (i0 + i) * lda + k0 + 2 * c0;
              *r0 = e4m3x32_to_bf16(lut, src, kc - 2 * c0);
              *r1 = e4m3x32_to_bf16(lut, src + 32, kc - 2 * c0 - 32);
            }, t0);
      }, rows, (kc + 63) / 64 * 32, dst, stride);
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

// ---- Widened to F32 (Bf16Mode::Fma, core/cpu.h) ----------------------------------------
// The same panels as pack_{a,b}_f32_avx512 (one F32 item per element of K), from BF16
// (exact: the BF16 bits are the F32's top half) or E4M3 codes. E4M3 goes through FP16:
// S.EEEE.MMM shifted into FP16's S.EEEEE.MMMMMMMMMM fields is the FP16 value 2^-8 times
// the code's (the exponent bias is 15 instead of 7; E4M3 subnormals land on FP16
// subnormals, exactly), and VCVTPH2PS widens it exactly. So these panels hold 2^-8 · the
// E4M3 value; the FP8 kernel folds 256 into each side's block scale, an exact power-of-two
// rescaling of every product and partial sum (kE4m3F32Bias, gemm_internal.h).
// S.1111.111 (NaN) becomes an FP16 NaN.

namespace {

// widen16(p, n): 16 elements from p (the first n; zeros past them) as F32, for BF16, E4M3
// (/ 256, as above) and F32 sources alike: what the widened packings below share.
inline __m512 widen16(const uint16_t* p, int64_t n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask16(n), p)), 16));
}

// 16 codes as FP16 bits (the mapping above): x = code << 7 puts the magnitude in bits
// 7..13 and the sign in bit 14; adding bit 14 to itself moves the sign to bit 15.
inline __m256i e4m3x16_to_f16(__m128i c) {
  const __m256i x = _mm256_slli_epi16(_mm256_cvtepu8_epi16(c), 7);
  const __m256i r = _mm256_add_epi16(x, _mm256_and_si256(x, _mm256_set1_epi16(0x4000)));
  const __mmask16 nan = _mm256_cmpeq_epi16_mask(_mm256_and_si256(x, _mm256_set1_epi16(0x3F80)), _mm256_set1_epi16(0x3F80));
  return _mm256_mask_mov_epi16(r, nan, _mm256_set1_epi16(0x7E00));
}

inline __m512 widen16(const uint8_t* p, int64_t n) {
  return _mm512_cvtph_ps(e4m3x16_to_f16(_mm_maskz_loadu_epi8(mask16(n), p)));
}

inline __m512 widen16(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(mask16(n), p); }

// The same for 32 codes in 512-bit registers (fewer instructions per code where a run is
// decoded whole): out0 = codes 0..15, out1 = 16..31.
inline void e4m3x32_to_f32_div256(const uint8_t* p, int64_t n, __m512* out0, __m512* out1) {
  const __m512i x = _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(mask32(n), p)), 7);
  const __m512i mag = _mm512_and_si512(x, _mm512_set1_epi16(0x3F80));
  __m512i r = _mm512_add_epi16(x, _mm512_and_si512(x, _mm512_set1_epi16(0x4000)));
  r = _mm512_mask_mov_epi16(r, _mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x3F80)), _mm512_set1_epi16(0x7E00));
  *out0 = _mm512_cvtph_ps(_mm512_castsi512_si256(r));
  *out1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(r, 1));
}

// Rows of mr <= 16 widened values, one per k: the k-major A panel of a transposed A.
template <class Load>
void pack_kmajor_a(Load load, int64_t kc, float* dst) {
  for (int64_t k = 0; k < kc; ++k) _mm512_mask_storeu_ps(dst + k * MR, mask16(MR), load(k));
}

// The blocked A panel (gemm_internal.h) of K-contiguous rows, widened.
template <class T>
void pack_a_blocked_wide(const T* A, int64_t lda, int64_t i0, int mr, int64_t k0, int64_t kc, float* dst) {
  pack_blocked([&](int i, int64_t t0) { return widen16(A + (i0 + i) * lda + k0 + t0, kc - t0); }, mr, kc,
               (uint32_t*)dst);
}

// The B panel, widened: transposed from B [N,K], or row by row from B [K,N].
template <class T>
void pack_b_wide(const T* B, int64_t ldb, bool trans, int64_t j0, int nr, int64_t k0, int64_t kc, float* dst) {
  if (trans) {
    pack_t32<NR>([&](int c, int64_t t0) { return widen16(B + (j0 + c) * ldb + k0 + t0, kc - t0); }, nr, kc,
                 (uint32_t*)dst);
    return;
  }
  for (int64_t k = 0; k < kc; ++k) {
    const T* s = B + (k0 + k) * ldb + j0;
    _mm512_store_ps(dst + k * NR, widen16(s, nr));
    _mm512_store_ps(dst + k * NR + 16, widen16(s + 16, nr - 16));
  }
}

}  // namespace

void pack_a_bf16_f32_avx512(const uint16_t* A, int64_t lda, bool trans, int64_t i0, int mr,
                            int64_t k0, int64_t kc, float* dst) {
  if (trans) {
    pack_kmajor_a([&](int64_t k) { return widen16(A + (k0 + k) * lda + i0, mr); }, kc, dst);
    return;
  }
  pack_a_blocked_wide(A, lda, i0, mr, k0, kc, dst);
}

void pack_b_bf16_f32_avx512(const uint16_t* B, int64_t ldb, bool trans, int64_t j0, int nr,
                            int64_t k0, int64_t kc, float* dst) {
  pack_b_wide(B, ldb, trans, j0, nr, k0, kc, dst);
}

void pack_a_e4m3_f32_avx512(const uint8_t* A, int64_t lda, int64_t i0, int mr, int64_t k0,
                            int64_t kc, float* dst) {
  pack_a_blocked_wide(A, lda, i0, mr, k0, kc, dst);
}

void pack_b_e4m3_f32_avx512(const uint8_t* B, int64_t ldb, bool trans, int64_t j0, int nr,
                            int64_t k0, int64_t kc, float* dst) {
  pack_b_wide(B, ldb, trans, j0, nr, k0, kc, dst);
}

void pack_rows16_fp8a_f32_avx512(const GemmFP8& p, int64_t i0, int rows, int64_t k0, int64_t kc,
                                 float* dst, int64_t stride) {
  const int64_t items = (kc + 63) / 64 * 64;
  auto pack = [&](const auto* A) {
    pack_t32<16>([&](int i, int64_t t0) { return widen16(A + (i0 + i) * p.lda + k0 + t0, kc - t0); }, rows,
                 items, (uint32_t*)dst, stride);
  };
  if (p.A_f32) pack(p.A_f32);
  else if (p.A_bf16) pack(p.A_bf16);
  else pack(p.A);
}

void decode_e4m3_rows_f32_avx512(const uint8_t* W, int64_t ldw, int rows, int64_t kc, float* dst,
                                 int64_t ld_dst) {
  const int64_t items = (kc + 63) / 64 * 64;
  for (int r = 0; r < rows; ++r)
    for (int64_t k = 0; k < items; k += 32) {
      __m512 v0, v1;
      e4m3x32_to_f32_div256(W + r * ldw + k, kc - k, &v0, &v1);
      _mm512_store_ps(dst + r * ld_dst + k, v0);
      _mm512_store_ps(dst + r * ld_dst + k + 16, v1);
    }
}

}  // namespace dsv3::detail
