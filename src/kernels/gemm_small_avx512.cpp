// Skinny-M GEMMs without packing (decode, or MoE experts with few tokens against a big
// weight W [N,K]; when is decided in gemm_avx512.cpp).
// With so few rows the packed path would spend more time copying W (the whole cost is
// streaming W from memory once) than multiplying, so here each W row is read once, in
// place, and dotted with the M rows of A: accumulators hold K-lanes, reduced at the end.
// Only the fprop form (A [M,K], B = W stored [N,K]): both operands K-contiguous.
// GCC 12 flags _mm512_undefined_*() inside its own intrinsics (reduce_add) as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#include "core/parallel.h"

#include <cstddef>
#include <cstdint>

#include "kernels/gemm_internal.h"
#include "kernels/simd_avx512.h"

namespace dsv3::detail {

namespace {

inline __mmask16 mask16(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); }
#include "kernels/gemm_e4m3_avx512.inc"

constexpr int kNB = 4;  // the widest column step (tiles below)
// Every loop over the register tile is unrolled (#pragma GCC unroll): a runtime index into
// the accumulator arrays would keep them in memory.

inline void put(float* c, float v, bool add) { *c = add ? *c + v : v; }

// Splits the N columns over threads (in steps of kNB) and calls body(j0, j1).
template <class Body>
void over_columns(int64_t M, int64_t N, int64_t K, int threads, Body body) {
  if (2.0 * double(M) * double(N) * double(K) < 262144.0) threads = 1;
  const int64_t steps = (N + kNB - 1) / kNB;
  if (threads > steps) threads = int(steps);
  parallel_region(threads, [&](Team& t) {
    int64_t s0, s1;
    split_range(steps, t.size(), t.tid(), &s0, &s1);
    const int64_t j0 = s0 * kNB, j1 = s1 * kNB < N ? s1 * kNB : N;
    if (j0 < j1) body(j0, j1);
  });
}

template <int M, int NB>
void dot_f32(const GemmF32& p, int64_t i0, int64_t j) {
  __m512 s[M][NB];
  #pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
    #pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) s[m][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < p.K; k += 16) {
    const __mmask16 mk = mask16(p.K - k);
    __m512 w[NB];
    #pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) w[n] = _mm512_maskz_loadu_ps(mk, p.B + (j + n) * p.ldb + k);
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m512 a = _mm512_maskz_loadu_ps(mk, p.A + (i0 + m) * p.lda + k);
      #pragma GCC unroll 8
      for (int n = 0; n < NB; ++n) s[m][n] = _mm512_fmadd_ps(a, w[n], s[m][n]);
    }
  }
  #pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
    #pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) put(p.C + (i0 + m) * p.ldc + j + n, _mm512_reduce_add_ps(s[m][n]), p.accumulate);
}

template <int M, int NB>
void dot_bf16(const GemmBF16& p, int64_t i0, int64_t j) {
  __m512 s[M][NB];
  #pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
    #pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) s[m][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < p.K; k += 32) {  // vdpbf16ps pairs lanes 2l, 2l+1 of both rows
    const __mmask32 mk = mask32(p.K - k);
    __m512bh w[NB];
    #pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) w[n] = (__m512bh)_mm512_maskz_loadu_epi16(mk, p.B + (j + n) * p.ldb + k);
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m512bh a = (__m512bh)_mm512_maskz_loadu_epi16(mk, p.A + (i0 + m) * p.lda + k);
      #pragma GCC unroll 8
      for (int n = 0; n < NB; ++n) s[m][n] = _mm512_dpbf16_ps(s[m][n], a, w[n]);
    }
  }
  #pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
    #pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) put(p.C + (i0 + m) * p.ldc + j + n, _mm512_reduce_add_ps(s[m][n]), p.accumulate);
}

