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
#include "io/json_strict.h"
#include "parallel/eplb.h"

namespace dsv3::cli {

namespace {

struct EplbArgs {
  std::string load, out;
  eplb::Params p;
};

// {"weight": [[number, ...], ...]}: every layer an array of numbers, the same length. Finite,
// non-negative values are the library's check (it names the layer and expert too).
std::vector<std::vector<double>> read_load(const std::string& path) {
  const nlohmann::json j = parse_json_strict(read_text_file(path), path, "the load file");
  DSV3_CHECK(j.is_object(), path, ": expected an object {\"weight\": [[load per expert] per layer]}, got a JSON ",
             j.type_name());
  // "layers" and "assignments" ride along in what `dsv3 serve` writes (GET /v1/expert_load).
  for (const auto& [key, value] : j.items())
    DSV3_CHECK(key == "weight" || key == "layers" || key == "assignments", path, ": unknown key \"", key,
               "\" (expected \"weight\", and optionally the server's \"layers\" and \"assignments\")");
  DSV3_CHECK(j.contains("weight"), path, ": no \"weight\" key (expected {\"weight\": [[load per expert] per layer]})");
  const nlohmann::json& w = j["weight"];
  DSV3_CHECK(w.is_array() && !w.empty(), path, ": \"weight\" must be a non-empty array of layers, got ",
             w.is_array() ? "an empty array" : str_cat("a JSON ", w.type_name()));
  std::vector<std::vector<double>> weight(w.size());
  for (size_t l = 0; l < w.size(); ++l) {
    DSV3_CHECK(w[l].is_array(), path, ": weight[", l, "] must be an array of loads, one per expert, got a JSON ",
               w[l].type_name());
    DSV3_CHECK(w[l].size() == w[0].size(), path, ": weight[", l, "] has ", w[l].size(), " loads, weight[0] has ",
               w[0].size(), " (every layer needs one load per expert)");
    for (size_t e = 0; e < w[l].size(); ++e) {
      const nlohmann::json& v = w[l][e];
      DSV3_CHECK(v.is_number(), path, ": weight[", l, "][", e, "] is ", v.dump(), ", expected a number");
      weight[l].push_back(v.get<double>());
    }
  }
  return weight;
}

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
  for (size_t l = 0; l < weight.size(); ++l) {
    double total = 0;
    for (double v : weight[l]) total += v;
    if (total <= 0) continue;
    std::vector<double> gpu(G, 0.0);
    for (size_t s = 0; s < R; ++s) {
      const int e = plan.phy2log[l][s];
      gpu[s / (R / G)] += weight[l][size_t(e)] / plan.logcnt[l][size_t(e)];
    }
    after = std::max(after, *std::max_element(gpu.begin(), gpu.end()) / (total / double(G)));
    if (E % G == 0) {
      std::fill(gpu.begin(), gpu.end(), 0.0);
      for (size_t e = 0; e < E; ++e) gpu[e / (E / G)] += weight[l][e];
      before = std::max(before, *std::max_element(gpu.begin(), gpu.end()) / (total / double(G)));
    }
  }
  std::string s = str_cat("dsv3 eplb: ", plan.hierarchical ? "hierarchical" : "global", " policy, ",
                          weight.size(), " layers, ", E, " experts -> ", R, " slots on ", G, " GPUs");
  if (plan.hierarchical) s += str_cat(" (", p.num_nodes, " nodes, ", p.num_groups, " groups)");
  s += str_cat("; busiest GPU / mean load, worst layer: ", std::round(after * 1000) / 1000);
  if (E % G == 0) s += str_cat(" (without copies, experts in order: ", std::round(before * 1000) / 1000, ")");
  return s;
}

void run_eplb(const EplbArgs& a) {
  const std::vector<std::vector<double>> weight = read_load(a.load);
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
