// deepseek-ai/EPLB's rebalance_experts, one layer at a time (eplb.h says what and why).
#include "parallel/eplb.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"

namespace dsv3::eplb {

namespace {
// Far beyond any cluster (DeepSeek-V3 decoding: 320 GPUs); past it a typo would allocate
// gigabytes before anything is said.
constexpr int kMaxReplicas = 1 << 20;
constexpr int64_t kMaxEntries = int64_t(1) << 28;  // of phy2log or log2phy, all layers
}  // namespace

Packing balanced_packing(const std::vector<float>& weight, int num_packs) {
  const int n = int(weight.size());
  DSV3_ASSERT(num_packs >= 1 && n % num_packs == 0);
  const int per_pack = n / num_packs;
  Packing out;
  out.pack.assign(size_t(n), -1);
  out.rank.assign(size_t(n), -1);
  if (per_pack == 1) {
    // eplb.py returns the identity here rather than running the greedy (which would put
    // the heaviest item in pack 0): item i alone in pack i.
    std::iota(out.pack.begin(), out.pack.end(), 0);
    std::fill(out.rank.begin(), out.rank.end(), 0);
    return out;
  }
  // Heaviest first; equal loads in index order (eplb.h: ties).
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return weight[size_t(a)] > weight[size_t(b)]; });
  std::vector<float> load(size_t(num_packs), 0.0f);  // float sums, as the tensors eplb.py adds
  std::vector<int> items(size_t(num_packs), 0);
  for (const int i : order) {
    int best = -1;  // the least-loaded pack with room; the first of equals
    for (int k = 0; k < num_packs; ++k)
      if (items[size_t(k)] < per_pack && (best < 0 || load[size_t(k)] < load[size_t(best)])) best = k;
    DSV3_ASSERT(best >= 0);
    out.pack[size_t(i)] = best;
    out.rank[size_t(i)] = items[size_t(best)]++;
    load[size_t(best)] += weight[size_t(i)];
  }
  return out;
}

Replication replicate_experts(const std::vector<float>& weight, int num_phy) {
  const int n = int(weight.size());
  DSV3_ASSERT(n >= 1 && num_phy >= n);
  Replication out;
  out.phy2log.resize(size_t(num_phy));
  std::iota(out.phy2log.begin(), out.phy2log.begin() + n, 0);
  out.rank.assign(size_t(num_phy), 0);
  out.logcnt.assign(size_t(n), 1);
  for (int slot = n; slot < num_phy; ++slot) {
    // The highest load per copy, weight / count in float; the first maximum wins.
    int best = 0;
    float best_load = weight[0] / float(out.logcnt[0]);
    for (int i = 1; i < n; ++i) {
      const float l = weight[size_t(i)] / float(out.logcnt[size_t(i)]);
      if (l > best_load) best = i, best_load = l;
    }
    out.phy2log[size_t(slot)] = best;
    out.rank[size_t(slot)] = out.logcnt[size_t(best)]++;
  }
  return out;
}

void validate(const Params& p, int num_experts) {
  DSV3_CHECK(num_experts >= 1, "eplb: the load has no experts (a layer with no entries)");
  DSV3_CHECK(p.num_replicas >= 1, "eplb: --replicas must be at least 1, not ", p.num_replicas);
  DSV3_CHECK(p.num_groups >= 1, "eplb: --groups must be at least 1, not ", p.num_groups);
  DSV3_CHECK(p.num_nodes >= 1, "eplb: --nodes must be at least 1, not ", p.num_nodes);
  DSV3_CHECK(p.num_gpus >= 1, "eplb: --gpus must be at least 1, not ", p.num_gpus);
  DSV3_CHECK(p.num_replicas <= kMaxReplicas, "eplb: --replicas ", p.num_replicas, " is more than ",
             kMaxReplicas, " slots per layer");
  DSV3_CHECK(p.num_replicas >= num_experts, "eplb: ", p.num_replicas, " replicas cannot hold ",
             num_experts, " experts: each expert needs at least one (replicas >= experts)");
  DSV3_CHECK(p.num_replicas % p.num_gpus == 0, "eplb: ", p.num_replicas,
             " replicas do not divide evenly over ", p.num_gpus, " GPUs (replicas must be a multiple of gpus)");
  DSV3_CHECK(p.num_gpus % p.num_nodes == 0, "eplb: ", p.num_gpus,
             " GPUs do not divide evenly over ", p.num_nodes, " nodes (gpus must be a multiple of nodes)");
  DSV3_CHECK(num_experts % p.num_groups == 0, "eplb: ", num_experts,
             " experts do not divide into ", p.num_groups, " groups (experts must be a multiple of groups)");
}

namespace {

// One layer of rebalance_experts_hierarchical: writes phy2log, phyrank [R] and logcnt [E].
// The global policy is this with groups = nodes = 1.
void rebalance_layer(const std::vector<float>& w, int R, int G, int N, int P,
                     std::vector<int>& phy2log, std::vector<int>& phyrank, std::vector<int>& logcnt) {
  const int E = int(w.size());
  const int group_size = E / G, groups_per_node = G / N;
  const int experts_per_node = E / N, slots_per_node = R / N, slots_per_gpu = R / P;

  // Step 1: groups to nodes. An expert's "mlog" index numbers experts node by node, each
  // node's groups in the order they were packed into it.
  std::vector<float> group_load(size_t(G), 0.0f);  // [G]
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < group_size; ++j) group_load[size_t(g)] += w[size_t(g * group_size + j)];
  const Packing nodes = balanced_packing(group_load, N);
  std::vector<int> log2mlog(static_cast<size_t>(E)), mlog2log(static_cast<size_t>(E));  // [E], inverse permutations
  for (int g = 0; g < G; ++g)
    for (int j = 0; j < group_size; ++j) {
      const int e = g * group_size + j;
      const int m = (nodes.pack[size_t(g)] * groups_per_node + nodes.rank[size_t(g)]) * group_size + j;
      log2mlog[size_t(e)] = m;
      mlog2log[size_t(m)] = e;
    }

