// dsv3 eplb --load LOAD.json --replicas R --groups G --nodes N --gpus P [--out FILE]
// Redundant experts: from per-layer expert loads ({"weight": [[load per expert] per layer]}),
// the placement of R physical expert slots by DeepSeek's EPLB (src/parallel/eplb.h). stdout
// (or --out) is JSON only: {"phy2log": [L][R], "log2phy": [L][E][X], "logcnt": [L][E]}, one
// layer per line; stderr has a one-line summary. docs/serve.md, "Redundant experts (EPLB)".
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "io/file_util.h"
#include "model/expert_placement.h"
#include "parallel/eplb.h"

namespace dsv3::cli {

namespace {

struct EplbArgs {
  std::string load, out;
  eplb::Params p;
};

template <class T>
void append_array(std::string& s, const std::vector<T>& v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    if constexpr (std::is_same_v<T, int>)
      s += std::to_string(v[i]);
    else
      append_array(s, v[i]);
  }
  s += ']';
}

// One layer per line, so the file diffs and reads by layer.
std::string plan_json(const eplb::Plan& plan) {
  std::string s = "{";
  auto field = [&](const char* name, const auto& per_layer, bool last) {
    s += str_cat("\"", name, "\": [\n");
    for (size_t l = 0; l < per_layer.size(); ++l) {
      s += "  ";
      append_array(s, per_layer[l]);
      s += l + 1 < per_layer.size() ? ",\n" : "\n";
    }
    s += last ? "]}\n" : "],\n";
  };
  field("phy2log", plan.phy2log, false);
  field("log2phy", plan.log2phy, false);
  field("logcnt", plan.logcnt, true);
  return s;
}

// The busiest GPU's load over the mean, before (experts in index order, R = E slots spread
// evenly: only when E divides over the GPUs) and after, worst layer: what the copies bought.
std::string summary(const std::vector<std::vector<double>>& weight, const eplb::Plan& plan, const eplb::Params& p) {
  const size_t E = weight[0].size(), R = size_t(p.num_replicas), G = size_t(p.num_gpus);
  double before = 0, after = 0;
  std::vector<double> gpu(G);
  // The busiest GPU over the mean, for this layer's load under placement q.
  auto busiest = [&](const ExpertPlacement& q, const std::vector<double>& w, double total) {
    expected_rank_load(q, w.data(), gpu.data());
    return *std::max_element(gpu.begin(), gpu.end()) / (total / double(G));
  };
  for (size_t l = 0; l < weight.size(); ++l) {
    double total = 0;
    for (double v : weight[l]) total += v;
    if (total <= 0) continue;
    after = std::max(after, busiest(ExpertPlacement::from_phy2log(plan.phy2log[l], int64_t(E), int(G)), weight[l], total));
    if (E % G == 0) before = std::max(before, busiest(ExpertPlacement::contiguous(int64_t(E), int(G)), weight[l], total));
  }
  std::string s = str_cat("dsv3 eplb: ", plan.hierarchical ? "hierarchical" : "global", " policy, ",
                          weight.size(), " layers, ", E, " experts -> ", R, " slots on ", G, " GPUs");
  if (plan.hierarchical) s += str_cat(" (", p.num_nodes, " nodes, ", p.num_groups, " groups)");
  s += str_cat("; busiest GPU / mean load, worst layer: ", std::round(after * 1000) / 1000);
  if (E % G == 0) s += str_cat(" (without copies, experts in order: ", std::round(before * 1000) / 1000, ")");
  return s;
}

void run_eplb(const EplbArgs& a) {
  const std::vector<std::vector<double>> weight = eplb::read_load_file(a.load).weight;
  const eplb::Plan plan = eplb::rebalance_experts(weight, a.p);
  const std::string json = plan_json(plan);
  if (a.out.empty())
    std::fwrite(json.data(), 1, json.size(), stdout);
  else
    write_file_atomic(a.out, json);
  std::fprintf(stderr, "%s\n", summary(weight, plan, a.p).c_str());
}

}  // namespace

void register_eplb(CLI::App& app) {
  auto a = std::make_shared<EplbArgs>();
  CLI::App* c = app.add_subcommand(
      "eplb", "Place redundant experts from per-expert loads (DeepSeek's EPLB): JSON phy2log, log2phy, logcnt");
  c->add_option("--load", a->load, "JSON file {\"weight\": [[load per expert] per MoE layer]}")->required();
  c->add_option("--replicas", a->p.num_replicas, "Physical expert slots per layer, all GPUs (>= experts)")->required();
  c->add_option("--groups", a->p.num_groups, "Expert groups (DeepSeek-V3: 8)")->required();
  c->add_option("--nodes", a->p.num_nodes, "Nodes; hierarchical placement when it divides --groups")->required();
  c->add_option("--gpus", a->p.num_gpus, "GPUs, all nodes; divides --replicas")->required();
  c->add_option("--out", a->out, "Write the JSON here instead of stdout");
  c->callback([a] { run_eplb(*a); });
}

}  // namespace dsv3::cli
