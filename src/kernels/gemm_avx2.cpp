// AVX2 + FMA GEMMs: the fallback for CPUs without AVX-512 (or without its BF16 part).
// BF16 operands are widened to F32 (exact) while packing and share the F32 kernel.
// Same blocked loop nest as the AVX-512 path (gemm_driver.inc), a 6x16 microkernel:
// 12 ymm accumulators + 2 B vectors + 1 broadcast = 15 of the 16 ymm registers, 12 FMAs
// per 2 vector loads + 6 broadcasts; 12 chains cover 2 FMA pipes x 4-cycle latency.
#include <immintrin.h>
#include <omp.h>

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

}  // namespace

void gemm_f32_avx2(const GemmF32& p, int threads) {
  OpAvx2<GemmF32> op;
  op.p = &p;
  gemm_blocked(op, p.M, p.N, p.K, threads);
}

void gemm_bf16_avx2(const GemmBF16& p, int threads) {
  OpAvx2<GemmBF16> op;
  op.p = &p;
  gemm_blocked(op, p.M, p.N, p.K, threads);
}

}  // namespace dsv3::detail
