// AVX2 + FMA GEMMs: the fallback for CPUs without AVX-512 (or without its BF16 part).
// BF16 operands are widened to F32 (exact) while packing and share the F32 kernel; FP8
// (E4M3) operands are decoded to F32 (exact) while packing, and their kernel promotes
// every 128-K block with its scales (gemm.h, report §3.3).
// Same blocked loop nest as the AVX-512 path (gemm_driver.inc), a 6x16 microkernel:
// 12 ymm accumulators + 2 B vectors + 1 broadcast = 15 of the 16 ymm registers, 12 FMAs
// per 2 vector loads + 6 broadcasts; 12 chains cover 2 FMA pipes x 4-cycle latency.
#include <immintrin.h>
#include "core/parallel.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_internal.h"

namespace dsv3::detail {

namespace {

#include "kernels/gemm_driver.inc"

constexpr int MR = 6, NR = 16;
// Blocking for a typical AVX2 core (32 KB L1D, >= 512 KB L2): B micro-panel
// 256 x 16 x 4 B = 16 KB in L1, A block 120 x 256 x 4 B = 120 KB in L2.
constexpr int64_t kKc = 256, kMc = MR * 20, kNc = 4096;

template <int M>
void ukr(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int nr, bool add) {
  __m256 c0[M], c1[M];
#pragma GCC unroll 6
  for (int i = 0; i < M; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b + k * NR), b1 = _mm256_load_ps(b + k * NR + 8);
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + k * MR + i);
      c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
    }
  }
  // Unrolled so the accumulators stay registers (a runtime-indexed c0[i] would force
  // GCC to keep the arrays in memory, inside the k loop too).
#pragma GCC unroll 6
  for (int i = 0; i < M; ++i) {
    float* ci = c + i * ldc;
    if (nr == NR) {
      if (add) {
        c0[i] = _mm256_add_ps(_mm256_loadu_ps(ci), c0[i]);
        c1[i] = _mm256_add_ps(_mm256_loadu_ps(ci + 8), c1[i]);
      }
      _mm256_storeu_ps(ci, c0[i]);
      _mm256_storeu_ps(ci + 8, c1[i]);
    } else {  // N edge: through a small buffer
      alignas(32) float t[NR];
      _mm256_store_ps(t, c0[i]);
      _mm256_store_ps(t + 8, c1[i]);
      for (int j = 0; j < nr; ++j) ci[j] = add ? ci[j] + t[j] : t[j];
    }
  }
}

inline float widen(float v) { return v; }
inline float widen(uint16_t v) {  // BF16 bits -> F32
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline const float* a_f32(const GemmF32&) { return nullptr; }
inline const float* a_f32(const GemmBF16& p) { return p.A_f32; }

template <class P>
struct OpAvx2 {
  static constexpr int MR = 6, NR = 16;
  int64_t KC = kKc, MC = kMc, NC = kNc;
  size_t a_panel_bytes = size_t(kKc) * MR * 4;  // 6144: a multiple of 64
  size_t b_panel_bytes = size_t(kKc) * NR * 4;
  const P* p;
  // dst[k][MR]; rows past mr are zero.
  void pack_a(int64_t i0, int mr, int64_t k0, int64_t kc, char* d) const {
    float* dst = (float*)d;
    if (const float* af = a_f32(*p)) {  // F32 activations, [M,K]
      for (int64_t k = 0; k < kc; ++k)
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = r >= mr ? 0.f : af[(i0 + r) * p->lda + k0 + k];
      return;
    }
    for (int64_t k = 0; k < kc; ++k)
      for (int r = 0; r < MR; ++r) {
        const int64_t i = i0 + r, kk = k0 + k;
        dst[k * MR + r] = r >= mr ? 0.f : widen(p->trans_a ? p->A[kk * p->lda + i] : p->A[i * p->lda + kk]);
      }
  }
  // dst[k][NR]; columns past nr are zero.
  void pack_b(int64_t j0, int nr, int64_t k0, int64_t kc, char* d) const {
    float* dst = (float*)d;
    if (p->trans_b) {
      for (int c = 0; c < NR; ++c) {
        const auto* s = p->B + (j0 + c) * p->ldb + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + c] = c < nr ? widen(s[k]) : 0.f;
      }
      return;
    }
    for (int64_t k = 0; k < kc; ++k) {
      const auto* s = p->B + (k0 + k) * p->ldb + j0;
      for (int c = 0; c < NR; ++c) dst[k * NR + c] = c < nr ? widen(s[c]) : 0.f;
    }
  }
  void kernel(int mr, int nr, int64_t, int64_t kc, const char* a, const char* b, int64_t i,
              int64_t j, bool first) const {
    float* c = p->C + i * p->ldc + j;
    const bool add = !first || p->accumulate;
    const float* fa = (const float*)a;
    const float* fb = (const float*)b;
    switch (mr) {
      case 1: ukr<1>(kc, fa, fb, c, p->ldc, nr, add); break;
      case 2: ukr<2>(kc, fa, fb, c, p->ldc, nr, add); break;
      case 3: ukr<3>(kc, fa, fb, c, p->ldc, nr, add); break;
      case 4: ukr<4>(kc, fa, fb, c, p->ldc, nr, add); break;
      case 5: ukr<5>(kc, fa, fb, c, p->ldc, nr, add); break;
      default: ukr<6>(kc, fa, fb, c, p->ldc, nr, add); break;
    }
  }
};

