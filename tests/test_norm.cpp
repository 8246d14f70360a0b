// RMSNorm: every ISA path against the scalar twin on odd / misaligned / strided shapes,
// backward against central differences, BF16 output against the F32 output.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "kernels/norm.h"
#include "kernels/row_parallel.h"
#include "ops_testing.h"

namespace dsv3 {
namespace {

using testing::Floats;
using testing::IsaScope;
using testing::kEps;
using testing::kIsas;

const int64_t kSizes[] = {1, 3, 17, 64, 127, 129, 1000};
constexpr int64_t kT = 5;

// Tolerances. The paths differ only in the row sums: the twin sums in double (exact to
// ~1e-16), the fast paths in float over 32 partial sums (AVX-512: 2×16 lanes, AVX2: 4×8),
// each adding ≤ C/32 + 4 terms (the tail goes to one accumulator), then a tree of ≤ 5
// levels: relative error ≤ (C/32 + 9)·eps for a sum of positive terms, or that times
// Σ|terms| for a signed sum. rstd = 1/sqrt(ss/C + eps) halves it and adds ≤ 3
// roundings; out = (x·rstd)·w adds ≤ 2 more on each side.
double sum_rel(int64_t n) { return (double(n) / 32 + 9) * kEps; }

void fill_row_data(Floats& x, Floats& w, int64_t T, int64_t C, int64_t ld, uint32_t seed) {
  testing::fill_uniform(x.data(), T * ld, -2.f, 2.f, seed);
  testing::fill_uniform(w.data(), C, 0.5f, 1.5f, seed + 1);
}

TEST(RmsNorm, ForwardMatchesScalarTwin) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t C : kSizes) {
      const int64_t ldx = C + 5, ldo = C + 3;  // strided: norm of a slice of a wider row
      Floats x(kT * ldx), w(C), out(kT * ldo), outr(kT * ldo), rstd(kT), rstdr(kT);
      fill_row_data(x, w, kT, C, ldx, uint32_t(C));
      rmsnorm_forward(out.data(), ldo, rstd.data(), x.data(), ldx, w.data(), kT, C, 1e-6f);
      rmsnorm_forward_ref(outr.data(), ldo, rstdr.data(), x.data(), ldx, w.data(), kT, C, 1e-6f);
      const double rel_r = 0.5 * sum_rel(C) + 3 * kEps, rel_o = rel_r + 4 * kEps;
      for (int64_t t = 0; t < kT; ++t) {
        EXPECT_NEAR(rstd[t], rstdr[t], rel_r * rstdr[t]) << isa_name(isa) << " C=" << C;
        for (int64_t c = 0; c < C; ++c)
          EXPECT_NEAR(out[t * ldo + c], outr[t * ldo + c], rel_o * std::fabs(outr[t * ldo + c]))
              << isa_name(isa) << " C=" << C << " t=" << t << " c=" << c;
      }
      // BF16 output is exactly f32_to_bf16 of the F32 output of the same path, and rstd
      // is the same.
      std::vector<uint16_t> ob(size_t(kT * ldo));
      Floats rb(kT);
      rmsnorm_forward_bf16(ob.data(), ldo, rb.data(), x.data(), ldx, w.data(), kT, C, 1e-6f);
      for (int64_t t = 0; t < kT; ++t) {
        EXPECT_EQ(rb[t], rstd[t]);
        for (int64_t c = 0; c < C; ++c)
          ASSERT_EQ(ob[size_t(t * ldo + c)], f32_to_bf16(out[t * ldo + c])) << isa_name(isa);
      }
    }
  }
}

TEST(RmsNorm, ZeroRowAndNullRstd) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    Floats x(33), w(33), out(33);
    for (int i = 0; i < 33; ++i) {
      x[i] = 0.f;
      w[i] = 1.f;
    }
    rmsnorm_forward(out.data(), 33, nullptr, x.data(), 33, w.data(), 1, 33, 1e-6f);
    for (int i = 0; i < 33; ++i) EXPECT_EQ(out[i], 0.f);
  }
}

