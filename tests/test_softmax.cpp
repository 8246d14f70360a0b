// Softmax (scale, per-row valid length), its backward, log-softmax and argmax: every ISA
// path against the scalar twins, backward against central differences.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/softmax.h"
#include "ops_testing.h"

namespace dsv3 {
namespace {

using testing::Floats;
using testing::IsaScope;
using testing::kEps;
using testing::kIsas;

const int64_t kSizes[] = {1, 3, 17, 127, 129, 1000};

// Float sum over 32 partial sums vs the twin's double sum: ≤ (C/32 + 9)·eps relative for
// positive terms (see test_norm.cpp), times Σ|terms| for signed ones.
double sum_rel(int64_t n) { return (double(n) / 32 + 9) * kEps; }

TEST(Softmax, ForwardMatchesScalarTwin) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t C : kSizes) {
      const int64_t T = 4;
      Floats x(T * C), y(T * C), yr(T * C);
      testing::fill_uniform(x.data(), T * C, -20.f, 20.f, uint32_t(C));
      const int32_t len[T] = {int32_t(C), int32_t((C + 1) / 2), 0, int32_t(C > 1 ? C - 1 : 1)};
      for (const int32_t* lens : {static_cast<const int32_t*>(nullptr), len}) {
        softmax_forward(y.data(), x.data(), T, C, 0.37f, lens);
        softmax_forward_ref(yr.data(), x.data(), T, C, 0.37f, lens);
        // exp of bit-identical arguments: ≤ 3 eps apart (2 ulp + 1 ulp); the sum adds
        // sum_rel(C), 1/s and y·(1/s) one rounding each.
        const double rel = 3 * kEps + sum_rel(C) + 2 * kEps;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t n = lens ? lens[t] : C;
          double s = 0;
          for (int64_t c = 0; c < C; ++c) {
            const float a = y[t * C + c], b = yr[t * C + c];
            if (c >= n) {
              ASSERT_EQ(a, 0.f);
              ASSERT_EQ(b, 0.f);
              continue;
            }
            EXPECT_NEAR(a, b, rel * b) << isa_name(isa) << " C=" << C << " t=" << t;
            s += a;
          }
          if (n > 0) {
            EXPECT_NEAR(s, 1.0, (n + 4) * kEps);
          }
        }
      }
      // In place.
      Floats z(T * C);
      for (int64_t i = 0; i < T * C; ++i) z[i] = x[i];
      softmax_forward(z.data(), z.data(), T, C, 0.37f, len);
      softmax_forward(y.data(), x.data(), T, C, 0.37f, len);
      for (int64_t i = 0; i < T * C; ++i) ASSERT_EQ(z[i], y[i]);
    }
  }
}

TEST(Softmax, BackwardMatchesScalarTwin) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t C : kSizes) {
      const int64_t T = 3;
      const float scale = 0.125f;
      Floats x(T * C), y(T * C), dy(T * C), dx(T * C), dxr(T * C);
      testing::fill_uniform(x.data(), T * C, -5.f, 5.f, uint32_t(C + 1));
      testing::fill_uniform(dy.data(), T * C, -1.f, 1.f, uint32_t(C + 2));
      softmax_forward_ref(y.data(), x.data(), T, C, scale, nullptr);
      softmax_backward(dx.data(), dy.data(), y.data(), T, C, scale);
      softmax_backward_ref(dxr.data(), dy.data(), y.data(), T, C, scale);
      for (int64_t t = 0; t < T; ++t) {
        // s = Σ dy·y differs by ≤ sum_rel(C)·Σ|dy·y| + 1 rounding; dx = (scale·y)·(dy − s)
        // then differs by scale·y·|Δs| plus ≤ 2 roundings of each side.
        double sabs = 0, s = 0;
        for (int64_t c = 0; c < C; ++c) {
          sabs += std::fabs(dy[t * C + c] * y[t * C + c]);
          s += double(dy[t * C + c]) * y[t * C + c];
        }
        const double ds = sum_rel(C) * sabs + kEps * std::fabs(s);
        for (int64_t c = 0; c < C; ++c) {
          const double sy = scale * y[t * C + c];
          const double tol =
              sy * ds + 3 * kEps * sy * (std::fabs(dy[t * C + c]) + std::fabs(s)) + 1e-38;
          EXPECT_NEAR(dx[t * C + c], dxr[t * C + c], tol) << isa_name(isa) << " C=" << C;
        }
      }
    }
  }
}

