#include "train/moe_train.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>

#include "core/check.h"
#include "core/parallel.h"
#include "core/scratch.h"
#include "kernels/activation.h"
#include "kernels/row_parallel.h"
#include "model/moe.h"

namespace dsv3 {

bool moe_ep_overlap() {
  static const bool on = [] {
    const char* s = std::getenv("DSV3_EP_OVERLAP");
    if (s == nullptr || *s == 0) return true;
    const std::string_view v(s);
    DSV3_CHECK(v == "0" || v == "1", "DSV3_EP_OVERLAP='", s, "' must be 0 (off) or 1 (on)");
    return v == "1";
  }();
  return on;
}

namespace {

const float* wptr(const Weight& w) {
  DSV3_CHECK(w.w.dtype == DType::F32, "training weights must be F32 views, got a ",
             dtype_name(w.w.dtype), " tensor");
  return w.w.ptr<float>();
}
float* gptr(Weight& g) { return const_cast<float*>(wptr(g)); }

int64_t inter_of(const MlpWeights& w) { return w.gate_proj.w.shape[0]; }

// Progress of an EP exchange in flight: MPI moves a non-blocking transfer only inside MPI
// calls (parallel/comm.h), so local work calls this between its GEMMs. Empty: nothing to do.
struct Poll {
  dist::Request* req = nullptr;
  void operator()() const {
    if (req) req->test();
  }
};

// ep_exchange, completed at once when overlap is off (then Poll's test() finds it done).
dist::Request ep_start(const dist::Comm& comm, const EpPlan& plan, EpDirection dir,
                       const uint8_t* send, uint8_t* recv, int64_t row_bytes) {
  dist::Request req = ep_exchange(comm, plan, dir, send, recv, row_bytes);
  if (!moe_ep_overlap()) req.wait();
  return req;
}

// One SwiGLU expert on n gathered rows: G, U [n, I] (saved) = gate(x), up(x);
// y [n, H] = down(swiglu(G, U)) (written, or added with acc). h [n, I] is scratch.
void expert_forward(float* y, const float* x, int64_t n, int64_t H, const MlpWeights& w,
                    float* G, float* U, float* h, const TLinearCtx& lc, TLinearScratch& ls,
                    bool acc, Poll poll = {}) {
  const int64_t I = inter_of(w);
  const uint16_t* x16 = tlinear_input_bf16(x, n, H, lc, ls);  // BF16: x rounded once for both
  tlinear_forward(G, x, wptr(w.gate_proj), n, I, H, lc, ls, false, x16);
  poll();
  tlinear_forward(U, x, wptr(w.up_proj), n, I, H, lc, ls, false, x16);
  poll();
  swiglu_forward(h, I, G, I, U, I, n, I, lc.threads);
  tlinear_forward(y, h, wptr(w.down_proj), n, H, I, lc, ls, acc);
  poll();
}

// tlinear_backward, polling between its dgrad and wgrad GEMMs when an exchange is in flight
// (the two GEMMs are independent: the same bits either way).
void tlinear_backward_polled(float* dx, float* dW, const float* dy, const float* x,
                             const float* W, int64_t M, int64_t N, int64_t K,
                             const TLinearCtx& c, TLinearScratch& s, bool acc_dx, Poll poll,
                             const uint16_t* x16 = nullptr) {
  if (!poll.req) return tlinear_backward(dx, dW, dy, x, W, M, N, K, c, s, acc_dx, x16);
  if (dx) tlinear_backward(dx, nullptr, dy, x, W, M, N, K, c, s, acc_dx);
  poll();
  tlinear_backward(nullptr, dW, dy, x, W, M, N, K, c, s, false, x16);
  poll();
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
                     bool acc_dx, Poll poll = {}) {
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
  tlinear_backward_polled(dh, gptr(g.down_proj), dout, hin, wptr(w.down_proj), n, H, I, lc, s.lin,
                          false, poll);
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
  // BF16: x rounded once for both weight gradients (deferred ones round it when they run).
  const uint16_t* x16 = lc.defer ? nullptr : tlinear_input_bf16(x, n, H, lc, s.lin);
  tlinear_backward_polled(dx, gptr(g.gate_proj), dg, x, wptr(w.gate_proj), n, I, H, lc, s.lin,
                          acc_dx, poll, x16);
  tlinear_backward_polled(dx, gptr(g.up_proj), du, x, wptr(w.up_proj), n, I, H, lc, s.lin, true,
                          poll, x16);
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

bool ep_active(const MoeExpertParallel* ep, const ModelConfig& c) {
  return ep && ep->ep && c.n_routed_experts > 0 && (ep->ep->size() > 1 || ep->exchange_one_rank);
}

// The unbiased scores sc [N, E] over all experts, the same formulas as moe_route.
void unbiased_scores(float* sc, const float* logits, int64_t N, int64_t E, const ModelConfig& c,
                     int threads) {
  parallel_rows(N, N * E * 8, threads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
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
  });
}

// Loads and the balance loss of this call's B sequences (sc: unbiased scores, cnt [B, E]).
void moe_stats(MoeStats& st, const float* sc, const int32_t* cnt, const int64_t* start, int64_t B,
               int64_t T, int64_t E, int64_t K, float alpha) {
  st.load.assign(size_t(E), 0);
  for (int64_t e = 0; e < E; ++e) st.load[size_t(e)] = start[e + 1] - start[e];
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
  st.balance_loss = total / double(B);
}

// ds [N, E] += dweight [N, K] through the gate weights' normalisation and scaling.
void add_routing_grad(float* ds, const float* dwt, const int32_t* idx, const float* sc,
                      int64_t N, int64_t E, int64_t K, const ModelConfig& c, int threads) {
  const bool norm = normalises(c);
  const float rsf = scales(c) ? float(c.routed_scaling_factor) : 1.0f;
  parallel_rows(N, N * K * 4, threads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
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
  });
}

// Balance loss: ds += dL/ds'_i,t = bal_scale · α · f_i / T, through s' = s / Σ_j s_j.
void add_balance_grad(float* ds, const float* sc, const int32_t* cnt, int64_t B, int64_t T,
                      int64_t E, int64_t K, float alpha, float bal_scale, int threads) {
  std::vector<float> gp(static_cast<size_t>(B * E));  // [B, E]
  for (int64_t b = 0; b < B; ++b)
    for (int64_t e = 0; e < E; ++e)
      gp[size_t(b * E + e)] = float(double(bal_scale) * alpha * double(E) / double(K * T) *
                                    cnt[b * E + e] / double(T));
  parallel_rows(B * T, B * T * E * 3, threads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* g = gp.data() + (t / T) * E;
      const float* p = sc + t * E;
      float sum = 0, dot = 0;
      for (int64_t e = 0; e < E; ++e) sum += p[e];
      const float inv = 1.0f / sum;
      for (int64_t e = 0; e < E; ++e) dot += g[e] * p[e];
      dot *= inv;
      for (int64_t e = 0; e < E; ++e) ds[t * E + e] += (g[e] - dot) * inv;
    }
  });
}

