// Skinny-M FP8 block-scaled fprop on AVX2 (C = A · Wᵀ, W [N,K] E4M3 with 128x128 or
// per-column scales; A E4M3 with 1x128 tiles or BF16): the gemm_small_avx512.cpp idea for
// CPUs without AVX-512. With a few rows of A the packed path spends its time decoding and
// copying W into panels that are then used by only those few rows; here each W row is read
// in place, decoded in registers once per group of up to 4 A rows, and dotted with them.
//
// Decode, 8 codes at a time: sign-extend the bytes to 16 bits, shift left 7, clear bit 14:
// that is the F16 bit pattern of e4m3 · 2^-8, exactly, subnormals included; VCVTPH2PS
// widens it to F32 (the 2^8 goes into the block scale). NaN codes (S.1111.111) decode as
// finite numbers there, so each W row is scanned for them first and its outputs made NaN,
// as the reference gives.
//
// Order of operations (gemm.h's contract): each 128-K block is summed in fresh FP32
// accumulators (8 lanes, then across lanes), and C += partial · (sa · sb) block by block in
// increasing K, starting from C when accumulating — the reference's promotion order; only
// the order inside a block differs.
// GCC 12 flags "undefined" vectors inside its own intrinsic headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/gemm_internal.h"

namespace dsv3::detail {

namespace {

constexpr int64_t kBlk = 128;  // promotion interval and scale block (report §3.3)
constexpr int kMT = 4;         // A rows per register tile
constexpr int kNB = 2;         // W rows per register tile: 8 accumulators, 2 decoded rows

// 8 E4M3 codes -> 8 F32 = e4m3 · 2^-8 (NaN codes: finite garbage, see the top).
inline __m256 e4m3x8_scaled(__m128i codes) {
  const __m128i w = _mm_slli_epi16(_mm_cvtepi8_epi16(codes), 7);
  return _mm256_cvtph_ps(_mm_and_si128(w, _mm_set1_epi16(int16_t(0xBFFF))));
}

// Whether row w[0..K) holds a NaN code.
bool has_nan_code(const uint8_t* w, int64_t K) {
  const __m256i m7f = _mm256_set1_epi8(0x7F);
  __m256i any = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)), m7f);
    any = _mm256_or_si256(any, _mm256_cmpeq_epi8(v, m7f));
  }
  bool nan = !_mm256_testz_si256(any, any);
  for (; k < K; ++k) nan |= (w[k] & 0x7F) == 0x7F;
  return nan;
}

// Sums of the 8 vectors s[0..7], in order, as one vector.
inline __m256 hsum8(const __m256 s[8]) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

struct Ctx {
  const GemmFP8* p;
  const float* af;  // A decoded to F32 [M, kp], zero padded (unscaled)
  int64_t kp;       // K rounded up to 8
};

float b_scale(const GemmFP8& p, int64_t j, int64_t kb) {
  return p.b_layout == Fp8BLayout::Col128 ? p.b_scale[j * p.ldb_scale + kb]
                                          : p.b_scale[(j / kBlk) * p.ldb_scale + kb];
}