TEST(RmsNorm, BackwardMatchesScalarTwin) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t C : kSizes) {
      const int64_t ldx = C + 2, ldd = C + 7;
      Floats x(kT * ldx), w(C), dout(kT * ldd), rstd(kT), dx(kT * ldd), dxr(kT * ldd);
      Floats dw(C), dwr(C);
      fill_row_data(x, w, kT, C, ldx, uint32_t(C + 100));
      testing::fill_uniform(dout.data(), kT * ldd, -1.f, 1.f, uint32_t(C + 200));
      rmsnorm_forward_ref(dx.data(), ldd, rstd.data(), x.data(), ldx, w.data(), kT, C, 1e-6f);
      for (int64_t c = 0; c < C; ++c) dw[c] = dwr[c] = 0.25f;  // dw accumulates
      rmsnorm_backward(dx.data(), ldd, dw.data(), dout.data(), ldd, x.data(), ldx, w.data(),
                       rstd.data(), kT, C, false);
      rmsnorm_backward_ref(dxr.data(), ldd, dwr.data(), dout.data(), ldd, x.data(), ldx, w.data(),
                           rstd.data(), kT, C, false);
      for (int64_t t = 0; t < kT; ++t) {
        // dx = r·g − k·x with k = r³·Σ(g·w·x)/C: the paths differ in k by at most
        // sum_rel(C)·r³·Σ|g·w·x|/C (+2 roundings), then each of the 3 float ops may round
        // differently: ≤ 3 eps·(|r·g·w| + |k·x|).
        const float r = rstd[t];
        double sabs = 0, dot = 0;
        for (int64_t c = 0; c < C; ++c) {
          sabs += std::fabs(dout[t * ldd + c] * w[c] * x[t * ldx + c]);
          dot += double(dout[t * ldd + c] * w[c]) * x[t * ldx + c];
        }
        const double k = double(r) * r * r * dot / C;
        const double dk = (sum_rel(C) + 2 * kEps) * double(r) * r * r * sabs / C;
        for (int64_t c = 0; c < C; ++c) {
          const double xv = x[t * ldx + c], gw = double(dout[t * ldd + c]) * w[c];
          const double tol =
              dk * std::fabs(xv) + 3 * kEps * (std::fabs(r * gw) + std::fabs(k * xv)) + 1e-30;
          EXPECT_NEAR(dx[t * ldd + c], dxr[t * ldd + c], tol) << isa_name(isa) << " C=" << C;
        }
      }
      // dw[c] += Σ_t g·x·r: float sum of T terms, per column, vs double.
      for (int64_t c = 0; c < C; ++c) {
        double sabs = 0;
        for (int64_t t = 0; t < kT; ++t)
          sabs += std::fabs(dout[t * ldd + c] * x[t * ldx + c] * rstd[t]);
        EXPECT_NEAR(dw[c], dwr[c], (kT + 4) * kEps * (sabs + 0.25)) << isa_name(isa) << " C=" << C;
      }
    }
  }
}

TEST(RmsNorm, BackwardAccumulateInPlaceAndThreadInvariance) {
  // T·C = 33667 ≥ kParallelMinWork (row_parallel.h): below it every call runs on one thread
  // and the comparison below could not fail.
  const int64_t T = 131, C = 257;
  static_assert(T * C >= kParallelMinWork);
  Floats x(T * C), w(C), dout(T * C), rstd(T), y(T * C);
  fill_row_data(x, w, T, C, C, 9);
  testing::fill_uniform(dout.data(), T * C, -1.f, 1.f, 10);
  rmsnorm_forward(y.data(), C, rstd.data(), x.data(), C, w.data(), T, C, 1e-6f);
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    Floats dx1(T * C), dx2(T * C), dw1(C), dw2(C), acc(T * C), inplace(T * C);
    for (int64_t c = 0; c < C; ++c) dw1[c] = dw2[c] = 0.f;
    rmsnorm_backward(dx1.data(), C, dw1.data(), dout.data(), C, x.data(), C, w.data(), rstd.data(),
                     T, C, false, 1);
    rmsnorm_backward(dx2.data(), C, dw2.data(), dout.data(), C, x.data(), C, w.data(), rstd.data(),
                     T, C, false, 2);
    for (int64_t i = 0; i < T * C; ++i) ASSERT_EQ(dx1[i], dx2[i]);
    for (int64_t c = 0; c < C; ++c) ASSERT_EQ(dw1[c], dw2[c]);
    // More threads than rows and than dw's 5 column blocks.
    for (int64_t c = 0; c < C; ++c) dw2[c] = 0.f;
    rmsnorm_backward(dx2.data(), C, dw2.data(), dout.data(), C, x.data(), C, w.data(), rstd.data(),
                     T, C, false, 200);
    for (int64_t i = 0; i < T * C; ++i) ASSERT_EQ(dx1[i], dx2[i]);
    for (int64_t c = 0; c < C; ++c) ASSERT_EQ(dw1[c], dw2[c]);
    // accumulate_dx adds the same values onto what was there.
    for (int64_t i = 0; i < T * C; ++i) acc[i] = 1.5f;
    rmsnorm_backward(acc.data(), C, nullptr, dout.data(), C, x.data(), C, w.data(), rstd.data(), T,
                     C, true);
    for (int64_t i = 0; i < T * C; ++i) ASSERT_EQ(acc[i], 1.5f + dx1[i]);
    // In place over dout (dw computed before dx overwrites it).
    Floats dw3(C);
    for (int64_t c = 0; c < C; ++c) dw3[c] = 0.f;
    for (int64_t i = 0; i < T * C; ++i) inplace[i] = dout[i];
    rmsnorm_backward(inplace.data(), C, dw3.data(), inplace.data(), C, x.data(), C, w.data(),
                     rstd.data(), T, C, false);
    for (int64_t i = 0; i < T * C; ++i) ASSERT_EQ(inplace[i], dx1[i]);
    for (int64_t c = 0; c < C; ++c) ASSERT_EQ(dw3[c], dw1[c]);
  }
}

