// Expert parallelism of the MoE training layer (train/moe_train.h, parallel/ep_dispatch.h)
// and node-limited routing (model/moe.h NodeLimit).
//
// One process (ctest's plain run): node-limited routing against a slow scalar twin written
// from the rule (report §2.1.2); the wire formats (E4M3 dispatch re-quantises to the same codes
// and scales); the EP machinery on a one-rank group against the plain path (F32: bitwise).
// Under mpirun (-np 2, -np 4; CMakeLists dsv3_mpi_test): every rank runs the one-process
// reference over the whole batch and the EP layer over its slice of the sequences (rank
// order), then compares its output and dx rows, its experts' gradients, the router and
// shared-expert gradients summed over ranks, the loads, and the bytes sent with the plan's
// and an independent prediction (STYLE §10: one process or many, the same numbers).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "kernels/quant.h"
#include "model/moe.h"
#include "parallel/comm.h"
#include "parallel/ep_dispatch.h"
#include "train/moe_train.h"

namespace dsv3 {
namespace {

const dist::Comm& world() { return dist::Comm::world(); }

// 16 experts (divisible by 1, 2, 4 ranks) in 4 groups, top-2 groups, top-4, one shared
// expert, sigmoid + bias (noaux_tc). H = 136: two FP8 tiles, the second partial.
ModelConfig tiny_ep() {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.hidden_size = 136;
  c.intermediate_size = 64;
  c.moe_intermediate_size = 40;
  c.n_routed_experts = 16;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.topk_method = "noaux_tc";
  c.scoring_func = "sigmoid";
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5;
  return c;
}

// The parameters (or gradients) of one MoE layer as F32 views into one block.
struct Params {
  std::vector<float> data;
  MoeWeights moe;
  std::vector<std::pair<std::string, Weight*>> list;  // every trainable tensor, named