// L = Σ w·softmax(x·scale, len) in double from the scalar forward. Step δ = 1e-2 on logits
// of size ~3 with scale 0.5: truncation δ²/6·|L'''| ≤ 2e-5·scale³ ; rounding of the float
// forward (≤ (C/32 + 12)·eps relative per y, |L| ≤ 1) over 2δ ≈ 1e-5. Tolerance 1e-4.
TEST(Softmax, BackwardMatchesFiniteDifferences) {
  const int64_t T = 2, C = 23;
  const float scale = 0.5f;
  const int32_t len[T] = {int32_t(C), 11};
  Floats x(T * C), w(T * C), y(T * C), dx(T * C);
  testing::fill_uniform(x.data(), T * C, -3.f, 3.f, 31);
  testing::fill_uniform(w.data(), T * C, -1.f, 1.f, 32);
  auto L = [&] {
    Floats o(T * C);
    softmax_forward_ref(o.data(), x.data(), T, C, scale, len);
    double s = 0;
    for (int64_t i = 0; i < T * C; ++i) s += double(w[i]) * o[i];
    return s;
  };
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    softmax_forward(y.data(), x.data(), T, C, scale, len);
    softmax_backward(dx.data(), w.data(), y.data(), T, C, scale);
    const float d = 1e-2f;
    for (int64_t i : {int64_t(0), int64_t(9), int64_t(C - 1), int64_t(C + 4), int64_t(C + 10),
                      int64_t(C + 15)}) {
      const float keep = x[i];
      x[i] = keep + d;
      const double lp = L();
      x[i] = keep - d;
      const double lm = L();
      x[i] = keep;
      EXPECT_NEAR(dx[i], (lp - lm) / (2.0 * d), 1e-4) << isa_name(isa) << " i=" << i;
    }
    // Masked entries (≥ len) get exactly zero gradient.
    for (int64_t c = len[1]; c < C; ++c) EXPECT_EQ(dx[C + c], 0.f);
  }
}

TEST(LogSoftmax, MatchesScalarTwinAndDouble) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t C : {int64_t(1), int64_t(3), int64_t(17), int64_t(129), int64_t(129280)}) {
      Floats x(C), o(C), orf(C);
      testing::fill_uniform(x.data(), C, -30.f, 30.f, uint32_t(C));
      const float lse = log_softmax_row(o.data(), x.data(), C);
      const float lser = log_softmax_row_ref(orf.data(), x.data(), C);
      double m = -INFINITY, s = 0;
      for (int64_t c = 0; c < C; ++c) m = std::max(m, double(x[c]));
      for (int64_t c = 0; c < C; ++c) s += std::exp(double(x[c]) - m);
      const double exact = m + std::log(s);
      // lse = m + log(Σ): |Δ log Σ| ≤ relative error of Σ (≤ 3 eps + sum_rel(C)), plus
      // the rounding of log and of the final add (≤ eps·|lse| each).
      const double tol = 3 * kEps + sum_rel(C) + 2 * kEps * std::fabs(exact);
      EXPECT_NEAR(lse, exact, tol) << isa_name(isa) << " C=" << C;
      EXPECT_NEAR(lser, exact, 4 * kEps * (1 + std::fabs(exact))) << " C=" << C;
      for (int64_t c = 0; c < C; ++c)
        ASSERT_NEAR(o[c], orf[c], tol + 2 * kEps * (std::fabs(orf[c]) + std::fabs(lser)));
    }
  }
}

TEST(Argmax, FirstMaximumIgnoringNaN) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t C : {int64_t(1), int64_t(3), int64_t(17), int64_t(129), int64_t(1000)}) {
      Floats x(C);
      // Few distinct values: many ties.
      testing::fill_uniform(x.data(), C, 0.f, 4.f, uint32_t(C));
      for (int64_t c = 0; c < C; ++c) x[c] = std::floor(x[c]);
      EXPECT_EQ(argmax_row(x.data(), C), argmax_row_ref(x.data(), C)) << isa_name(isa);
      int64_t want = 0;
      for (int64_t c = 1; c < C; ++c)
        if (x[c] > x[want]) want = c;
      EXPECT_EQ(argmax_row(x.data(), C), want);
      if (C > 2) {
        x[0] = NAN;
        x[C - 1] = 100.f;
        EXPECT_EQ(argmax_row(x.data(), C), C - 1);
      }
      for (int64_t c = 0; c < C; ++c) x[c] = -INFINITY;
      EXPECT_EQ(argmax_row(x.data(), C), 0);
      for (int64_t c = 0; c < C; ++c) x[c] = NAN;
      EXPECT_EQ(argmax_row(x.data(), C), 0);
    }
  }
}

TEST(Softmax, MinusInfinityEntries) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    // −inf entries get exactly 0; a row of only −inf becomes zeros (not NaN).
    Floats x(2 * 19), y(2 * 19);
    testing::fill_uniform(x.data(), 2 * 19, -1.f, 1.f, 3);
    for (int64_t c = 0; c < 19; c += 2) x[c] = -INFINITY;
    for (int64_t c = 19; c < 38; ++c) x[c] = -INFINITY;
    softmax_forward(y.data(), x.data(), 2, 19);
    double s = 0;
    for (int64_t c = 0; c < 19; ++c) {
      if (c % 2 == 0) {
        EXPECT_EQ(y[c], 0.f);
      }
      s += y[c];
    }
    EXPECT_NEAR(s, 1.0, 23 * kEps);
    for (int64_t c = 19; c < 38; ++c) EXPECT_EQ(y[c], 0.f) << isa_name(isa);
  }
}

TEST(Softmax, RejectsBadInput) {
  float a[4] = {};
  const int32_t bad_len[1] = {5};
  EXPECT_THROW(softmax_forward(a, a, 1, 4, 1.f, bad_len), Error);
  EXPECT_THROW(softmax_forward(a, a, 1, 4, 0.f), Error);
  EXPECT_THROW(argmax_row(a, 0), Error);
  EXPECT_THROW(log_softmax_row(a, a, 0), Error);
  EXPECT_THROW(softmax_forward(a, nullptr, 1, 4), Error);
  EXPECT_THROW(softmax_backward(a, a, nullptr, 1, 4), Error);
  EXPECT_THROW(argmax_row(nullptr, 4), Error);
}

}  // namespace
}  // namespace dsv3
