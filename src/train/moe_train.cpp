#include "train/moe_train.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/check.h"
#include "core/scratch.h"
#include "kernels/activation.h"
#include "model/moe.h"

namespace dsv3 {
namespace {

const float* wptr(const Weight& w) {
  DSV3_CHECK(w.w.dtype == DType::F32, "training weights must be F32 views, got a ",
             dtype_name(w.w.dtype), " tensor");
  return w.w.ptr<float>();
}
float* gptr(Weight& g) { return const_cast<float*>(wptr(g)); }

int64_t inter_of(const MlpWeights& w) { return w.gate_proj.w.shape[0]; }

// One SwiGLU expert on n gathered rows: G, U [n, I] (saved) = gate(x), up(x);
// y [n, H] = down(swiglu(G, U)) (written, or added with acc). h [n, I] is scratch.
void expert_forward(float* y, const float* x, int64_t n, int64_t H, const MlpWeights& w,
                    float* G, float* U, float* h, const TLinearCtx& lc, TLinearScratch& ls,
                    bool acc) {
  const int64_t I = inter_of(w);
  tlinear_forward(G, x, wptr(w.gate_proj), n, I, H, lc, ls);
  tlinear_forward(U, x, wptr(w.up_proj), n, I, H, lc, ls);
  swiglu_forward(h, I, G, I, U, I, n, I, lc.threads);
  tlinear_forward(y, h, wptr(w.down_proj), n, H, I, lc, ls, acc);
}

// Backward of rw_j · expert(x_j) for n rows (rw [n] or nullptr = all 1): dout [n, H] is the
// gradient of the weighted sum's rows (unweighted). dx [n, H] written (or added, acc_dx);
// parameter gradients added into g; dweight [n] (when non-null) = <dout_j, expert(x_j)>.
// The down projection's output is not saved: <dout, W_d h> = <W_dᵀ dout, h>, and W_dᵀ dout
// is the dgrad this pass computes anyway; the weighting moves onto h for the wgrad
// (Σ_j dout_jᵀ (rw_j h_j)) and onto dh for the rest.
void expert_backward(float* dx, float* dweight, const float* rw, const float* dout,
                     const float* x, int64_t n, int64_t H, const MlpWeights& w, MlpWeights& g,
                     const float* G, const float* U, const TLinearCtx& lc, MlpTrainScratch& s,
                     bool acc_dx) {
  const int64_t I = inter_of(w);
  float* h = grow(s.h, n * I);   // [n, I]
  float* dh = grow(s.dh, n * I);
  float* dg = grow(s.dg, n * I);
  float* du = grow(s.du, n * I);
  swiglu_forward(h, I, G, I, U, I, n, I, lc.threads);  // recomputed (cheap, elementwise)
  const float* hin = h;
  if (rw) {
    for (int64_t j = 0; j < n; ++j) {
      const float r = rw[j];
      const float* hj = h + j * I;
      float* o = du + j * I;  // du is free until swiglu_backward: holds rw·h meanwhile
      for (int64_t k = 0; k < I; ++k) o[k] = r * hj[k];
    }
    hin = du;
  }
  tlinear_backward(dh, gptr(g.down_proj), dout, hin, wptr(w.down_proj), n, H, I, lc, s.lin);
  if (dweight || rw) {
    for (int64_t j = 0; j < n; ++j) {
      float* d = dh + j * I;
      if (dweight) {
        const float* hj = h + j * I;
        double acc = 0;
        for (int64_t k = 0; k < I; ++k) acc += double(d[k]) * hj[k];
        dweight[j] = float(acc);
      }
      if (rw) {
        const float r = rw[j];
        for (int64_t k = 0; k < I; ++k) d[k] *= r;
      }
    }
  }
  swiglu_backward(dg, I, du, I, dh, I, G, I, U, I, n, I, lc.threads);
  tlinear_backward(dx, gptr(g.gate_proj), dg, x, wptr(w.gate_proj), n, I, H, lc, s.lin, acc_dx);
  tlinear_backward(dx, gptr(g.up_proj), du, x, wptr(w.up_proj), n, I, H, lc, s.lin, true);
}

bool normalises(const ModelConfig& c) {  // as moe_route (docs/numerics.md)
  return c.norm_topk_prob && (c.model_type != "deepseek_v2" || c.num_experts_per_tok > 1);
}
bool scales(const ModelConfig& c) { return c.model_type != "deepseek_v2" || !normalises(c); }

TLinearCtx router_ctx(const TLinearCtx& lc) {  // the router is always F32 (docs/training.md)
  TLinearCtx r = lc;
  r.prec = Precision::F32;
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------
void mlp_train_forward(float* out, const float* x, int64_t N, int64_t H, const MlpWeights& w,
                       const TLinearCtx& lc, MlpTrainSaved& saved, MlpTrainScratch& s, bool acc) {
  const int64_t I = inter_of(w);
  float* G = grow(saved.gate, N * I);
  float* U = grow(saved.up, N * I);
  expert_forward(out, x, N, H, w, G, U, grow(s.h, N * I), lc, s.lin, acc);
}

void mlp_train_backward(float* dx, const float* dout, const float* x, int64_t N, int64_t H,
                        const MlpWeights& w, MlpWeights& g, const TLinearCtx& lc,
                        const MlpTrainSaved& saved, MlpTrainScratch& s, bool acc_dx) {
  const int64_t I = inter_of(w);
  DSV3_ASSERT(int64_t(saved.gate.size()) >= N * I);
  expert_backward(dx, nullptr, nullptr, dout, x, N, H, w, g, saved.gate.data(), saved.up.data(),
                  lc, s, acc_dx);
}

// ---------------------------------------------------------------------------------------
void moe_train_forward(float* out, const float* x, int64_t B, int64_t T, const ModelConfig& c,
                       const MoeWeights& w, const float* bias, float alpha, const TLinearCtx& lc,
                       MoeTrainSaved& saved, MoeTrainScratch& s, MoeStats* stats) {
  const int64_t N = B * T, H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  DSV3_CHECK(B > 0 && T > 0, "moe_train_forward: empty batch (B=", B, ", T=", T, ")");
  DSV3_CHECK(int64_t(w.experts.size()) == E, "MoE weights hold ", w.experts.size(),
             " experts, config says ", E);
  saved.B = B;
  saved.T = T;

  // Router (F32) and the routing decision, exactly the inference one.
  float* logits = grow(s.logits, N * E);  // [N, E]
  {
    TLinearScratch& ls = s.mlp.lin;
    tlinear_forward(logits, x, wptr(w.gate), N, E, H, router_ctx(lc), ls);
  }
  int32_t* idx = grow(saved.idx, N * K);
  float* wt = grow(saved.weight, N * K);
  moe_route(idx, wt, logits, N, c, bias, s.route);

  // The unbiased scores over all experts, the same formulas as moe_route.
  float* sc = grow(saved.scores, N * E);  // [N, E]
  for (int64_t t = 0; t < N; ++t) {
    const float* l = logits + t * E;
    float* p = sc + t * E;
    if (c.scoring_func == "sigmoid") {
      for (int64_t e = 0; e < E; ++e) p[e] = 1.0f / (1.0f + std::exp(-l[e]));
    } else {
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t e = 0; e < E; ++e) mx = std::max(mx, l[e]);
      float sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(l[e] - mx);
      for (int64_t e = 0; e < E; ++e) p[e] /= sum;
    }
  }

  // Group (token, slot) pairs by expert: counting sort, stable in token order.
  int64_t* start = grow(saved.start, E + 1);
  std::fill(start, start + E + 1, 0);
  int32_t* cnt = grow(saved.seq_count, B * E);  // [B, E]
  std::fill(cnt, cnt + B * E, 0);
  for (int64_t i = 0; i < N * K; ++i) {
    ++start[idx[i] + 1];
    ++cnt[(i / K / T) * E + idx[i]];
  }
  for (int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
  int32_t* order = grow(saved.order, N * K);
  {
    std::vector<int64_t> fill(start, start + E);
    for (int64_t i = 0; i < N * K; ++i) order[fill[size_t(idx[i])]++] = int32_t(i);
  }

  if (stats) {
    stats->load.assign(size_t(E), 0);
    for (int64_t e = 0; e < E; ++e) stats->load[size_t(e)] = start[e + 1] - start[e];
    // L_bal,b = α Σ_i f_i P_i, f_i = E/(K·T)·count_b,i, P_i = 1/T Σ_t s_i,t / Σ_j s_j,t.
    double total = 0;
    if (alpha != 0) {
      std::vector<double> P(static_cast<size_t>(E));
      for (int64_t b = 0; b < B; ++b) {
        std::fill(P.begin(), P.end(), 0.0);
        for (int64_t t = b * T; t < (b + 1) * T; ++t) {
          const float* p = sc + t * E;
          double sum = 0;
          for (int64_t e = 0; e < E; ++e) sum += p[e];
          for (int64_t e = 0; e < E; ++e) P[size_t(e)] += p[e] / sum;
        }
        double lb = 0;
        for (int64_t e = 0; e < E; ++e)
          lb += double(E) / double(K * T) * cnt[b * E + e] * P[size_t(e)] / double(T);
        total += double(alpha) * lb;
      }
    }
    stats->balance_loss = total / double(B);
  }

  // Shared experts on every token (they write out), then the routed ones added.
  if (c.n_shared_experts > 0)
    mlp_train_forward(out, x, N, H, w.shared_experts, lc, saved.shared, s.mlp, false);
  else
    std::memset(out, 0, size_t(N * H) * sizeof(float));
  if (E == 0) return;
  const int64_t I = inter_of(w.experts[0]);
  float* Gall = grow(saved.gate, N * K * I);  // [N·K, I]
  float* Uall = grow(saved.up, N * K * I);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = start[e + 1] - start[e];
    if (n == 0) continue;
    const int32_t* slots = order + start[e];
    float* xe = grow(s.xe, n * H);  // [n, H]
    for (int64_t j = 0; j < n; ++j)
      std::memcpy(xe + j * H, x + (slots[j] / K) * H, size_t(H) * sizeof(float));
    float* ye = grow(s.ye, n * H);
    expert_forward(ye, xe, n, H, w.experts[size_t(e)], Gall + start[e] * I, Uall + start[e] * I,
                   grow(s.mlp.h, n * I), lc, s.mlp.lin, false);
    for (int64_t j = 0; j < n; ++j) {
      const float gw = wt[slots[j]];
      float* o = out + (slots[j] / K) * H;
      const float* y = ye + j * H;
      for (int64_t k = 0; k < H; ++k) o[k] += gw * y[k];
    }
  }
}

void moe_train_backward(float* dx, const float* dout, const float* x, const ModelConfig& c,
                        const MoeWeights& w, MoeWeights& g, float alpha, float bal_scale,
                        const TLinearCtx& lc, const MoeTrainSaved& saved, MoeTrainScratch& s) {
  const int64_t B = saved.B, T = saved.T, N = B * T;
  const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  DSV3_ASSERT(N > 0 && int64_t(saved.scores.size()) >= N * E);

  if (c.n_shared_experts > 0)
    mlp_train_backward(dx, dout, x, N, H, w.shared_experts, g.shared_experts, lc, saved.shared,
                       s.mlp, false);
  else
    std::memset(dx, 0, size_t(N * H) * sizeof(float));
  if (E == 0) return;

  // Routed experts: gather dout rows per expert, backward, scatter-add dx; dweight per slot.
  const int32_t* idx = saved.idx.data();
  const float* wt = saved.weight.data();
  const int32_t* order = saved.order.data();
  const int64_t* start = saved.start.data();
  const int64_t I = inter_of(w.experts[0]);
  float* dwt = grow(s.dweight, N * K);  // [N, K]
  std::vector<float> rw, dw;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = start[e + 1] - start[e];
    if (n == 0) continue;
    const int32_t* slots = order + start[e];
    float* xe = grow(s.xe, 2 * n * H);  // [n, H] inputs, then [n, H] their gradient
    float* dxe = xe + n * H;
    float* de = grow(s.ye, n * H);      // [n, H] dout rows
    rw.resize(size_t(n));
    dw.resize(size_t(n));
    for (int64_t j = 0; j < n; ++j) {
      const int64_t t = slots[j] / K;
      std::memcpy(xe + j * H, x + t * H, size_t(H) * sizeof(float));
      std::memcpy(de + j * H, dout + t * H, size_t(H) * sizeof(float));
      rw[size_t(j)] = wt[slots[j]];
    }
    expert_backward(dxe, dw.data(), rw.data(), de, xe, n, H, w.experts[size_t(e)],
                    g.experts[size_t(e)], saved.gate.data() + start[e] * I,
                    saved.up.data() + start[e] * I, lc, s.mlp, false);
    for (int64_t j = 0; j < n; ++j) {
      dwt[slots[j]] = dw[size_t(j)];
      float* o = dx + (slots[j] / K) * H;
      const float* d = dxe + j * H;
      for (int64_t k = 0; k < H; ++k) o[k] += d[k];
    }
  }

