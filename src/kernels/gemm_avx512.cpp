// AVX-512 GEMMs (F32 with FMA, BF16 and FP8 with vdpbf16ps): the 14x32 microkernels, the
// operand policies for the shared blocked loop nest (gemm_driver.inc) and the entry points.
// GCC 12 flags _mm512_undefined_ps() inside its own intrinsics as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include "core/cpu.h"
#include "core/parallel.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/gemm_internal.h"

namespace dsv3::detail {

namespace {

#include "kernels/gemm_driver.inc"

constexpr int MR = kMR512, NR = kNR512;
static_assert(NR == 32, "the microkernels hold a row of the tile in two zmm registers");

// Cache blocking for Zen 4 (32 KB L1D, 1 MB L2 per core, 32 MB shared L3), in K elements.
// Measured (per-core GFLOP/s at 1024x2048x2048, KC from 128 to 1536): the textbook choice,
// a B micro-panel that fits L1 (KC 192 F32), loses ~15% to KC 512: a k step needs only
// 128 B of B + 56 B of A per 28 FMA cycles, which L2 (32 B/cycle) streams easily, while a
// longer KC halves the C tile traffic and the loop overheads. So: A block (MC x kc) in
// L2, B micro-panels streamed from L2, the B block (kc x NC) in L3. MC = 518 (an A block
// as big as L2) measured 3-5% faster than 224/336 at M = 512..2048: up to 518 rows take
// the driver's one-A-block path, whose B panels never leave L2 (gemm_driver.inc).
constexpr int64_t kKcF32 = 512;          // 512 x 32 x 4 B = 64 KB B micro-panel
constexpr int64_t kMcF32 = MR * 37;      // 518 x 512 x 4 B = 1 MB A block
constexpr int64_t kKcBf16 = 1024;        // 512 pairs x 32 x 4 B = 64 KB
constexpr int64_t kMcBf16 = MR * 37;     // 518 x 1024 x 2 B = 1 MB
constexpr int64_t kKcFp8 = 1024;         // 8 promotion blocks of 128
constexpr int64_t kNc = 4096;            // B block 8 MB (F32) in L3
constexpr int64_t kFp8Blk = 128;         // DeepSeek-V3's promotion interval N_C (report §3.3)
static_assert(kKcFp8 % kFp8Blk == 0, "FP8 K blocks must not straddle a scale block");
static_assert(kKcBf16 % 2 == 0 && kKcF32 % 16 == 0, "KC must keep panels 64-byte aligned");
static_assert(kKcBf16 % 32 == 0 && kKcFp8 % 32 == 0,  // F32: kKcF32 % 16 above
              "a blocked A panel holds whole blocks of 16 items");

inline size_t round64(size_t n) { return (n + 63) / 64 * 64; }

// Writes a finished tile row: C = acc, or C += acc when add. nr < 32 masks the N edge.
inline void store_row(float* c, __m512 v0, __m512 v1, int nr, bool add) {
  if (nr == NR) {
    if (add) {
      v0 = _mm512_add_ps(_mm512_loadu_ps(c), v0);
      v1 = _mm512_add_ps(_mm512_loadu_ps(c + 16), v1);
    }
    _mm512_storeu_ps(c, v0);
    _mm512_storeu_ps(c + 16, v1);
    return;
  }
  const __mmask16 m0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr <= 16 ? __mmask16(0) : __mmask16((1u << (nr - 16)) - 1);
  if (add) {
    v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c), v0);
    v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c + 16), v1);
  }
  _mm512_mask_storeu_ps(c, m0, v0);
  _mm512_mask_storeu_ps(c + 16, m1, v1);
}

// The A panel layouts (gemm_internal.h): row 0's item k is at a + a_off<Blocked>(k), and
// row i's k-th item kRowStep<Blocked> · i items further.
template <bool Blocked>
inline int64_t a_off(int64_t k) {
  return Blocked ? (k >> 4) * (16 * MR) + (k & 15) : k * MR;
}
template <bool Blocked>
inline constexpr int kRowStep = Blocked ? 16 : 1;