// f(r, b) for each row of local expert j: r its index among the expert's rows (expert-major,
// sources in rank order), b its row in the source-major wire buffer (parallel/ep_dispatch.h).
template <class F>
void for_expert_rows(const EpPlan& p, int64_t j, F&& f) {
  int64_t r = 0;
  for (int s = 0; s < p.P; ++s) {
    const int64_t b = p.block_row[size_t(s * p.El + j)], n = p.recv_count[size_t(s * p.El + j)];
    for (int64_t i = 0; i < n; ++i) f(r++, b + i);
  }
}

// Rows [n, stride] of the sorted order: row i = src[order[i] / K] in wire w, and (extra) one
// F32 from extra[order[i]] after the payload.
void encode_sorted(uint8_t* dst, int64_t stride, const float* src, const int32_t* order,
                   int64_t n, int64_t K, int64_t H, Wire w, const float* extra, int threads) {
  const int64_t pay = wire_row_bytes(w, H);
  parallel_for(n, n * H >= (1 << 16) ? threads : 1, [&](int64_t i) {
    wire_encode(dst + i * stride, src + (order[i] / K) * H, H, w);
    if (extra) std::memcpy(dst + i * stride + pay, &extra[order[i]], sizeof(float));
  });
}

// body(e, ctx, scratch) for every expert e < E with rows (rows [start[e], start[e+1]): of
// the sorted order, or under EP of this rank's experts). The experts are handed out to the
// threads, largest first, and each runs on one thread (ctx.threads = 1) with that thread's
// scratch: an expert has N·K/E rows on average, too few for GEMMs split over threads, which
// would pack each A block once per thread and join after every GEMM, with the gathers and
// scatters between them serial. A GEMM's result does not depend on its thread count, so
// the bits are those of one expert at a time on all threads — which is what runs when the
// weight gradients are deferred (ZB's W op records them in call order) or with one thread.
template <class F>
void for_routed_experts(const int64_t* start, int64_t E, const TLinearCtx& lc, MoeTrainScratch& s,
                        F&& body) {
  const int nt = resolve_threads(lc.threads);
  if (s.per_thread.empty()) s.per_thread.resize(1);
  if (lc.defer != nullptr || nt == 1 || in_parallel_region()) {
    for (int64_t e = 0; e < E; ++e)
      if (start[e + 1] > start[e]) body(e, lc, s.per_thread[0]);
    return;
  }
  std::vector<int32_t> todo;
  todo.reserve(size_t(E));
  for (int64_t e = 0; e < E; ++e)
    if (start[e + 1] > start[e]) todo.push_back(int32_t(e));
  if (s.per_thread.size() < size_t(nt)) s.per_thread.resize(size_t(nt));
  TLinearCtx one = lc;
  one.threads = 1;
  for_each_largest_first(todo, nt, [&](int32_t e) { return start[e + 1] - start[e]; },
                         [&](int64_t e, int tid) { body(e, one, s.per_thread[size_t(tid)]); });
}

}  // namespace

