// AVX2 GEMV (kernels/gemv.h) for x86 CPUs without AVX-512 BF16/VBMI: one row of W at a
// time against M rows of x, weights converted in registers, F32 FMA. FP8 goes through
// F16 (sign-extend, shift left 7, clear bit 14 = the F16 bits of e4m3·2^-8; VCVTPH2PS;
// the 2^8 is folded into x·s); that decodes NaN codes as finite numbers, so a compare
// flags them and the row's outputs become NaN (gemv.h). Same threading and scratch
// layout as gemv_avx512.cpp.
#include <immintrin.h>

#include <omp.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/gemv_impl.h"

namespace dsv3::avx2 {

namespace {

constexpr int64_t kBlock = 128;  // FP8 scale block (kernels/quant.h kFp8Block)

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

void store_y(float* y, float v, bool accumulate) { *y = accumulate ? *y + v : v; }

float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

int64_t chunk_rows(int64_t N, int threads, int64_t max_rows) {
  int64_t c = max_rows;
  while (c > 4 && N < 4 * threads * c) c /= 2;
  return c;
}

// x[0, K) copied, optionally times a per-128-column scale and a constant, zero-padded to
// a multiple of 32 columns.
void prep_x(const float* x, int64_t K, const float* s, float factor, float* xs) {
  for (int64_t k = 0; k < K; ++k) xs[k] = s ? x[k] * (s[k / kBlock] * factor) : x[k];
  for (int64_t k = K; k < round_up(K, 32); ++k) xs[k] = 0.f;
}

// y[m·ldy] (+)= Σ_k w[k]·xs[m][k], 16 BF16 weights per step, the tail via a zeroed copy.
template <int M>
void row_bf16(const uint16_t* w, int64_t K, const float* xs, int64_t xstride, float* y,
              int64_t ldy, bool accumulate) {
  __m256 acc[M][2];  // M·2 ≤ 8 ymm: small enough for GCC to keep in registers
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  auto step = [&](const uint16_t* src, int64_t k) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256 lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(v)), 16));
    const __m256 hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(v, 1)), 16));
    for (int m = 0; m < M; ++m) {
      acc[m][0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xs + m * xstride + k), acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xs + m * xstride + k + 8), acc[m][1]);
    }
  };
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) step(w + k, k);
  if (k < K) {
    uint16_t tail[16] = {};
    std::memcpy(tail, w + k, size_t(K - k) * 2);
    step(tail, k);
  }
  for (int m = 0; m < M; ++m) store_y(y + m * ldy, hsum(_mm256_add_ps(acc[m][0], acc[m][1])), accumulate);
}

// 32 FP8 codes per step as four vectors of e4m3·2^-8.
template <int M>
void row_fp8(const uint8_t* w, int64_t K, const float* xs, int64_t xstride, float* y, int64_t ldy,
             bool accumulate) {
  const __m256i keep = _mm256_set1_epi16(int16_t(0xbfff)), c7f = _mm256_set1_epi8(0x7f);
  __m256i nan_codes = _mm256_setzero_si256();
  __m256 acc[M][2];
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  auto step = [&](const uint8_t* src, int64_t k) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    nan_codes = _mm256_or_si256(nan_codes, _mm256_cmpeq_epi8(_mm256_and_si256(b, c7f), c7f));
    const __m256i h0 = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(b)), 7), keep);
    const __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(b, 1)), 7), keep);
    const __m256 f0 = _mm256_cvtph_ps(_mm256_castsi256_si128(h0)), f1 = _mm256_cvtph_ps(_mm256_extracti128_si256(h0, 1));
    const __m256 f2 = _mm256_cvtph_ps(_mm256_castsi256_si128(h1)), f3 = _mm256_cvtph_ps(_mm256_extracti128_si256(h1, 1));
    for (int m = 0; m < M; ++m) {
      const float* xm = xs + m * xstride + k;
      acc[m][0] = _mm256_fmadd_ps(f0, _mm256_loadu_ps(xm), acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(f1, _mm256_loadu_ps(xm + 8), acc[m][1]);
      acc[m][0] = _mm256_fmadd_ps(f2, _mm256_loadu_ps(xm + 16), acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(f3, _mm256_loadu_ps(xm + 24), acc[m][1]);
    }
  };
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) step(w + k, k);
  if (k < K) {
    uint8_t tail[32] = {};
    std::memcpy(tail, w + k, size_t(K - k));
    step(tail, k);
  }
  const float nan = _mm256_testz_si256(nan_codes, nan_codes) ? 0.f : __builtin_nanf("");
  for (int m = 0; m < M; ++m)
    store_y(y + m * ldy, hsum(_mm256_add_ps(acc[m][0], acc[m][1])) + nan, accumulate);
}

template <int M>
void range_bf16(const GemvBF16& p, int64_t n0, int64_t n1, const float* xs, int64_t xstride) {
  for (int64_t n = n0; n < n1; ++n) row_bf16<M>(p.w + n * p.ldw, p.K, xs, xstride, p.y + n, p.ldy, p.accumulate);
}

template <int M>
void range_fp8(const GemvFP8& p, int64_t n0, int64_t n1, float* xs, int64_t xstride, int64_t* prepared) {
  const int64_t kb = (p.K + kBlock - 1) / kBlock, blk = n0 / kBlock;
  if (*prepared != blk) {
    for (int m = 0; m < M; ++m) prep_x(p.x + m * p.ldx, p.K, p.w_scale + blk * kb, 256.f, xs + m * xstride);
    *prepared = blk;
  }
  for (int64_t n = n0; n < n1; ++n) row_fp8<M>(p.w + n * p.ldw, p.K, xs, xstride, p.y + n, p.ldy, p.accumulate);
}

}  // namespace

void gemv_bf16(const GemvBF16& p, int threads, float* scratch) {
  const int64_t xs = round_up(p.K, 64) + 64;
  for (int64_t m = 0; m < p.M; ++m) prep_x(p.x + m * p.ldx, p.K, nullptr, 1.f, scratch + m * xs);
  const int64_t chunk = chunk_rows(p.N, threads, 64), chunks = (p.N + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t n0 = c * chunk, n1 = n0 + chunk < p.N ? n0 + chunk : p.N;
    switch (p.M) {
      case 1: range_bf16<1>(p, n0, n1, scratch, xs); break;
      case 2: range_bf16<2>(p, n0, n1, scratch, xs); break;
      case 3: range_bf16<3>(p, n0, n1, scratch, xs); break;
      default: range_bf16<4>(p, n0, n1, scratch, xs); break;
    }
  }
}

void gemv_fp8(const GemvFP8& p, int threads, float* scratch) {
  const int64_t xs = round_up(p.K, 64) + 64;
  const int64_t per_thread = p.M * xs;
  const int64_t chunk = chunk_rows(p.N, threads, kBlock), chunks = (p.N + chunk - 1) / chunk;
#pragma omp parallel num_threads(threads)
  {
    float* s = scratch + omp_get_thread_num() * per_thread;
    int64_t prepared = -1;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n0 = c * chunk, n1 = n0 + chunk < p.N ? n0 + chunk : p.N;
      switch (p.M) {
        case 1: range_fp8<1>(p, n0, n1, s, xs, &prepared); break;
        case 2: range_fp8<2>(p, n0, n1, s, xs, &prepared); break;
        case 3: range_fp8<3>(p, n0, n1, s, xs, &prepared); break;
        default: range_fp8<4>(p, n0, n1, s, xs, &prepared); break;
      }
    }
  }
}

}  // namespace dsv3::avx2
