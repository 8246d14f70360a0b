#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/parallel.h"

#include "core/check.h"
#include "core/scratch.h"
#include "kernels/activation.h"
#include "kernels/gemv.h"
#include "parallel/comm.h"

namespace dsv3 {
namespace {

// ffn_tasks_decode takes whole matrices as its units from this many tasks per thread on.
constexpr int kWholeUnitTasks = 4;

// Indices of the k largest of v[0..n) (skipping entries where allowed[i] is false), largest
// first, ties to the lower index (the order of a stable descending sort). Returns the value
// of the last chosen entry.
void top_k_indices(int32_t* out, const float* v, int64_t n, int64_t k, const uint8_t* allowed) {
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (allowed && !allowed[i]) continue;
    // insertion into out[0..m), sorted by value descending (strict > keeps index order)
    int64_t j = std::min(m, k);
    if (j == k && !(v[i] > v[out[k - 1]])) continue;
    if (j == k) --j;
    while (j > 0 && v[i] > v[out[j - 1]]) {
      out[j] = out[j - 1];
      --j;
    }
    out[j] = int32_t(i);
    if (m < k) ++m;
  }
  DSV3_ASSERT(m == k);
}

// Tasks running every one of T tokens through w with weight 1, ≤ kGemvMaxM tokens each.
void add_dense_tasks(std::vector<FfnTask>& tasks, const MlpWeights* w, int64_t T) {
  for (int64_t t0 = 0; t0 < T; t0 += kGemvMaxM) {
    FfnTask t;
    t.w = w;
    t.n = int(std::min<int64_t>(kGemvMaxM, T - t0));
    for (int j = 0; j < t.n; ++j) {
      t.tok[j] = int32_t(t0 + j);
      t.weight[j] = 1.0f;
    }
    tasks.push_back(t);
  }
}

// The layer's placement under expert parallelism: its own, or the contiguous blocks.
const ExpertPlacement& layer_placement(const MoeLayer& L, int64_t E, int P, FfnScratch& s) {
  if (L.place) {
    DSV3_ASSERT(L.place->n_experts() == E && L.place->ranks() == P);
    return *L.place;
  }
  if (s.plain.n_experts() != E || s.plain.ranks() != P) s.plain = ExpertPlacement::contiguous(E, P);
  return s.plain;
}

}  // namespace