// ---------------------------------------------------------------------------------------
NodeLimit moe_node_limit(const MoeExpertParallel* ep, const ModelConfig& c) {
  NodeLimit nl;
  if (!ep || ep->max_nodes == 0) return nl;
  const int M = ep->max_nodes, R = ep->ranks_per_node, P = ep->ep ? ep->ep->size() : 1;
  DSV3_CHECK(M > 0, "node-limited routing: max_nodes must be >= 0, got ", M);
  DSV3_CHECK(R >= 1, "node-limited routing (max_nodes = ", M,
             ") needs ranks_per_node >= 1, got ", R);
  int64_t nodes = ep->nodes > 0 ? ep->nodes : 1;
  if (P > 1) {
    DSV3_CHECK(P % R == 0, "node-limited routing: the expert-parallel size (", P,
               ") must be divisible by ranks_per_node R (", R, ")");
    DSV3_CHECK(ep->nodes == 0 || ep->nodes == P / R, "node-limited routing: nodes = ", ep->nodes,
               " disagrees with the EP size / ranks_per_node = ", P, " / ", R);
    nodes = P / R;
  }
  nl.n_nodes = nodes;
  nl.max_nodes = M;
  check_node_limit(c, nl);
  return nl;
}

MoeEpWire moe_ep_wire(Precision p) {
  switch (p) {
    case Precision::F32: return {Wire::F32, Wire::F32};
    case Precision::BF16: return {Wire::BF16, Wire::BF16};
    case Precision::FP8: return {Wire::E4M3, Wire::BF16};
  }
  return {};
}

EpBytes moe_ep_forward_bytes(const MoeTrainSaved& saved, const ModelConfig& c) {
  if (!saved.ep.active) return {};
  const int64_t H = c.hidden_size;
  return ep_bytes(saved.ep.plan, wire_row_bytes(saved.ep.wire.dispatch, H),
                  wire_row_bytes(saved.ep.wire.combine, H), true);
}

