// Skinny-M fprop GEMMs on AVX2 (C = A · Wᵀ, W [N,K]): FP8 block-scaled (W E4M3 with
// 128x128 or per-column scales; A E4M3 with 1x128 tiles or BF16), BF16 and F32 — the
// gemm_small_avx512.cpp idea for CPUs without AVX-512. With a few rows of A the packed path
// spends its time converting and copying W into panels that are then used by only those
// few rows; here each W row is read in place, widened to F32 in registers once per group of
// up to 4 A rows, and dotted with them. A is widened to F32 once per call.
//
// FP8 decode, 8 codes at a time, through F16 bits (simd_avx2.h load8_e4m3_scaled: exact,
// e4m3 · 2^-8, the 2^8 goes into the block scale). NaN codes decode as finite numbers
// there, so each W row is scanned for them first and its outputs made NaN, as the
// reference gives.
//
// Order of operations (gemm.h's contract): each 128-K block is summed in fresh FP32
// accumulators (8 lanes, then across lanes), and C += partial · (sa · sb) block by block in
// increasing K, starting from C when accumulating — the reference's promotion order; only
// the order inside a block differs. BF16 and F32 sum the same way with unit scales (a
// blocked sum, no less accurate than one running sum).
// GCC 12 flags "undefined" vectors inside its own intrinsic headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include "core/parallel.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_internal.h"
#include "kernels/simd_avx2.h"

namespace dsv3::detail {

namespace {

constexpr int64_t kBlk = 128;  // promotion interval and scale block (report §3.3)
constexpr int kMT = 4;         // A rows per register tile
constexpr int kNB = 2;         // W rows per register tile: 8 accumulators, 2 decoded rows

// Sums of the 8 vectors s[0..7], in order, as one vector.
inline __m256 hsum_each8(const __m256 s[8]) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

float b_scale(const GemmFP8& p, int64_t j, int64_t kb) {
  return p.b_layout == Fp8BLayout::Col128 ? p.b_scale[j * p.ldb_scale + kb]
                                          : p.b_scale[(j / kBlk) * p.ldb_scale + kb];
}

// The three kinds of W: element type, 8 elements -> 8 F32, and the per-block factor.
struct WFp8 {
  using T = uint8_t;
  const GemmFP8* p;
  static __m256 load8(const T* w) { return load8_e4m3_scaled(w); }
  float scale(int64_t i, int64_t j, int64_t kb) const {
    const float sa = p->A_bf16 || p->A_f32 ? 1.f : p->a_scale[i * p->lda_scale + kb];
    return sa * (b_scale(*p, j, kb) * 256.f);  // the decode's 2^-8
  }
};
struct WBf16 {
  using T = uint16_t;
  static __m256 load8(const T* w) { return load8_bf16(w); }
  float scale(int64_t, int64_t, int64_t) const { return 1.f; }
};
struct WF32 {
  using T = float;
  static __m256 load8(const T* w) { return _mm256_loadu_ps(w); }
  float scale(int64_t, int64_t, int64_t) const { return 1.f; }
};

// One call's shared state: W rows (ldw elements apart), C, and A widened to F32.
template <class W>
struct Ctx {
  W wk;
  const typename W::T* w; int64_t ldw;
  float* C; int64_t ldc;
  bool accumulate;
  int64_t M, N, K;
  const float* af;  // A as F32 [M, kp], zero padded (unscaled)
  int64_t kp;       // K rounded up to 8
};

// C rows [i0, i0 + MT) x columns [j, j + NB): the tile above. tail holds the last partial
// 8-element chunk of each W row, zero padded (FP8 code 0 is +0).
template <int MT, int NB, class W>
void tile(const Ctx<W>& c, int64_t i0, int64_t j, const typename W::T (*tail)[8], const bool* nan_row) {
  const int64_t K = c.K, kfull = K / 8 * 8;
  float tot[kMT * kNB];
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n)
      tot[m * kNB + n] = c.accumulate ? c.C[(i0 + m) * c.ldc + j + n] : 0.f;
  for (int64_t k0 = 0, kb = 0; k0 < K; k0 += kBlk, ++kb) {
    const int64_t k1 = K < k0 + kBlk ? K : k0 + kBlk;
    __m256 s[8];
    for (int t = 0; t < 8; ++t) s[t] = _mm256_setzero_ps();
    for (int64_t k = k0; k < k1; k += 8) {
      __m256 w[kNB];
#pragma GCC unroll 2
      for (int n = 0; n < NB; ++n) {
        w[n] = W::load8(k < kfull ? c.w + (j + n) * c.ldw + k : tail[n]);
      }
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) {
        const __m256 a = _mm256_loadu_ps(c.af + (i0 + m) * c.kp + k);
#pragma GCC unroll 2
        for (int n = 0; n < NB; ++n) s[m * kNB + n] = _mm256_fmadd_ps(a, w[n], s[m * kNB + n]);
      }
    }
    alignas(32) float part[8];
    _mm256_store_ps(part, hsum_each8(s));
    for (int n = 0; n < NB; ++n)
      for (int m = 0; m < MT; ++m)
        tot[m * kNB + n] += part[m * kNB + n] * c.wk.scale(i0 + m, j + n, kb);
  }
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n)
      c.C[(i0 + m) * c.ldc + j + n] = nan_row[n] ? __builtin_nanf("") : tot[m * kNB + n];
}