void ffn_tasks_decode(float* out, const float* x, int64_t T, int64_t H, const FfnTask* tasks,
                      int n_tasks, FfnScratch& s, int threads, const TaskShard* shard) {
  const bool ep = shard && shard->comm && shard->comm->size() > 1;
  const int P = ep ? shard->comm->size() : 1, rank = ep ? shard->comm->rank() : 0;
  const int32_t* order = ep ? shard->order : nullptr;
  // This rank computes task i: every task in one process; its own and the shared under EP.
  auto mine = [&](int i) {
    return !ep || i < shard->first[0] || (i >= shard->first[rank] && i < shard->first[rank + 1]);
  };
  constexpr int64_t kBlock = 128;  // the FP8 scale block
  const int nt = resolve_threads(threads);
  if (s.per_thread.size() < size_t(nt)) s.per_thread.resize(size_t(nt));
  // Rows of W per unit of work. With many tasks (a batched step: ~50 experts a layer), whole
  // matrices, so each thread streams longer runs of weights and pays a stream's start (its
  // prefetch not yet ahead) less often: the FFN of a 16-sequence step ran 1.07x faster than
  // with 128-row units (docs/PERF.md). With few tasks (a single sequence: the shared expert and
  // 6 routed), 128-row blocks and 512-row down units, so that the threads share the work
  // evenly. A row's result does not depend on the units (the GEMV's rows are split-invariant).
  int64_t I_max = 0;
  for (int i = 0; i < n_tasks; ++i) I_max = std::max(I_max, linear_out(tasks[i].w->gate_proj));
  const bool whole = n_tasks >= kWholeUnitTasks * nt;
  const int64_t rows1 = whole ? (I_max + kBlock - 1) / kBlock * kBlock : kBlock;
  // Gathered inputs [task][≤4][H] and SwiGLU outputs [task][≤4][I].
  const int64_t nt1 = int64_t(n_tasks) + 1;
  int64_t* h_off = grow(s.off, 3 * nt1);
  int64_t* x_off = h_off + nt1;
  int64_t* unit_off = x_off + nt1;
  h_off[0] = x_off[0] = unit_off[0] = 0;
  for (int i = 0; i < n_tasks; ++i) {
    const int64_t I = linear_out(tasks[i].w->gate_proj);
    h_off[size_t(i) + 1] = h_off[size_t(i)] + tasks[i].n * I;
    x_off[size_t(i) + 1] = x_off[size_t(i)] + tasks[i].n * H;
    unit_off[size_t(i) + 1] = unit_off[size_t(i)] + (I + rows1 - 1) / rows1;
  }
  float* xe = grow(s.xe, x_off[size_t(n_tasks)]);
  float* h = grow(s.h, h_off[size_t(n_tasks)]);
  float* gu = grow(s.gate, 2 * nt * rows1 * kGemvMaxM);  // per thread: gate, up of one unit
  for (int i = 0; i < n_tasks; ++i)
    for (int j = 0; j < tasks[i].n && mine(i); ++j)
      std::memcpy(xe + x_off[size_t(i)] + j * H, x + tasks[i].tok[j] * H, size_t(H) * sizeof(float));
  // Down projections: down_rows output rows per unit (a multiple of the FP8 block), or all.
  const int64_t down_rows = whole ? (H + kBlock - 1) / kBlock * kBlock : 4 * kBlock;
  const int64_t down_units = (H + down_rows - 1) / down_rows;
  // Not s.y: moe_forward passes s.y as `out` to the decode form for experts with few tokens.
  float* yd = grow(s.down, x_off[size_t(n_tasks)]);  // [task][≤16][H] down outputs
  const int64_t units1 = unit_off[size_t(n_tasks)], units2 = int64_t(n_tasks) * down_units,
                units3 = (H + kBlock - 1) / kBlock;
  (void)T;
  // Phase 3: out rows [r0, r1) += Σ_tasks weight · y, tasks in order (each thread owns its
  // rows of out: no reduction, and every token's terms add in the same order).
  auto phase3 = [&](int64_t unit) {
    const int64_t r0 = unit * kBlock, r1 = std::min(H, r0 + kBlock);
    for (int k = 0; k < n_tasks; ++k) {
      const int i = order ? order[k] : k;
      const FfnTask& t = tasks[i];
      for (int j = 0; j < t.n; ++j) {
        float* o = out + t.tok[j] * H;
        const float* y = yd + x_off[size_t(i)] + j * H;
        const float wj = t.weight[j];
        for (int64_t r = r0; r < r1; ++r) o[r] += wj * y[r];
      }
    }
  };
  parallel_region(nt, [&](Team& team) {
    const int tid = team.tid();
    LinearScratch& ls = s.per_thread[size_t(tid)];
    float* g = gu + 2 * tid * rows1 * kGemvMaxM;
    float* u = g + rows1 * kGemvMaxM;
    // Phase 1: h = silu(gate(x)) * up(x), rows1 rows of one expert per unit.
    team.for_dynamic(units1, [&](int64_t unit) {
      int i = 0;
      while (unit_off[size_t(i) + 1] <= unit) ++i;
      if (!mine(i)) return;
      const FfnTask& t = tasks[i];
      const int64_t I = linear_out(t.w->gate_proj);
      const int64_t r0 = (unit - unit_off[size_t(i)]) * rows1, r1 = std::min(I, r0 + rows1);
      const float* xi = xe + x_off[size_t(i)];
      // linear_rows writes columns [r0, r1) of its output rows; offset so they land at 0.
      linear_rows(g - r0, rows1, xi, H, t.n, t.w->gate_proj, r0, r1, ls);
      linear_rows(u - r0, rows1, xi, H, t.n, t.w->up_proj, r0, r1, ls);
      swiglu_forward(h + h_off[size_t(i)] + r0, I, g, rows1, u, rows1, t.n, r1 - r0, 1);
    });
    // Phase 2: y_i = down_i(h_i) for every task, down_rows output rows of one task per unit
    // (a few large weight-streaming calls rather than one small call per task and block).
    team.for_dynamic(units2, [&](int64_t unit) {
      const int i = int(unit / down_units);
      if (!mine(i)) return;
      const FfnTask& t = tasks[i];
      const int64_t I = linear_out(t.w->gate_proj);
      const int64_t r0 = (unit % down_units) * down_rows, r1 = std::min(H, r0 + down_rows);
      linear_rows(yd + x_off[size_t(i)], H, h + h_off[size_t(i)], I, t.n, t.w->down_proj, r0, r1, ls);
    });
    // Phase 3 (here in one process; after the all-gather under EP).
    if (!ep) team.for_static(units3, phase3);
  });
  if (!ep) return;
  // The routed tasks' outputs are one run of yd, rank r's tasks a block of it in rank order
  // (the caller lists them rank-major): an all-gather in place.
  std::vector<int64_t> counts(static_cast<size_t>(P));
  for (int r = 0; r < P; ++r)
    counts[size_t(r)] = x_off[size_t(shard->first[r + 1])] - x_off[size_t(shard->first[r])];
  shard->comm->allgather(yd + x_off[size_t(shard->first[0])], counts);
  parallel_for(units3, nt, phase3);
}

