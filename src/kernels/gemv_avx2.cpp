// AVX2 GEMV (kernels/gemv.h) for x86 CPUs without AVX-512 BF16/VBMI: tiles of a few rows
// of W against M rows of x, weights converted in registers, F32 FMA. FP8 goes through F16
// (simd_avx2.h load8_e4m3_scaled: e4m3·2^-8, the 2^8 folded into x·s); that decodes NaN
// codes as finite numbers, so each row is checked for them and its outputs become NaN
// (gemv.h). Same threading and scratch layout as gemv_avx512.cpp.
// Row invariance (gemv.h): every output (n, m) is one 8-lane accumulator fed in k order,
// the K tail from a zero-padded copy, then hsum8 (+ NaN), in every tile shape; tiles only
// change which outputs are computed together.
#include <immintrin.h>

#include "core/parallel.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#include "kernels/gemv_impl.h"
#include "kernels/simd_avx2.h"

namespace dsv3::avx2 {

namespace {

constexpr int64_t kBlock = 128;  // FP8 scale block (kernels/quant.h kFp8Block)

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

void store_y(float* y, float v, bool accumulate) { *y = accumulate ? *y + v : v; }

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

// Tiles of R rows of W x M rows of x, one accumulator per (row, x row), R·M ≤ 8: x is
// loaded once per 8 columns for all R rows (one row at a time re-read x from L2 per row —
// with K = 2048 four rows of x fill L1 — and ran M = 3–4 at 0.2–0.3 of membw), weights
// widened in registers. A software prefetch runs one tile of rows ahead (at least 8 KiB),
// as gemv_avx512.cpp explains. The K tail goes through zero-padded copies of the rows.
struct WBf16 {
  using T = uint16_t;
  static __m256 load8(const T* w) { return load8_bf16(w); }
};
struct WFp8 {  // e4m3·2^-8 (the 2^8 is in x·s); NaN codes: has_e4m3_nan below
  using T = uint8_t;
  static __m256 load8(const T* w) { return load8_e4m3_scaled(w); }
};

template <int R, int M, class W>
void tile(const typename W::T* w, int64_t ldw, int64_t K, const float* xs, int64_t xstride,
          float* y, int64_t ldy, bool accumulate, int64_t pf) {
  static_assert(R * M <= 8, "GEMV tile too large");
  using T = typename W::T;
  __m256 acc[R][M];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  auto step = [&](const T* const* rows, int64_t k) __attribute__((always_inline)) {
    if constexpr (R > 1) {  // x in registers, shared by the R rows
      __m256 x[M];
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) x[m] = _mm256_loadu_ps(xs + m * xstride + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256 wr = W::load8(rows[r]);
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) acc[r][m] = _mm256_fmadd_ps(wr, x[m], acc[r][m]);
      }
    } else {  // one row: x straight from memory (M registers of x would not fit beside M sums)
      const __m256 wr = W::load8(rows[0]);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) acc[0][m] = _mm256_fmadd_ps(wr, _mm256_loadu_ps(xs + m * xstride + k), acc[0][m]);
    }
  };
  const int64_t kfull = K / 8 * 8;
  const T* rows[R];
  for (int64_t k = 0; k < kfull; k += 8) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      rows[r] = w + r * ldw + k;
      if ((k & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(rows[r]) + pf, _MM_HINT_T1);
    }
    step(rows, k);
  }
  if (kfull < K) {
    T tail[R][8] = {};
    for (int r = 0; r < R; ++r) {
      std::memcpy(tail[r], w + r * ldw + kfull, size_t(K - kfull) * sizeof(T));
      rows[r] = tail[r];
    }
    step(rows, kfull);
  }
  float nan[R] = {};
  if constexpr (sizeof(T) == 1)
    for (int r = 0; r < R; ++r)
      if (has_e4m3_nan(reinterpret_cast<const uint8_t*>(w + r * ldw), K)) nan[r] = __builtin_nanf("");
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) store_y(y + m * ldy + r, hsum8(acc[r][m]) + nan[r], accumulate);
}