// FP8: a16 [M, K64] is A decoded to BF16 in decode order (K64 = K rounded up to 64,
// zero padded); per 128-K block the partial lanes are scaled by sa·sb and summed
// (report §3.3 promotion; the lane sums reassociate).
template <int M, int NB>
void dot_fp8(const GemmFP8& p, const uint16_t* a16, int64_t k64, const E4m3Bytes& t, int64_t i0, int64_t j) {
  __m512 tot[M][NB];
  #pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
    #pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) tot[m][n] = _mm512_setzero_ps();
  for (int64_t k0 = 0, kb = 0; k0 < p.K; k0 += 128, ++kb) {
    __m512 s[M][NB];
    #pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
      #pragma GCC unroll 8
      for (int n = 0; n < NB; ++n) s[m][n] = _mm512_setzero_ps();
    const int64_t k1 = p.K < k0 + 128 ? p.K : k0 + 128;
    for (int64_t k = k0; k < k1; k += 64) {
      __m512i w0[NB], w1[NB];
      #pragma GCC unroll 8
      for (int n = 0; n < NB; ++n) e4m3x64_to_bf16(t, p.B + (j + n) * p.ldb + k, k1 - k, &w0[n], &w1[n]);
      #pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const uint16_t* a = a16 + (i0 + m) * k64 + k;
        const __m512bh a0 = (__m512bh)_mm512_load_si512(a), a1 = (__m512bh)_mm512_load_si512(a + 32);
        #pragma GCC unroll 8
        for (int n = 0; n < NB; ++n)
          s[m][n] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(s[m][n], a0, (__m512bh)w0[n]), a1, (__m512bh)w1[n]);
      }
    }
    #pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) {
      const int64_t jn = j + n;
      const float sb = p.b_layout == Fp8BLayout::Col128 ? p.b_scale[jn * p.ldb_scale + kb]
                                                        : p.b_scale[(jn / 128) * p.ldb_scale + kb];
      #pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const float sa = p.A_bf16 ? 1.f : p.a_scale[(i0 + m) * p.lda_scale + kb];
        tot[m][n] = _mm512_fmadd_ps(s[m][n], _mm512_set1_ps(sa * sb), tot[m][n]);
      }
    }
  }
  #pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
    #pragma GCC unroll 8
    for (int n = 0; n < NB; ++n) put(p.C + (i0 + m) * p.ldc + j + n, _mm512_reduce_add_ps(tot[m][n]), p.accumulate);
}

template <int W, class Dot>
void rows_w(int mg, const Dot& dot, int64_t i0, int64_t j) {
  switch (mg) {
    case 1: dot.template operator()<1, W>(i0, j); break;
    case 2: dot.template operator()<2, W>(i0, j); break;
    case 3: dot.template operator()<3, W>(i0, j); break;
    default: dot.template operator()<4, W>(i0, j); break;
  }
}

// Columns [j0, j1) in steps of 4 W rows; for each step every group of <= 4 rows of A,
// so the 4 W rows are read from memory once and reused from L1 by the later groups while
// A (M x K, at most 64 rows) streams from L2. Tile: 4 x 4 = 16 accumulators, 8 loads per
// 16 FMAs / dot products (measured better than 8 x 2, whose 8 A rows per step saturate
// the L2 -> L1 path). The 16 horizontal sums per tile cost ~8% at K = 2048, more for short
// K, which is why short-K shapes stay on the packed path (gemm_avx512.cpp).
constexpr int kRows = 4;
template <class Dot>
void tiles(int64_t M, int64_t j0, int64_t j1, const Dot& dot) {
  for (int64_t j = j0; j < j1;) {
    const int w = j + kNB <= j1 ? kNB : 1;
    for (int64_t i0 = 0; i0 < M; i0 += kRows) {
      const int mg = int(M - i0 < kRows ? M - i0 : kRows);
      if (w == kNB) rows_w<kNB>(mg, dot, i0, j);
      else rows_w<1>(mg, dot, i0, j);
    }
    j += w;
  }
}

}  // namespace

void gemm_small_f32_avx512(const GemmF32& p, int threads) {
  over_columns(p.M, p.N, p.K, threads, [&](int64_t j0, int64_t j1) {
    tiles(p.M, j0, j1, [&]<int M, int NB>(int64_t i0, int64_t j) { dot_f32<M, NB>(p, i0, j); });
  });
}

void gemm_small_bf16_avx512(const GemmBF16& p, int threads) {
  over_columns(p.M, p.N, p.K, threads, [&](int64_t j0, int64_t j1) {
    tiles(p.M, j0, j1, [&]<int M, int NB>(int64_t i0, int64_t j) { dot_bf16<M, NB>(p, i0, j); });
  });
}

void gemm_small_fp8_avx512(const GemmFP8& p, int threads) {
  // A decoded once to BF16, in decode order ([M, k64], shared read-only by the threads).
  const int64_t k64 = (p.K + 63) / 64 * 64;
  uint16_t* a16 = (uint16_t*)gemm_scratch(size_t(p.M * k64) * 2);
  {
    const uint16_t* tab = e4m3_bf16_table();
    for (int64_t m = 0; m < p.M; ++m)
      for (int64_t k = 0; k < k64; ++k) {
        uint16_t v = 0;
        if (k < p.K) v = p.A_bf16 ? p.A_bf16[m * p.lda + k] : tab[p.A[m * p.lda + k]];
        a16[m * k64 + (k & ~int64_t(63)) + permute64(int(k & 63))] = v;
      }
  }
  over_columns(p.M, p.N, p.K, threads, [&](int64_t j0, int64_t j1) {
    const E4m3Bytes t;
    tiles(p.M, j0, j1, [&]<int M, int NB>(int64_t i0, int64_t j) { dot_fp8<M, NB>(p, a16, k64, t, i0, j); });
  });
}

}  // namespace dsv3::detail