void mlp_forward_decode(float* out, const float* x, int64_t T, int64_t H, const MlpWeights& w,
                        FfnScratch& s, bool accumulate, int threads) {
  if (!accumulate) std::memset(out, 0, size_t(T * H) * sizeof(float));
  std::vector<FfnTask>& tasks = s.tasks;
  tasks.clear();
  add_dense_tasks(tasks, &w, T);
  ffn_tasks_decode(out, x, T, H, tasks.data(), int(tasks.size()), s, threads);
}

void mlp_forward(float* out, const float* x, int64_t T, int64_t H, const MlpWeights& w,
                 FfnScratch& s, bool accumulate, int threads) {
  if (T <= kLinearGemvMaxM) return mlp_forward_decode(out, x, T, H, w, s, accumulate, threads);
  const int64_t I = linear_out(w.gate_proj);
  float* g = grow(s.gate, T * I);
  float* u = grow(s.up, T * I);
  linear_forward(g, I, x, H, T, w.gate_proj, s.lin, false, threads);
  linear_forward(u, I, x, H, T, w.up_proj, s.lin, false, threads);
  swiglu_forward(g, I, g, I, u, I, T, I, threads);
  linear_forward(out, H, g, I, T, w.down_proj, s.lin, accumulate, threads);
}

void check_node_limit(const ModelConfig& c, const NodeLimit& nl) {
  if (nl.max_nodes == 0) return;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, n = nl.n_nodes, M = nl.max_nodes;
  DSV3_CHECK(n >= 1 && E % n == 0, "node-limited routing: n_routed_experts (", E,
             ") must be divisible by the number of nodes (", n, ")");
  DSV3_CHECK(M >= 1 && M <= n, "node-limited routing: max_nodes M (", M,
             ") must be in [1, number of nodes = ", n, "]");
  DSV3_CHECK(K % M == 0, "node-limited routing: num_experts_per_tok K_r (", K,
             ") must be divisible by max_nodes M (", M, ")");
  DSV3_CHECK(K / M <= E / n, "node-limited routing: K_r/M = ", K / M, " exceeds the ", E / n,
             " experts of a node (", E, " experts on ", n, " nodes)");
  const int64_t G = c.n_group;
  if (G > 1 && (c.topk_method == "noaux_tc" || c.topk_method == "group_limited_greedy")) {
    DSV3_CHECK(G % n == 0, "node-limited routing: n_group (", G, ") must be a multiple of the ",
               "number of nodes (", n, ") so that every group lies on one node");
    DSV3_CHECK(c.topk_group <= M * (G / n), "node-limited routing: topk_group (", c.topk_group,
               ") exceeds the ", M * (G / n), " groups on max_nodes = ", M, " nodes");
  }
}