// Central differences in double of the scalar forward, L = Σ dout·out. Step δ = 1e-2 on
// inputs of size ~1: truncation δ²/6·|L'''| (L''' = O(r³·Σ|dout|) ≈ 10 for C = 19)
// ≈ 2e-4; rounding of the float forward ≈ C·eps·|L|/δ ≈ 2e-4. Tolerance 2e-3.
TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  const int64_t T = 2, C = 19;
  Floats x(T * C), w(C), dout(T * C), rstd(T), y(T * C), dx(T * C), dw(C);
  fill_row_data(x, w, T, C, C, 21);
  testing::fill_uniform(dout.data(), T * C, -1.f, 1.f, 22);
  auto L = [&] {
    Floats o(T * C);
    rmsnorm_forward_ref(o.data(), C, nullptr, x.data(), C, w.data(), T, C, 1e-6f);
    double s = 0;
    for (int64_t i = 0; i < T * C; ++i) s += double(dout[i]) * o[i];
    return s;
  };
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    rmsnorm_forward(y.data(), C, rstd.data(), x.data(), C, w.data(), T, C, 1e-6f);
    for (int64_t c = 0; c < C; ++c) dw[c] = 0.f;
    rmsnorm_backward(dx.data(), C, dw.data(), dout.data(), C, x.data(), C, w.data(), rstd.data(), T,
                     C, false);
    const float d = 1e-2f;
    for (int64_t i : {int64_t(0), int64_t(7), int64_t(C + 3), int64_t(2 * C - 1)}) {
      const float keep = x[i];
      x[i] = keep + d;
      const double lp = L();
      x[i] = keep - d;
      const double lm = L();
      x[i] = keep;
      EXPECT_NEAR(dx[i], (lp - lm) / (2.0 * d), 2e-3) << isa_name(isa) << " x" << i;
    }
    for (int64_t c : {int64_t(0), int64_t(5), C - 1}) {
      const float keep = w[c];
      w[c] = keep + d;
      const double lp = L();
      w[c] = keep - d;
      const double lm = L();
      w[c] = keep;
      EXPECT_NEAR(dw[c], (lp - lm) / (2.0 * d), 2e-3) << isa_name(isa) << " w" << c;
    }
  }
}

TEST(RmsNorm, RejectsBadShapes) {
  float a[8] = {};
  EXPECT_THROW(rmsnorm_forward(a, 4, a, a, 4, a, 1, 0, 1e-6f), Error);
  EXPECT_THROW(rmsnorm_forward(a, 2, a, a, 4, a, 1, 4, 1e-6f), Error);
  EXPECT_THROW(rmsnorm_forward(a, 4, a, a, 4, a, 1, 4, -1.f), Error);
  EXPECT_THROW(rmsnorm_backward(a, 4, a, a, 4, a, 4, a, a, 1, 4, true), Error);  // dx == dout
  EXPECT_THROW(rmsnorm_forward(a, 4, a, nullptr, 4, a, 1, 4, 1e-6f), Error);
  EXPECT_THROW(rmsnorm_backward(a, 4, nullptr, a, 5, a, 4, a, a, 1, 4, false), Error);  // in place, lddx != lddo
  EXPECT_THROW(rmsnorm_backward(a, 4, a, a + 4, 4, a, 4, a, nullptr, 1, 4, false), Error);  // rstd
}

}  // namespace
}  // namespace dsv3
