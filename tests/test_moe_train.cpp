// DeepSeekMoE / dense SwiGLU training passes (src/train/moe_train.h) on tiny configs:
// forward == the inference moe_forward, backward == double-sided finite differences
// (balance loss included), bias steers selection only, loads, gradient accumulation, and
// the BF16 / FP8 linear modes against F32.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/quant.h"
#include "model/moe.h"
#include "train/moe_train.h"

namespace dsv3 {
namespace {

ModelConfig tiny_v3() {  // sigmoid, noaux_tc, 8 experts in 4 groups, top-2 groups, top-3
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.hidden_size = 40;
  c.intermediate_size = 56;
  c.moe_intermediate_size = 24;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 3;
  c.n_group = 4;
  c.topk_group = 2;
  c.topk_method = "noaux_tc";
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  return c;
}

ModelConfig tiny_v2() {  // softmax, group_limited_greedy, no normalisation, scaled by 1.5
  ModelConfig c = tiny_v3();
  c.model_type = "deepseek_v2";
  c.n_shared_experts = 2;
  c.topk_method = "group_limited_greedy";
  c.scoring_func = "softmax";
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.5;
  return c;
}

// Parameters (or gradients) of one MoE layer plus one dense MLP as F32 views into one block.
struct Params {
  std::vector<float> data;
  MoeWeights moe;
  MlpWeights dense;
  std::vector<std::pair<std::string, Weight*>> list;  // every trainable tensor, named