// ---- FP8 block-scaled GEMM -------------------------------------------------------------

constexpr int64_t kFp8Blk = 128;     // DeepSeek-V3's promotion interval N_C (report §3.3)
constexpr int64_t kKcFp8 = 2 * kFp8Blk;  // 256: the F32 kernel's KC, whole scale blocks
static_assert(kKcFp8 % kFp8Blk == 0, "FP8 K blocks must not straddle a scale block");

// 8 E4M3 codes (the low 8 bytes of v) -> 8 F32, exactly, without table lookups and
// without F32 subnormal arithmetic (so a caller's DAZ/FTZ cannot change it): a normal
// code S.EEEE.MMM is the F32 with exponent E - 7 + 127 and mantissa MMM, i.e. its low 7
// bits shifted to the F32 mantissa top plus a rebias of 120 in the exponent field; a
// subnormal code (E = 0) is MMM · 2^-9, an exact int -> float conversion and scaling;
// S.1111.111 is NaN, as e4m3_to_f32 (core/dtype.h) decodes it.
inline __m256 e4m3x8_to_f32(__m128i v) {
  const __m256i c = _mm256_cvtepu8_epi32(v);
  const __m256i mag = _mm256_and_si256(c, _mm256_set1_epi32(0x7F));
  const __m256 normal = _mm256_castsi256_ps(
      _mm256_add_epi32(_mm256_slli_epi32(mag, 20), _mm256_set1_epi32(120 << 23)));
  const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(1.f / 512.f));
  const __m256 is_sub = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(8), mag));
  const __m256 is_nan = _mm256_castsi256_ps(_mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F)));
  __m256 f = _mm256_blendv_ps(normal, sub, is_sub);
  f = _mm256_blendv_ps(f, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), is_nan);
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x80)), 24);
  return _mm256_or_ps(f, _mm256_castsi256_ps(sign));
}