EpBytes moe_ep_backward_bytes(const MoeTrainSaved& saved, const ModelConfig& c) {
  if (!saved.ep.active) return {};
  const int64_t H = c.hidden_size;  // + the F32 extra per row (gate weight / dweight)
  return ep_bytes(saved.ep.plan, wire_row_bytes(saved.ep.wire.dispatch, H) + 4,
                  wire_row_bytes(saved.ep.wire.combine, H) + 4, false);
}

// ---------------------------------------------------------------------------------------
void mlp_train_forward(float* out, const float* x, int64_t N, int64_t H, const MlpWeights& w,
                       const TLinearCtx& lc, MlpTrainSaved& saved, MlpTrainScratch& s, bool acc) {
  const int64_t I = inter_of(w);
  const ActFormat f = swiglu_input_format(lc);
  float* G = saved.gate.begin(f, N, I, s.gw);
  float* U = saved.up.begin(f, N, I, s.uw);
  expert_forward(out, x, N, H, w, G, U, grow(s.h, N * I), lc, s.lin, acc);
  saved.gate.seal(G, lc.threads);
  saved.up.seal(U, lc.threads);
}

void mlp_train_backward(float* dx, const float* dout, const float* x, int64_t N, int64_t H,
                        const MlpWeights& w, MlpWeights& g, const TLinearCtx& lc,
                        const MlpTrainSaved& saved, MlpTrainScratch& s, bool acc_dx) {
  const int64_t I = inter_of(w);
  DSV3_ASSERT(saved.gate.rows == N && saved.gate.cols == I);
  expert_backward(dx, nullptr, nullptr, dout, x, N, H, w, g, saved.gate.read(s.gw, lc.threads),
                  saved.up.read(s.uw, lc.threads), lc, s, acc_dx);
}

