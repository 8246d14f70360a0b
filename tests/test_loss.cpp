// Cross-entropy: every ISA path against the scalar twins, lse against a double
// computation, the in-place backward against central differences, ignore_index, the fused
// forward+backward, and chunking (rows processed in pieces give the same numbers).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/loss.h"
#include "ops_testing.h"

namespace dsv3 {
namespace {

using testing::Floats;
using testing::IsaScope;
using testing::kEps;
using testing::kIsas;

constexpr int32_t kIgnore = -100;
const int64_t kSizes[] = {1, 3, 17, 127, 129, 1000};

double sum_rel(int64_t n) { return (double(n) / 32 + 9) * kEps; }

// |Δlse| between paths: the sums of exps differ by ≤ 3 eps (exp) + sum_rel(V) relative
// (the twin's double sum is exact to ~1e-16), log passes a relative error through as an
// absolute one, and log and the final add round once each: ≤ 2 eps·|lse|.
double lse_tol(int64_t V, double lse) {
  return 3 * kEps + sum_rel(V) + 2 * kEps * std::fabs(lse) + 1e-30;
}

TEST(CrossEntropy, ForwardBackwardMatchScalarTwin) {
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t V : kSizes) {
      const int64_t T = 5, ld = V + 3;
      Floats x(T * ld), y(T * ld), yr(T * ld), lse(T), lser(T), loss(T), lossr(T), dl(T);
      testing::fill_uniform(x.data(), T * ld, -15.f, 15.f, uint32_t(V));
      testing::fill_uniform(dl.data(), T, 0.5f, 2.f, uint32_t(V + 1));
      std::vector<int32_t> tg(T);
      for (int64_t t = 0; t < T; ++t) tg[size_t(t)] = int32_t((t * 7919) % V);
      tg[2] = kIgnore;
      cross_entropy_forward(loss.data(), lse.data(), x.data(), ld, tg.data(), T, V, kIgnore);
      cross_entropy_forward_ref(lossr.data(), lser.data(), x.data(), ld, tg.data(), T, V, kIgnore);
      for (int64_t t = 0; t < T; ++t) {
        const double tl = lse_tol(V, lser[t]);
        EXPECT_NEAR(lse[t], lser[t], tl) << isa_name(isa) << " V=" << V;
        if (tg[size_t(t)] == kIgnore) {
          EXPECT_EQ(loss[t], 0.f);
        } else {
          EXPECT_NEAR(loss[t], lossr[t], tl + kEps * std::fabs(lossr[t]))
              << isa_name(isa) << " V=" << V;
        }
      }
      for (int64_t i = 0; i < T * ld; ++i) y[i] = yr[i] = x[i];
      const float scale = 1.0f / float(count_valid_targets(tg.data(), T, kIgnore));
      cross_entropy_backward(y.data(), ld, lser.data(), tg.data(), dl.data(), scale, T, V, kIgnore);
      cross_entropy_backward_ref(yr.data(), ld, lser.data(), tg.data(), dl.data(), scale, T, V,
                                 kIgnore);
      for (int64_t t = 0; t < T; ++t) {
        const float g = scale * dl[t];
        for (int64_t v = 0; v < V; ++v) {
          const float a = y[t * ld + v], b = yr[t * ld + v];
          if (tg[size_t(t)] == kIgnore) {
            ASSERT_EQ(a, 0.f);
            continue;
          }
          // Same lse and argument x − lse: the exps differ by ≤ 3 eps, ·g one rounding
          // each; at the target, p·g − g adds one rounding of ≤ eps·|g|.
          const double p = std::fabs(b) + (v == tg[size_t(t)] ? g : 0.f);
          EXPECT_NEAR(a, b, 5 * kEps * p + (v == tg[size_t(t)] ? kEps * g : 0.0) + 1e-38)
              << isa_name(isa) << " V=" << V << " v=" << v;
        }
        // Untouched padding between rows.
        for (int64_t v = V; v < ld; ++v) ASSERT_EQ(y[t * ld + v], x[t * ld + v]);
      }
      // The fused call equals forward then backward on the same path.
      Floats z(T * ld), zl(T);
      for (int64_t i = 0; i < T * ld; ++i) {
        z[i] = x[i];
        y[i] = x[i];
      }
      cross_entropy_forward_backward(zl.data(), z.data(), ld, tg.data(), scale, T, V, kIgnore);
      cross_entropy_backward(y.data(), ld, lse.data(), tg.data(), nullptr, scale, T, V, kIgnore);
      for (int64_t t = 0; t < T; ++t) EXPECT_EQ(zl[t], loss[t]);
      for (int64_t i = 0; i < T * ld; ++i) ASSERT_EQ(z[i], y[i]);
    }
  }
}

// The full DeepSeek-V3 vocabulary in one row, against a double computation.
TEST(CrossEntropy, FullVocabularyAgainstDouble) {
  const int64_t V = 129280;
  Floats x(V);
  testing::fill_uniform(x.data(), V, -10.f, 10.f, 77);
  const int32_t tg = 12345;
  double m = -INFINITY, s = 0;
  for (int64_t v = 0; v < V; ++v) m = std::max(m, double(x[v]));
  for (int64_t v = 0; v < V; ++v) s += std::exp(double(x[v]) - m);
  const double lse = m + std::log(s);
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    float loss, l;
    cross_entropy_forward(&loss, &l, x.data(), V, &tg, 1, V, kIgnore);
    EXPECT_NEAR(l, lse, lse_tol(V, lse)) << isa_name(isa);
    EXPECT_NEAR(loss, lse - x[tg], lse_tol(V, lse) + kEps * std::fabs(loss)) << isa_name(isa);
  }
}

