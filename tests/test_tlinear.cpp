// The training linear layer in its three modes against a double-precision reference:
// y = x·Wᵀ, dx = dy·W, dW += dyᵀ·x, on odd shapes (partial 128-tiles for FP8).
// Each output element is a sum of products; with S = Σ|products| (computed exactly), the
// worst case per element is |err| ≤ r·S:
//   F32  : r = (K + 2)·2^-24 (FP32 accumulation), ≤ 2e-5 for these K;
//   BF16 : each operand rounded to 8 significant bits (≤ 2^-9 relative): r = 2^-8 + F32;
//   FP8  : E4M3 keeps 4 significant bits (≤ 2^-4 relative per operand; tile scales put the
//          tile's amax at 448, so Gaussian data stays in the normal range): r = (1+2^-4)²−1
//          ≈ 0.129, plus the F32 term.
// The test checks sqrt(Σ err²) ≤ r·sqrt(Σ S²), implied by the per-element bound.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "train/tlinear.h"

using namespace dsv3;

namespace {

// want[i] = exact value, mag[i] = Σ|products| of element i.
double rel_err(const std::vector<float>& got, const std::vector<double>& want,
               const std::vector<double>& mag) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += mag[i] * mag[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST(TLinear, ModesAgainstDouble) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  struct Shape { int64_t M, N, K; };
  for (Shape sh : {Shape{1, 5, 7}, Shape{37, 200, 136}, Shape{130, 129, 257}}) {
    const int64_t M = sh.M, N = sh.N, K = sh.K;
    std::vector<float> x(size_t(M * K)), W(size_t(N * K)), dy(size_t(M * N));
    for (auto& v : x) v = nd(rng);
    for (auto& v : W) v = nd(rng) * 0.1f;
    for (auto& v : dy) v = nd(rng);
    std::vector<double> y_ref(size_t(M * N)), dx_ref(size_t(M * K)), dw_ref(size_t(N * K));
    std::vector<double> y_mag(y_ref.size()), dx_mag(dx_ref.size()), dw_mag(dw_ref.size());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double a = 0, b = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double t = double(x[size_t(m * K + k)]) * W[size_t(n * K + k)];
          a += t;
          b += std::fabs(t);
        }
        y_ref[size_t(m * N + n)] = a;
        y_mag[size_t(m * N + n)] = b;
      }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) {
        double a = 0, b = 0;
        for (int64_t n = 0; n < N; ++n) {
          const double t = double(dy[size_t(m * N + n)]) * W[size_t(n * K + k)];
          a += t;
          b += std::fabs(t);
        }
        dx_ref[size_t(m * K + k)] = a;
        dx_mag[size_t(m * K + k)] = b;
      }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        double a = 0, b = 0;
        for (int64_t m = 0; m < M; ++m) {
          const double t = double(dy[size_t(m * N + n)]) * x[size_t(m * K + k)];
          a += t;
          b += std::fabs(t);
        }
        dw_ref[size_t(n * K + k)] = a;  // the product; dW starts at 1 below
        dw_mag[size_t(n * K + k)] = b;
      }
    for (Precision p : {Precision::F32, Precision::BF16, Precision::FP8}) {
      const double f32 = double(std::max({M, N, K}) + 2) * std::ldexp(1.0, -24);
      const double tol = p == Precision::F32 ? f32 : p == Precision::BF16 ? std::ldexp(1.0, -8) + f32
                                                                       : 0.129 + f32;
      TLinearCtx c;
      c.prec = p;
      TLinearScratch s;
      std::vector<float> y(size_t(M * N)), dx(size_t(M * K)), dw(size_t(N * K), 1.0f);
      tlinear_forward(y.data(), x.data(), W.data(), M, N, K, c, s);
      tlinear_backward(dx.data(), dw.data(), dy.data(), x.data(), W.data(), M, N, K, c, s);
      EXPECT_LT(rel_err(y, y_ref, y_mag), tol) << precision_name(p) << " y " << M << "x" << N << "x" << K;
      EXPECT_LT(rel_err(dx, dx_ref, dx_mag), tol) << precision_name(p) << " dx " << M << "x" << N << "x" << K;
      // dW started at 1: backward adds. (dw − 1 loses ≤ 2^-24 of |dw| to rounding.)
      std::vector<float> dwp(dw.size());
      for (size_t i = 0; i < dw.size(); ++i) dwp[i] = dw[i] - 1.0f;
      std::vector<double> dwm(dw_mag);
      for (auto& v : dwm) v += 1.0;
      EXPECT_LT(rel_err(dwp, dw_ref, dwm), tol) << precision_name(p) << " dW " << M << "x" << N << "x" << K;
      std::printf("%s %lldx%lldx%lld: y %.2e dx %.2e dW %.2e (bound %.2e)\n", precision_name(p),
                  (long long)M, (long long)N, (long long)K, rel_err(y, y_ref, y_mag),
                  rel_err(dx, dx_ref, dx_mag), rel_err(dwp, dw_ref, dwm), tol);
    }
  }
}

}  // namespace

// ZB's split backward (TLinearCtx::defer): dx now, dW recorded and added later by
// tlinear_run_deferred — the same bits as the immediate backward in every mode, even when
// dy and x are overwritten in between (they are copied) and the router's F32 mode differs
// from the context's.
TEST(TLinear, DeferredWeightGradientIsTheSameBits) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (Precision p : {Precision::F32, Precision::BF16, Precision::FP8}) {
    const int64_t M = 37, N = 129, K = 136;
    std::vector<float> x(size_t(M * K)), W(size_t(N * K)), dy(size_t(M * N)), dw0(W.size());
    for (auto& v : x) v = nd(rng);
    for (auto& v : W) v = nd(rng) * 0.1f;
    for (auto& v : dy) v = nd(rng);
    for (auto& v : dw0) v = nd(rng);  // gradients are added: start from something
    TLinearCtx c;
    c.prec = p;
    c.threads = 1;
    TLinearScratch s;
    std::vector<float> dx1(x.size()), dx2(x.size()), dw1 = dw0, dw2 = dw0;
    tlinear_backward(dx1.data(), dw1.data(), dy.data(), x.data(), W.data(), M, N, K, c, s);
    tlinear_backward(dx1.data(), dw1.data(), dy.data(), x.data(), W.data(), M, N, K, c, s, true);
    std::vector<DeferredWGrad> d;
    TLinearCtx cd = c;
    cd.defer = &d;
    std::vector<float> x2 = x, dy2 = dy;
    tlinear_backward(dx2.data(), dw2.data(), dy2.data(), x2.data(), W.data(), M, N, K, cd, s);
    tlinear_backward(dx2.data(), dw2.data(), dy2.data(), x2.data(), W.data(), M, N, K, cd, s, true);
    ASSERT_EQ(d.size(), 2u);
    EXPECT_EQ(dw2, dw0);  // nothing added yet
    std::fill(x2.begin(), x2.end(), 0.f);
    std::fill(dy2.begin(), dy2.end(), 0.f);
    TLinearCtx other = c;
    other.prec = p == Precision::F32 ? Precision::BF16 : Precision::F32;  // each record keeps its mode
    tlinear_run_deferred(d, other, s);
    EXPECT_TRUE(d.empty());
    EXPECT_EQ(dx1, dx2) << precision_name(p);
    EXPECT_EQ(dw1, dw2) << precision_name(p);
  }
}
