// exp, SiLU and SwiGLU: the vectorised exp against double exp (ulp bound), every ISA path
// against the scalar twins on odd / misaligned / strided shapes, and the backward passes
// against central differences of the scalar forward.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/check.h"
#include "kernels/activation.h"
#include "ops_testing.h"

namespace dsv3 {
namespace {

using testing::Floats;
using testing::IsaScope;
using testing::kEps;
using testing::kIsas;

const int64_t kSizes[] = {1, 3, 16, 17, 127, 129, 1000};

TEST(Exp, WithinTwoUlpOfDoubleExp) {
  // Dense sweep of the range where exp is a normal float, plus both ends.
  const int64_t n = 400001;
  Floats x(n), y(n);
  for (int64_t i = 0; i < n; ++i) x[i] = float(-87.3 + (88.7 + 87.3) * double(i) / double(n - 1));
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    exp_f32(y.data(), x.data(), n, 1);
    double worst = 0;
    for (int64_t i = 0; i < n; ++i)
      worst = std::max(worst, testing::ulp_error(y[i], std::exp(double(x[i]))));
    // glibc expf is < 1 ulp; exp512's bound is 2 ulp (simd_avx512.h).
    EXPECT_LE(worst, 2.0) << isa_name(isa);
    std::printf("exp %s: max error %.3f ulp\n", isa_name(isa), worst);
  }
}

TEST(Exp, SpecialValues) {
  const float in[] = {-INFINITY, INFINITY, NAN, 100.f, -110.f, 0.f, -0.f, 88.7f, -87.f, -100.f};
  const int n = sizeof(in) / sizeof(in[0]);
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    float out[n];
    exp_f32(out, in, n, 1);
    EXPECT_EQ(out[0], 0.f);
    EXPECT_EQ(out[1], INFINITY);
    EXPECT_TRUE(std::isnan(out[2]));
    EXPECT_EQ(out[3], INFINITY);
    EXPECT_EQ(out[4], 0.f);
    EXPECT_EQ(out[5], 1.f);
    EXPECT_EQ(out[6], 1.f);
    EXPECT_LE(testing::ulp_error(out[7], std::exp(double(in[7]))), 2.0);
    EXPECT_LE(testing::ulp_error(out[8], std::exp(double(in[8]))), 2.0);
    // Subnormal result: at most one rounding of the subnormal grid plus 2 ulp of the
    // unrounded value, i.e. within 2^-149 · 3 in absolute terms.
    EXPECT_NEAR(out[9], std::exp(double(in[9])), 3 * std::ldexp(1.0, -149));
  }
}

// σ and silu differ between paths only through exp: exp512 ≤ 2 ulp, expf ≤ 1 ulp, so the
// two e = exp(−g) differ by ≤ 3 eps relative. 1+e and 1/(1+e) pass that on (≤ 3 eps) and
// add ≤ 1 rounding each on both sides; g·s and ·up add one each: ≤ 3 + 2·4 ≈ 11 eps
// relative. silu' = s·(1 + g·(1 − s)) loses relative accuracy in 1 − s when s → 1: the
// absolute error of (1 − s) is ≤ 11 eps, so silu' gets ≤ 11 eps·(1 + |g|) absolute.
constexpr double kRel = 11 * kEps;

TEST(Silu, MatchesScalarTwin) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t n : kSizes) {
      Floats x(n), dout(n), y(n), dx(n), yr(n), dxr(n);
      testing::fill_uniform(x.data(), n, -12.f, 12.f, uint32_t(n));
      testing::fill_uniform(dout.data(), n, -1.f, 1.f, uint32_t(n + 1));
      silu_forward(y.data(), x.data(), n);
      silu_backward(dx.data(), dout.data(), x.data(), n);
      silu_forward_ref(yr.data(), x.data(), n);
      silu_backward_ref(dxr.data(), dout.data(), x.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_NEAR(y[i], yr[i], kRel * std::fabs(yr[i]) + 1e-37) << isa_name(isa) << " n=" << n;
        EXPECT_NEAR(dx[i], dxr[i], kRel * std::fabs(dout[i]) * (2 + std::fabs(x[i])) + 1e-37)
            << isa_name(isa) << " n=" << n << " i=" << i;
      }
      // In place gives the same answer.
      Floats z(n);
      for (int64_t i = 0; i < n; ++i) z[i] = x[i];
      silu_forward(z.data(), z.data(), n);
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(z[i], y[i]);
    }
  }
}