  // dweight -> the chosen unbiased scores (through normalisation and scaling).
  const float* sc = saved.scores.data();
  float* ds = grow(s.dscore, N * E);  // [N, E]
  std::fill(ds, ds + N * E, 0.0f);
  const bool norm = normalises(c);
  const float rsf = scales(c) ? float(c.routed_scaling_factor) : 1.0f;
  for (int64_t t = 0; t < N; ++t) {
    const int32_t* ti = idx + t * K;
    const float* dw_t = dwt + t * K;
    float* d = ds + t * E;
    if (norm) {  // w_i = rsf · s_i / (S + 1e-20), S = Σ_chosen s
      float S = 0, dot = 0;
      for (int64_t k = 0; k < K; ++k) S += sc[t * E + ti[k]];
      const float inv = 1.0f / (S + 1e-20f);
      for (int64_t k = 0; k < K; ++k) dot += dw_t[k] * sc[t * E + ti[k]];
      for (int64_t k = 0; k < K; ++k) d[ti[k]] += rsf * (dw_t[k] - dot * inv) * inv;
    } else {
      for (int64_t k = 0; k < K; ++k) d[ti[k]] += rsf * dw_t[k];
    }
  }

  // Balance loss: dL/ds'_i,t = bal_scale · α · f_i / T, through s' = s / Σ_j s_j.
  if (alpha != 0 && bal_scale != 0) {
    const int32_t* cnt = saved.seq_count.data();
    std::vector<float> gp(static_cast<size_t>(E));
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t e = 0; e < E; ++e)
        gp[size_t(e)] = float(double(bal_scale) * alpha * double(E) / double(K * T) *
                              cnt[b * E + e] / double(T));
      for (int64_t t = b * T; t < (b + 1) * T; ++t) {
        const float* p = sc + t * E;
        float sum = 0, dot = 0;
        for (int64_t e = 0; e < E; ++e) sum += p[e];
        const float inv = 1.0f / sum;
        for (int64_t e = 0; e < E; ++e) dot += gp[size_t(e)] * p[e];
        dot *= inv;
        for (int64_t e = 0; e < E; ++e) ds[t * E + e] += (gp[size_t(e)] - dot) * inv;
      }
    }
  }

  // Scores -> router logits (the bias is outside the graph: no gradient).
  float* dl = grow(s.dlogits, N * E);
  for (int64_t t = 0; t < N; ++t) {
    const float* p = sc + t * E;
    const float* d = ds + t * E;
    float* o = dl + t * E;
    if (c.scoring_func == "sigmoid") {
      for (int64_t e = 0; e < E; ++e) o[e] = d[e] * p[e] * (1.0f - p[e]);
    } else {
      float dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += d[e] * p[e];
      for (int64_t e = 0; e < E; ++e) o[e] = p[e] * (d[e] - dot);
    }
  }
  tlinear_backward(dx, gptr(g.gate), dl, x, wptr(w.gate), N, E, H, router_ctx(lc), s.mlp.lin,
                   true);
}

}  // namespace dsv3