template <int NB, class W>
void column_tile(const Ctx<W>& c, int64_t j) {
  using T = typename W::T;
  const int64_t K = c.K, kfull = K / 8 * 8;
  T tail[kNB][8] = {};
  bool nan_row[kNB] = {};
  for (int n = 0; n < NB; ++n) {
    const T* row = c.w + (j + n) * c.ldw;
    std::memcpy(tail[n], row + kfull, size_t(K - kfull) * sizeof(T));
    if constexpr (sizeof(T) == 1) nan_row[n] = has_e4m3_nan(row, K);
  }
  for (int64_t i0 = 0; i0 < c.M; i0 += kMT) {
    switch (c.M - i0 < kMT ? c.M - i0 : kMT) {
      case 1: tile<1, NB>(c, i0, j, tail, nan_row); break;
      case 2: tile<2, NB>(c, i0, j, tail, nan_row); break;
      case 3: tile<3, NB>(c, i0, j, tail, nan_row); break;
      default: tile<4, NB>(c, i0, j, tail, nan_row); break;
    }
  }
}

// af [M, kp] = A widened to F32 (exact), zero padded; widen(m, k) gives element (m, k).
template <class Widen>
float* widen_a(int64_t M, int64_t K, int64_t kp, const Widen& widen) {
  float* af = static_cast<float*>(gemm_scratch(size_t(M * kp) * sizeof(float)));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < kp; ++k) af[m * kp + k] = k < K ? widen(m, k) : 0.f;
  return af;
}

float bf16_bits_to_f32(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Columns in pairs, split over threads; small problems on one thread.
template <class W>
void run(const Ctx<W>& c, int threads) {
  const int64_t pairs = (c.N + kNB - 1) / kNB;
  if (2.0 * double(c.M) * double(c.N) * double(c.K) < 262144.0) threads = 1;
  if (threads > pairs) threads = int(pairs);
  parallel_region(threads, [&](Team& t) {
    int64_t q0, q1;
    split_range(pairs, t.size(), t.tid(), &q0, &q1);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t j = q * kNB;
      if (j + kNB <= c.N) column_tile<kNB>(c, j);
      else column_tile<1>(c, j);
    }
  });
}

}  // namespace

void gemm_small_fp8_avx2(const GemmFP8& p, int threads) {
  const int64_t kp = (p.K + 7) / 8 * 8;
  const uint16_t* tab = e4m3_bf16_table();
  const float* af = widen_a(p.M, p.K, kp, [&](int64_t m, int64_t k) {
    if (p.A_f32) return p.A_f32[m * p.lda + k];
    return bf16_bits_to_f32(p.A_bf16 ? p.A_bf16[m * p.lda + k] : tab[p.A[m * p.lda + k]]);
  });
  run(Ctx<WFp8>{WFp8{&p}, p.B, p.ldb, p.C, p.ldc, p.accumulate, p.M, p.N, p.K, af, kp}, threads);
}

void gemm_small_bf16_avx2(const GemmBF16& p, int threads) {
  const int64_t kp = (p.K + 7) / 8 * 8;
  const float* af = widen_a(p.M, p.K, kp, [&](int64_t m, int64_t k) {
    return p.A_f32 ? p.A_f32[m * p.lda + k] : bf16_bits_to_f32(p.A[m * p.lda + k]);
  });
  run(Ctx<WBf16>{WBf16{}, p.B, p.ldb, p.C, p.ldc, p.accumulate, p.M, p.N, p.K, af, kp}, threads);
}

void gemm_small_f32_avx2(const GemmF32& p, int threads) {
  const int64_t kp = (p.K + 7) / 8 * 8;
  const float* af = widen_a(p.M, p.K, kp, [&](int64_t m, int64_t k) { return p.A[m * p.lda + k]; });
  run(Ctx<WF32>{WF32{}, p.B, p.ldb, p.C, p.ldc, p.accumulate, p.M, p.N, p.K, af, kp}, threads);
}

}  // namespace dsv3::detail