// ---------------------------------------------------------------------------------------
void moe_train_forward(float* out, const float* x, int64_t B, int64_t T, const ModelConfig& c,
                       const MoeWeights& w, const float* bias, float alpha, const TLinearCtx& lc,
                       MoeTrainSaved& saved, MoeTrainScratch& s, MoeStats* stats,
                       const MoeExpertParallel* ep) {
  const int64_t N = B * T, H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  DSV3_CHECK(B > 0 && T > 0, "moe_train_forward: empty batch (B=", B, ", T=", T, ")");
  DSV3_CHECK(int64_t(w.experts.size()) == E, "MoE weights hold ", w.experts.size(),
             " experts, config says ", E);
  saved.B = B;
  saved.T = T;
  const NodeLimit nl = moe_node_limit(ep, c);
  const bool dist = ep_active(ep, c);
  saved.ep.active = dist;

  // Router (F32) and the routing decision, exactly the inference one.
  float* logits = grow(s.logits, N * E);  // [N, E]
  {
    TLinearScratch& ls = s.mlp.lin;
    tlinear_forward(logits, x, wptr(w.gate), N, E, H, router_ctx(lc), ls);
  }
  int32_t* idx = grow(saved.idx, N * K);
  float* wt = grow(saved.weight, N * K);
  {  // token by token, so in parts over the threads (each part its own scratch)
    const int nt = std::max(1, std::min(resolve_threads(lc.threads), int(N * E >= (1 << 15) ? N : 1)));
    if (s.routes.size() < size_t(nt)) s.routes.resize(size_t(nt));
    parallel_region(nt, [&](Team& team) {
      int64_t t0, t1;
      split_range(N, team.size(), team.tid(), &t0, &t1);
      if (t0 < t1)
        moe_route(idx + t0 * K, wt + t0 * K, logits + t0 * E, t1 - t0, c, bias,
                  s.routes[size_t(team.tid())], nl);
    });
  }
  float* sc = grow(saved.scores, N * E);  // [N, E]

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

  if (!dist) {
    unbiased_scores(sc, logits, N, E, c, lc.threads);
    if (stats) moe_stats(*stats, sc, cnt, start, B, T, E, K, alpha);
    // Shared experts on every token (they write out), then the routed ones added.
    if (c.n_shared_experts > 0)
      mlp_train_forward(out, x, N, H, w.shared_experts, lc, saved.shared, s.mlp, false);
    else
      std::memset(out, 0, size_t(N * H) * sizeof(float));
    if (E == 0) return;
    const int64_t I = inter_of(w.experts[0]), NK = N * K;
    const ActFormat f = swiglu_input_format(lc);
    float* Gall = saved.gate.begin(f, NK, I, s.gw);  // [N·K, I]
    float* Uall = saved.up.begin(f, NK, I, s.uw);
    // The routed rows gathered in sorted order, every expert's outputs beside them, then
    // each token's K outputs weighted and added in expert order.
    float* X = grow(s.xe, NK * H);
    float* Y = grow(s.ye, NK * H);
    const int rt = NK * H >= (1 << 16) ? lc.threads : 1;
    parallel_for(NK, rt, [&](int64_t i) {
      std::memcpy(X + i * H, x + (order[i] / K) * H, size_t(H) * sizeof(float));
    });
    for_routed_experts(start, E, lc, s, [&](int64_t e, const TLinearCtx& l, ExpertThreadScratch& ts) {
      const int64_t r0 = start[e], n = start[e + 1] - r0;
      expert_forward(Y + r0 * H, X + r0 * H, n, H, w.experts[size_t(e)], Gall + r0 * I,
                     Uall + r0 * I, grow(ts.mlp.h, n * I), l, ts.mlp.lin, false);
    });
    moe_add_token_rows(out, Y, moe_token_rows(order, N, K, s.tok_rows, s.tok_fill), order, wt, N,
                       K, H, lc.threads);
    saved.gate.seal(Gall, lc.threads);
    saved.up.seal(Uall, lc.threads);
    return;
  }

  // ---- Expert parallel (parallel/ep_dispatch.h). Wire precision (report §3.3.2), checked
  // against what the receiving GEMMs do anyway (tlinear.cpp):
  //  - dispatch BF16 under BF16: the gate/up GEMMs round x to BF16 with the same
  //    round-to-nearest-even, Fprop and Wgrad alike: no error added;
  //  - dispatch E4M3 under FP8: the Fprop re-quantises the dequantised row in the same 1x128
  //    tiles, which gives back the same codes (tests/test_moe_ep.cpp checks codes and scales),
  //    but the Wgrad quantises x in 128x1 tiles along the tokens: there it is x quantised
  //    twice (1x128, then 128x1), an error of the order of one E4M3 rounding (2^-4 relative
  //    per element) on top of the plain FP8 path's;
  //  - combine BF16 (under BF16 and FP8): the expert outputs are F32 GEMM results, so each
  //    routed term g·y gets a relative error ≤ 2^-9 (BF16 rounding) that the plain path has
  //    not. F32 training: F32 both ways, bitwise the plain path.
  const dist::Comm& comm = *ep->ep;
  MoeEpSaved& es = saved.ep;
  EpPlan& plan = es.plan;
  es.wire = moe_ep_wire(lc.prec);
  const Wire wd = es.wire.dispatch, wc = es.wire.combine;
  ep_plan(plan, comm, start, E);  // the row counts, per owner and expert (a small all-to-all)
  const int64_t I = inter_of(w.experts[0]), El = plan.El, e0 = plan.rank * El;
  const int64_t Sd = wire_row_bytes(wd, H), Sc = wire_row_bytes(wc, H);

  // Dispatch (sorted rows, block q to owner q) while the shared experts run.
  uint8_t* send = grow(s.send, N * K * Sd);
  encode_sorted(send, Sd, x, order, N * K, K, H, wd, nullptr, lc.threads);
  uint8_t* xin = grow(es.x_in, plan.n_recv * Sd);  // [n_recv, Sd] source-major
  {
    dist::Request req = ep_start(comm, plan, EpDirection::ToOwners, send, xin, Sd);
    if (c.n_shared_experts > 0) {
      const int64_t Is = inter_of(w.shared_experts);
      const ActFormat f = swiglu_input_format(lc);
      float* G = saved.shared.gate.begin(f, N, Is, s.mlp.gw);
      float* U = saved.shared.up.begin(f, N, Is, s.mlp.uw);
      expert_forward(out, x, N, H, w.shared_experts, G, U, grow(s.mlp.h, N * Is), lc, s.mlp.lin,
                     false, Poll{&req});
      saved.shared.gate.seal(G, lc.threads);
      saved.shared.up.seal(U, lc.threads);
    } else {
      std::memset(out, 0, size_t(N * H) * sizeof(float));
    }
    ep_wait(req);
  }

  // The owner: each of its experts over the rows of all sources (rank order), outputs encoded
  // back into the source-major layout the rows came in.
  const ActFormat f = swiglu_input_format(lc);
  float* Gall = saved.gate.begin(f, plan.n_recv, I, s.gw);  // [n_recv, I] expert-major
  float* Uall = saved.up.begin(f, plan.n_recv, I, s.uw);
  uint8_t* csend = grow(s.send, plan.n_recv * Sc);  // the dispatch's send buffer is free
  for_routed_experts(plan.expert_start.data(), El, lc, s, [&](int64_t j, const TLinearCtx& l,
                                                              ExpertThreadScratch& ts) {
    const int64_t r0 = plan.expert_start[size_t(j)], n = plan.expert_start[size_t(j + 1)] - r0;
    float* xe = grow(ts.xe, n * H);  // [n, H]
    for_expert_rows(plan, j, [&](int64_t r, int64_t b) { wire_decode(xe + r * H, xin + b * Sd, H, wd); });
    float* ye = grow(ts.ye, n * H);
    expert_forward(ye, xe, n, H, w.experts[size_t(e0 + j)], Gall + r0 * I, Uall + r0 * I,
                   grow(ts.mlp.h, n * I), l, ts.mlp.lin, false);
    for_expert_rows(plan, j, [&](int64_t r, int64_t b) { wire_encode(csend + b * Sc, ye + r * H, H, wc); });
  });
  saved.gate.seal(Gall, lc.threads);
  saved.up.seal(Uall, lc.threads);

  // Combine (back in this rank's sorted order) while the scores and the balance loss are done.
  uint8_t* crecv = grow(s.recv, N * K * Sc);
  {
    dist::Request req = ep_start(comm, plan, EpDirection::ToSources, csend, crecv, Sc);
    unbiased_scores(sc, logits, N, E, c, lc.threads);
    req.test();
    if (stats) moe_stats(*stats, sc, cnt, start, B, T, E, K, alpha);
    ep_wait(req);
  }
  // Weighted adds in expert order, each token's in the plain path's order.
  float* y = grow(s.ye, H);
  for (int64_t i = 0; i < N * K; ++i) {
    wire_decode(y, crecv + i * Sc, H, wc);
    const float gw = wt[order[i]];
    float* o = out + (order[i] / K) * H;
    for (int64_t k = 0; k < H; ++k) o[k] += gw * y[k];
  }
}