  Params(const ModelConfig& c, float scale, uint32_t seed) {
    const int64_t H = c.hidden_size, E = c.n_routed_experts, I = c.moe_intermediate_size;
    const int64_t Is = c.n_shared_experts * I;
    data.assign(size_t(E * H + E + E * 3 * I * H + 3 * Is * H), 0.0f);
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
    if (Is > 0) mlp(moe.shared_experts, Is, "shared_experts");
    if (scale == 0) return;
    std::mt19937 rng(seed);
    for (auto& [name, w] : list) {
      const float a = scale * std::sqrt(3.0f / float(w->w.shape[1]));
      std::uniform_real_distribution<float> u(-a, a);
      for (int64_t i = 0; i < w->w.numel(); ++i) w->w.ptr<float>()[i] = u(rng);
    }
  }
  const float* ptr(const std::string& name) const {
    for (auto& [n, w] : list)
      if (n == name) return w->w.ptr<float>();
    return nullptr;
  }
  int64_t numel(const std::string& name) const {
    for (auto& [n, w] : list)
      if (n == name) return w->w.numel();
    return 0;
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

// DeepGEMM's calc_diff: 1 − 2Σxy / Σ(x² + y²) (0 when equal, scale-free).
double calc_diff(const float* x, const float* y, int64_t n) {
  double xy = 0, sq = 0;
  for (int64_t i = 0; i < n; ++i) {
    xy += double(x[i]) * y[i];
    sq += double(x[i]) * x[i] + double(y[i]) * y[i];
  }
  return sq == 0 ? 0.0 : 1.0 - 2.0 * xy / sq;
}

bool bitwise(const float* a, const float* b, int64_t n) {
  return std::memcmp(a, b, size_t(n) * sizeof(float)) == 0;
}

// ---- node-limited routing: the scalar twin -------------------------------------------------

// Indices of v sorted by value descending, ties to the lower index (moe_route's rule).
std::vector<int32_t> ranked(const std::vector<float>& v, const std::vector<bool>& ok) {
  std::vector<int32_t> r;
  for (size_t i = 0; i < v.size(); ++i)
    if (ok[i]) r.push_back(int32_t(i));
  std::stable_sort(r.begin(), r.end(), [&](int32_t a, int32_t b) { return v[size_t(a)] > v[size_t(b)]; });
  return r;
}

// The rule of report §2.1.2 read literally, one token at a time, on scores and biased scores.
void route_ref(int32_t* idx, float* wt, const float* logits, int64_t T, const ModelConfig& c,
               const float* bias, int64_t nodes, int64_t M) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, G = c.n_group;
  const bool grouped = G > 1 && (c.topk_method == "noaux_tc" || c.topk_method == "group_limited_greedy");
  for (int64_t t = 0; t < T; ++t) {
    std::vector<float> s(static_cast<size_t>(E)), b(static_cast<size_t>(E));
    const float* l = logits + t * E;
    if (c.scoring_func == "sigmoid") {
      for (int64_t e = 0; e < E; ++e) s[size_t(e)] = 1.0f / (1.0f + std::exp(-l[e]));
    } else {
      float mx = *std::max_element(l, l + E), sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += s[size_t(e)] = std::exp(l[e] - mx);
      for (int64_t e = 0; e < E; ++e) s[size_t(e)] /= sum;
    }
    for (int64_t e = 0; e < E; ++e) b[size_t(e)] = s[size_t(e)] + (bias ? bias[e] : 0.0f);
    std::vector<bool> ok(static_cast<size_t>(E), true);
    if (M > 0) {  // node score: the sum of its K/M highest biased scores, best first
      const int64_t EN = E / nodes;
      std::vector<float> ns(static_cast<size_t>(nodes));
      for (int64_t n = 0; n < nodes; ++n) {
        std::vector<float> v(b.begin() + n * EN, b.begin() + (n + 1) * EN);
        const std::vector<int32_t> r = ranked(v, std::vector<bool>(size_t(EN), true));
        float sum = 0;
        for (int64_t i = 0; i < K / M; ++i) sum += v[size_t(r[size_t(i)])];
        ns[size_t(n)] = sum;
      }
      const std::vector<int32_t> keep = ranked(ns, std::vector<bool>(size_t(nodes), true));
      std::vector<bool> node_ok(static_cast<size_t>(nodes), false);
      for (int64_t i = 0; i < M; ++i) node_ok[size_t(keep[size_t(i)])] = true;
      for (int64_t e = 0; e < E; ++e) ok[size_t(e)] = node_ok[size_t(e / EN)];
    }
    if (grouped) {  // among the groups whose experts are all still allowed
      const int64_t EG = E / G;
      std::vector<float> gs(static_cast<size_t>(G));
      std::vector<bool> g_ok(static_cast<size_t>(G));
      for (int64_t g = 0; g < G; ++g) {
        std::vector<float> v(b.begin() + g * EG, b.begin() + (g + 1) * EG);
        const std::vector<int32_t> r = ranked(v, std::vector<bool>(size_t(EG), true));
        gs[size_t(g)] = c.topk_method == "noaux_tc" ? v[size_t(r[0])] + v[size_t(r[1])] : v[size_t(r[0])];
        g_ok[size_t(g)] = ok[size_t(g * EG)];
      }
      const std::vector<int32_t> keep = ranked(gs, g_ok);
      std::fill(ok.begin(), ok.end(), false);
      for (int64_t i = 0; i < c.topk_group; ++i)
        for (int64_t e = 0; e < EG; ++e) ok[size_t(keep[size_t(i)] * EG + e)] = true;
    }
    const std::vector<int32_t> top = ranked(b, ok);
    float sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      idx[t * K + k] = top[size_t(k)];
      sum += wt[t * K + k] = s[size_t(top[size_t(k)])];
    }
    const bool norm = c.norm_topk_prob && (c.model_type != "deepseek_v2" || K > 1);
    const bool scale = c.model_type != "deepseek_v2" || !norm;
    for (int64_t k = 0; k < K; ++k) {
      if (norm) wt[t * K + k] /= sum + 1e-20f;
      if (scale) wt[t * K + k] *= float(c.routed_scaling_factor);
    }
  }
}

int64_t nodes_touched(const int32_t* ti, int64_t K, int64_t experts_per_node) {
  std::vector<int64_t> n;
  for (int64_t k = 0; k < K; ++k) n.push_back(ti[k] / experts_per_node);
  std::sort(n.begin(), n.end());
  return std::unique(n.begin(), n.end()) - n.begin();
}

TEST(NodeLimitedRouting, MatchesScalarReference) {
  ModelConfig greedy = tiny_ep();  // no groups: the node limit alone
  greedy.n_group = 1;
  greedy.topk_group = 1;
  ModelConfig v2 = tiny_ep();      // softmax, group_limited_greedy (group score = max)
  v2.model_type = "deepseek_v2";
  v2.scoring_func = "softmax";
  v2.topk_method = "group_limited_greedy";
  v2.norm_topk_prob = false;
  v2.routed_scaling_factor = 1.5;
  v2.topk_group = 2;
  ModelConfig g8 = tiny_ep();      // 8 groups of 2 on 2 or 4 nodes, top-8
  g8.n_group = 8;
  g8.topk_group = 4;
  g8.num_experts_per_tok = 8;
  const int64_t T = 200;
  int cases = 0, changed = 0;
  for (const ModelConfig& c : {tiny_ep(), greedy, v2, g8}) {
    const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
    const std::vector<float> logits = uniform(T * E, 3.0f, 11 + cases);
    const std::vector<float> bias = uniform(E, 0.1f, 12 + cases);
    for (int64_t nodes : {2, 4}) {
      for (int64_t M = 1; M <= nodes; ++M) {
        const NodeLimit nl{nodes, M};
        bool valid = true;
        try {
          check_node_limit(c, nl);
        } catch (const Error&) {
          valid = false;
        }
        if (!valid) continue;
        ++cases;
        std::vector<int32_t> idx(size_t(T * K)), ridx(size_t(T * K)), pidx(size_t(T * K));
        std::vector<float> wt(size_t(T * K)), rwt(size_t(T * K)), pwt(size_t(T * K));
        RouteScratch rs;
        moe_route(idx.data(), wt.data(), logits.data(), T, c, bias.data(), rs, nl);
        route_ref(ridx.data(), rwt.data(), logits.data(), T, c, bias.data(), nodes, M);
        EXPECT_EQ(idx, ridx) << c.topk_method << " nodes " << nodes << " M " << M;
        EXPECT_TRUE(bitwise(wt.data(), rwt.data(), T * K));
        int64_t limited = 0;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t n = nodes_touched(&idx[size_t(t * K)], K, E / nodes);
          EXPECT_LE(n, M);
          limited += n == M;
        }
        moe_route(pidx.data(), pwt.data(), logits.data(), T, c, bias.data(), rs);
        if (M == nodes) {  // every node kept: no restriction, the plain rule's bits
          EXPECT_EQ(idx, pidx);
          EXPECT_TRUE(bitwise(wt.data(), pwt.data(), T * K));
        } else {
          changed += idx != pidx;
        }
      }
    }
  }
  EXPECT_GE(cases, 12);
  EXPECT_GE(changed, 6) << "the node limit changed the choice of too few cases to show anything";
}

TEST(NodeLimitedRouting, ChecksNameTheValues) {
  const ModelConfig c = tiny_ep();  // K = 4, E = 16, 4 groups, topk_group 2
  auto msg = [&](const NodeLimit& nl) {
    try {
      check_node_limit(c, nl);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(msg({4, 3}).find("K_r (4) must be divisible by max_nodes M (3)"), std::string::npos);
  EXPECT_NE(msg({2, 4}).find("max_nodes M (4)"), std::string::npos);
  EXPECT_NE(msg({8, 2}).find("n_group (4)"), std::string::npos);          // groups straddle nodes
  EXPECT_NE(msg({8, 1}).find("K_r/M = 4 exceeds the 2 experts"), std::string::npos);
  EXPECT_NE(msg({4, 1}).find("topk_group (2)"), std::string::npos);       // 1 group per node
  EXPECT_NE(msg({3, 1}).find("n_routed_experts (16)"), std::string::npos);
  EXPECT_EQ(msg({2, 1}), "");
  MoeExpertParallel ep;
  ep.max_nodes = 1;
  ep.ranks_per_node = 0;
  EXPECT_THROW(moe_node_limit(&ep, c), Error);
  ep.ranks_per_node = 2;
  ep.nodes = 2;
  EXPECT_EQ(moe_node_limit(&ep, c).n_nodes, 2);
}

// ---- wire formats -------------------------------------------------------------------------

TEST(EpWire, RoundTripAndRequantisation) {
  const int64_t H = 300;  // three 1x128 tiles, the last partial
  std::vector<float> x = uniform(H, 1.0f, 5);
  for (int64_t i = 0; i < H; ++i) x[size_t(i)] *= std::ldexp(1.0f, int(i % 29) - 14);  // wide range
  std::vector<uint8_t> buf(size_t(wire_row_bytes(Wire::F32, H)));  // the largest
  std::vector<float> y(static_cast<size_t>(H));
  EXPECT_EQ(wire_row_bytes(Wire::F32, H), 4 * H);
  EXPECT_EQ(wire_row_bytes(Wire::BF16, H), 2 * H);
  EXPECT_EQ(wire_row_bytes(Wire::E4M3, H), H + 3 * 4);  // codes (H % 4 == 0), 3 scales
  wire_encode(buf.data(), x.data(), H, Wire::F32);
  wire_decode(y.data(), buf.data(), H, Wire::F32);
  EXPECT_TRUE(bitwise(x.data(), y.data(), H));
  wire_encode(buf.data(), x.data(), H, Wire::BF16);
  wire_decode(y.data(), buf.data(), H, Wire::BF16);
  for (int64_t i = 0; i < H; ++i) EXPECT_EQ(f32_bits(y[size_t(i)]), f32_bits(bf16_to_f32(f32_to_bf16(x[size_t(i)]))));
  // E4M3: the receiving Fprop quantises the decoded row again in the same 1x128 tiles; over
  // many rows, that gives back exactly the dispatched codes and scales (the wire adds no error
  // to the up-projection Fprop).
  int64_t rows = 0;
  for (uint32_t seed = 0; seed < 500; ++seed) {
    std::vector<float> r = uniform(H, 1.0f, 100 + seed);
    const float mag = std::ldexp(1.0f, int(seed % 41) - 20);
    for (auto& v : r) v *= mag;
    wire_encode(buf.data(), r.data(), H, Wire::E4M3);
    wire_decode(y.data(), buf.data(), H, Wire::E4M3);
    std::vector<uint8_t> q(static_cast<size_t>(H));
    std::vector<float> sc(size_t(fp8_blocks(H)));
    quantize_fp8_1x128(y.data(), DType::F32, 1, H, H, q.data(), H, sc.data(), 1);
    EXPECT_EQ(std::memcmp(q.data(), buf.data(), size_t(H)), 0) << "seed " << seed;
    EXPECT_EQ(std::memcmp(sc.data(), buf.data() + 300, sc.size() * 4), 0) << "seed " << seed;
    ++rows;
  }
  EXPECT_EQ(rows, 500);
}

// ---- the MoE layer under test ---------------------------------------------------------------

struct LayerRun {
  std::vector<float> out, dx;
  Params G;
  MoeStats stats;
  MoeTrainSaved saved;
  MoeTrainScratch s;
  dist::Traffic fwd, bwd;  // bytes sent during forward / backward
  LayerRun(const ModelConfig& c) : G(c, 0.0f, 0) {}
};

// Forward and backward of rows [b0, b0 + B) of the batch (x, dout: [Btotal·T, H]).
void run_layer(LayerRun& r, const ModelConfig& c, const Params& P, const float* x, const float* dout,
               int64_t b0, int64_t B, int64_t T, const float* bias, float alpha, Precision prec,
               const MoeExpertParallel* ep, int64_t B_step = 0) {
  const int64_t H = c.hidden_size, N = B * T;
  TLinearCtx lc;
  lc.prec = prec;
  lc.threads = 1;
  r.out.assign(size_t(N * H), 0.0f);
  r.dx.assign(size_t(N * H), 0.0f);
  const float* xs = x + b0 * T * H;
  const dist::Traffic t0 = dist::traffic();
  moe_train_forward(r.out.data(), xs, B, T, c, P.moe, bias, alpha, lc, r.saved, r.s, &r.stats, ep);
  const dist::Traffic t1 = dist::traffic();
  // The balance loss averages the step's sequences (B_step, all ranks'): bal_scale 1/B_step.
  const float bal_scale = 1.0f / float(B_step > 0 ? B_step : B);
  moe_train_backward(r.dx.data(), dout + b0 * T * H, xs, c, P.moe, r.G.moe, alpha, bal_scale,
                     lc, r.saved, r.s, ep);
  const dist::Traffic t2 = dist::traffic();
  r.fwd = {t1.bytes_sent - t0.bytes_sent, t1.messages - t0.messages};
  r.bwd = {t2.bytes_sent - t1.bytes_sent, t2.messages - t1.messages};
}

struct Batch {
  ModelConfig c;
  int64_t B, T;
  Params P;
  std::vector<float> x, dout, bias;
  Batch(const ModelConfig& cfg, int64_t b, int64_t t, uint32_t seed)
      : c(cfg), B(b), T(t), P(cfg, 1.0f, seed) {
    const int64_t H = c.hidden_size;
    x = uniform(B * T * H, 1.0f, seed + 1);
    dout = uniform(B * T * H, 1.0f, seed + 2);
    bias = uniform(c.n_routed_experts, 0.05f, seed + 3);
  }
};

// One rank group: the EP machinery on one rank equals the plain path (F32: bitwise; the BF16
// and FP8 wires within the rounding the combine adds).
TEST(MoeEp, OneRankExchangeEqualsPlainPath) {
  const ModelConfig c = tiny_ep();
  Batch b(c, 3, 11, 21);
  const dist::Comm one;  // a one-rank group, also under mpirun
  LayerRun plain32(c);    // the F32 gradients: FP8 bounds are relative to FP8's own error
  for (Precision prec : {Precision::F32, Precision::BF16, Precision::FP8}) {
    SCOPED_TRACE(precision_name(prec));
    LayerRun plain_run(c), ep1(c), forced(c);
    LayerRun& plain = prec == Precision::F32 ? plain32 : plain_run;
    MoeExpertParallel opt;
    opt.ep = &one;
    run_layer(plain, c, b.P, b.x.data(), b.dout.data(), 0, b.B, b.T, b.bias.data(), 1e-2f, prec, nullptr);
    run_layer(ep1, c, b.P, b.x.data(), b.dout.data(), 0, b.B, b.T, b.bias.data(), 1e-2f, prec, &opt);
    opt.exchange_one_rank = true;
    run_layer(forced, c, b.P, b.x.data(), b.dout.data(), 0, b.B, b.T, b.bias.data(), 1e-2f, prec, &opt);
    const int64_t n = int64_t(plain.out.size());
    // A one-rank group without the forcing flag is the plain path.
    EXPECT_FALSE(ep1.saved.ep.active);
    EXPECT_TRUE(bitwise(plain.out.data(), ep1.out.data(), n));
    EXPECT_TRUE(bitwise(plain.dx.data(), ep1.dx.data(), n));
    EXPECT_EQ(plain.G.data, ep1.G.data);
    EXPECT_TRUE(forced.saved.ep.active);
    EXPECT_EQ(plain.stats.load, forced.stats.load);
    EXPECT_EQ(plain.stats.balance_loss, forced.stats.balance_loss);
    EXPECT_EQ(forced.fwd.bytes_sent, 0);  // the self block is a local copy
    if (prec == Precision::F32) {
      EXPECT_TRUE(bitwise(plain.out.data(), forced.out.data(), n));
      EXPECT_TRUE(bitwise(plain.dx.data(), forced.dx.data(), n));
      EXPECT_EQ(plain.G.data, forced.G.data);
    } else {
      // The BF16 combine rounds each routed term once (≤ 2^-9 relative): out and dx within
      // 2^-8 of the plain path's norm-wise. Measured: see the printed figures.
      const double eo = rel_err(forced.out.data(), plain.out.data(), n);
      const double ed = rel_err(forced.dx.data(), plain.dx.data(), n);
      EXPECT_LT(eo, std::ldexp(1.0, -8));
      EXPECT_LT(ed, std::ldexp(1.0, -8));
      double worst = 0;
      for (auto& [name, w] : plain.G.list) {
        const double d = calc_diff(forced.G.ptr(name), w->w.ptr<float>(), w->w.numel());
        if (name.rfind("experts.", 0) == 0) {
          worst = std::max(worst, d);
          // BF16: the dispatch wire is exactly what the GEMMs round to: no error at all.
          // FP8: the Wgrad re-quantises the E4M3 rows in 128x1 tiles (about one more FP8
          // rounding): within twice FP8's own distance from F32.
          const double fp8 = calc_diff(w->w.ptr<float>(), plain32.G.ptr(name), w->w.numel());
          EXPECT_LT(d, prec == Precision::BF16 ? 1e-12 : 2 * fp8) << name;
        } else {
          EXPECT_LT(d, 1e-12) << name;  // router, shared: dweight and the rest are exact
        }
      }
      std::printf("[ one-rank EP, %s ] rel err out %.3g dx %.3g; expert grads calc_diff max %.3g\n",
                  precision_name(prec), eo, ed, worst);
    }
  }
}

// ---- under mpirun ---------------------------------------------------------------------------

// Every rank: the one-process reference over the whole batch, and EP over its slice.
void check_against_reference(const ModelConfig& c, Precision prec, int max_nodes, int R) {
  const dist::Comm& W = world();
  const int P = W.size(), rank = W.rank();
  const int64_t B = 8, T = 12, H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  ASSERT_EQ(B % P, 0);
  const int64_t Bl = B / P, b0 = rank * Bl, Nl = Bl * T, El = E / P;
  Batch b(c, B, T, 77);
  const float alpha = 1e-2f;

  MoeExpertParallel ref_opt, ep_opt;
  ref_opt.max_nodes = ep_opt.max_nodes = max_nodes;
  ref_opt.ranks_per_node = ep_opt.ranks_per_node = R;
  if (max_nodes > 0) ref_opt.nodes = P / R;
  ep_opt.ep = &W;
  LayerRun ref(c), ep(c), ref32(c);
  run_layer(ref, c, b.P, b.x.data(), b.dout.data(), 0, B, T, b.bias.data(), alpha, prec, &ref_opt);
  // FP8 bounds are relative to FP8's own error: the one-process FP8 run against F32.
  if (prec == Precision::FP8)
    run_layer(ref32, c, b.P, b.x.data(), b.dout.data(), 0, B, T, b.bias.data(), alpha,
              Precision::F32, &ref_opt);
  auto fp8_bound = [&](const std::string& name) {
    return 2 * calc_diff(ref.G.ptr(name), ref32.G.ptr(name), ref.G.numel(name));
  };
  run_layer(ep, c, b.P, b.x.data(), b.dout.data(), b0, Bl, T, b.bias.data(), alpha, prec, &ep_opt, B);

  // The routing is the reference's for this slice (the router runs locally, row by row).
  EXPECT_TRUE(std::equal(ep.saved.idx.begin(), ep.saved.idx.begin() + Nl * K,
                         ref.saved.idx.begin() + b0 * T * K));
  if (max_nodes > 0) {
    for (int64_t t = 0; t < B * T; ++t)
      EXPECT_LE(nodes_touched(&ref.saved.idx[size_t(t * K)], K, E / (P / R)), max_nodes);
  }

  // Output and dx rows of this slice.
  const float* out_ref = ref.out.data() + b0 * T * H;
  const float* dx_ref = ref.dx.data() + b0 * T * H;
  const double eo = rel_err(ep.out.data(), out_ref, Nl * H), ed = rel_err(ep.dx.data(), dx_ref, Nl * H);
  const double tol = prec == Precision::F32 ? 1e-6 : std::ldexp(1.0, -8);
  EXPECT_LE(eo, tol);
  EXPECT_LE(ed, tol);
  const bool out_bits = bitwise(ep.out.data(), out_ref, Nl * H);
  const bool dx_bits = bitwise(ep.dx.data(), dx_ref, Nl * H);

  // The experts this rank owns: the same rows in the same order as the reference.
  double worst_own = 0;
  double fp8_ratio = 0;  // max over tensors of calc_diff(EP, FP8) / calc_diff(FP8, F32)
  bool own_bits = true;
  for (int64_t e = 0; e < E; ++e) {
    for (const char* proj : {".gate_proj", ".up_proj", ".down_proj"}) {
      const std::string name = "experts." + std::to_string(e) + proj;
      const float* g = ep.G.ptr(name);
      const int64_t n = ep.G.numel(name);
      if (e / El == rank) {
        const double d = calc_diff(g, ref.G.ptr(name), n);
        worst_own = std::max(worst_own, d);
        own_bits = own_bits && bitwise(g, ref.G.ptr(name), n);
        // FP8: the Wgrad re-quantises the E4M3-dispatched rows in 128x1 tiles: at most about
        // one more FP8 rounding, i.e. within twice FP8's own distance from F32.
        EXPECT_LT(d, prec == Precision::FP8 ? fp8_bound(name) : 1e-12) << name;
        if (prec == Precision::FP8) fp8_ratio = std::max(fp8_ratio, 2 * d / fp8_bound(name));
      } else {
        EXPECT_TRUE(std::all_of(g, g + n, [](float v) { return v == 0.0f; })) << name << " touched";
      }
    }
  }
  // Router and shared experts: every rank's share, summed.
  double worst_sum = 0;
  for (auto& [name, w] : ep.G.list) {
    if (name.rfind("experts.", 0) == 0) continue;
    float* g = w->w.ptr<float>();
    W.allreduce_sum(g, w->w.numel());
    const double d = calc_diff(g, ref.G.ptr(name), w->w.numel());
    worst_sum = std::max(worst_sum, d);
    // FP8 shared experts: their Wgrad's 128x1 tiles run along the tokens, which the ranks split
    // (as data parallelism would): a different quantisation, within FP8's own error. The
    // router is F32 and its dweight inputs are exact: rank-sum order only.
    const bool fp8_shared = prec == Precision::FP8 && name.rfind("shared_experts", 0) == 0;
    EXPECT_LT(d, fp8_shared ? fp8_bound(name) : 1e-12) << name;
    if (fp8_shared) fp8_ratio = std::max(fp8_ratio, 2 * d / fp8_bound(name));
  }
  // Loads and the balance loss (per sequence, so the ranks' sums are the whole batch's).
  std::vector<int64_t> load = ep.stats.load;
  W.allreduce_sum(load.data(), E);
  EXPECT_EQ(load, ref.stats.load);
  double bal = ep.stats.balance_loss * double(Bl);
  W.allreduce_sum(&bal, 1);
  EXPECT_NEAR(bal / double(B), ref.stats.balance_loss, 1e-12 + 1e-9 * ref.stats.balance_loss);

  // Bytes: measured == the plan's prediction == rows counted from the reference routing.
  const EpBytes pf = moe_ep_forward_bytes(ep.saved, c), pb = moe_ep_backward_bytes(ep.saved, c);
  EXPECT_EQ(ep.fwd.bytes_sent, pf.total());
  EXPECT_EQ(ep.bwd.bytes_sent, pb.total());
  const MoeEpWire wire = moe_ep_wire(prec);
  const int64_t Sd = wire_row_bytes(wire.dispatch, H), Sc = wire_row_bytes(wire.combine, H);
  int64_t rows_out = 0, rows_in = 0;  // (token, slot) rows crossing ranks, from / to this rank
  for (int64_t t = 0; t < B * T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      const int src = int(t / (Bl * T)), dst = int(ref.saved.idx[size_t(t * K + k)] / El);
      if (src == dst) continue;
      rows_out += src == rank;
      rows_in += dst == rank;
    }
  const int64_t counts = P > 1 ? (P - 1) * El * 8 : 0;
  EXPECT_EQ(pf.counts, counts);
  EXPECT_EQ(pf.dispatch, rows_out * Sd);
  EXPECT_EQ(pf.combine, rows_in * Sc);
  EXPECT_EQ(pb.dispatch, rows_out * (Sd + 4));
  EXPECT_EQ(pb.combine, rows_in * (Sc + 4));

  std::printf("[ rank %d/%d %s M=%d R=%d ] out rel %.3g%s dx rel %.3g%s; own experts calc_diff "
              "%.3g%s, router+shared (summed) %.3g%s; bytes fwd %lld (counts %lld, dispatch %lld "
              "= %lld rows x %lld, combine %lld = %lld rows x %lld), bwd %lld; messages %lld + %lld\n",
              rank, P, precision_name(prec), max_nodes, R, eo, out_bits ? " (bitwise)" : "", ed,
              dx_bits ? " (bitwise)" : "", worst_own, own_bits ? " (bitwise)" : "", worst_sum,
              prec == Precision::FP8 ? (" (FP8: at most " + std::to_string(fp8_ratio) +
                                        " x FP8's own distance from F32)").c_str() : "",
              (long long)ep.fwd.bytes_sent, (long long)pf.counts, (long long)pf.dispatch,
              (long long)rows_out, (long long)Sd, (long long)pf.combine, (long long)rows_in,
              (long long)Sc, (long long)ep.bwd.bytes_sent, (long long)ep.fwd.messages,
              (long long)ep.bwd.messages);
  std::fflush(stdout);
}

TEST(MoeEpMpi, F32MatchesOneProcess) { check_against_reference(tiny_ep(), Precision::F32, 0, 0); }
TEST(MoeEpMpi, BF16MatchesOneProcess) { check_against_reference(tiny_ep(), Precision::BF16, 0, 0); }
TEST(MoeEpMpi, FP8MatchesOneProcess) { check_against_reference(tiny_ep(), Precision::FP8, 0, 0); }

// Node-limited routing: nodes of R = P/2 ranks (np 4: R = 2), each token on M = 1 node.
TEST(MoeEpMpi, NodeLimitedMatchesOneProcess) {
  const int P = world().size();
  if (P < 2 || P % 2 != 0) GTEST_SKIP() << "needs an even number of ranks (mpirun -np 2 or 4)";
  check_against_reference(tiny_ep(), Precision::F32, 1, P / 2);
}

// User errors are thrown on every rank before any exchange (no rank is left waiting).
TEST(MoeEpMpi, ChecksNameTheValues) {
  const int P = world().size();
  if (P < 2) GTEST_SKIP() << "needs > 1 rank";
  ModelConfig c = tiny_ep();
  c.n_group = 1;
  c.topk_group = 1;
  c.n_routed_experts = P + 1;
  c.num_experts_per_tok = 2;
  Batch b(c, 1, 4, 5);
  MoeExpertParallel opt;
  opt.ep = &world();
  LayerRun r(c);
  try {
    run_layer(r, c, b.P, b.x.data(), b.dout.data(), 0, 1, 4, nullptr, 0, Precision::F32, &opt);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("(" + std::to_string(P + 1) + ")"), std::string::npos) << m;
    EXPECT_NE(m.find("size (" + std::to_string(P) + ")"), std::string::npos) << m;
  }
  c = tiny_ep();
  opt.max_nodes = 1;
  opt.ranks_per_node = P + 1;
  try {
    moe_node_limit(&opt, c);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("size (" + std::to_string(P) + ") must be divisible by ranks_per_node R (" +
                     std::to_string(P + 1) + ")"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace dsv3

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  dsv3::dist::Comm::world();  // MPI_Init when launched by mpirun
  const int rc = RUN_ALL_TESTS();
  dsv3::dist::finalize();
  return rc;
}