// The k steps [k0, k1) of a microkernel, step(ak, k) with ak = a + a_off(k). Blocked (k0 a
// multiple of 16): whole blocks in groups of 4 steps, so that a group's broadcasts are
// displacements from one pointer that moves 4 items per group and to the next block after 4
// (computing a_off per group instead cost ~4% at 2048^3).
template <bool Blocked, class T, class Step>
[[gnu::always_inline]] inline void k_steps(const T* a, int64_t k0, int64_t k1, Step&& step) {
  int64_t k = k0;
  if constexpr (Blocked) {
    for (const T* ab = a + a_off<true>(k0); k + 16 <= k1; k += 16, ab += 16 * MR) {
      for (int q = 0; q < 16; q += 4) {
#pragma GCC unroll 4
        for (int kk = 0; kk < 4; ++kk) step(ab + q + kk, k + q + kk);
      }
    }
  }
  for (; k < k1; ++k) step(a + a_off<Blocked>(k), k);
}

// F32: c[M x 32] (+)= a . b[ks][NR], a in either layout.
template <int M, bool Blocked>
void ukr_f32(int64_t ks, const float* a, const float* b, float* c, int64_t ldc, int nr, bool add) {
  __m512 c0[M], c1[M];
#pragma GCC unroll 14
  for (int i = 0; i < M; ++i) {
    c0[i] = c1[i] = _mm512_setzero_ps();
    // The tile of C is needed only at the end: start fetching it now.
    _mm_prefetch((const char*)(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch((const char*)(c + i * ldc + 31), _MM_HINT_T0);
  }
  k_steps<Blocked>(a, 0, ks, [&](const float* ak, int64_t k) {
    const __m512 b0 = _mm512_load_ps(b + k * NR), b1 = _mm512_load_ps(b + k * NR + 16);
#pragma GCC unroll 14
    for (int i = 0; i < M; ++i) {
      const __m512 ai = _mm512_set1_ps(ak[i * kRowStep<Blocked>]);
      c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
    }
  });
#pragma GCC unroll 14
  for (int i = 0; i < M; ++i) store_row(c + i * ldc, c0[i], c1[i], nr, add);
}

// BF16: items are K pairs; vdpbf16ps adds both products of a pair into an FP32 lane.
template <int M, bool Blocked>
void ukr_bf16(int64_t ks, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, int nr,
              bool add) {
  __m512 c0[M], c1[M];
#pragma GCC unroll 14
  for (int i = 0; i < M; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  k_steps<Blocked>(a, 0, ks, [&](const uint32_t* ak, int64_t k) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(b + k * NR);
    const __m512bh b1 = (__m512bh)_mm512_load_si512(b + k * NR + 16);
#pragma GCC unroll 14
    for (int i = 0; i < M; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(int(ak[i * kRowStep<Blocked>]));
      c0[i] = _mm512_dpbf16_ps(c0[i], ai, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], ai, b1);
    }
  });
#pragma GCC unroll 14
  for (int i = 0; i < M; ++i) store_row(c + i * ldc, c0[i], c1[i], nr, add);
}

// DSV3_DISPATCH_MR instantiates a kernel template of one parameter.
template <int M>
void ukr_f32_blocked(int64_t ks, const float* a, const float* b, float* c, int64_t ldc, int nr, bool add) {
  ukr_f32<M, true>(ks, a, b, c, ldc, nr, add);
}
template <int M>
void ukr_f32_kmajor(int64_t ks, const float* a, const float* b, float* c, int64_t ldc, int nr, bool add) {
  ukr_f32<M, false>(ks, a, b, c, ldc, nr, add);
}
template <int M>
void ukr_bf16_blocked(int64_t ks, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, int nr,
                      bool add) {
  ukr_bf16<M, true>(ks, a, b, c, ldc, nr, add);
}
template <int M>
void ukr_bf16_kmajor(int64_t ks, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc, int nr,
                     bool add) {
  ukr_bf16<M, false>(ks, a, b, c, ldc, nr, add);
}

// FP8 (A blocked): each 128-K block starts from fresh accumulators and is promoted as
// partial * (sa * sb) (report §3.3) into an FP32 tile sum that stays in a small contiguous
// buffer (C rows a multiple of 4 KB apart would all fight for one L1 set at every block),
// added to C once per call. Relative to the reference's C += ... per block this only
// reassociates the FP32 sum of block results (gemm.h tolerance). Fma = false: items are
// BF16 pairs (vdpbf16ps, 64 per block); Fma = true: F32 items (vfmadd231ps, 128 per block).
template <int M, bool Fma>
void ukr_fp8(int64_t ks, const uint32_t* a, const uint32_t* b, const float* sa, const float* sb,
             float* c, int64_t ldc, int nr, bool add) {
  constexpr int64_t kSteps = Fma ? kFp8Blk : kFp8Blk / 2;
  alignas(64) float t[M * NR];  // [M, NR] sum of promoted block results
  for (int64_t blk = 0; blk * kSteps < ks; ++blk) {
    __m512 c0[M], c1[M];
#pragma GCC unroll 14
    for (int i = 0; i < M; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
    const int64_t k1 = min64(ks, (blk + 1) * kSteps);
    k_steps<true>(a, blk * kSteps, k1, [&](const uint32_t* ak, int64_t k) {
      if constexpr (Fma) {
        const __m512 b0 = _mm512_load_ps((const float*)b + k * NR);
        const __m512 b1 = _mm512_load_ps((const float*)b + k * NR + 16);
#pragma GCC unroll 14
        for (int i = 0; i < M; ++i) {
          const __m512 ai = _mm512_set1_ps(((const float*)ak)[i * kRowStep<true>]);
          c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
          c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
        }
      } else {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(b + k * NR);
        const __m512bh b1 = (__m512bh)_mm512_load_si512(b + k * NR + 16);
#pragma GCC unroll 14
        for (int i = 0; i < M; ++i) {
          const __m512bh ai = (__m512bh)_mm512_set1_epi32(int(ak[i * kRowStep<true>]));
          c0[i] = _mm512_dpbf16_ps(c0[i], ai, b0);
          c1[i] = _mm512_dpbf16_ps(c1[i], ai, b1);
        }
      }
    });
    const __m512 s0 = _mm512_load_ps(sb + blk * NR), s1 = _mm512_load_ps(sb + blk * NR + 16);
#pragma GCC unroll 14
    for (int i = 0; i < M; ++i) {
      const __m512 si = _mm512_set1_ps(sa[blk * MR + i]);
      __m512 v0 = _mm512_mul_ps(c0[i], _mm512_mul_ps(si, s0));
      __m512 v1 = _mm512_mul_ps(c1[i], _mm512_mul_ps(si, s1));
      if (blk > 0) {
        v0 = _mm512_add_ps(_mm512_load_ps(t + i * NR), v0);
        v1 = _mm512_add_ps(_mm512_load_ps(t + i * NR + 16), v1);
      }
      _mm512_store_ps(t + i * NR, v0);
      _mm512_store_ps(t + i * NR + 16, v1);
    }
  }
#pragma GCC unroll 14
  for (int i = 0; i < M; ++i)
    store_row(c + i * ldc, _mm512_load_ps(t + i * NR), _mm512_load_ps(t + i * NR + 16), nr, add);
}
template <int M>
void ukr_fp8_dot(int64_t ks, const uint32_t* a, const uint32_t* b, const float* sa, const float* sb,
                 float* c, int64_t ldc, int nr, bool add) {
  ukr_fp8<M, false>(ks, a, b, sa, sb, c, ldc, nr, add);
}
template <int M>
void ukr_fp8_fma(int64_t ks, const uint32_t* a, const uint32_t* b, const float* sa, const float* sb,
                 float* c, int64_t ldc, int nr, bool add) {
  ukr_fp8<M, true>(ks, a, b, sa, sb, c, ldc, nr, add);
}

// Calls KERNEL<mr>(args...) for the tile height mr in 1..14.
#define DSV3_DISPATCH_MR(mr, KERNEL, ...)                   \
  switch (mr) {                                             \
    case 1: KERNEL<1>(__VA_ARGS__); break;                  \
    case 2: KERNEL<2>(__VA_ARGS__); break;                  \
    case 3: KERNEL<3>(__VA_ARGS__); break;                  \
    case 4: KERNEL<4>(__VA_ARGS__); break;                  \
    case 5: KERNEL<5>(__VA_ARGS__); break;                  \
    case 6: KERNEL<6>(__VA_ARGS__); break;                  \
    case 7: KERNEL<7>(__VA_ARGS__); break;                  \
    case 8: KERNEL<8>(__VA_ARGS__); break;                  \
    case 9: KERNEL<9>(__VA_ARGS__); break;                  \
    case 10: KERNEL<10>(__VA_ARGS__); break;                \
    case 11: KERNEL<11>(__VA_ARGS__); break;                \
    case 12: KERNEL<12>(__VA_ARGS__); break;                \
    case 13: KERNEL<13>(__VA_ARGS__); break;                \
    default: KERNEL<14>(__VA_ARGS__); break;                \
  }
static_assert(MR == 14, "DSV3_DISPATCH_MR lists the heights 1..14");

// F32 panels and the F32 kernel, for every operand type packed into F32 items (P: GemmF32,
// or GemmBF16 widened); the derived Op supplies pack_a / pack_b.
template <class P>
struct OpF32Items {
  static constexpr int MR = kMR512, NR = kNR512;
  int64_t KC = kKcF32, MC = kMcF32, NC = kNc;
  size_t a_panel_bytes = round64(size_t(kKcF32) * MR * 4);
  size_t b_panel_bytes = round64(size_t(kKcF32) * NR * 4);
  const P* p;
  void kernel(int mr, int nr, int64_t, int64_t kc, const char* a, const char* b, int64_t i,
              int64_t j, bool first) const {
    float* c = p->C + i * p->ldc + j;
    const bool add = !first || p->accumulate;
    if (p->trans_a) {
      DSV3_DISPATCH_MR(mr, ukr_f32_kmajor, kc, (const float*)a, (const float*)b, c, p->ldc, nr, add)
    } else {
      DSV3_DISPATCH_MR(mr, ukr_f32_blocked, kc, (const float*)a, (const float*)b, c, p->ldc, nr, add)
    }
  }
};

struct OpF32 : OpF32Items<GemmF32> {
  void pack_a(int64_t i0, int mr, int64_t k0, int64_t kc, char* dst) const {
    pack_a_f32_avx512(p->A, p->lda, p->trans_a, i0, mr, k0, kc, (float*)dst);
  }
  void pack_b(int64_t j0, int nr, int64_t k0, int64_t kc, char* dst) const {
    pack_b_f32_avx512(p->B, p->ldb, p->trans_b, j0, nr, k0, kc, (float*)dst);
  }
};

struct OpBF16 {
  static constexpr int MR = kMR512, NR = kNR512;
  int64_t KC = kKcBf16, MC = kMcBf16, NC = kNc;
  size_t a_panel_bytes = round64(size_t(kKcBf16 / 2) * MR * 4);
  size_t b_panel_bytes = round64(size_t(kKcBf16 / 2) * NR * 4);
  const GemmBF16* p;
  void pack_a(int64_t i0, int mr, int64_t k0, int64_t kc, char* dst) const {
    pack_a_bf16_avx512(p->A, p->lda, p->trans_a, i0, mr, k0, kc, (uint32_t*)dst);
  }
  void pack_b(int64_t j0, int nr, int64_t k0, int64_t kc, char* dst) const {
    pack_b_bf16_avx512(p->B, p->ldb, p->trans_b, j0, nr, k0, kc, (uint32_t*)dst);
  }
  void kernel(int mr, int nr, int64_t, int64_t kc, const char* a, const char* b, int64_t i,
              int64_t j, bool first) const {
    float* c = p->C + i * p->ldc + j;
    const bool add = !first || p->accumulate;
    if (p->trans_a) {
      DSV3_DISPATCH_MR(mr, ukr_bf16_kmajor, (kc + 1) / 2, (const uint32_t*)a, (const uint32_t*)b, c,
                       p->ldc, nr, add)
    } else {
      DSV3_DISPATCH_MR(mr, ukr_bf16_blocked, (kc + 1) / 2, (const uint32_t*)a, (const uint32_t*)b, c,
                       p->ldc, nr, add)
    }
  }
};

// BF16 widened to F32 while packing, then the F32 kernel (Bf16Mode::Fma, core/cpu.h).
struct OpBF16F : OpF32Items<GemmBF16> {
  void pack_a(int64_t i0, int mr, int64_t k0, int64_t kc, char* dst) const {
    if (p->A_f32) pack_a_f32_avx512(p->A_f32, p->lda, false, i0, mr, k0, kc, (float*)dst);
    else pack_a_bf16_f32_avx512(p->A, p->lda, p->trans_a, i0, mr, k0, kc, (float*)dst);
  }
  void pack_b(int64_t j0, int nr, int64_t k0, int64_t kc, char* dst) const {
    pack_b_bf16_f32_avx512(p->B, p->ldb, p->trans_b, j0, nr, k0, kc, (float*)dst);
  }
};

// FP8 panels: the decoded items, then the per-block scales at a fixed offset. Fma = false:
// BF16 pairs (E4M3 decoded to BF16); Fma = true: F32 items (E4M3 as 2^-8 x its value, the
// 256 folded into the scales; BF16 or F32 activations widened exactly), KC halved so that
// the panels keep their size.
template <bool Fma>
struct OpFP8 {
  static constexpr int MR = kMR512, NR = kNR512;
  static constexpr int64_t kKc = Fma ? kKcFp8 / 2 : kKcFp8;
  static constexpr int64_t kItems = Fma ? kKc : kKc / 2;  // 32-bit items per row per K block
  static constexpr int64_t kBlocks = kKc / kFp8Blk;
  static constexpr size_t kAScaleOff = size_t(kItems) * MR * 4;
  static constexpr size_t kBScaleOff = size_t(kItems) * NR * 4;
  static_assert(kKc % kFp8Blk == 0, "FP8 K blocks must not straddle a scale block");
  int64_t KC = kKc, MC = kMcBf16, NC = kNc;
  size_t a_panel_bytes = round64(kAScaleOff + size_t(kBlocks) * MR * 4);
  size_t b_panel_bytes = round64(kBScaleOff + size_t(kBlocks) * NR * 4);
  const GemmFP8* p;
  void pack_a(int64_t i0, int mr, int64_t k0, int64_t kc, char* dst) const {
    float* sa = (float*)(dst + kAScaleOff);  // [kBlocks][MR]
    const int64_t nblk = ceil_div(kc, kFp8Blk), kb0 = k0 / kFp8Blk;
    if (p->A_bf16 || p->A_f32) {
      if (p->A_f32) pack_a_f32_avx512(p->A_f32, p->lda, false, i0, mr, k0, kc, (float*)dst);
      else if (Fma) pack_a_bf16_f32_avx512(p->A_bf16, p->lda, false, i0, mr, k0, kc, (float*)dst);
      else pack_a_bf16_avx512(p->A_bf16, p->lda, false, i0, mr, k0, kc, (uint32_t*)dst);
      for (int64_t b = 0; b < nblk; ++b)
        for (int r = 0; r < MR; ++r) sa[b * MR + r] = r < mr ? 1.f : 0.f;
      return;
    }
    if (Fma) pack_a_e4m3_f32_avx512(p->A, p->lda, i0, mr, k0, kc, (float*)dst);
    else pack_a_e4m3_avx512(p->A, p->lda, i0, mr, k0, kc, (uint32_t*)dst);
    const float bias = Fma ? kE4m3F32Bias : 1.f;
    for (int64_t b = 0; b < nblk; ++b)
      for (int r = 0; r < MR; ++r)
        sa[b * MR + r] = r < mr ? p->a_scale[(i0 + r) * p->lda_scale + kb0 + b] * bias : 0.f;
  }
  void pack_b(int64_t j0, int nr, int64_t k0, int64_t kc, char* dst) const {
    float* sb = (float*)(dst + kBScaleOff);  // [kBlocks][NR]
    if (Fma) pack_b_e4m3_f32_avx512(p->B, p->ldb, p->trans_b, j0, nr, k0, kc, (float*)dst);
    else pack_b_e4m3_avx512(p->B, p->ldb, p->trans_b, j0, nr, k0, kc, (uint32_t*)dst);
    pack_fp8_b_scales(*p, j0, nr, NR, k0, kc, sb);
    if (Fma)
      for (int64_t q = 0; q < ceil_div(kc, kFp8Blk) * NR; ++q) sb[q] *= kE4m3F32Bias;
  }
  void kernel(int mr, int nr, int64_t, int64_t kc, const char* a, const char* b, int64_t i,
              int64_t j, bool first) const {
    float* c = p->C + i * p->ldc + j;
    const bool add = !first || p->accumulate;
    const int64_t ks = Fma ? kc : (kc + 1) / 2;
    if (Fma) {
      DSV3_DISPATCH_MR(mr, ukr_fp8_fma, ks, (const uint32_t*)a, (const uint32_t*)b,
                       (const float*)(a + kAScaleOff), (const float*)(b + kBScaleOff), c, p->ldc,
                       nr, add)
    } else {
      DSV3_DISPATCH_MR(mr, ukr_fp8_dot, ks, (const uint32_t*)a, (const uint32_t*)b,
                       (const float*)(a + kAScaleOff), (const float*)(b + kBScaleOff), c, p->ldc,
                       nr, add)
    }
  }
};

}  // namespace

// When the unpacked skinny kernels (gemm_small_avx512.cpp) beat packing, from per-core
// GFLOP/s on Zen 4 (M = 8..64 against N x K = 256x256 .. 2048x2048): always for a few
// rows; for a few dozen rows when W is big (streaming it from L3/DRAM, which packing
// would do three times, dominates); never for small, cache-resident W, where the packed
// kernel's higher peak wins. FP8 pays the E4M3 decode per group of 4 rows unpacked but
// once per 14 rows packed, so it switches early (M = 8: 90-102 vs 78-84 GFLOP/s,
// M = 12 even, M = 16: 101 vs 118-122).
namespace {
bool small_f32(int64_t M, int64_t N, int64_t K) { return M <= 16 || (M <= 64 && N * K >= (int64_t(1) << 19)); }
bool small_bf16(int64_t M, int64_t N, int64_t K) { return M <= 16 || (M <= 32 && N * K >= (int64_t(1) << 21)); }
constexpr int64_t kSmallMFp8 = 10;
// The broadcast-W kernel (gemm_bcast_avx512.cpp) computes rows of A in vectors of 16, so
// it takes M when few of those lanes are padding (>= 85% used), up to 512 rows (beyond,
// its packed A no longer fits L2 and the packed path is as fast), K >= 512 (shorter K
// pays its per-tile transpose of C too often) and W of at least 2^19 elements (small,
// cache-resident W is what the packed kernel is fastest at). Measured, 2 threads, N x K =
// 1408 x 2048, GFLOP/s packed-or-dot -> broadcast: M = 16 349 -> 429, 28 348 -> 386, 32
// 357 -> 442, 48 358 -> 443, 64 376 -> 435, 128 397 -> 435, 256 399 -> 432, 512 421 ->
// 426; but M = 24 (75%) 349 -> 331, M = 20 356 -> 278, 2048^3 424 -> 369, 64x2048x64 347
// -> 286, 256x256x256 365-398 -> 240-364.
bool bcast_rows(int64_t M) { return M >= 16 && M <= 512 && M * 100 >= (M + 15) / 16 * 16 * 85; }
// A weight the caller marks streamed (GemmBF16 / GemmFP8::w_streamed: a model's weights in
// inference) is read from DRAM once per call, and there the broadcast kernel wins from 6 up
// to 128 rows, for FP8 (measured below) and BF16 alike: compare-1b in BF16, `bench prefill
// --tokens 128 --activations bf16`, Zen 4, the default rule 401 / 560 / 546 tokens/s against
// the broadcast kernel forced 609 / 570 / 599 (docs/PERF.md).
bool bcast_streamed(int64_t M, int64_t N, int64_t K) {
  return M >= 6 && M <= 128 && K >= 256 && N * K >= (int64_t(1) << 17);
}
bool bcast_bf16(int64_t M, int64_t N, int64_t K, bool w_streamed) {
  if (w_streamed && bcast_streamed(M, N, K)) return true;
  return bcast_rows(M) && K >= 512 && N * K >= (int64_t(1) << 19);
}
// FP8 also decodes each W group once per K block, which pays off against the packed path
// when W is big and the rows few. Per core (1 thread, median of 3, GFLOP/s) packed ->
// broadcast at M x 1408 x 2048: M = 16 135 -> 173, 32 171 -> 194, 64 191 -> 205, 128 202
// -> 208, 256 209 -> 210, 512 207 -> 207; but 64x256x512 356 -> 335, 64x2048x256 374 ->
// 342, 128x512x1024 398 -> 389 (2 threads). On 2 threads this VM has spells of ~30 s in
// which the broadcast FP8 kernel alone loses ~15% (64x2048x1408: 323-334 against packed
// 365-379, 384-392 outside them; docs/PERF.md), so it takes only M <= 64, where it gains most.
// Since then (half vectors, 2026-12-07) it also takes the routed experts of a prefill (~T·K/E
// rows each, spread from 0 to 4x that, one expert per thread), down to small W and short
// K, counting A's rows in half vectors: a last vector of <= 8 rows runs as 256-bit
// operations, at half the cost on Zen 4 (gemm_bcast_avx512.cpp). Zen 4, 1 thread, GFLOP/s
// packed -> broadcast with W in cache (`bench gemm`): 16x768x2048 134 -> 172, 16x2048x768
// 135 -> 168, 16x2048x512 111 -> 162, 16x512x256 134 -> 153, 64x768x2048 172 -> 201,
// 24x768x2048 159 -> 181, 40x768x2048 176 -> 196, 8x2048x768 81-105 -> 108-109; but where
// < 90% of those lanes are used it loses or ties (18x768x2048 145 -> 136, 35x2048x768 174
// -> 158, 28x2048x768 165 -> 165). A W past a core's L2 (>= 2^20 codes) is streamed from
// L3 or DRAM, and there the broadcast kernel, which reads it once and fetches its next
// column group ahead, wins at every M from 6: compare-1b's routed experts (768x2048 and
// 2048x768) timed inside `bench prefill`, GFLOP/s by rows before -> after: 6 56 -> 57
// (dot), 7 58 -> 68, 9 62 -> 78, 10 67 -> 85, 11-13 74-81 -> 94-109, 14 87 -> 118, 17-21
// 92-111 -> 101-127, 25-28 117-118 -> 133-141 (packed); whole prefills 1.11-1.26x
// (docs/PERF.md). A smaller W that the caller says is streamed (GemmFP8::w_streamed: a
// model's weights in inference) is as cold: bench-v3-1b's routed experts (256x1024 and
// 1024x256, 1 thread) inside `bench prefill`, packed -> broadcast, 11-14 rows 64-78 ->
// 85-105, 18-27 86-106 -> 94-134, 33-57 111-128 -> 132-149. A streamed W goes there up to
// 128 rows (a 128-token prefill's attention, shared experts and dense layer, 2 threads):
// compare-1b's 128-row GEMMs 245-329 -> 313-392 GFLOP/s inside the prefill, whole prefills
// 1.05-1.07x (docs/PERF.md). Past that, and for a W not marked streamed (training's per-
// expert weight gradients: 256-512 rows of a small warm W ran 5-15% slower there), the
// packed kernel stays. The rule ignores the thread count, so that a GEMM's bits do not depend on
// it (the MoE runs an expert on one thread or on all and relies on the same bits).
bool bcast_half_rows(int64_t M) {
  const int64_t r = M % 16, lanes = M - r + (r == 0 ? 0 : r <= 8 ? 8 : 16);
  return M >= 8 && M <= 64 && M * 10 >= lanes * 9;
}
bool bcast_fp8(int64_t M, int64_t N, int64_t K, bool w_streamed) {
  if (w_streamed) return bcast_streamed(M, N, K);
  if (K < 256 || N * K < (int64_t(1) << 17)) return false;
  return N * K >= (int64_t(1) << 20) ? M >= 6 && M <= 64 : bcast_half_rows(M);
}

// DSV3_GEMM_PATH=packed|dot|bcast forces one path wherever the call's form allows it (the
// skinny ones need the fprop form); unset or anything else: the rules above. For
// measuring those rules (docs/PERF.md), read once.
enum class Path { Auto, Packed, Dot, Bcast };
Path forced_path() {
  static const Path path = [] {
    const char* e = getenv("DSV3_GEMM_PATH");
    if (!e) return Path::Auto;
    if (!strcmp(e, "packed")) return Path::Packed;
    if (!strcmp(e, "dot")) return Path::Dot;
    if (!strcmp(e, "bcast")) return Path::Bcast;
    return Path::Auto;
  }();
  return path;
}
}  // namespace

void gemm_f32_avx512(const GemmF32& p, int threads) {
  const Path f = forced_path();
  if (!p.trans_a && p.trans_b && (f == Path::Dot || (f == Path::Auto && small_f32(p.M, p.N, p.K))))
    return gemm_small_f32_avx512(p, threads);
  OpF32 op;
  op.p = &p;
  gemm_blocked(op, p.M, p.N, p.K, threads);
}

void gemm_bf16_avx512(const GemmBF16& p, int threads) {
  const Path f = forced_path();
  const bool fprop = !p.trans_a && p.trans_b;  // A [M,K] and W [N,K]: what both skinny paths take
  // F32 activations only the widened kernel takes (as gemm_fp8_avx512).
  const bool fma = bf16_mode() == Bf16Mode::Fma || p.A_f32;
  if (fprop && !fma && (f == Path::Bcast || (f == Path::Auto && bcast_bf16(p.M, p.N, p.K, p.w_streamed))))
    return gemm_bcast_bf16_avx512(p, threads);
  if (fprop && !p.A_f32 && (f == Path::Dot || (f == Path::Auto && small_bf16(p.M, p.N, p.K))))
    return gemm_small_bf16_avx512(p, threads);
  if (fma) {
    OpBF16F op;
    op.p = &p;
    return gemm_blocked(op, p.M, p.N, p.K, threads);
  }
  OpBF16 op;
  op.p = &p;
  gemm_blocked(op, p.M, p.N, p.K, threads);
}

void gemm_fp8_avx512(const GemmFP8& p, int threads) {
  const Path f = forced_path();
  // F32 activations only the widened kernel takes (the BF16-pair kernels would need x split
  // into two BF16 parts, as model/linear.cpp does for them).
  const bool fma = bf16_mode() == Bf16Mode::Fma || p.A_f32;
  if (p.trans_b && (f == Path::Bcast || (f == Path::Auto && bcast_fp8(p.M, p.N, p.K, p.w_streamed))))
    return gemm_bcast_fp8_avx512(p, threads);
  if (p.trans_b && !p.A_f32 && (f == Path::Dot || (f == Path::Auto && p.M <= kSmallMFp8)))
    return gemm_small_fp8_avx512(p, threads);
  if (fma) {
    OpFP8<true> op;
    op.p = &p;
    return gemm_blocked(op, p.M, p.N, p.K, threads);
  }
  OpFP8<false> op;
  op.p = &p;
  gemm_blocked(op, p.M, p.N, p.K, threads);
}

}  // namespace dsv3::detail