void moe_route(int32_t* idx, float* weight, const float* logits, int64_t T, const ModelConfig& c,
               const float* bias, RouteScratch& s, const NodeLimit& nl) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t G = c.n_group, EG = E / G;
  const bool noaux = c.topk_method == "noaux_tc";
  const bool grouped = G > 1 && (noaux || c.topk_method == "group_limited_greedy");
  const bool sigmoid = c.scoring_func == "sigmoid";
  const bool limited = nl.max_nodes > 0;
  check_node_limit(c, nl);
  const int64_t NN = limited ? nl.n_nodes : 0, M = nl.max_nodes, EN = limited ? E / NN : 0;
  if (limited) {
    s.nscore.resize(size_t(NN));
    s.nsel.resize(size_t(M));
    s.ntop.resize(size_t(K / M));
    s.nallowed.resize(size_t(std::max(NN, G)));
  }
  std::vector<float>& score = s.score;
  std::vector<float>& biased = s.biased;
  std::vector<float>& gscore = s.gscore;
  std::vector<int32_t>& gsel = s.gsel;
  std::vector<uint8_t>& allowed = s.allowed;
  score.resize(size_t(E));  // no-ops after the first call
  biased.resize(size_t(E));
  gscore.resize(size_t(G));
  gsel.resize(size_t(c.topk_group));
  allowed.resize(size_t(E));
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits + t * E;
    if (sigmoid) {
      for (int64_t e = 0; e < E; ++e) score[size_t(e)] = 1.0f / (1.0f + std::exp(-l[e]));
    } else {  // softmax over the experts
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t e = 0; e < E; ++e) mx = std::max(mx, l[e]);
      float sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += score[size_t(e)] = std::exp(l[e] - mx);
      for (int64_t e = 0; e < E; ++e) score[size_t(e)] /= sum;
    }
    // Report §2.1.2: the bias steers selection only; the weights come from the raw scores.
    for (int64_t e = 0; e < E; ++e) biased[size_t(e)] = score[size_t(e)] + (bias ? bias[e] : 0.0f);
    const uint8_t* mask = nullptr;
    const uint8_t* gmask = nullptr;  // groups on the kept nodes (node-limited routing)
    if (limited) {
      // Report §2.1.2: node score = the sum of its K/M best selection scores (best first).
      for (int64_t n = 0; n < NN; ++n) {
        const float* b = &biased[size_t(n * EN)];
        top_k_indices(s.ntop.data(), b, EN, K / M, nullptr);
        float sum = 0;
        for (int64_t i = 0; i < K / M; ++i) sum += b[s.ntop[size_t(i)]];
        s.nscore[size_t(n)] = sum;
      }
      top_k_indices(s.nsel.data(), s.nscore.data(), NN, M, nullptr);
      uint8_t* keep = s.nallowed.data();
      if (grouped) {  // groups nest in nodes (check_node_limit): keep the kept nodes' groups
        std::fill_n(keep, G, 0);
        for (int64_t i = 0; i < M; ++i)
          std::fill_n(keep + s.nsel[size_t(i)] * (G / NN), G / NN, 1);
        gmask = keep;
      } else {
        std::fill(allowed.begin(), allowed.end(), 0);
        for (int64_t i = 0; i < M; ++i)
          std::fill_n(allowed.begin() + s.nsel[size_t(i)] * EN, EN, 1);
        mask = allowed.data();
      }
    }
    if (grouped) {
      for (int64_t g = 0; g < G; ++g) {
        const float* b = &biased[size_t(g * EG)];
        if (noaux) {  // sum of the group's two best biased scores
          int32_t two[2];
          top_k_indices(two, b, EG, std::min<int64_t>(2, EG), nullptr);
          gscore[size_t(g)] = b[two[0]] + (EG > 1 ? b[two[1]] : 0.0f);
        } else {
          gscore[size_t(g)] = *std::max_element(b, b + EG);
        }
      }
      top_k_indices(gsel.data(), gscore.data(), G, c.topk_group, gmask);
      std::fill(allowed.begin(), allowed.end(), 0);
      for (int64_t i = 0; i < c.topk_group; ++i)
        std::fill_n(allowed.begin() + gsel[size_t(i)] * EG, EG, 1);
      mask = allowed.data();
    }
    int32_t* ti = idx + t * K;
    float* tw = weight + t * K;
    top_k_indices(ti, biased.data(), E, K, mask);
    float sum = 0;
    for (int64_t i = 0; i < K; ++i) sum += tw[i] = score[size_t(ti[i])];
    const bool normalise = c.norm_topk_prob && (c.model_type != "deepseek_v2" || K > 1);
    const bool scale = c.model_type != "deepseek_v2" || !normalise;  // HF DeepseekV2MoE: one or the other
    for (int64_t i = 0; i < K; ++i) {
      if (normalise) tw[i] /= sum + 1e-20f;
      if (scale) tw[i] *= float(c.routed_scaling_factor);
    }
  }
}

