// The optimizer's kernels (kernels/adamw.h). AdamW's update: the scalar twin against the
// update computed in double from the same inputs (each F32 result within a few roundings of
// it), and the AVX-512 path against the twin bit for bit (F32 and BF16 moments, lengths
// around the 16-lane tail, misaligned arrays, magnitudes from 1e-30 to 1e3, zeros, with and
// without decay). The sum of squares: the twin against a long-double sum, the AVX-512 path
// against the twin bit for bit (lengths around its 32-lane step, misaligned starts).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/cpu.h"
#include "core/dtype.h"
#include "kernels/adamw.h"
#include "ops_testing.h"

namespace dsv3 {
namespace {

using testing::Floats;

constexpr double kU = 0x1p-24;

// Values spread over many binades, signs mixed, some exact zeros.
void fill_wide(float* x, int64_t n, uint32_t seed, double lo_exp, double hi_exp) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> e(lo_exp, hi_exp);
  for (int64_t i = 0; i < n; ++i) {
    const double v = std::pow(10.0, e(rng)) * (rng() & 1 ? 1 : -1);
    x[i] = rng() % 17 == 0 ? 0.0f : float(v);
  }
}

AdamWCoef coef(int t, float lr, float wd) {
  AdamWCoef c;
  c.b1 = 0.9f;
  c.b2 = 0.95f;
  c.eps = 1e-8f;
  c.step_size = float(lr / (1.0 - std::pow(0.9, t)));
  c.inv_bc2 = float(1.0 / (1.0 - std::pow(0.95, t)));
  c.wd = lr * wd;
  return c;
}

struct Arrays {
  Floats p, g, m, v;
  std::vector<uint16_t> m16, v16;
  explicit Arrays(int64_t n, uint32_t seed) : p(n, 1), g(n, 3), m(n, 2), v(n, 5), m16(size_t(n) + 1), v16(size_t(n) + 1) {
    fill_wide(p.data(), n, seed, -3, 1);
    fill_wide(g.data(), n, seed + 1, -30, 3);
    fill_wide(m.data(), n, seed + 2, -30, 2);
    fill_wide(v.data(), n, seed + 3, -30, 4);
    for (int64_t i = 0; i < n; ++i) {
      v[i] = std::fabs(v[i]);  // a second moment is never negative
      m16[size_t(i)] = f32_to_bf16(m[i]);
      v16[size_t(i)] = f32_to_bf16(v[i]);
    }
  }
};

TEST(AdamW, TwinIsTheUpdateInDouble) {
  const int64_t n = 5000;
  for (float wd : {0.0f, 0.1f}) {
    Arrays a(n, 11), b(n, 11);
    const AdamWCoef c = coef(3, 3e-3f, wd);
    adamw_update_ref(a.p.data(), a.g.data(), a.m.data(), a.v.data(), n, c);
    for (int64_t i = 0; i < n; ++i) {
      const double g = b.g[i], p = b.p[i];
      const double m = double(c.b1) * b.m[i] + (1.0 - double(c.b1)) * g;
      const double v = double(c.b2) * b.v[i] + (1.0 - double(c.b2)) * g * g;
      // Each F32 result: a sum of two rounded products, rounded (≤ 3 roundings of its terms).
      ASSERT_LE(std::fabs(a.m[i] - m), 3 * kU * (std::fabs(c.b1 * b.m[i]) + std::fabs((1 - c.b1) * g)) + 1e-45) << i;
      ASSERT_LE(std::fabs(a.v[i] - v), 4 * kU * (std::fabs(c.b2 * b.v[i]) + std::fabs((1 - c.b2) * g * g)) + 1e-45) << i;
      // The step: m/(sqrt(v·ibc2) + eps) is within ~6 roundings relative (its inputs' own
      // errors included), the decay term 1, the subtraction 1 of p's new value.
      const double upd = double(c.step_size) * m / (std::sqrt(v * double(c.inv_bc2)) + double(c.eps)),
                   dec = double(c.wd) * p, want = p - (upd + dec);
      const double tol = 10 * kU * std::fabs(upd) + 2 * kU * std::fabs(dec) + kU * std::fabs(want) + 1e-45;
      ASSERT_LE(std::fabs(a.p[i] - want), tol) << i << " p " << p << " g " << g;
    }
  }
}

TEST(AdamW, Avx512GivesTheTwinsBits) {
  if (best_isa() != Isa::Avx512) GTEST_SKIP() << "this CPU has no AVX-512 (BF16): only the twin runs here";
  for (int64_t n : {0, 1, 15, 16, 17, 31, 100, 1000, 16385}) {
    for (float wd : {0.0f, 0.1f}) {
      for (int t : {1, 50}) {
        SCOPED_TRACE(::testing::Message() << "n " << n << " wd " << wd << " t " << t);
        const AdamWCoef c = coef(t, 1e-3f, wd);
        Arrays a(n, uint32_t(n + t)), b(n, uint32_t(n + t));
        adamw_update_ref(a.p.data(), a.g.data(), a.m.data(), a.v.data(), n, c);
        avx512::adamw_update(b.p.data(), b.g.data(), b.m.data(), b.v.data(), n, c);
        ASSERT_EQ(std::memcmp(a.p.data(), b.p.data(), size_t(n) * 4), 0) << "p, F32 moments";
        ASSERT_EQ(std::memcmp(a.m.data(), b.m.data(), size_t(n) * 4), 0) << "m";
        ASSERT_EQ(std::memcmp(a.v.data(), b.v.data(), size_t(n) * 4), 0) << "v";
        Arrays h(n, uint32_t(n + t)), k(n, uint32_t(n + t));
        // BF16 moments one element past a 64-byte boundary's alignment (odd uint16 offset).
        adamw_update_ref(h.p.data(), h.g.data(), h.m16.data(), h.v16.data(), n, c);
        std::memmove(k.m16.data() + 1, k.m16.data(), size_t(n) * 2);
        std::memmove(k.v16.data() + 1, k.v16.data(), size_t(n) * 2);
        avx512::adamw_update(k.p.data(), k.g.data(), k.m16.data() + 1, k.v16.data() + 1, n, c);
        ASSERT_EQ(std::memcmp(h.p.data(), k.p.data(), size_t(n) * 4), 0) << "p, BF16 moments";
        ASSERT_EQ(std::memcmp(h.m16.data(), k.m16.data() + 1, size_t(n) * 2), 0) << "m16";
        ASSERT_EQ(std::memcmp(h.v16.data(), k.v16.data() + 1, size_t(n) * 2), 0) << "v16";
      }
    }
  }
}

// Clipping inside the update (gscale) gives the bits of scaling the gradient first, in the
// twin and in the AVX-512 path; gscale = 1 leaves the gradient as it is.
TEST(AdamW, ClipFactorGivesTheBitsOfScalingFirst) {
  const int64_t n = 1001;
  for (float f : {0.37f, 1.0f}) {
    for (Isa isa : testing::kIsas) {
      testing::IsaScope scope(isa);
      AdamWCoef c = coef(4, 1e-3f, 0.1f);
      Arrays a(n, 13), b(n, 13);
      for (int64_t i = 0; i < n; ++i) b.g[i] *= f;
      c.gscale = f;
      adamw_update(a.p.data(), a.g.data(), a.m.data(), a.v.data(), n, c);
      c.gscale = 1.0f;
      adamw_update(b.p.data(), b.g.data(), b.m.data(), b.v.data(), n, c);
      EXPECT_EQ(std::memcmp(a.p.data(), b.p.data(), size_t(n) * 4), 0) << isa_name(active_isa()) << " f " << f;
      EXPECT_EQ(std::memcmp(a.v.data(), b.v.data(), size_t(n) * 4), 0) << isa_name(active_isa()) << " f " << f;
    }
  }
}

// The BF16 copy written with the update is the updated p rounded to nearest even, with F32
// and BF16 moments, in the twin and the AVX-512 path; p itself is as without it.
TEST(AdamW, WritesTheUpdatedWeightsInBf16) {
  const int64_t n = 1003;
  const AdamWCoef c = coef(3, 1e-3f, 0.1f);
  for (Isa isa : testing::kIsas) {
    testing::IsaScope scope(isa);
    Arrays a(n, 17), b(n, 17);
    std::vector<uint16_t> p16(size_t(n), 0xffff), q16(size_t(n), 0xffff);
    adamw_update(a.p.data(), a.g.data(), a.m.data(), a.v.data(), n, c, p16.data());
    adamw_update(b.p.data(), b.g.data(), b.m.data(), b.v.data(), n, c);
    ASSERT_EQ(std::memcmp(a.p.data(), b.p.data(), size_t(n) * 4), 0) << isa_name(active_isa());
    adamw_update(a.p.data(), a.g.data(), a.m16.data(), a.v16.data(), n, c, q16.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(p16[size_t(i)], f32_to_bf16(b.p[i])) << isa_name(active_isa()) << " " << i;
      ASSERT_EQ(q16[size_t(i)], f32_to_bf16(a.p[i])) << isa_name(active_isa()) << " " << i;
    }
  }
}

// The dispatching entry point takes the active ISA's path: the twin when lowered.
TEST(AdamW, DispatchFollowsTheActiveIsa) {
  const int64_t n = 333;
  const AdamWCoef c = coef(2, 1e-3f, 0.1f);
  for (Isa isa : testing::kIsas) {
    testing::IsaScope scope(isa);
    Arrays a(n, 7), b(n, 7);
    adamw_update(a.p.data(), a.g.data(), a.m.data(), a.v.data(), n, c);
    adamw_update_ref(b.p.data(), b.g.data(), b.m.data(), b.v.data(), n, c);
    EXPECT_EQ(std::memcmp(a.p.data(), b.p.data(), size_t(n) * 4), 0) << isa_name(active_isa());
  }
}

TEST(SumSquares, TwinIsTheSumWithinItsRoundings) {
  for (int64_t n : {0, 1, 31, 32, 33, 1000, 70001}) {
    Floats x(n, 9);
    fill_wide(x.data(), n, uint32_t(n) + 3, -20, 3);
    long double want = 0;
    for (int64_t i = 0; i < n; ++i) want += (long double)x[i] * x[i];
    // Each lane adds n/32 terms, then 5 pairwise steps: ≤ (n/32 + 5) double roundings of
    // partial sums no larger than the whole (every term is ≥ 0).
    const double tol = (double(n) / 32 + 6) * 0x1p-53 * double(want);
    EXPECT_LE(std::fabs(double(sum_squares_ref(x.data(), n) - want)), tol) << "n " << n;
  }
}

TEST(SumSquares, Avx512GivesTheTwinsBits) {
  if (best_isa() != Isa::Avx512) GTEST_SKIP() << "this CPU has no AVX-512 (BF16): only the twin runs here";
  for (int64_t n : {0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 1000, 16385}) {
    for (int64_t off : {0, 1, 3}) {
      Floats x(n + off, 4);
      fill_wide(x.data(), n + off, uint32_t(7 * n + off), -30, 4);
      const double a = sum_squares_ref(x.data() + off, n), b = avx512::sum_squares(x.data() + off, n);
      ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "n " << n << " offset " << off << ": " << a << " vs " << b;
    }
  }
  for (Isa isa : testing::kIsas) {  // the dispatching entry point follows the active ISA
    testing::IsaScope scope(isa);
    Floats x(777, 2);
    fill_wide(x.data(), 777, 5, -10, 2);
    const double a = sum_squares(x.data(), 777), b = sum_squares_ref(x.data(), 777);
    EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << isa_name(active_isa());
  }
}

}  // namespace
}  // namespace dsv3