TEST(SwiGLU, MatchesScalarTwinStrided) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t I : kSizes) {
      const int64_t T = 3, ld_in = 2 * I + 3, ld_h = I + 5;  // gate|up fused, padded rows
      Floats gu(T * ld_in), dh(T * ld_h), h(T * ld_h), hr(T * ld_h);
      Floats dg(T * ld_in), dgr(T * ld_in);
      testing::fill_uniform(gu.data(), T * ld_in, -8.f, 8.f, uint32_t(I));
      testing::fill_uniform(dh.data(), T * ld_h, -1.f, 1.f, uint32_t(I + 7));
      const float* gate = gu.data();
      const float* up = gu.data() + I;
      swiglu_forward(h.data(), ld_h, gate, ld_in, up, ld_in, T, I);
      swiglu_forward_ref(hr.data(), ld_h, gate, ld_in, up, ld_in, T, I);
      swiglu_backward(dg.data(), ld_in, dg.data() + I, ld_in, dh.data(), ld_h, gate, ld_in, up,
                      ld_in, T, I);
      swiglu_backward_ref(dgr.data(), ld_in, dgr.data() + I, ld_in, dh.data(), ld_h, gate, ld_in,
                          up, ld_in, T, I);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < I; ++i) {
          const float g = gate[t * ld_in + i], u = up[t * ld_in + i], d = dh[t * ld_h + i];
          EXPECT_NEAR(h[t * ld_h + i], hr[t * ld_h + i],
                      kRel * std::fabs(hr[t * ld_h + i]) + 1e-37);
          EXPECT_NEAR(dg[t * ld_in + i], dgr[t * ld_in + i],
                      kRel * std::fabs(d * u) * (2 + std::fabs(g)) + 1e-37);
          EXPECT_NEAR(dg[t * ld_in + I + i], dgr[t * ld_in + I + i],
                      kRel * std::fabs(dgr[t * ld_in + I + i]) + 1e-37);
        }
      // In place (dgate over gate, dup over up) equals the out-of-place result.
      swiglu_backward(gu.data(), ld_in, gu.data() + I, ld_in, dh.data(), ld_h, gu.data(), ld_in,
                      gu.data() + I, ld_in, T, I);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < 2 * I; ++i) EXPECT_EQ(gu[t * ld_in + i], dg[t * ld_in + i]);
    }
  }
}

// Central differences in double of the scalar forward, L = Σ dh·h. Step δ = 1e-2:
// truncation δ²/6·|f'''| ≤ 2e-5·|dh·up| (|silu'''| < 0.6), rounding of the two float
// forwards ≤ 2·eps·|h|/(2δ) ≈ 1.2e-5·|h|; tolerance 1e-4·(1 + |h| + |dh·up|).
TEST(SwiGLU, BackwardMatchesFiniteDifferences) {
  const int64_t I = 37;
  Floats g(I), u(I), dh(I), dg(I), du(I);
  testing::fill_uniform(g.data(), I, -6.f, 6.f, 3);
  testing::fill_uniform(u.data(), I, -2.f, 2.f, 4);
  testing::fill_uniform(dh.data(), I, -1.f, 1.f, 5);
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    swiglu_backward(dg.data(), I, du.data(), I, dh.data(), I, g.data(), I, u.data(), I, 1, I);
    auto L = [&](int64_t i, float gv, float uv) {
      float h;
      swiglu_forward_ref(&h, 1, &gv, 1, &uv, 1, 1, 1);
      return double(dh[i]) * h;
    };
    const float d = 1e-2f;
    for (int64_t i = 0; i < I; ++i) {
      const double fd_g =
          (L(i, g[i] + d, u[i]) - L(i, g[i] - d, u[i])) / (double(g[i] + d) - double(g[i] - d));
      const double fd_u =
          (L(i, g[i], u[i] + d) - L(i, g[i], u[i] - d)) / (double(u[i] + d) - double(u[i] - d));
      const double tol = 1e-4 * (1 + std::fabs(g[i] * u[i]) + std::fabs(dh[i] * u[i]));
      EXPECT_NEAR(dg[i], fd_g, tol) << isa_name(isa) << " i=" << i;
      EXPECT_NEAR(du[i], fd_u, tol) << isa_name(isa) << " i=" << i;
    }
  }
}

TEST(Activation, RejectsBadShapes) {
  float a[4] = {};
  EXPECT_THROW(silu_forward(a, a, -1), Error);
  EXPECT_THROW(swiglu_forward(a, 1, a, 1, a, 1, 1, 2), Error);  // stride < I
  EXPECT_THROW(silu_forward(a, nullptr, 4), Error);
  EXPECT_THROW(swiglu_forward(a, 1, nullptr, 1, a, 1, 1, 1), Error);
}

}  // namespace
}  // namespace dsv3