void moe_train_backward(float* dx, const float* dout, const float* x, const ModelConfig& c,
                        const MoeWeights& w, MoeWeights& g, float alpha, float bal_scale,
                        const TLinearCtx& lc, const MoeTrainSaved& saved, MoeTrainScratch& s,
                        const MoeExpertParallel* ep) {
  const int64_t B = saved.B, T = saved.T, N = B * T;
  const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  DSV3_ASSERT(N > 0 && int64_t(saved.scores.size()) >= N * E);
  const bool dist = saved.ep.active;
  DSV3_CHECK(dist == ep_active(ep, c), "moe_train_backward: the forward ran ",
             dist ? "expert-parallel" : "without expert parallelism",
             "; pass backward the forward's MoeExpertParallel");
  const bool balance = alpha != 0 && bal_scale != 0;
  const int32_t* idx = saved.idx.data();
  const float* wt = saved.weight.data();
  const int32_t* order = saved.order.data();
  const int64_t* start = saved.start.data();
  const float* sc = saved.scores.data();
  const int32_t* cnt = saved.seq_count.data();
  float* ds = grow(s.dscore, N * E);  // [N, E]
  std::fill(ds, ds + N * E, 0.0f);

  if (!dist) {
    if (c.n_shared_experts > 0)
      mlp_train_backward(dx, dout, x, N, H, w.shared_experts, g.shared_experts, lc, saved.shared,
                         s.mlp, false);
    else
      std::memset(dx, 0, size_t(N * H) * sizeof(float));
    if (E == 0) return;

    // Routed experts: the inputs, dout rows and gate weights gathered in sorted order, every
    // expert's backward, then dweight per slot and each token's K dx rows added in expert order.
    const int64_t I = inter_of(w.experts[0]), NK = N * K;
    float* dwt = grow(s.dweight, NK);  // [N, K]
    const float* Gall = saved.gate.read(s.gw, lc.threads);
    const float* Uall = saved.up.read(s.uw, lc.threads);
    float* X = grow(s.xe, 2 * NK * H);  // [N·K, H] inputs, then [N·K, H] their gradient
    float* dX = X + NK * H;
    float* D = grow(s.ye, NK * H);      // [N·K, H] dout rows
    float* rw = grow(s.rw, NK);
    float* dw = grow(s.dw, NK);
    const int rt = NK * H >= (1 << 16) ? lc.threads : 1;
    parallel_for(NK, rt, [&](int64_t i) {
      const int64_t t = order[i] / K;
      std::memcpy(X + i * H, x + t * H, size_t(H) * sizeof(float));
      std::memcpy(D + i * H, dout + t * H, size_t(H) * sizeof(float));
      rw[i] = wt[order[i]];
    });
    for_routed_experts(start, E, lc, s, [&](int64_t e, const TLinearCtx& l, ExpertThreadScratch& ts) {
      const int64_t r0 = start[e], n = start[e + 1] - r0;
      expert_backward(dX + r0 * H, dw + r0, rw + r0, D + r0 * H, X + r0 * H, n, H,
                      w.experts[size_t(e)], g.experts[size_t(e)], Gall + r0 * I, Uall + r0 * I, l,
                      ts.mlp, false);
    });
    for (int64_t i = 0; i < NK; ++i) dwt[order[i]] = dw[i];
    moe_add_token_rows(dx, dX, moe_token_rows(order, N, K, s.tok_rows, s.tok_fill), order,
                       nullptr, N, K, H, lc.threads);
    // dweight -> the chosen unbiased scores, then the balance loss's share.
    add_routing_grad(ds, dwt, idx, sc, N, E, K, c, lc.threads);
    if (balance) add_balance_grad(ds, sc, cnt, B, T, E, K, alpha, bal_scale, lc.threads);
  } else {
    // ---- Expert parallel: dout rows (+ gate weight) to the owners while the shared experts'
    // backward runs; the owners' dx rows (+ dweight) back while the balance-loss gradient is
    // taken. The wire formats are the forward's (see there for the error they add).
    const dist::Comm& comm = *ep->ep;
    const EpPlan& plan = saved.ep.plan;
    const Wire wd = saved.ep.wire.dispatch, wc = saved.ep.wire.combine;
    const int64_t I = inter_of(w.experts[0]), El = plan.El, e0 = plan.rank * El;
    const int64_t Sx = wire_row_bytes(wd, H);  // forward rows (x_in)
    const int64_t Sd = Sx + 4, Sc = wire_row_bytes(wc, H) + 4;
    uint8_t* send = grow(s.send, N * K * Sd);
    encode_sorted(send, Sd, dout, order, N * K, K, H, wd, wt, lc.threads);
    uint8_t* recv = grow(s.recv, plan.n_recv * Sd);
    {
      dist::Request req = ep_start(comm, plan, EpDirection::ToOwners, send, recv, Sd);
      if (c.n_shared_experts > 0)
        expert_backward(dx, nullptr, nullptr, dout, x, N, H, w.shared_experts, g.shared_experts,
                        saved.shared.gate.read(s.mlp.gw, lc.threads),
                        saved.shared.up.read(s.mlp.uw, lc.threads), lc, s.mlp, false,
                        Poll{&req});
      else
        std::memset(dx, 0, size_t(N * H) * sizeof(float));
      ep_wait(req);
    }

    const uint8_t* xin = saved.ep.x_in.data();
    uint8_t* csend = grow(s.send, plan.n_recv * Sc);
    const float* Gall = saved.gate.read(s.gw, lc.threads);
    const float* Uall = saved.up.read(s.uw, lc.threads);
    for_routed_experts(plan.expert_start.data(), El, lc, s, [&](int64_t j, const TLinearCtx& l,
                                                                ExpertThreadScratch& ts) {
      const int64_t r0 = plan.expert_start[size_t(j)], n = plan.expert_start[size_t(j + 1)] - r0;
      float* xe = grow(ts.xe, 2 * n * H);  // [n, H] inputs, then [n, H] their gradient
      float* dxe = xe + n * H;
      float* de = grow(ts.ye, n * H);      // [n, H] dout rows
      float* rw = grow(ts.rw, n);
      float* dw = grow(ts.dw, n);
      for_expert_rows(plan, j, [&](int64_t r, int64_t b) {
        wire_decode(xe + r * H, xin + b * Sx, H, wd);
        wire_decode(de + r * H, recv + b * Sd, H, wd);
        std::memcpy(&rw[r], recv + b * Sd + Sx, sizeof(float));
      });
      expert_backward(dxe, dw, rw, de, xe, n, H, w.experts[size_t(e0 + j)],
                      g.experts[size_t(e0 + j)], Gall + r0 * I, Uall + r0 * I, l, ts.mlp, false);
      for_expert_rows(plan, j, [&](int64_t r, int64_t b) {
        wire_encode(csend + b * Sc, dxe + r * H, H, wc);
        std::memcpy(csend + b * Sc + Sc - 4, &dw[r], sizeof(float));
      });
    });

    uint8_t* crecv = grow(s.recv, N * K * Sc);  // the dout rows are consumed
    {
      dist::Request req = ep_start(comm, plan, EpDirection::ToSources, csend, crecv, Sc);
      // The balance term first: each ds entry gets at most one routing term and one balance
      // term, and a + b = b + a in IEEE arithmetic, so the plain path's bits are kept.
      if (balance) add_balance_grad(ds, sc, cnt, B, T, E, K, alpha, bal_scale, lc.threads);
      ep_wait(req);
    }
    float* dwt = grow(s.dweight, N * K);
    float* d = grow(s.ye, H);
    for (int64_t i = 0; i < N * K; ++i) {  // expert order, as the plain path adds
      wire_decode(d, crecv + i * Sc, H, wc);
      std::memcpy(&dwt[order[i]], crecv + i * Sc + Sc - 4, sizeof(float));
      float* o = dx + (order[i] / K) * H;
      for (int64_t k = 0; k < H; ++k) o[k] += d[k];
    }
    add_routing_grad(ds, dwt, idx, sc, N, E, K, c, lc.threads);
  }

  // Scores -> router logits (the bias is outside the graph: no gradient).
  float* dl = grow(s.dlogits, N * E);
  const bool sigmoid = c.scoring_func == "sigmoid";
  parallel_rows(N, N * E, lc.threads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* p = sc + t * E;
      const float* d = ds + t * E;
      float* o = dl + t * E;
      if (sigmoid) {
        for (int64_t e = 0; e < E; ++e) o[e] = d[e] * p[e] * (1.0f - p[e]);
      } else {
        float dot = 0;
        for (int64_t e = 0; e < E; ++e) dot += d[e] * p[e];
        for (int64_t e = 0; e < E; ++e) o[e] = p[e] * (d[e] - dot);
      }
    }
  });
  tlinear_backward(dx, gptr(g.gate), dl, x, wptr(w.gate), N, E, H, router_ctx(lc), s.mlp.lin,
                   true);
}

}  // namespace dsv3
