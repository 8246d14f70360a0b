// MLA training forward/backward (src/train/mla_train.h):
//  * forward == model/mla.h mla_forward (naive form, empty cache) per sequence, F32;
//  * finite differences of L = Σ out ⊙ R on dx and on a sample of every parameter gradient;
//  * gradients accumulate; BF16 / FP8 gradients stay near F32.
// Tolerances are stated next to each check.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/check.h"
#include "kernels/rope.h"
#include "model/mla.h"
#include "kernels/quant.h"
#include "train/mla_train.h"

using namespace dsv3;

namespace {

// One F32 parameter tensor and its view.
struct Param {
  std::vector<float> v;
  int64_t rows = 0, cols = 0;  // cols == 0: 1-D
};

struct Attn {
  ModelConfig c;
  std::vector<Param*> list;
  Param q_a, q_a_ln, q_b, q_p, kv_a, kv_a_ln, kv_b, o;
  AttentionWeights w;
  std::vector<const char*> names;
};

void bind(Weight& wt, Param& p) {
  if (p.cols)
    wt.w = TensorView(p.v.data(), DType::F32, {p.rows, p.cols});
  else
    wt.w = TensorView(p.v.data(), DType::F32, {p.rows});
}

ModelConfig tiny_config(int64_t q_lora) {
  ModelConfig c;
  c.hidden_size = 48;
  c.num_attention_heads = 3;
  c.num_key_value_heads = 3;
  c.q_lora_rank = q_lora;
  c.kv_lora_rank = 20;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 12;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  return c;
}

// Parameters drawn so that activations are O(1): projections N(0, 1/fan_in), norm gains
// 1 + N(0, 0.1²). zero = true gives the gradient set (all zeros).
void make_attn(Attn& a, const ModelConfig& c, uint32_t seed, bool zero) {
  a.c = c;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads, dq = c.qk_head_dim();
  const int64_t r = c.q_lora_rank, dc = c.kv_lora_rank, R = dc + c.qk_rope_head_dim;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto init = [&](Param& p, Weight& wt, int64_t rows, int64_t cols, const char* name) {
    p.rows = rows;
    p.cols = cols;
    p.v.assign(size_t(cols ? rows * cols : rows), 0.f);
    if (!zero) {
      for (auto& x : p.v) x = cols ? nd(rng) / std::sqrt(float(cols)) : 1.f + 0.1f * nd(rng);
    }
    bind(wt, p);
    a.list.push_back(&p);
    a.names.push_back(name);
  };
  if (c.has_q_lora()) {
    init(a.q_a, a.w.q_a_proj, r, H, "q_a_proj");
    init(a.q_a_ln, a.w.q_a_layernorm, r, 0, "q_a_layernorm");
    init(a.q_b, a.w.q_b_proj, nh * dq, r, "q_b_proj");
  } else {
    init(a.q_p, a.w.q_proj, nh * dq, H, "q_proj");
  }
  init(a.kv_a, a.w.kv_a_proj_with_mqa, R, H, "kv_a_proj_with_mqa");
  init(a.kv_a_ln, a.w.kv_a_layernorm, dc, 0, "kv_a_layernorm");
  init(a.kv_b, a.w.kv_b_proj, nh * (c.qk_nope_head_dim + c.v_head_dim), dc, "kv_b_proj");
  init(a.o, a.w.o_proj, H, nh * c.v_head_dim, "o_proj");
}

struct Rope {
  std::vector<float> cos, sin;
  RopeTable tab;
  float scale = 0;
  // YaRN with factor 4 over an original context of 16 positions (amplitude 1: mscale ==
  // mscale_all_dim), so the ramp mixes scaled and unscaled frequencies even for short T.
  Rope(const ModelConfig& c, int64_t n) {
    YarnParams y;
    y.factor = 4.0;
    y.original_max_position_embeddings = 16;
    y.mscale = 1.0;
    y.mscale_all_dim = 1.0;
    const int64_t half = c.qk_rope_head_dim / 2;
    cos.assign(size_t(n * half), 0.f);
    sin.assign(size_t(n * half), 0.f);
    rope_build_table(cos.data(), sin.data(), 0, n, c.qk_rope_head_dim, c.rope_theta, &y);
    tab = RopeTable{cos.data(), sin.data(), n, c.qk_rope_head_dim};
    scale = attention_softmax_scale(c.qk_head_dim(), &y);
  }
};

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

double loss(const std::vector<float>& out, const std::vector<float>& R) {
  double l = 0;
  for (size_t i = 0; i < out.size(); ++i) l += double(out[i]) * R[i];
  return l;
}
// sqrt(Σ (out ⊙ R)²): the scale of L's rounding noise.
double loss_rms(const std::vector<float>& out, const std::vector<float>& R) {
  double l = 0;
  for (size_t i = 0; i < out.size(); ++i) l += double(out[i]) * R[i] * double(out[i]) * R[i];
  return std::sqrt(l);
}

constexpr int64_t kB = 2, kT = 7;

TEST(MlaTrain, ForwardMatchesInferenceNaive) {
  for (int64_t q_lora : {24, 0}) {
    Attn a;
    make_attn(a, tiny_config(q_lora), 11, false);
    const ModelConfig& c = a.c;
    const int64_t H = c.hidden_size, R = c.kv_lora_rank + c.qk_rope_head_dim;
    Rope rope(c, kT);
    std::vector<float> x = randn(size_t(kB * kT * H), 3), out(x.size());
    MlaTrainSaved sv;
    MlaTrainScratch s;
    mla_train_forward(out.data(), x.data(), kB, kT, c, a.w, rope.tab, rope.scale, TLinearCtx{}, sv,
                      s);

    MlaLayer L;
    L.w = &a.w;
    L.q_a_norm = q_lora ? a.q_a_ln.v.data() : nullptr;
    L.kv_a_norm = a.kv_a_ln.v.data();
    MlaContext ctx;
    ctx.c = &c;
    ctx.rope = rope.tab;
    ctx.softmax_scale = rope.scale;
    MlaScratch ms;
    // Both are F32 GEMM chains over K ≤ 48 summing in different orders (chunked causal
    // scores vs full rows): |Δ| ≲ a few·K·2^-24·Σ|terms| ≈ 1e-5 relative to the output norm.
    double num = 0, den = 0;
    for (int64_t b = 0; b < kB; ++b) {
      std::vector<float> ref(size_t(kT * H)), cache(size_t(kT * R));
      mla_forward(ref.data(), x.data() + b * kT * H, kT, 0, cache.data(), L, ctx, AttnForm::Naive,
                  ms);
      for (int64_t i = 0; i < kT * H; ++i) {
        const double e = double(out[size_t(b * kT * H + i)]) - ref[size_t(i)];
        num += e * e;
        den += double(ref[size_t(i)]) * ref[size_t(i)];
      }
    }
    const double rel = std::sqrt(num / den);
    std::printf("q_lora %lld: forward vs mla_forward naive, rel L2 error %.3g\n",
                (long long)q_lora, rel);
    EXPECT_LT(rel, 1e-5);
  }
}

struct FwdBwd {
  std::vector<float> out, dx;
};

// Forward, then backward of L = Σ out ⊙ Rw (dout = Rw) into g.
FwdBwd fwd_bwd(Attn& a, Attn& g, const std::vector<float>& x, const std::vector<float>& Rw,
            const Rope& rope, const TLinearCtx& lc, MlaTrainSaved& sv, MlaTrainScratch& s,
            int64_t B = kB, int64_t T = kT) {
  FwdBwd r;
  r.out.resize(x.size());
  r.dx.resize(x.size());
  mla_train_forward(r.out.data(), x.data(), B, T, a.c, a.w, rope.tab, rope.scale, lc, sv, s);
  mla_train_backward(r.dx.data(), Rw.data(), x.data(), B, T, a.c, a.w, g.w, rope.tab, rope.scale,
                     lc, sv, s);
  return r;
}

// Central differences in F32 with step h = 1e-2 (parameters and inputs are O(0.1..1)).
// Error of the estimate: truncation h²/6·|L'''| (L is smooth; with third derivatives up to
// ~30·|L'| on these O(1) activations that is ≤ 5e-4·|L'|, bound 5e-3·|L'|) plus rounding
// 2·ε_L/(2h), where ε_L is the F32 noise of L = Σ out ⊙ R: each out element carries a
// relative error of ≲ 16 ulps through the GEMM/norm/softmax chain (K ≤ 48), independent
// between elements, so ε_L ≈ 16·2^-24·sqrt(Σ (out ⊙ R)²); we allow 4 standard deviations:
// |fd − analytic| ≤ 5e-3·|analytic| + 4·ε_L/h  (+ 1e-6 absolute floor).
TEST(MlaTrain, FiniteDifferences) {
  for (int64_t q_lora : {24, 0}) {
    Attn a, g;
    make_attn(a, tiny_config(q_lora), 21, false);
    make_attn(g, tiny_config(q_lora), 0, true);
    const int64_t H = a.c.hidden_size;
    Rope rope(a.c, kT);
    std::vector<float> x = randn(size_t(kB * kT * H), 5), Rw = randn(x.size(), 6);
    MlaTrainSaved sv;
    MlaTrainScratch s;
    const TLinearCtx lc{Precision::F32, 1};  // ~300 tiny forwards: threads only add overhead
    const FwdBwd base = fwd_bwd(a, g, x, Rw, rope, lc, sv, s);
    const double eps_L = std::ldexp(16.0, -24) * loss_rms(base.out, Rw);
    const float h = 1e-2f;
    std::vector<float> out(x.size());
    auto L_at = [&]() {
      mla_train_forward(out.data(), x.data(), kB, kT, a.c, a.w, rope.tab, rope.scale, lc, sv, s);
      return loss(out, Rw);
    };
    double max_abs = 0, max_rel = 0;
    auto check = [&](float* p, double an, const char* what, size_t i, double& worst) {
      const float p0 = *p;
      *p = p0 + h;
      const double lp = L_at();
      *p = p0 - h;
      const double lm = L_at();
      *p = p0;
      const double fd = (lp - lm) / (double(p0 + h) - double(p0 - h));
      const double tol = 5e-3 * std::fabs(an) + 4 * eps_L / h + 1e-6;
      worst = std::max(worst, std::fabs(fd - an) / tol);
      max_abs = std::max(max_abs, std::fabs(fd - an));
      max_rel = std::max(max_rel, std::fabs(fd - an) / std::max(std::fabs(an), 1e-3));
      EXPECT_NEAR(fd, an, tol) << what << "[" << i << "] q_lora " << q_lora;
    };
    std::mt19937 rng(9);
    double worst = 0;
    for (int k = 0; k < 16; ++k) {
      const size_t i = size_t(rng() % x.size());
      check(&x[i], base.dx[i], "dx", i, worst);
    }
    for (size_t pi = 0; pi < a.list.size(); ++pi) {
      Param& p = *a.list[pi];
      const Param& gp = *g.list[pi];
      for (int k = 0; k < 8; ++k) {
        const size_t i = size_t(rng() % p.v.size());
        check(&p.v[i], gp.v[i], a.names[pi], i, worst);
      }
    }
    std::printf("q_lora %lld: eps_L/h = %.3g, worst |fd-an|/tol = %.3g, max |fd-an| %.3g, "
                "max |fd-an|/|an| %.3g\n", (long long)q_lora, eps_L / h, worst, max_abs, max_rel);
  }
}

TEST(MlaTrain, GradientsAccumulate) {
  Attn a, g;
  make_attn(a, tiny_config(24), 31, false);
  make_attn(g, tiny_config(24), 0, true);
  Rope rope(a.c, kT);
  std::vector<float> x = randn(size_t(kB * kT * a.c.hidden_size), 7), Rw = randn(x.size(), 8);
  MlaTrainSaved sv;
  MlaTrainScratch s;
  const FwdBwd r1 = fwd_bwd(a, g, x, Rw, rope, TLinearCtx{}, sv, s);
  std::vector<std::vector<float>> g1;
  for (Param* p : g.list) g1.push_back(p->v);
  const FwdBwd r2 = fwd_bwd(a, g, x, Rw, rope, TLinearCtx{}, sv, s);
  // The same computation twice adds the same float twice: exactly 2·g1; dx is written.
  for (size_t pi = 0; pi < g.list.size(); ++pi)
    for (size_t i = 0; i < g1[pi].size(); ++i)
      ASSERT_EQ(g.list[pi]->v[i], 2 * g1[pi][i]) << g.names[pi] << "[" << i << "]";
  EXPECT_EQ(r1.dx, r2.dx);
  EXPECT_EQ(r1.out, r2.out);
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Reduced-precision modes against F32, per gradient tensor (relative L2). Each linear layer
// rounds its operands (tlinear.h): BF16 ≤ 2^-8 relative per GEMM product, FP8 E4M3 ≤ 2^-4
// per operand worst case; the attention GEMMs round theirs to BF16 in both modes
// (mla_train.h). Along the longest chain (o_proj dgrad → dP = dO·Vᵀ → dQ = dS·K → q_b dgrad
// → norm → q_a dgrad, 4 rounded GEMMs, 2 of them FP8 in FP8 mode) the errors add roughly in
// quadrature, as random roundings: BF16 ≲ √4·2^-8 ≈ 8e-3 → bound 2e-2; FP8 ≲ √2·0.06 ≈
// 0.09 → bound 0.25.
TEST(MlaTrain, ReducedPrecisionNearF32) {
  for (int64_t q_lora : {24, 0}) {
    Attn a;
    make_attn(a, tiny_config(q_lora), 41, false);
    const int64_t T = 40, B = 2;  // a few 128-wide FP8 tiles would need more; partial tiles
    Rope rope(a.c, T);
    std::vector<float> x = randn(size_t(B * T * a.c.hidden_size), 9), Rw = randn(x.size(), 10);
    Attn g32;
    make_attn(g32, a.c, 0, true);
    MlaTrainSaved sv;
    MlaTrainScratch s;
    const FwdBwd r32 = fwd_bwd(a, g32, x, Rw, rope, TLinearCtx{Precision::F32, 0}, sv, s, B, T);
    for (Precision p : {Precision::BF16, Precision::FP8}) {
      Attn gp;
      make_attn(gp, a.c, 0, true);
      const FwdBwd rp = fwd_bwd(a, gp, x, Rw, rope, TLinearCtx{p, 0}, sv, s, B, T);
      const double bound = p == Precision::BF16 ? 2e-2 : 0.25;
      double worst = rel_l2(rp.out, r32.out);
      EXPECT_LT(worst, bound) << "out " << precision_name(p);
      const double edx = rel_l2(rp.dx, r32.dx);
      EXPECT_LT(edx, bound) << "dx " << precision_name(p);
      worst = std::max(worst, edx);
      for (size_t pi = 0; pi < gp.list.size(); ++pi) {
        const double e = rel_l2(gp.list[pi]->v, g32.list[pi]->v);
        EXPECT_LT(e, bound) << gp.names[pi] << " " << precision_name(p);
        worst = std::max(worst, e);
      }
      std::printf("q_lora %lld %s: worst relative L2 error vs F32 (out, dx, grads) %.3g\n",
                  (long long)q_lora, precision_name(p), worst);
    }
  }
}

// FP8 training caches o, the input of o_proj, in E5M6 1x128 tiles with power-of-two scales
// (train/act_cache.h, report §3.3.3). The forward is unchanged by it (bitwise), and the
// backward is, bit for bit, the F32-cached FP8 backward run on o rounded through the same
// tiles; the saved bytes shrink by what the format says.
TEST(MlaTrain, Fp8CachesAttentionOutputInE5M6) {
  Attn a;
  make_attn(a, tiny_config(24), 43, false);
  const int64_t T = 40, B = 2, M = B * T;
  Rope rope(a.c, T);
  std::vector<float> x = randn(size_t(M * a.c.hidden_size), 11), Rw = randn(x.size(), 12);
  TLinearCtx lc{Precision::FP8, 0}, lr = lc;
  lr.f32_cache = true;
  Attn g, gr;
  make_attn(g, a.c, 0, true);
  make_attn(gr, a.c, 0, true);
  MlaTrainSaved sv, svr;
  MlaTrainScratch s, sr;
  std::vector<float> out(x.size()), outr(x.size()), dx(x.size()), dxr(x.size());
  mla_train_forward(out.data(), x.data(), B, T, a.c, a.w, rope.tab, rope.scale, lc, sv, s);
  mla_train_forward(outr.data(), x.data(), B, T, a.c, a.w, rope.tab, rope.scale, lr, svr, sr);
  EXPECT_EQ(out, outr);
  ASSERT_EQ(sv.o.format, ActFormat::E5M6);
  ASSERT_EQ(svr.o.format, ActFormat::F32);
  const int64_t K = svr.o.cols;
  std::vector<uint8_t> code(size_t(e5m6_packed_bytes(M, K)));
  std::vector<float> sc(size_t(M * fp8_blocks(K))), o(size_t(M * K));
  encode_e5m6_1x128(svr.o.f32.data(), M, K, code.data(), sc.data(), 1);
  decode_e5m6_1x128(code.data(), sc.data(), M, K, o.data(), 1);
  EXPECT_NE(o, std::vector<float>(svr.o.f32.begin(), svr.o.f32.begin() + M * K));
  std::copy(o.begin(), o.end(), svr.o.f32.begin());
  mla_train_backward(dx.data(), Rw.data(), x.data(), B, T, a.c, a.w, g.w, rope.tab, rope.scale,
                     lc, sv, s);
  mla_train_backward(dxr.data(), Rw.data(), x.data(), B, T, a.c, a.w, gr.w, rope.tab,
                     rope.scale, lr, svr, sr);
  EXPECT_EQ(dx, dxr);
  for (size_t pi = 0; pi < g.list.size(); ++pi) EXPECT_EQ(g.list[pi]->v, gr.list[pi]->v) << g.names[pi];
  EXPECT_EQ(int64_t(svr.bytes() - sv.bytes()),
            M * K * 4 - (e5m6_packed_bytes(M, K) + M * fp8_blocks(K) * 4));
}

TEST(MlaTrain, BadInputThrows) {
  Attn a;
  make_attn(a, tiny_config(24), 61, false);
  Rope rope(a.c, kT);
  std::vector<float> x = randn(size_t(kB * kT * a.c.hidden_size), 1), out(x.size());
  MlaTrainSaved sv;
  MlaTrainScratch s;
  AttentionWeights bad = a.w;
  bad.kv_b_proj.w = TensorView(a.kv_b.v.data(), DType::F32, {a.kv_b.rows - 1, a.kv_b.cols});
  EXPECT_THROW(mla_train_forward(out.data(), x.data(), kB, kT, a.c, bad, rope.tab, rope.scale,
                                 TLinearCtx{}, sv, s),
               Error);
  // More positions than the RoPE table holds.
  EXPECT_THROW(mla_train_forward(out.data(), x.data(), 1, kT + 1, a.c, a.w, rope.tab, rope.scale,
                                 TLinearCtx{}, sv, s),
               Error);
  // Backward for another batch shape than the forward saved.
  Attn g;
  make_attn(g, a.c, 0, true);
  mla_train_forward(out.data(), x.data(), kB, kT, a.c, a.w, rope.tab, rope.scale, TLinearCtx{}, sv,
                    s);
  std::vector<float> dx(x.size());
  EXPECT_THROW(mla_train_backward(dx.data(), x.data(), x.data(), 1, kT, a.c, a.w, g.w, rope.tab,
                                  rope.scale, TLinearCtx{}, sv, s),
               Error);
}

// A timing at the bench shape, run only with DSV3_MLA_TRAIN_BENCH=1 (tests do not time).
TEST(MlaTrain, BenchShapeTiming) {
  if (!std::getenv("DSV3_MLA_TRAIN_BENCH")) GTEST_SKIP() << "set DSV3_MLA_TRAIN_BENCH=1";
  ModelConfig c = tiny_config(384);
  c.hidden_size = 1024;
  c.num_attention_heads = 8;
  c.kv_lora_rank = 256;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  Attn a, g;
  make_attn(a, c, 51, false);
  make_attn(g, c, 0, true);
  for (int64_t T : {1024, 256}) {
    const int64_t B = 1024 / T;
    Rope rope(c, T);
    std::vector<float> x = randn(size_t(B * T * c.hidden_size), 9), Rw = randn(x.size(), 10);
    for (Precision p : {Precision::F32, Precision::BF16, Precision::FP8}) {
      MlaTrainSaved sv;
      MlaTrainScratch s;
      const TLinearCtx lc{p, 2};
      fwd_bwd(a, g, x, Rw, rope, lc, sv, s, B, T);  // warm-up, grows memory
      std::vector<double> fw, bw;
      std::vector<float> out(x.size()), dx(x.size());
      for (int it = 0; it < 5; ++it) {
        auto t0 = std::chrono::steady_clock::now();
        mla_train_forward(out.data(), x.data(), B, T, c, a.w, rope.tab, rope.scale, lc, sv, s);
        auto t1 = std::chrono::steady_clock::now();
        mla_train_backward(dx.data(), Rw.data(), x.data(), B, T, c, a.w, g.w, rope.tab,
                           rope.scale, lc, sv, s);
        auto t2 = std::chrono::steady_clock::now();
        fw.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        bw.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
      }
      std::sort(fw.begin(), fw.end());
      std::sort(bw.begin(), bw.end());
      std::printf("B=%lld T=%lld %s 2 threads: forward %.1f ms, backward %.1f ms (medians of 5); "
                  "saved %.2f MiB\n",
                  (long long)B, (long long)T, precision_name(p), fw[2], bw[2],
                  double(sv.bytes()) / (1 << 20));
    }
  }
}

}  // namespace