void moe_forward_decode(float* out, const float* x, int64_t T, const ModelConfig& c,
                        const MoeLayer& L, FfnScratch& s, int threads) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  float* logits = grow(s.logits, T * E);
  linear_gemv(logits, E, x, H, T, L.w->gate, s.lin, false, threads);
  int32_t* idx = grow(s.topk_idx, T * K);
  float* wt = grow(s.topk_w, T * K);
  moe_route(idx, wt, logits, T, c, L.bias, s.route);
  std::memset(out, 0, size_t(T * H) * sizeof(float));
  // Every expert of the step in one parallel region, ≤ kGemvMaxM tokens per task. A token's
  // terms are added in task order — shared experts, then its experts by index — whatever the
  // other tokens are, so its result does not depend on the batch (docs/serve.md).
  std::vector<FfnTask>& tasks = s.tasks;
  tasks.clear();
  if (c.n_shared_experts > 0) add_dense_tasks(tasks, &L.w->shared_experts, T);
  const int n_shared = int(tasks.size());
  s.unit_expert.clear();
  for (int64_t e = 0; e < E; ++e) {
    FfnTask t;
    t.w = &L.w->experts[size_t(e)];
    for (int64_t i = 0; i < T * K; ++i) {
      if (idx[i] != e) continue;
      t.tok[t.n] = int32_t(i / K);
      t.weight[t.n] = wt[i];
      if (++t.n == kGemvMaxM) {
        tasks.push_back(t);
        s.unit_expert.push_back(int32_t(e));
        t.n = 0;
      }
    }
    if (t.n > 0) {
      tasks.push_back(t);
      s.unit_expert.push_back(int32_t(e));
    }
  }
  const int P = L.ep ? L.ep->size() : 1;
  if (P == 1) return ffn_tasks_decode(out, x, T, H, tasks.data(), int(tasks.size()), s, threads);
  // Expert parallelism: each routed task to a rank, then the tasks rank-major (each rank's
  // outputs one block of the all-gather); add_order puts them back in expert order.
  const int64_t n_routed = int64_t(tasks.size()) - n_shared;
  int32_t* rows = grow(s.unit_rows, n_routed);
  int32_t* rank = grow(s.unit_rank, n_routed);
  for (int64_t u = 0; u < n_routed; ++u) rows[u] = tasks[size_t(n_shared + u)].n;
  layer_placement(L, E, P, s).assign(s.unit_expert.data(), rows, n_routed, rank, L.balance, L.rank_rows, s.assign);
  int32_t* first = grow(s.ep_first, P + 1);
  std::fill(first, first + P + 1, 0);
  for (int64_t u = 0; u < n_routed; ++u) ++first[rank[u] + 1];
  first[0] = n_shared;
  for (int r = 0; r < P; ++r) first[r + 1] += first[r];
  int32_t* order = grow(s.add_order, int64_t(tasks.size()));
  s.ep_tasks.resize(tasks.size());
  for (int i = 0; i < n_shared; ++i) {
    s.ep_tasks[size_t(i)] = tasks[size_t(i)];
    order[i] = i;
  }
  {
    int32_t* fill = grow(s.fill, P);
    std::copy(first, first + P, fill);
    for (int64_t u = 0; u < n_routed; ++u) {
      const int32_t at = fill[rank[u]]++;
      s.ep_tasks[size_t(at)] = tasks[size_t(n_shared + u)];
      order[n_shared + u] = at;
    }
  }
  TaskShard shard{L.ep, first, order};
  ffn_tasks_decode(out, x, T, H, s.ep_tasks.data(), int(s.ep_tasks.size()), s, threads, &shard);
}