// Rows [n0, n1) against M rows of x. M ≤ 4: tiles of R rows (2 or 4, R·M ≤ 8 sums + M of
// x in 16 registers), then single rows; M = 5..8: one row at a time; M > 8: each row
// against x rows 0..7, then 8..M-1 (the row is then read again, from L1 or L2, not from
// memory: 16 sums do not fit in the 16 registers).
template <int M, class W>
void rows(const typename W::T* w, int64_t ldw, int64_t K, int64_t n0, int64_t n1, const float* xs,
          int64_t xstride, float* y, int64_t ldy, bool accumulate) {
  const int64_t row_bytes = ldw * int64_t(sizeof(typename W::T));
  if constexpr (M <= 8) {
    constexpr int R = M == 2 ? 4 : M <= 4 ? 2 : 1;
    const int64_t pf = R * row_bytes > 8192 ? R * row_bytes : 8192;
    int64_t n = n0;
    for (; n + R <= n1; n += R) tile<R, M, W>(w + n * ldw, ldw, K, xs, xstride, y + n, ldy, accumulate, pf);
    for (; n < n1; ++n) tile<1, M, W>(w + n * ldw, ldw, K, xs, xstride, y + n, ldy, accumulate, pf);
  } else {
    for (int64_t n = n0; n < n1; ++n) {
      tile<1, 8, W>(w + n * ldw, ldw, K, xs, xstride, y + n, ldy, accumulate, 8192);
      tile<1, M - 8, W>(w + n * ldw, ldw, K, xs + 8 * xstride, xstride, y + 8 * ldy + n, ldy, accumulate, 8192);
    }
  }
}

// Calls f.template operator()<M>() with the compile-time value of M in 1..kGemvMaxM.
template <class F>
void with_m(int64_t M, F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((M == I + 1 ? (f.template operator()<I + 1>(), 0) : 0), ...);
  }(std::make_integer_sequence<int, kGemvMaxM>{});
}

template <int M>
void range_fp8(const GemvFP8& p, int64_t n0, int64_t n1, float* xs, int64_t xstride, int64_t* prepared) {
  const int64_t kb = (p.K + kBlock - 1) / kBlock, blk = n0 / kBlock;
  if (*prepared != blk) {
    for (int m = 0; m < M; ++m) prep_x(p.x + m * p.ldx, p.K, p.w_scale + blk * kb, 256.f, xs + m * xstride);
    *prepared = blk;
  }
  rows<M, WFp8>(p.w, p.ldw, p.K, n0, n1, xs, xstride, p.y, p.ldy, p.accumulate);
}

}  // namespace

void gemv_bf16(const GemvBF16& p, int threads, float* scratch) {
  const int64_t xs = round_up(p.K, 64) + 64;
  for (int64_t m = 0; m < p.M; ++m) prep_x(p.x + m * p.ldx, p.K, nullptr, 1.f, scratch + m * xs);
  const int64_t chunk = chunk_rows(p.N, threads, 64), chunks = (p.N + chunk - 1) / chunk;
  auto run_chunk = [&](int64_t c) {
    const int64_t n0 = c * chunk, n1 = n0 + chunk < p.N ? n0 + chunk : p.N;
    with_m(p.M, [&]<int M>() {
      rows<M, WBf16>(p.w, p.ldw, p.K, n0, n1, scratch, xs, p.y, p.ldy, p.accumulate);
    });
  };
  if (threads == 1) {  // no nested region per call (gemv_avx512.cpp gemv_fp8_with)
    for (int64_t c = 0; c < chunks; ++c) run_chunk(c);
    return;
  }
  parallel_for_dynamic(chunks, threads, run_chunk);
}

void gemv_fp8(const GemvFP8& p, int threads, float* scratch) {
  const int64_t xs = round_up(p.K, 64) + 64;
  const int64_t per_thread = p.M * xs;
  const int64_t chunk = chunk_rows(p.N, threads, kBlock), chunks = (p.N + chunk - 1) / chunk;
  auto run_chunk = [&](float* s, int64_t* prepared, int64_t c) {
    const int64_t n0 = c * chunk, n1 = n0 + chunk < p.N ? n0 + chunk : p.N;
    with_m(p.M, [&]<int M>() { range_fp8<M>(p, n0, n1, s, xs, prepared); });
  };
  if (threads == 1) {  // no nested region per call (gemv_avx512.cpp gemv_fp8_with)
    int64_t prepared = -1;
    for (int64_t c = 0; c < chunks; ++c) run_chunk(scratch, &prepared, c);
    return;
  }
  parallel_region(threads, [&](Team& team) {
    float* s = scratch + team.tid() * per_thread;
    int64_t prepared = -1;
    team.for_dynamic(chunks, [&](int64_t c) { run_chunk(s, &prepared, c); });
  });
}

}  // namespace dsv3::avx2
