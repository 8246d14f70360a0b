#include "serve/rebalance.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>

#include "core/check.h"
#include "parallel/eplb.h"

namespace dsv3::serve {
namespace {

// Expected busiest rank / mean for one layer's load under p.
double expected_imbalance(const ExpertPlacement& p, const std::vector<double>& load) {
  std::vector<double> r(static_cast<size_t>(p.ranks()));
  expected_rank_load(p, load.data(), r.data());
  double sum = 0, mx = 0;
  for (double v : r) sum += v, mx = std::max(mx, v);
  return sum > 0 ? mx * p.ranks() / sum : 1.0;
}

}  // namespace

std::vector<ExpertPlacement> placements_from(const ModelConfig& c, const std::vector<std::vector<int>>& phy2log,
                                             int ranks) {
  const int64_t L = c.num_hidden_layers;
  DSV3_CHECK(int64_t(phy2log.size()) == L, "expert placement: ", phy2log.size(), " layers, the model has ", L);
  std::vector<ExpertPlacement> out(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l)
    if (c.is_moe_layer(l)) out[size_t(l)] = ExpertPlacement::from_phy2log(phy2log[size_t(l)], c.n_routed_experts, ranks);
  return out;
}

std::vector<ExpertPlacement> plan_placement(const ModelConfig& c, const std::vector<std::vector<double>>& load,
                                            int ranks, int64_t redundant,
                                            const std::vector<ExpertPlacement>& current, PlacementReport* report) {
  const int64_t L = c.num_hidden_layers, E = c.n_routed_experts;
  DSV3_CHECK(int64_t(load.size()) == L, "expert load: ", load.size(), " layers, the model has ", L);
  constexpr int64_t kMaxSlots = int64_t(1) << 20;  // eplb.h's bound on slots per layer
  DSV3_CHECK(redundant >= 0 && redundant <= kMaxSlots - E, "--redundant-experts ", redundant,
             " must be in [0, ", kMaxSlots - E, "]");
  eplb::Params p;
  p.num_replicas = int(E + redundant);
  p.num_groups = c.n_group > 1 && E % c.n_group == 0 ? int(c.n_group) : 1;
  p.num_nodes = 1;
  p.num_gpus = ranks;
  // EPLB plans every row it is given: the MoE layers' rows only.
  std::vector<std::vector<double>> moe;
  std::vector<int64_t> which;
  for (int64_t l = 0; l < L; ++l)
    if (c.is_moe_layer(l)) {
      DSV3_CHECK(int64_t(load[size_t(l)].size()) == E, "expert load: layer ", l, " has ", load[size_t(l)].size(),
                 " experts, the model ", E);
      moe.push_back(load[size_t(l)]);
      which.push_back(l);
    }
  DSV3_CHECK(!moe.empty(), "the model has no MoE layer to place experts of");
  const eplb::Plan plan = eplb::rebalance_experts(moe, p);
  PlacementReport r;
  r.slots = p.num_replicas;
  r.ranks = ranks;
  r.phy2log.assign(size_t(L), {});
  std::vector<ExpertPlacement> out(static_cast<size_t>(L));
  for (size_t i = 0; i < which.size(); ++i) {
    const size_t l = size_t(which[i]);
    r.phy2log[l] = plan.phy2log[i];
    out[l] = ExpertPlacement::from_phy2log(plan.phy2log[i], E, ranks);
    for (double v : moe[i]) r.tokens += v;
    const ExpertPlacement& cur = l < current.size() && current[l].slots() > 0 ? current[l] : out[l];
    r.before += expected_imbalance(cur, moe[i]) / double(which.size());
    r.after += expected_imbalance(out[l], moe[i]) / double(which.size());
  }
  if (report) *report = std::move(r);
  return out;
}

std::vector<std::vector<double>> model_load_from_file(const ModelConfig& c, const std::string& path) {
  const eplb::LoadFile f = eplb::read_load_file(path);
  const int64_t L = c.num_hidden_layers, E = c.n_routed_experts;
  DSV3_CHECK(int64_t(f.weight[0].size()) == E, path, ": ", f.weight[0].size(), " loads per layer, the model has ", E,
             " routed experts");
  std::vector<int64_t> moe;
  for (int64_t l = 0; l < L; ++l)
    if (c.is_moe_layer(l)) moe.push_back(l);
  std::vector<int64_t> rows = f.layers;
  bool every_layer = false;  // one row per layer: the dense layers' rows are skipped
  if (rows.empty()) {
    if (f.weight.size() == moe.size()) {
      rows = moe;
    } else if (int64_t(f.weight.size()) == L) {
      for (int64_t l = 0; l < L; ++l) rows.push_back(l);
      every_layer = true;
    } else {
      DSV3_CHECK(false, path, ": ", f.weight.size(), " rows of loads and no \"layers\" list; the model has ",
                 moe.size(), " MoE layers of ", L);
    }
  }
  std::vector<std::vector<double>> out(static_cast<size_t>(L), std::vector<double>(static_cast<size_t>(E), 0.0));
  for (size_t i = 0; i < rows.size(); ++i) {
    if (every_layer && !c.is_moe_layer(rows[i])) continue;
    DSV3_CHECK(rows[i] < L && c.is_moe_layer(rows[i]), path, ": row ", i, " is layer ", rows[i],
               ", which is not a MoE layer of this model");
    for (size_t e = 0; e < f.weight[i].size(); ++e) {
      const double v = f.weight[i][e];
      DSV3_CHECK(std::isfinite(v) && v >= 0 && v <= 3.0e38, path, ": weight[", i, "][", e, "] = ", v,
                 " is not a load (finite, >= 0)");
    }
    out[size_t(rows[i])] = f.weight[i];
  }
  return out;
}

std::vector<ExpertPlacement> start_placement(const ModelConfig& c, int ranks, int64_t redundant,
                                             const std::string& load_file, PlacementReport* report) {
  if (redundant == 0 && load_file.empty()) return {};
  std::vector<std::vector<double>> load;
  if (!load_file.empty()) load = model_load_from_file(c, load_file);
  else load.assign(size_t(c.num_hidden_layers), std::vector<double>(size_t(c.n_routed_experts), 1.0));
  std::vector<ExpertPlacement> plain(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.is_moe_layer(l)) plain[size_t(l)] = ExpertPlacement::contiguous(c.n_routed_experts, ranks);
  PlacementReport r;  // `before`: the contiguous layout's, for the same load
  std::vector<ExpertPlacement> out = plan_placement(c, load, ranks, redundant, plain, &r);
  r.source = load_file.empty() ? "uniform" : "file";
  if (report) *report = std::move(r);
  return out;
}

void log_placement(const char* when, const PlacementReport& r) {
  std::fprintf(stderr, "dsv3 serve: expert placement %s: %" PRId64 " slots per MoE layer on %d ranks, from the %s "
               "load (%.0f assignments); busiest rank / mean, expected: %.3f -> %.3f\n",
               when, r.slots, r.ranks, r.source.c_str(), r.tokens, r.before, r.after);
  std::fflush(stderr);
}

double mean_rank_imbalance(const std::vector<std::vector<int64_t>>& rank_rows) {
  double sum = 0;
  int n = 0;
  for (const std::vector<int64_t>& r : rank_rows) {
    int64_t total = 0;
    for (int64_t v : r) total += v;
    if (total == 0) continue;
    sum += rank_imbalance(r.data(), int(r.size()));
    ++n;
  }
  return n ? sum / n : 1.0;
}

}  // namespace dsv3::serve