// Central differences in double of the scalar forward loss. Step δ = 1e-2 on logits of
// size ~3: truncation δ²/6·|∂³loss| ≤ 2e-5·0.2; the float loss rounds to ~eps·|loss|
// (≈ 5e-7) per evaluation, over 2δ: 5e-5. Tolerance 1e-4.
TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  const int64_t T = 2, V = 29;
  Floats x(T * V), g(T * V), lse(T);
  testing::fill_uniform(x.data(), T * V, -3.f, 3.f, 55);
  const int32_t tg[T] = {4, 28};
  const float dl[T] = {0.7f, -1.3f};
  auto L = [&] {
    float loss[T];
    cross_entropy_forward_ref(loss, nullptr, x.data(), V, tg, T, V, kIgnore);
    return double(dl[0]) * loss[0] + double(dl[1]) * loss[1];
  };
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    for (int64_t i = 0; i < T * V; ++i) g[i] = x[i];
    cross_entropy_forward(nullptr, lse.data(), g.data(), V, tg, T, V, kIgnore);
    cross_entropy_backward(g.data(), V, lse.data(), tg, dl, 1.0f, T, V, kIgnore);
    const float d = 1e-2f;
    for (int64_t i : {int64_t(0), int64_t(4), int64_t(11), int64_t(V + 3), int64_t(V + 28),
                      int64_t(2 * V - 2)}) {
      const float keep = x[i];
      x[i] = keep + d;
      const double lp = L();
      x[i] = keep - d;
      const double lm = L();
      x[i] = keep;
      EXPECT_NEAR(g[i], (lp - lm) / (2.0 * d), 1e-4) << isa_name(isa) << " i=" << i;
    }
  }
}

TEST(CrossEntropy, ChunkedEqualsWholeAndMean) {
  const int64_t T = 37, V = 301;
  Floats x(T * V), whole(T * V), chunked(T * V), lw(T), lc(T);
  testing::fill_uniform(x.data(), T * V, -5.f, 5.f, 66);
  std::vector<int32_t> tg(T);
  for (int64_t t = 0; t < T; ++t) tg[size_t(t)] = t % 5 == 0 ? kIgnore : int32_t((t * 31) % V);
  const int64_t n = count_valid_targets(tg.data(), T, kIgnore);
  EXPECT_EQ(n, T - 8);
  for (int64_t i = 0; i < T * V; ++i) whole[i] = chunked[i] = x[i];
  cross_entropy_forward_backward(lw.data(), whole.data(), V, tg.data(), 1.0f / float(n), T, V,
                                 kIgnore);
  for (int64_t t0 = 0; t0 < T; t0 += 8) {
    const int64_t rows = std::min<int64_t>(8, T - t0);
    cross_entropy_forward_backward(lc.data() + t0, chunked.data() + t0 * V, V, tg.data() + t0,
                                   1.0f / float(n), rows, V, kIgnore);
  }
  for (int64_t i = 0; i < T * V; ++i) ASSERT_EQ(whole[i], chunked[i]);
  double s = 0;
  for (int64_t t = 0; t < T; ++t) {
    EXPECT_EQ(lw[t], lc[t]);
    if (tg[size_t(t)] != kIgnore) s += lw[t];
  }
  EXPECT_DOUBLE_EQ(mean_loss(lw.data(), tg.data(), T, kIgnore), s / double(n));
  // Each valid row's gradient sums to ~0 (softmax sums to 1, minus the one-hot).
  for (int64_t t = 1; t < T; ++t) {
    double r = 0;
    for (int64_t v = 0; v < V; ++v) r += whole[t * V + v];
    EXPECT_NEAR(r, 0.0, 1e-6);
  }
  const int32_t all_ignored[2] = {kIgnore, kIgnore};
  EXPECT_EQ(mean_loss(lw.data(), all_ignored, 2, kIgnore), 0.0);
}

TEST(CrossEntropy, RejectsBadTargets) {
  float x[8] = {}, l[2];
  const int32_t bad[2] = {0, 8};
  EXPECT_THROW(cross_entropy_forward(l, l, x, 4, bad, 2, 4, kIgnore), Error);
  const int32_t neg[1] = {-1};
  EXPECT_THROW(cross_entropy_forward_backward(l, x, 4, neg, 1.f, 1, 4, kIgnore), Error);
  const int32_t ok[1] = {0};
  EXPECT_THROW(cross_entropy_forward(l, l, x, 2, ok, 1, 4, kIgnore), Error);  // ld < V
  EXPECT_THROW(cross_entropy_forward(l, l, x, 4, nullptr, 1, 4, kIgnore), Error);
  EXPECT_THROW(count_valid_targets(nullptr, 2, kIgnore), Error);
  EXPECT_THROW(mean_loss(nullptr, ok, 1, kIgnore), Error);
  EXPECT_THROW(cross_entropy_backward(x, 4, nullptr, ok, nullptr, 1.f, 1, 4, kIgnore), Error);  // lse
}

}  // namespace
}  // namespace dsv3