  Params(const ModelConfig& c, float scale, uint32_t seed) {
    const int64_t H = c.hidden_size, E = c.n_routed_experts, I = c.moe_intermediate_size;
    const int64_t Is = c.n_shared_experts * I, D = c.intermediate_size;
    data.resize(size_t(E * H + E + E * 3 * I * H + 3 * Is * H + 3 * D * H));
    float* p = data.data();
    auto view = [&](Weight& w, int64_t r, int64_t k, const std::string& name) {
      w.w = TensorView(p, DType::F32, {r, k});
      p += r * k;
      if (k > 1) list.emplace_back(name, &w);
    };
    auto mlp = [&](MlpWeights& m, int64_t inter, const std::string& name) {
      view(m.gate_proj, inter, H, name + ".gate_proj");
      view(m.up_proj, inter, H, name + ".up_proj");
      view(m.down_proj, H, inter, name + ".down_proj");
    };
    view(moe.gate, E, H, "gate");
    view(moe.e_score_correction_bias, E, 1, "bias");
    moe.experts.resize(size_t(E));
    for (int64_t e = 0; e < E; ++e) mlp(moe.experts[size_t(e)], I, "experts." + std::to_string(e));
    mlp(moe.shared_experts, Is, "shared_experts");
    mlp(dense, D, "dense");
    std::mt19937 rng(seed);
    // U(-a, a) with a = scale·sqrt(3/fan_in): unit-variance outputs for unit inputs.
    for (auto& [name, w] : list) {
      const float a = scale * std::sqrt(3.0f / float(w->w.shape[1]));
      std::uniform_real_distribution<float> u(-a, a);
      for (int64_t i = 0; i < w->w.numel(); ++i) w->w.ptr<float>()[i] = u(rng);
    }
    // The router a little sharper so that top-k choices are separated by more than an FD step.
    for (int64_t i = 0; i < moe.gate.w.numel(); ++i) moe.gate.w.ptr<float>()[i] *= 3.0f;
  }
};

std::vector<float> uniform(int64_t n, float a, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-a, a);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = u(rng);
  return v;
}

double rel_err(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// One MoE layer under test: L = Σ r ⊙ out + balance loss (the loss the FD checks differentiate).
struct MoeCase {
  ModelConfig c;
  int64_t B, T;
  float alpha;
  Params P, G;
  std::vector<float> x, r, bias, out;
  TLinearCtx lc;
  MoeTrainSaved saved;
  MoeTrainScratch s;
  MoeStats stats;

  MoeCase(const ModelConfig& cfg, int64_t b, int64_t t, float a, bool with_bias, uint32_t seed)
      : c(cfg), B(b), T(t), alpha(a), P(cfg, 1.0f, seed), G(cfg, 0.0f, seed) {
    const int64_t N = B * T, H = c.hidden_size;
    x = uniform(N * H, 1.0f, seed + 1);
    r = uniform(N * H, 1.0f, seed + 2);
    if (with_bias) bias = uniform(c.n_routed_experts, 0.05f, seed + 3);
    out.resize(size_t(N * H));
    lc.threads = 2;
  }
  const float* bias_ptr() const { return bias.empty() ? nullptr : bias.data(); }
  double loss() {
    moe_train_forward(out.data(), x.data(), B, T, c, P.moe, bias_ptr(), alpha, lc, saved, s,
                      &stats);
    double L = stats.balance_loss;
    for (size_t i = 0; i < out.size(); ++i) L += double(r[i]) * out[i];
    return L;
  }
  std::vector<int32_t> routing() const {
    const int64_t n = B * T * c.num_experts_per_tok;
    return std::vector<int32_t>(saved.idx.begin(), saved.idx.begin() + n);
  }
  void backward(std::vector<float>& dx) {
    dx.resize(size_t(B * T * c.hidden_size));
    moe_train_backward(dx.data(), r.data(), x.data(), c, P.moe, G.moe, alpha, 1.0f / float(B), lc,
                       saved, s);
  }
  // ‖r ⊙ out‖₂ (and the balance term): the scale F32 rounding in L is relative to.
  double magnitude() const {
    double m = stats.balance_loss * stats.balance_loss;
    for (size_t i = 0; i < out.size(); ++i) m += double(r[i]) * out[i] * double(r[i]) * out[i];
    return std::sqrt(m);
  }
};

// Double-sided FD of L w.r.t. *v with steps h and 2h; false when a step flips a top-k choice
// (the function is not differentiable across a flip: the entry is skipped, not checked).
struct Fd {
  double d1, d2;
};
bool fd(MoeCase& m, float* v, double h, const std::vector<int32_t>& route, Fd& out) {
  const float v0 = *v;
  double L[4];
  const double steps[4] = {h, -h, 2 * h, -2 * h};
  for (int i = 0; i < 4; ++i) {
    *v = float(v0 + steps[i]);
    L[i] = m.loss();
    if (m.routing() != route) {
      *v = v0;
      return false;
    }
  }
  *v = v0;
  // steps as actually represented in float
  out.d1 = (L[0] - L[1]) / (double(float(v0 + h)) - double(float(v0 - h)));
  out.d2 = (L[2] - L[3]) / (double(float(v0 + 2 * h)) - double(float(v0 - 2 * h)));
  return true;
}

// Tolerance of an FD check in F32, three parts:
//  - rounding: L(v±h) are F32 evaluations that differ only along the perturbed path; their
//    rounding differences are a few ulp of the affected products r·out, independent across
//    elements (adding in quadrature), so |ΔL noise| ≲ 4·2^-24·‖r ⊙ out‖₂ per evaluation,
//    two evaluations, over the FD denominator 2h;
//  - truncation (h²/6·L'''): estimated from the h / 2h pair, fd(2h) − fd(h) ≈ 3·(that of
//    fd(h)), so |fd(2h) − fd(h)| bounds it with margin (and absorbs rounding once more);
//  - 2e-3 relative: the analytic gradient's own F32 roundoff is far below this; it covers
//    the step-size nonlinearity the h/2h estimate misses on large gradients.
double fd_tol(const Fd& f, double norm2, double h, double analytic) {
  const double noise = 2 * 4.0 * std::ldexp(1.0, -24) * norm2 / (2 * h);
  return std::fabs(f.d2 - f.d1) + noise + 2e-3 * std::fabs(analytic);
}

void check_grads(const ModelConfig& cfg, float alpha, bool with_bias, uint32_t seed) {
  MoeCase m(cfg, 2, 7, alpha, with_bias, seed);
  const int64_t N = m.B * m.T, H = cfg.hidden_size;
  m.loss();
  const std::vector<int32_t> route = m.routing();
  const double mag = m.magnitude();
  if (alpha > 0) {
    EXPECT_GT(m.stats.balance_loss, 0.0);
  }
  std::vector<float> dx;
  m.backward(dx);
  const double h = 1e-2;
  int checked = 0, skipped = 0;
  double worst = 0;  // max |fd − analytic| / tol
  double max_err = 0;
  auto check = [&](float* v, float analytic, const std::string& what) {
    Fd f;
    if (!fd(m, v, h, route, f)) {
      ++skipped;
      return;
    }
    ++checked;
    const double tol = fd_tol(f, mag, h, analytic);
    worst = std::max(worst, std::fabs(f.d1 - analytic) / tol);
    max_err = std::max(max_err, std::fabs(f.d1 - analytic));
    EXPECT_NEAR(analytic, f.d1, tol) << what << " (fd at 2h " << f.d2 << ")";
  };
  for (int64_t i = 0; i < N * H; ++i)
    check(&m.x[size_t(i)], dx[size_t(i)], "dx[" + std::to_string(i) + "]");
  std::mt19937 rng(seed + 7);
  for (size_t k = 0; k < m.P.list.size(); ++k) {
    const std::string& name = m.P.list[k].first;
    if (name.rfind("dense", 0) == 0) continue;
    Weight* w = m.P.list[k].second;
    Weight* gw = m.G.list[k].second;
    if (name.rfind("experts.", 0) == 0) {  // only experts that got tokens have a gradient
      const int64_t e = std::stoll(name.substr(8));
      if (m.stats.load[size_t(e)] == 0) continue;
    }
    std::uniform_int_distribution<int64_t> pick(0, w->w.numel() - 1);
    const int samples = name == "gate" ? 40 : 6;
    for (int i = 0; i < samples; ++i) {
      const int64_t j = pick(rng);
      check(w->w.ptr<float>() + j, gw->w.ptr<float>()[j], name + "[" + std::to_string(j) + "]");
    }
  }
  // Flips are rare with the sharpened router; most entries must be checked.
  EXPECT_LT(skipped, checked / 10 + 1) << "checked " << checked;
  // The bias is outside the graph.
  for (int64_t e = 0; e < cfg.n_routed_experts; ++e)
    EXPECT_EQ(m.G.moe.e_score_correction_bias.w.ptr<float>()[e], 0.0f);
  std::printf("[%s alpha=%g] %d entries checked, %d skipped (flip), max |fd-an| %.2e, "
              "worst |fd-an|/tol %.3f\n",
              cfg.model_type.c_str(), alpha, checked, skipped, max_err, worst);
}

TEST(MoeTrain, ForwardMatchesInference) {
  for (const ModelConfig& c : {tiny_v3(), tiny_v2()}) {
    MoeCase m(c, 2, 9, 0.0f, c.model_type == "deepseek_v3", 11);
    m.loss();
    const int64_t N = m.B * m.T, H = c.hidden_size;
    FfnScratch fs;
    MoeLayer L;
    L.w = &m.P.moe;
    L.bias = m.bias_ptr();
    std::vector<float> ref(size_t(N * H));
    moe_forward(ref.data(), m.x.data(), N, c, L, fs, 2);
    // Same F32 operations up to GEMM blocking/summation order: a few ulp of the
    // length-H/I sums; 1e-5 relative (in norm) leaves a wide margin.
    const double e = rel_err(m.out.data(), ref.data(), N * H);
    EXPECT_LT(e, 1e-5) << c.model_type;
    std::printf("[%s] forward vs moe_forward: rel err %.2e\n", c.model_type.c_str(), e);
    // The same routing decision, exactly.
    for (int64_t i = 0; i < N * c.num_experts_per_tok; ++i) {
      EXPECT_EQ(m.saved.idx[size_t(i)], fs.topk_idx[size_t(i)]);
      EXPECT_EQ(m.saved.weight[size_t(i)], fs.topk_w[size_t(i)]);
    }
  }
}

TEST(MoeTrain, GradientsMatchFiniteDifferencesV3) { check_grads(tiny_v3(), 0.0f, true, 21); }
TEST(MoeTrain, GradientsMatchFiniteDifferencesV3Balance) { check_grads(tiny_v3(), 0.3f, true, 22); }
TEST(MoeTrain, GradientsMatchFiniteDifferencesV2Balance) {
  check_grads(tiny_v2(), 0.3f, false, 23);
}

TEST(MoeTrain, BiasSteersSelectionOnlyAndLoadsSum) {
  const ModelConfig c = tiny_v3();
  MoeCase m(c, 2, 8, 0.1f, false, 31);
  const int64_t N = m.B * m.T, K = c.num_experts_per_tok;
  m.loss();
  const std::vector<float> w0(m.saved.weight.begin(), m.saved.weight.begin() + N * K);
  int64_t total = 0;
  for (int64_t l : m.stats.load) total += l;
  EXPECT_EQ(total, N * K);
  // A large bias on expert 5 puts it in every token's top-k ...
  m.bias.assign(size_t(c.n_routed_experts), 0.0f);
  m.bias[5] = 10.0f;
  m.loss();
  EXPECT_EQ(m.stats.load[5], N);
  total = 0;
  for (int64_t l : m.stats.load) total += l;
  EXPECT_EQ(total, N * K);
  // ... but the weights still come from the unbiased scores: each is a normalised share
  // (in (0, rsf]), never pushed by the +10.
  for (int64_t i = 0; i < N * K; ++i) {
    EXPECT_GT(m.saved.weight[size_t(i)], 0.0f);
    EXPECT_LE(m.saved.weight[size_t(i)], float(c.routed_scaling_factor) * (1 + 1e-6f));
  }
  std::vector<float> dx;
  m.backward(dx);
  for (int64_t e = 0; e < c.n_routed_experts; ++e)
    EXPECT_EQ(m.G.moe.e_score_correction_bias.w.ptr<float>()[e], 0.0f);
}

TEST(MoeTrain, GradientsAccumulate) {
  MoeCase m(tiny_v3(), 2, 7, 0.2f, true, 41);
  m.loss();
  std::vector<float> dx1, dx2;
  m.backward(dx1);
  const std::vector<float> g1 = m.G.data;
  m.backward(dx2);
  EXPECT_EQ(dx1, dx2);  // dx is written, not accumulated
  // g2 = g1 + g1 up to one rounding per element of the add (and GEMM accumulation order).
  for (size_t i = 0; i < g1.size(); ++i)
    EXPECT_NEAR(m.G.data[i], 2 * g1[i], 1e-5 * std::fabs(g1[i]) + 1e-12) << i;
}

// Inference prefill (model/moe.cpp moe_forward) likewise runs the routed experts one per
// thread with several threads and one after another with one; each token adds its experts'
// outputs in expert order either way, so the bits must not depend on the thread count.
TEST(MoeTrain, InferencePrefillThreadCountDoesNotChangeTheBits) {
  for (const ModelConfig& c : {tiny_v3(), tiny_v2()}) {
    MoeCase m(c, 2, 64, 0.0f, c.model_type == "deepseek_v3", 71);
    const int64_t N = m.B * m.T, H = c.hidden_size;
    MoeLayer L;
    L.w = &m.P.moe;
    L.bias = m.bias_ptr();
    std::vector<float> one(size_t(N * H));
    FfnScratch f1;
    moe_forward(one.data(), m.x.data(), N, c, L, f1, 1);
    for (int threads : {2, 3}) {
      FfnScratch fs;
      std::vector<float> out(size_t(N * H));
      moe_forward(out.data(), m.x.data(), N, c, L, fs, threads);
      EXPECT_EQ(0, std::memcmp(out.data(), one.data(), one.size() * 4)) << c.model_type << ", " << threads << " threads";
    }
  }
}

// The routed experts run one per thread (moe_train.cpp, for_routed_experts) and one after
// another on all threads with one thread or deferred weight gradients; each token's outputs
// and input gradients are added in expert order either way. So the bits must not depend on
// the thread count, in any precision.
TEST(MoeTrain, ThreadCountDoesNotChangeTheBits) {
  for (Precision p : {Precision::F32, Precision::BF16, Precision::FP8}) {
    MoeCase one(tiny_v3(), 2, 64, 0.1f, true, 61);
    one.lc.prec = p;
    one.lc.threads = 1;
    one.loss();
    std::vector<float> dx1;
    one.backward(dx1);
    for (int threads : {2, 3}) {
      SCOPED_TRACE(::testing::Message() << precision_name(p) << ", " << threads << " threads");
      MoeCase m(tiny_v3(), 2, 64, 0.1f, true, 61);
      m.lc.prec = p;
      m.lc.threads = threads;
      m.loss();
      std::vector<float> dx;
      m.backward(dx);
      EXPECT_EQ(0, std::memcmp(m.out.data(), one.out.data(), one.out.size() * 4)) << "out";
      EXPECT_EQ(0, std::memcmp(dx.data(), dx1.data(), dx1.size() * 4)) << "dx";
      EXPECT_EQ(0, std::memcmp(m.G.data.data(), one.G.data.data(), one.G.data.size() * 4)) << "grads";
    }
  }
}

// BF16 / FP8 against F32 with the same weights and routing (the router is F32 in every
// mode, so the routing is identical). BF16 rounds each GEMM operand to 8 significant bits
// (relative error ≤ 2^-9 each, ≤ ~2^-8 per product); with three chained GEMMs in a pass and
// random-sign rounding errors the norm-relative error stays near 2^-8 ≈ 4e-3: bound 2e-2.
// E4M3 keeps 4 significant bits (≤ 2^-4 per operand, per-tile scaling keeps values in range);
// norm-relative errors of ~3–5% are expected: bound 0.2.
TEST(MoeTrain, LowPrecisionModesNearF32) {
  const ModelConfig c = tiny_v3();
  for (Precision p : {Precision::BF16, Precision::FP8}) {
    MoeCase ref(c, 2, 9, 0.1f, true, 51), m(c, 2, 9, 0.1f, true, 51);
    m.lc.prec = p;
    ref.loss();
    m.loss();
    EXPECT_EQ(ref.routing(), m.routing());
    std::vector<float> dxr, dxm;
    ref.backward(dxr);
    m.backward(dxm);
    const double bound = p == Precision::BF16 ? 2e-2 : 0.2;
    const double eo = rel_err(m.out.data(), ref.out.data(), int64_t(m.out.size()));
    const double ed = rel_err(dxm.data(), dxr.data(), int64_t(dxm.size()));
    const double eg = rel_err(m.G.data.data(), ref.G.data.data(), int64_t(m.G.data.size()));
    EXPECT_LT(eo, bound) << precision_name(p);
    EXPECT_LT(ed, bound) << precision_name(p);
    EXPECT_LT(eg, bound) << precision_name(p);
    std::printf("[%s] rel err out %.2e dx %.2e grads %.2e\n", precision_name(p), eo, ed, eg);
  }
}

// FP8 training caches the SwiGLU inputs (gate/up outputs, routed and shared) in E4M3 1x128
// tiles (train/act_cache.h). The forward is unchanged by it (bitwise), and the backward is,
// bit for bit, the F32-cached FP8 backward run on those values rounded through the same
// tiles: the cache holds what the report caches and the backward reads nothing else.
TEST(MoeTrain, Fp8CachesSwigluInputsInE4M3) {
  const ModelConfig c = tiny_v3();
  MoeCase m(c, 2, 9, 0.1f, true, 55), ref(c, 2, 9, 0.1f, true, 55);
  m.lc.prec = ref.lc.prec = Precision::FP8;
  ref.lc.f32_cache = true;
  m.loss();
  ref.loss();
  EXPECT_EQ(m.out, ref.out);
  ASSERT_EQ(m.saved.gate.format, ActFormat::E4M3);
  ASSERT_EQ(m.saved.shared.up.format, ActFormat::E4M3);
  ASSERT_EQ(ref.saved.gate.format, ActFormat::F32);
  int64_t f32_bytes = 0, fp8_bytes = 0;
  for (auto [a, b] : {std::pair{&m.saved.gate, &ref.saved.gate}, {&m.saved.up, &ref.saved.up},
                      {&m.saved.shared.gate, &ref.saved.shared.gate},
                      {&m.saved.shared.up, &ref.saved.shared.up}}) {
    ActCache& r = *b;
    std::vector<uint8_t> q(size_t(r.rows * r.cols));
    std::vector<float> sc(size_t(r.rows * fp8_blocks(r.cols))), y(size_t(r.rows * r.cols));
    quantize_fp8_1x128_ref(r.f32.data(), DType::F32, r.rows, r.cols, r.cols, q.data(), r.cols,
                           sc.data());
    dequantize_fp8_1x128_ref(q.data(), r.rows, r.cols, r.cols, sc.data(), y.data(), DType::F32,
                             r.cols);
    EXPECT_NE(y, std::vector<float>(r.f32.begin(), r.f32.begin() + r.rows * r.cols));
    std::copy(y.begin(), y.end(), r.f32.begin());
    f32_bytes += r.bytes();
    fp8_bytes += a->bytes();
    EXPECT_EQ(a->bytes(), r.rows * r.cols + r.rows * fp8_blocks(r.cols) * 4);
  }
  std::vector<float> dx, dxr;
  m.backward(dx);
  ref.backward(dxr);
  EXPECT_EQ(dx, dxr);
  EXPECT_EQ(m.G.data, ref.G.data);
  std::printf("gate/up cache: %lld bytes F32, %lld bytes E4M3 (%.2fx)\n", (long long)f32_bytes,
              (long long)fp8_bytes, double(f32_bytes) / double(fp8_bytes));
}

TEST(MoeTrain, DenseMlpGradients) {
  const ModelConfig c = tiny_v3();
  Params P(c, 1.0f, 61), G(c, 0.0f, 61);
  const int64_t N = 6, H = c.hidden_size;
  std::vector<float> x = uniform(N * H, 1.0f, 62), r = uniform(N * H, 1.0f, 63);
  std::vector<float> out(size_t(N * H)), dx(size_t(N * H));
  TLinearCtx lc;
  MlpTrainSaved saved;
  MlpTrainScratch s;
  auto loss = [&]() {
    mlp_train_forward(out.data(), x.data(), N, H, P.dense, lc, saved, s);
    double L = 0;
    for (size_t i = 0; i < out.size(); ++i) L += double(r[i]) * out[i];
    return L;
  };
  loss();
  double mag = 0;
  for (size_t i = 0; i < out.size(); ++i) mag += double(r[i]) * out[i] * double(r[i]) * out[i];
  mag = std::sqrt(mag);
  mlp_train_backward(dx.data(), r.data(), x.data(), N, H, P.dense, G.dense, lc, saved, s);
  const double h = 1e-2;
  auto check = [&](float* v, float analytic) {
    const float v0 = *v;
    double L[4];
    const double st[4] = {h, -h, 2 * h, -2 * h};
    for (int i = 0; i < 4; ++i) {
      *v = float(v0 + st[i]);
      L[i] = loss();
    }
    *v = v0;
    Fd f{(L[0] - L[1]) / (double(float(v0 + h)) - double(float(v0 - h))),
         (L[2] - L[3]) / (double(float(v0 + 2 * h)) - double(float(v0 - 2 * h)))};
    EXPECT_NEAR(analytic, f.d1, fd_tol(f, mag, h, analytic));
  };
  for (int64_t i = 0; i < N * H; ++i) check(&x[size_t(i)], dx[size_t(i)]);
  std::mt19937 rng(64);
  for (size_t k = 0; k < P.list.size(); ++k) {
    if (P.list[k].first.rfind("dense", 0) != 0) continue;
    Weight* w = P.list[k].second;
    std::uniform_int_distribution<int64_t> pick(0, w->w.numel() - 1);
    for (int i = 0; i < 10; ++i) {
      const int64_t j = pick(rng);
      check(w->w.ptr<float>() + j, G.list[k].second->w.ptr<float>()[j]);
    }
  }
  // acc_dx adds.
  std::vector<float> dx2 = dx;
  mlp_train_backward(dx2.data(), r.data(), x.data(), N, H, P.dense, G.dense, lc, saved, s, true);
  for (size_t i = 0; i < dx.size(); ++i)
    EXPECT_NEAR(dx2[i], 2 * dx[i], 1e-5 * std::fabs(dx[i]) + 1e-12);
}

}  // namespace
}  // namespace dsv3
