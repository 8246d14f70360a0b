// linear_forward (model/linear.h) on BF16 and FP8 weights over the GEMM paths (M > 4 rows),
// against a double-precision product of the decoded weights.
//
// Default contract (docs/numerics.md): x carried as hi + lo BF16 parts (8 significant bits
// each: |x − hi| ≤ 2^-8·|x|, |x − hi − lo| ≤ 2^-8·|x − hi| ≤ 2^-16·|x|), both parts through
// one GEMM of 2M rows (in blocks of columns where its output would pass 16 MB; two GEMMs
// past 16384 rows), so per output element, with u = 2^-24,
//   |y − y0 − Σ_k x_k·w_k| ≤ (2^-16 + (K + K/16 + 2⌈K/128⌉ + 6)·u) · Σ_k |x_k·w_k| + 2u·|y0 + Σ|
// — kernels/gemm.h's (K + K/16 + 2)·u for the GEMM's F32 sums, two roundings per 128-K
// block for FP8's promotion, and the adds of the two parts and of y0 (accumulate). With
// Weight::x_bf16 the product is of bf16(x) and the 2^-16 term goes.
// Where BF16 is multiplied as FP32 FMAs (core/cpu.h Bf16Mode::Fma, Intel's default; both
// modes run here on any AVX-512 CPU) and below AVX-512, the weight takes x as F32, unsplit:
// the 2^-16 term goes too. DSV3_ISA=avx2 runs this file on the AVX2 paths.
// Shapes cover the three GEMM paths (2M ≤ 10: the unpacked dot kernel; 2M = 32 with K ≥
// 1024 and a large W: the broadcast-W kernel; the packed one), the add pass over both
// threads, accumulate, row strides, 1 and 2 threads, the column blocks (2·M·N > 2^22) with a
// partial last block, and the two-GEMM form (M > 16384).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "model/linear.h"

namespace dsv3 {
namespace {

struct Case {
  DType dt;
  int64_t M, N, K;
  bool accumulate, x_bf16;
  int threads;
  Bf16Mode mode = best_bf16_mode();
};

struct ModeGuard {
  ~ModeGuard() { set_bf16_mode(best_bf16_mode()); }
};

std::string name(const Case& c) {
  return std::string(dtype_name(c.dt)) + " M" + std::to_string(c.M) + " N" + std::to_string(c.N) + " K" +
         std::to_string(c.K) + (c.accumulate ? " acc" : "") + (c.x_bf16 ? " x_bf16" : "") + " t" +
         std::to_string(c.threads) + " " + bf16_mode_name(c.mode);
}

void run(const Case& c) {
  SCOPED_TRACE(name(c));
  std::mt19937 rng(uint32_t(c.M * 131 + c.N * 7 + c.K));
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t M = c.M, N = c.N, K = c.K, ldx = K + 3, ldy = N + 5;
  // Weights and their decoded values.
  std::vector<double> wd(size_t(N * K));
  std::vector<uint8_t> w8;
  std::vector<uint16_t> w16;
  std::vector<float> sc;
  Weight w;
  if (c.dt == DType::F8_E4M3) {
    const int64_t sn = (N + 127) / 128, sk = (K + 127) / 128;
    sc.resize(size_t(sn * sk));
    for (float& s : sc) s = std::ldexp(1.f + 0.5f * std::fabs(nd(rng)), -8);
    w8.resize(size_t(N * K));
    for (int64_t i = 0; i < N * K; ++i) {
      uint8_t code;
      do code = uint8_t(rng()); while ((code & 0x7f) == 0x7f);  // no NaN codes
      w8[size_t(i)] = code;
      wd[size_t(i)] = double(e4m3_to_f32(code)) * sc[size_t((i / K) / 128 * sk + (i % K) / 128)];
    }
    w.w = TensorView(w8.data(), DType::F8_E4M3, {N, K});
    w.scale = TensorView(sc.data(), DType::F32, {sn, sk});
  } else {
    w16.resize(size_t(N * K));
    for (int64_t i = 0; i < N * K; ++i) {
      w16[size_t(i)] = f32_to_bf16(0.05f * nd(rng));
      wd[size_t(i)] = bf16_to_f32(w16[size_t(i)]);
    }
    w.w = TensorView(w16.data(), DType::BF16, {N, K});
  }
  w.x_bf16 = c.x_bf16;
  std::vector<float> x(size_t(M * ldx), NAN);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) x[size_t(m * ldx + k)] = nd(rng) * (1.f + float(k % 7));
  std::vector<float> y(size_t(M * ldy), -7.f);
  if (c.accumulate)
    for (float& v : y) v = nd(rng);
  const std::vector<float> y0 = y;
  LinearScratch s;
  ModeGuard guard;
  set_bf16_mode(c.mode);
  linear_forward(y.data(), ldy, x.data(), ldx, M, w, s, c.accumulate, c.threads);
  const double u = std::ldexp(1.0, -24);
  const bool x_f32 = c.mode == Bf16Mode::Fma || active_isa() < Isa::Avx512;  // FP8 and BF16 alike
  const double rel = (c.x_bf16 || x_f32 ? 0.0 : std::ldexp(1.0, -16)) +
                     double(K + K / 16 + 2 * ((K + 127) / 128) + 6) * u;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float xv = x[size_t(m * ldx + k)];
        const double xk = c.x_bf16 ? double(bf16_to_f32(f32_to_bf16(xv))) : double(xv);
        ref += xk * wd[size_t(n * K + k)];
        mag += std::fabs(xk * wd[size_t(n * K + k)]);
      }
      const double base = c.accumulate ? double(y0[size_t(m * ldy + n)]) : 0.0;
      const double got = y[size_t(m * ldy + n)];
      ASSERT_LE(std::fabs(got - base - ref), rel * mag + 2 * u * std::fabs(base + ref) + 1e-30)
          << "row " << m << " column " << n;
    }
    for (int64_t n = N; n < ldy; ++n) ASSERT_EQ(y[size_t(m * ldy + n)], y0[size_t(m * ldy + n)]) << "wrote past N";
  }
}

TEST(Linear, GemmPathsWithinTheContract) {
  for (DType dt : {DType::F8_E4M3, DType::BF16})
    for (int threads : {1, 2})
      for (const auto& [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{5, 200, 256}, {16, 160, 1088},
                                    {37, 130, 384}, {16, 2048, 1088}, {40, 1024, 256}})
        for (bool acc : {false, true})
          for (bool xb : {false, true})
            for (Bf16Mode mode : {Bf16Mode::Dot, Bf16Mode::Fma}) run({dt, M, N, K, acc, xb, threads, mode});
}

// 2·M·N = 4,198,400 floats > 2^22: columns in blocks of 32,768 and a last one of 32.
TEST(Linear, LargeOutputInColumnBlocksWithinTheContract) {
  for (DType dt : {DType::F8_E4M3, DType::BF16})
    for (bool acc : {false, true}) run({dt, 64, 32800, 128, acc, false, 2});
}

// M = 16,400: not even 128 columns fit 2^22 floats, so two GEMMs, the second accumulating.
TEST(Linear, ManyRowsTakeTwoGemmsWithinTheContract) {
  for (DType dt : {DType::F8_E4M3, DType::BF16}) run({dt, 16400, 130, 40, true, false, 2});
}

}  // namespace
}  // namespace dsv3
