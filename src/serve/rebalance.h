// Redundant experts in the server (report §3.4; docs/serve.md "Redundant experts"). Under
// `dsv3 serve --ep P --redundant-experts R` every MoE layer has E + R expert slots, S / P per
// rank, placed by DeepSeek's EPLB (parallel/eplb.h) from the expert load the server counts:
// at start from --expert-load FILE (or uniform load), then on POST /admin/rebalance or every
// --rebalance-every steps from the load counted since the last placement. The engine loop
// broadcasts the new phy2log to the other ranks between two steps (serve/ep_step.h) and every
// rank rebinds its experts (Model::set_expert_placement). R = 0 still rebalances: EPLB then
// moves whole experts between ranks.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/expert_placement.h"

namespace dsv3::serve {

struct PlacementReport {
  int64_t slots = 0;       // per MoE layer: E + redundant
  int ranks = 1;
  double tokens = 0;       // routed assignments in the load the plan was made from
  std::string source;      // "window" (since the last placement), "total", "file", "uniform"
  // The busiest rank's load over the mean rank load that the load would give, each expert's
  // load split evenly over its copies: under the placement before, and the new one. Mean
  // over the MoE layers (the figure the server's measured dsv3_ep_rank_imbalance tracks).
  double before = 0, after = 0;
  std::vector<std::vector<int>> phy2log;  // [L][S]: dense layers empty
};

// EPLB's placement for load [L][E] (dense layers' rows ignored): hierarchical policy with the
// config's expert groups on one node of `ranks` GPUs. current: the placement `before` is
// measured against ([L], as Model::expert_placement()). Throws dsv3::Error for counts EPLB
// refuses (E + redundant not a multiple of ranks).
std::vector<ExpertPlacement> plan_placement(const ModelConfig& c, const std::vector<std::vector<double>>& load,
                                            int ranks, int64_t redundant,
                                            const std::vector<ExpertPlacement>& current, PlacementReport* report);

// The placements of phy2log rows ([L], dense layers' rows empty), checked.
std::vector<ExpertPlacement> placements_from(const ModelConfig& c, const std::vector<std::vector<int>>& phy2log,
                                             int ranks);

// The per-layer load [L][E] a load file gives this model: rows matched to layers by its
// "layers" list, else one row per MoE layer in order, else one row per layer (the dense
// layers' rows ignored). Throws naming the file when the rows or the expert count do not
// fit, or a load is negative or not finite.
std::vector<std::vector<double>> model_load_from_file(const ModelConfig& c, const std::string& path);

// The placement an expert-parallel server starts with: EPLB on the load file's load (else
// uniform load) with `redundant` extra slots per layer; empty (the contiguous layout) when
// redundant = 0 and no file is given. A pure function of its inputs: every rank computes it
// before loading its experts' pages, and a bad count or file is refused on every rank alike.
std::vector<ExpertPlacement> start_placement(const ModelConfig& c, int ranks, int64_t redundant,
                                             const std::string& load_file, PlacementReport* report);

// The log line of a placement: "dsv3 serve: expert placement WHEN: S slots per MoE layer on P
// ranks, from the SOURCE load (N assignments); busiest rank / mean, expected: B -> A".
void log_placement(const char* when, const PlacementReport& r);

// Mean over the layers with rows (the MoE layers that ran) of the busiest rank's rows over the
// mean rank's ([L][P]; 1 when no layer has rows).
double mean_rank_imbalance(const std::vector<std::vector<int64_t>>& rank_rows);

}  // namespace dsv3::serve