  for (int n = 0; n < N; ++n) {
    const int mlog0 = n * experts_per_node;
    // Step 2: copies within the node.
    std::vector<float> node_load(static_cast<size_t>(experts_per_node));  // [E/N], in mlog order
    for (int k = 0; k < experts_per_node; ++k) node_load[size_t(k)] = w[size_t(mlog2log[size_t(mlog0 + k)])];
    const Replication rep = replicate_experts(node_load, slots_per_node);
    for (int k = 0; k < experts_per_node; ++k)
      logcnt[size_t(mlog2log[size_t(mlog0 + k)])] = rep.logcnt[size_t(k)];

    // Step 3: the node's slots to its GPUs, each slot carrying its expert's load per copy.
    std::vector<float> slot_load(static_cast<size_t>(slots_per_node));  // [R/N]
    for (int q = 0; q < slots_per_node; ++q) {
      const int k = rep.phy2log[size_t(q)];
      slot_load[size_t(q)] = node_load[size_t(k)] / float(rep.logcnt[size_t(k)]);
    }
    const Packing gpus = balanced_packing(slot_load, P / N);
    for (int q = 0; q < slots_per_node; ++q) {
      const int slot = n * slots_per_node + gpus.pack[size_t(q)] * slots_per_gpu + gpus.rank[size_t(q)];
      phy2log[size_t(slot)] = mlog2log[size_t(mlog0 + rep.phy2log[size_t(q)])];
      phyrank[size_t(slot)] = rep.rank[size_t(q)];
    }
  }
}

template <class T>
Plan rebalance_impl(const std::vector<std::vector<T>>& weight, const Params& p) {
  DSV3_CHECK(!weight.empty(), "eplb: the load has no layers");
  const int E = int(weight[0].size());
  DSV3_CHECK(weight[0].size() < size_t(1) << 30, "eplb: ", weight[0].size(), " experts is too many");
  for (size_t l = 0; l < weight.size(); ++l)
    DSV3_CHECK(weight[l].size() == size_t(E), "eplb: layer ", l, " has ", weight[l].size(),
               " expert loads, layer 0 has ", E, " (every layer needs one load per expert)");
  validate(p, E);

  const int L = int(weight.size()), R = p.num_replicas;
  DSV3_CHECK(int64_t(L) * R <= kMaxEntries, "eplb: phy2log would have ", L, " layers x ", R,
             " slots; fewer --replicas or fewer layers at a time");
  Plan plan;
  plan.hierarchical = p.num_groups % p.num_nodes == 0;
  const int G = plan.hierarchical ? p.num_groups : 1, N = plan.hierarchical ? p.num_nodes : 1;
  plan.phy2log.assign(size_t(L), std::vector<int>(size_t(R), -1));
  plan.logcnt.assign(size_t(L), std::vector<int>(size_t(E), 0));
  std::vector<std::vector<int>> phyrank(size_t(L), std::vector<int>(size_t(R), -1));  // [L][R]
  std::vector<float> w(static_cast<size_t>(E));
  for (int l = 0; l < L; ++l) {
    for (int e = 0; e < E; ++e) {
      const T v = weight[size_t(l)][size_t(e)];
      DSV3_CHECK(std::isfinite(v) && v >= 0, "eplb: weight[", l, "][", e, "] = ", v,
                 ": a load must be a finite number >= 0");
      w[size_t(e)] = float(v);  // eplb.py: weight.float()
      DSV3_CHECK(std::isfinite(w[size_t(e)]), "eplb: weight[", l, "][", e, "] = ", v,
                 " is beyond float range (the public code computes in float32)");
    }
    rebalance_layer(w, R, G, N, p.num_gpus, plan.phy2log[size_t(l)], phyrank[size_t(l)],
                    plan.logcnt[size_t(l)]);
  }

  // log2phy: one width X for all layers, the slots of copy r at [l][e][r], -1 beyond.
  for (const auto& row : plan.logcnt)
    plan.max_copies = std::max(plan.max_copies, *std::max_element(row.begin(), row.end()));
  const int X = plan.max_copies;
  DSV3_CHECK(int64_t(L) * E * X <= kMaxEntries, "eplb: log2phy would have ", L, " x ", E, " x ", X,
             " entries (an expert with ", X, " copies); fewer --replicas or fewer layers at a time");
  plan.log2phy.assign(size_t(L), std::vector<std::vector<int>>(size_t(E), std::vector<int>(size_t(X), -1)));
  for (int l = 0; l < L; ++l)
    for (int s = 0; s < R; ++s) {
      const int e = plan.phy2log[size_t(l)][size_t(s)], r = phyrank[size_t(l)][size_t(s)];
      DSV3_ASSERT(e >= 0 && r >= 0 && r < plan.logcnt[size_t(l)][size_t(e)]);
      plan.log2phy[size_t(l)][size_t(e)][size_t(r)] = s;
    }
  return plan;
}

}  // namespace

Plan rebalance_experts(const std::vector<std::vector<double>>& weight, const Params& p) {
  return rebalance_impl(weight, p);
}
Plan rebalance_experts(const std::vector<std::vector<float>>& weight, const Params& p) {
  return rebalance_impl(weight, p);
}

}  // namespace dsv3::eplb