// Rows r0..r7 of an 8x8 F32 block -> its columns, in place.
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 8
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 8
  for (int h = 0; h < 2; ++h) {  // rows 0-3, then 4-7
    __m256* th = t + 4 * h;
    u[4 * h + 0] = _mm256_shuffle_ps(th[0], th[2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(th[0], th[2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(th[1], th[3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(th[1], th[3], 0xEE);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x20);
    r[4 + i] = _mm256_permute2f128_ps(u[i], u[4 + i], 0x31);
  }
}

// c[M x 16] (+)= Σ_blocks (a-block · b-block) · (sa · sb), each 128-K block summed from
// fresh accumulators. The running sum t starts from C (when adding) and takes the blocks
// in increasing K as C += partial·(sa·sb), the reference's order of promotions (gemm.h),
// so only the order inside a block differs; the promotion is one FMA (one rounding
// instead of the reference's two, well inside the tests' per-block allowance). t lives
// in a small buffer: 12 accumulators + 12 running sums would not fit 16 ymm registers.
template <int M>
void ukr_fp8(int64_t kc, const float* a, const float* b, const float* sa, const float* sb,
             float* c, int64_t ldc, int nr, bool add) {
  alignas(32) float t[M * NR];  // [M, NR]
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < NR; ++j) t[i * NR + j] = add && j < nr ? c[i * ldc + j] : 0.f;
  for (int64_t blk = 0; blk * kFp8Blk < kc; ++blk) {
    __m256 c0[M], c1[M];
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
    const int64_t k1 = min64(kc, (blk + 1) * kFp8Blk);
    for (int64_t k = blk * kFp8Blk; k < k1; ++k) {
      const __m256 b0 = _mm256_load_ps(b + k * NR), b1 = _mm256_load_ps(b + k * NR + 8);
#pragma GCC unroll 6
      for (int i = 0; i < M; ++i) {
        const __m256 ai = _mm256_broadcast_ss(a + k * MR + i);
        c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
        c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
      }
    }
    const __m256 s0 = _mm256_loadu_ps(sb + blk * NR), s1 = _mm256_loadu_ps(sb + blk * NR + 8);
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) {
      const __m256 si = _mm256_broadcast_ss(sa + blk * MR + i);
      _mm256_store_ps(t + i * NR, _mm256_fmadd_ps(c0[i], _mm256_mul_ps(si, s0), _mm256_load_ps(t + i * NR)));
      _mm256_store_ps(t + i * NR + 8,
                      _mm256_fmadd_ps(c1[i], _mm256_mul_ps(si, s1), _mm256_load_ps(t + i * NR + 8)));
    }
  }
  for (int i = 0; i < M; ++i) {
    float* ci = c + i * ldc;
    if (nr == NR) {
      _mm256_storeu_ps(ci, _mm256_load_ps(t + i * NR));
      _mm256_storeu_ps(ci + 8, _mm256_load_ps(t + i * NR + 8));
    } else {
      for (int j = 0; j < nr; ++j) ci[j] = t[i * NR + j];
    }
  }
}

// FP8 panels: the decoded F32 items as the F32 kernel's (dst[k][MR], dst[k][NR]), then
// the per-block scales at a fixed offset ([kBlocks][MR], [kBlocks][NR]; 0 past mr / nr).
struct OpFP8Avx2 {
  static constexpr int MR = 6, NR = 16;
  static constexpr int64_t kBlocks = kKcFp8 / kFp8Blk;
  static constexpr size_t kAScaleOff = size_t(kKcFp8) * MR * 4;
  static constexpr size_t kBScaleOff = size_t(kKcFp8) * NR * 4;
  int64_t KC = kKcFp8, MC = kMc, NC = kNc;
  size_t a_panel_bytes = (kAScaleOff + size_t(kBlocks) * MR * 4 + 63) / 64 * 64;
  size_t b_panel_bytes = (kBScaleOff + size_t(kBlocks) * NR * 4 + 63) / 64 * 64;
  const GemmFP8* p;
  const uint16_t* lut = e4m3_bf16_table();  // E4M3 -> BF16, exact; widened to F32 here

  // A is [M,K], K-contiguous. Packed once per A block and reused across all of N, so a
  // scalar decode is cheap here.
  void pack_a(int64_t i0, int mr, int64_t k0, int64_t kc, char* d) const {
    float* dst = (float*)d;
    float* sa = (float*)(d + kAScaleOff);
    const int64_t nblk = ceil_div(kc, kFp8Blk), kb0 = k0 / kFp8Blk;
    for (int r = 0; r < MR; ++r) {
      if (r >= mr) {
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = 0.f;
        for (int64_t b = 0; b < nblk; ++b) sa[b * MR + r] = 0.f;
        continue;
      }
      const int64_t i = i0 + r;
      if (p->A_f32) {
        const float* s = p->A_f32 + i * p->lda + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = s[k];
        for (int64_t b = 0; b < nblk; ++b) sa[b * MR + r] = 1.f;
      } else if (p->A_bf16) {
        const uint16_t* s = p->A_bf16 + i * p->lda + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = widen(s[k]);
        for (int64_t b = 0; b < nblk; ++b) sa[b * MR + r] = 1.f;
      } else {
        const uint8_t* s = p->A + i * p->lda + k0;
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = widen(lut[s[k]]);
        for (int64_t b = 0; b < nblk; ++b) sa[b * MR + r] = p->a_scale[i * p->lda_scale + kb0 + b];
      }
    }
  }

  // B panels are decoded once per use in the skinny-M path, so decode 8 codes at a time:
  // !trans_b reads 16 contiguous codes per k; trans_b reads 8 k of 8 columns and
  // transposes. Edges (nr < 16, K tail) go element by element.
  void pack_b(int64_t j0, int nr, int64_t k0, int64_t kc, char* d) const {
    float* dst = (float*)d;
    if (p->trans_b) {
      for (int cb = 0; cb < NR; cb += 8) {
        int64_t k = 0;
        if (cb + 8 <= nr) {
          const uint8_t* s = p->B + (j0 + cb) * p->ldb + k0;
          for (; k + 8 <= kc; k += 8) {
            __m256 r[8];
#pragma GCC unroll 8
            for (int c = 0; c < 8; ++c)
              r[c] = e4m3x8_to_f32(_mm_loadl_epi64((const __m128i*)(s + c * p->ldb + k)));
            transpose8(r);
#pragma GCC unroll 8
            for (int q = 0; q < 8; ++q) _mm256_store_ps(dst + (k + q) * NR + cb, r[q]);
          }
        }
        for (; k < kc; ++k)
          for (int c = cb; c < cb + 8; ++c)
            dst[k * NR + c] = c < nr ? widen(lut[p->B[(j0 + c) * p->ldb + k0 + k]]) : 0.f;
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const uint8_t* s = p->B + (k0 + k) * p->ldb + j0;
        if (nr == NR) {
          const __m128i v = _mm_loadu_si128((const __m128i*)s);
          _mm256_store_ps(dst + k * NR, e4m3x8_to_f32(v));
          _mm256_store_ps(dst + k * NR + 8, e4m3x8_to_f32(_mm_srli_si128(v, 8)));
        } else {
          for (int c = 0; c < NR; ++c) dst[k * NR + c] = c < nr ? widen(lut[s[c]]) : 0.f;
        }
      }
    }
    pack_fp8_b_scales(*p, j0, nr, NR, k0, kc, (float*)(d + kBScaleOff));  // [kBlocks][NR]
  }

  void kernel(int mr, int nr, int64_t, int64_t kc, const char* a, const char* b, int64_t i,
              int64_t j, bool first) const {
    float* c = p->C + i * p->ldc + j;
    const bool add = !first || p->accumulate;
    const float* fa = (const float*)a;
    const float* fb = (const float*)b;
    const float* sa = (const float*)(a + kAScaleOff);
    const float* sb = (const float*)(b + kBScaleOff);
    switch (mr) {
      case 1: ukr_fp8<1>(kc, fa, fb, sa, sb, c, p->ldc, nr, add); break;
      case 2: ukr_fp8<2>(kc, fa, fb, sa, sb, c, p->ldc, nr, add); break;
      case 3: ukr_fp8<3>(kc, fa, fb, sa, sb, c, p->ldc, nr, add); break;
      case 4: ukr_fp8<4>(kc, fa, fb, sa, sb, c, p->ldc, nr, add); break;
      case 5: ukr_fp8<5>(kc, fa, fb, sa, sb, c, p->ldc, nr, add); break;
      default: ukr_fp8<6>(kc, fa, fb, sa, sb, c, p->ldc, nr, add); break;
    }
  }
};

// Up to this many rows of A the unpacked skinny kernel (gemm_small_avx2.cpp) runs instead.
// Measured, 1 thread, GFLOP/s packed / skinny, W 2048x2048 and 7168x2048: M = 1 7.8 / 19.4
// and 6.4 / 18.9, M = 4 28.3 / 50.4 and 23.2 / 38.9, M = 8 41.3 / 53.4 and 36.2 / 41.0,
// M = 12 54.8 / 53.5 and 45.7 / 45.1, M = 16 60.1 / 52.5 and 52.0 / 47.0.
constexpr int64_t kSmallMFp8Avx2 = 10;
// F32 and BF16 (no decode, so the skinny kernel pays off longer), 1 thread, GFLOP/s packed /
// skinny, W 2048x2048: F32 M = 1 3.1 / 20.6, 4 10.2 / 47.8, 16 29.2 / 45.0, 32 38.5 / 49.3,
// 64 49.3 / 55.8; BF16 M = 1 4.9 / 34.0, 4 18.6 / 67.0, 16 49.3 / 65.0, 32 54.9 / 61.1,
// 48 64.8 / 63.7, 64 72.6 / 63.0; BF16 W 512x256 (cache resident) M = 16 55.0 / 61.4.
constexpr int64_t kSmallMAvx2 = 32;

}  // namespace

void gemm_fp8_avx2(const GemmFP8& p, int threads) {
  if (p.M <= kSmallMFp8Avx2 && p.trans_b) return gemm_small_fp8_avx2(p, threads);
  OpFP8Avx2 op;
  op.p = &p;
  gemm_blocked(op, p.M, p.N, p.K, threads);
}

void gemm_f32_avx2(const GemmF32& p, int threads) {
  if (p.M <= kSmallMAvx2 && !p.trans_a && p.trans_b) return gemm_small_f32_avx2(p, threads);
  OpAvx2<GemmF32> op;
  op.p = &p;
  gemm_blocked(op, p.M, p.N, p.K, threads);
}

void gemm_bf16_avx2(const GemmBF16& p, int threads) {
  if (p.M <= kSmallMAvx2 && !p.trans_a && p.trans_b) return gemm_small_bf16_avx2(p, threads);
  OpAvx2<GemmBF16> op;
  op.p = &p;
  gemm_blocked(op, p.M, p.N, p.K, threads);
}

}  // namespace dsv3::detail