const int32_t* moe_token_rows(const int32_t* order, int64_t T, int64_t K,
                              std::vector<int32_t>& rows, std::vector<int32_t>& fill) {
  int32_t* r = grow(rows, T * K);
  int32_t* f = grow(fill, T);
  std::fill(f, f + T, 0);
  for (int64_t i = 0; i < T * K; ++i) {
    const int64_t t = order[i] / K;
    r[t * K + f[t]++] = int32_t(i);
  }
  return r;
}

void moe_add_token_rows(float* out, const float* y, const int32_t* rows, const int32_t* order,
                        const float* wt, int64_t T, int64_t K, int64_t H, int threads) {
  parallel_for(T, T * K * H >= (1 << 16) ? threads : 1, [&](int64_t t) {
    float* o = out + t * H;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = rows[t * K + j];
      const float* yr = y + r * H;
      if (wt) {
        const float g = wt[order[r]];
        for (int64_t h = 0; h < H; ++h) o[h] += g * yr[h];
      } else {
        for (int64_t h = 0; h < H; ++h) o[h] += yr[h];
      }
    }
  });
}

void moe_forward(float* out, const float* x, int64_t T, const ModelConfig& c, const MoeLayer& L,
                 FfnScratch& s, int threads) {
  if (T <= kLinearGemvMaxM) return moe_forward_decode(out, x, T, c, L, s, threads);
  const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  float* logits = grow(s.logits, T * E);
  linear_forward(logits, E, x, H, T, L.w->gate, s.lin, false, threads);
  int32_t* idx = grow(s.topk_idx, T * K);
  float* wt = grow(s.topk_w, T * K);
  moe_route(idx, wt, logits, T, c, L.bias, s.route);

  if (c.n_shared_experts > 0)
    mlp_forward(out, x, T, H, L.w->shared_experts, s, false, threads);
  else
    std::memset(out, 0, size_t(T * H) * sizeof(float));

  // Group the (token, slot) pairs by expert: counting sort, stable in token order.
  int32_t* count = grow(s.count, E + 1);
  std::fill(count, count + E + 1, 0);
  for (int64_t i = 0; i < T * K; ++i) ++count[idx[i] + 1];
  for (int64_t e = 0; e < E; ++e) count[e + 1] += count[e];
  int32_t* order = grow(s.order, T * K);
  {
    int32_t* fill = grow(s.fill, E);
    std::copy(count, count + E, fill);
    for (int64_t i = 0; i < T * K; ++i) order[fill[idx[i]]++] = int32_t(i);
  }
  // out rows += g · y for expert e's slots, in slot order (the same code in both forms, so
  // the same bits).
  auto add = [&](int64_t e, const float* y) {
    const int32_t* slots = order + count[e];
    for (int64_t j = 0; j < count[e + 1] - count[e]; ++j) {
      const float g = wt[slots[j]];
      float* o = out + (slots[j] / K) * H;
      const float* yj = y + j * H;
      for (int64_t h = 0; h < H; ++h) o[h] += g * yj[h];
    }
  };
  auto run = [&](int64_t e, float* y) {
    const int64_t n = count[e + 1] - count[e];
    const int32_t* slots = order + count[e];
    float* xe = grow(s.xe, n * H);
    for (int64_t j = 0; j < n; ++j)
      std::memcpy(xe + j * H, x + (slots[j] / K) * H, size_t(H) * sizeof(float));
    mlp_forward(y, xe, n, H, L.w->experts[size_t(e)], s, false, threads);
  };
  const int P = L.ep ? L.ep->size() : 1;
  const int nt = resolve_threads(threads);
  if (P == 1 && (nt == 1 || in_parallel_region())) {
    for (int64_t e = 0; e < E; ++e) {
      const int64_t n = count[e + 1] - count[e];
      if (n == 0) continue;
      float* y = grow(s.y, n * H);
      run(e, y);
      add(e, y);
    }
    return;
  }
  // Experts `todo` handed to the threads, largest first, each on one thread with its own
  // scratch (an expert's rows of a prefill chunk are few: T·K/E), expert e's outputs at rows
  // [at[e], at[e] + n) of ey. A GEMM's bits do not depend on its thread count, so these are
  // the bits of `run`.
  auto run_parallel = [&](std::vector<int32_t>& todo, const int64_t* at, float* ey) {
    if (s.per_expert_thread.size() < size_t(nt)) s.per_expert_thread.resize(size_t(nt));
    for_each_largest_first(todo, nt, [&](int32_t e) { return count[e + 1] - count[e]; },
                           [&](int64_t e, int tid) {
      const int64_t n = count[e + 1] - count[e];
      const int32_t* slots = order + count[e];
      FfnScratch& ts = s.per_expert_thread[size_t(tid)];
      float* xe = grow(ts.xe, n * H);
      for (int64_t j = 0; j < n; ++j)
        std::memcpy(xe + j * H, x + (slots[j] / K) * H, size_t(H) * sizeof(float));
      mlp_forward(ey + at[e] * H, xe, n, H, L.w->experts[size_t(e)], ts, false, 1);
    });
  };
  if (P == 1) {
    // Every expert over the threads into ey in sorted order, then each token adds its K
    // outputs in expert order, as the loop above does: the same bits.
    float* ey = grow(s.ey, T * K * H);
    std::vector<int32_t> todo;
    std::vector<int64_t> at(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      at[size_t(e)] = count[e];
      if (count[e + 1] > count[e]) todo.push_back(int32_t(e));
    }
    run_parallel(todo, at.data(), ey);
    moe_add_token_rows(out, ey, moe_token_rows(order, T, K, s.tok_rows, s.fill), order, wt, T, K,
                       H, nt);
    return;
  }
  // Expert parallelism: each expert's rows of this sequence to one rank (all of them, so the
  // GEMM's M is one process's), laid out rank-major in ey; this rank runs its own, the
  // others' blocks are all-gathered, then every expert is added in index order.
  int64_t n_units = 0;
  int32_t* unit_e = grow(s.unit_expert, E);
  int32_t* rows = grow(s.unit_rows, E);
  for (int64_t e = 0; e < E; ++e)
    if (count[e + 1] > count[e]) {
      unit_e[n_units] = int32_t(e);
      rows[n_units++] = count[e + 1] - count[e];
    }
  int32_t* rank_of = grow(s.unit_rank, n_units);
  layer_placement(L, E, P, s).assign(unit_e, rows, n_units, rank_of, L.balance, L.rank_rows, s.assign);
  int64_t* off = grow(s.ey_off, E);
  std::vector<int64_t> counts(static_cast<size_t>(P), 0);
  int64_t at = 0;
  for (int r = 0; r < P; ++r) {
    const int64_t start = at;
    for (int64_t u = 0; u < n_units; ++u)
      if (rank_of[u] == r) {
        off[unit_e[u]] = at;
        at += rows[u];
      }
    counts[size_t(r)] = (at - start) * H;
  }
  float* ey = grow(s.ey, T * K * H);
  const int me = L.ep->rank();
  if (nt == 1 || in_parallel_region()) {
    for (int64_t u = 0; u < n_units; ++u)
      if (rank_of[u] == me) run(unit_e[u], ey + off[unit_e[u]] * H);
  } else {
    std::vector<int32_t> mine;
    for (int64_t u = 0; u < n_units; ++u)
      if (rank_of[u] == me) mine.push_back(unit_e[u]);
    run_parallel(mine, off, ey);
  }
  L.ep->allgather(ey, counts);
  for (int64_t u = 0; u < n_units; ++u) add(unit_e[u], ey + off[unit_e[u]] * H);
}

}  // namespace dsv3