// C rows [i0, i0 + MT) x columns [j, j + NB): the tile above. w8 holds the last partial
// 8-code chunk of each W row, zero padded (code 0 is +0).
template <int MT, int NB>
void tile(const Ctx& c, int64_t i0, int64_t j, const uint8_t (*tail)[8], const bool* nan_row) {
  const GemmFP8& p = *c.p;
  const int64_t K = p.K, kfull = K / 8 * 8;
  float tot[kMT * kNB];
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n)
      tot[m * kNB + n] = p.accumulate ? p.C[(i0 + m) * p.ldc + j + n] : 0.f;
  for (int64_t k0 = 0, kb = 0; k0 < K; k0 += kBlk, ++kb) {
    const int64_t k1 = K < k0 + kBlk ? K : k0 + kBlk;
    __m256 s[8];
    for (int t = 0; t < 8; ++t) s[t] = _mm256_setzero_ps();
    for (int64_t k = k0; k < k1; k += 8) {
      __m256 w[kNB];
#pragma GCC unroll 2
      for (int n = 0; n < NB; ++n) {
        const uint8_t* src = k < kfull ? p.B + (j + n) * p.ldb + k : tail[n];
        w[n] = e4m3x8_scaled(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)));
      }
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) {
        const __m256 a = _mm256_loadu_ps(c.af + (i0 + m) * c.kp + k);
#pragma GCC unroll 2
        for (int n = 0; n < NB; ++n) s[m * kNB + n] = _mm256_fmadd_ps(a, w[n], s[m * kNB + n]);
      }
    }
    alignas(32) float part[8];
    _mm256_store_ps(part, hsum8(s));
    for (int n = 0; n < NB; ++n) {
      const float sb = b_scale(p, j + n, kb) * 256.f;  // the decode's 2^-8
      for (int m = 0; m < MT; ++m) {
        const float sa = p.A_bf16 ? 1.f : p.a_scale[(i0 + m) * p.lda_scale + kb];
        tot[m * kNB + n] += part[m * kNB + n] * (sa * sb);
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int n = 0; n < NB; ++n)
      p.C[(i0 + m) * p.ldc + j + n] = nan_row[n] ? __builtin_nanf("") : tot[m * kNB + n];
}

template <int NB>
void column_tile(const Ctx& c, int64_t j) {
  const GemmFP8& p = *c.p;
  const int64_t K = p.K, kfull = K / 8 * 8;
  uint8_t tail[kNB][8] = {};
  bool nan_row[kNB] = {};
  for (int n = 0; n < NB; ++n) {
    const uint8_t* row = p.B + (j + n) * p.ldb;
    std::memcpy(tail[n], row + kfull, size_t(K - kfull));
    nan_row[n] = has_nan_code(row, K);
  }
  for (int64_t i0 = 0; i0 < p.M; i0 += kMT) {
    switch (p.M - i0 < kMT ? p.M - i0 : kMT) {
      case 1: tile<1, NB>(c, i0, j, tail, nan_row); break;
      case 2: tile<2, NB>(c, i0, j, tail, nan_row); break;
      case 3: tile<3, NB>(c, i0, j, tail, nan_row); break;
      default: tile<4, NB>(c, i0, j, tail, nan_row); break;
    }
  }
}

}  // namespace

void gemm_small_fp8_avx2(const GemmFP8& p, int threads) {
  // A decoded once to F32 (exact), shared read-only by the threads.
  const int64_t kp = (p.K + 7) / 8 * 8;
  float* af = static_cast<float*>(gemm_scratch(size_t(p.M * kp) * sizeof(float)));
  const uint16_t* tab = e4m3_bf16_table();
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t k = 0; k < kp; ++k) {
      uint32_t bits = 0;
      if (k < p.K) bits = uint32_t(p.A_bf16 ? p.A_bf16[m * p.lda + k] : tab[p.A[m * p.lda + k]]) << 16;
      std::memcpy(af + m * kp + k, &bits, 4);
    }
  const Ctx c{&p, af, kp};
  // Columns in pairs, split over threads; small problems on one thread.
  const int64_t pairs = (p.N + kNB - 1) / kNB;
  if (2.0 * double(p.M) * double(p.N) * double(p.K) < 262144.0) threads = 1;
  if (threads > pairs) threads = int(pairs);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int nthr = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t base = pairs / nthr, rem = pairs % nthr;
    const int64_t q0 = tid * base + (tid < rem ? tid : rem), q1 = q0 + base + (tid < rem ? 1 : 0);
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t j = q * kNB;
      if (j + kNB <= p.N) column_tile<kNB>(c, j);
      else column_tile<1>(c, j);
    }
  }
}

}  // namespace dsv3::detail
