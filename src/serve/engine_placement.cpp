// The engine loop's side of redundant experts (serve/rebalance.h): placements applied between
// steps on every rank of an expert-parallel server.
#include <cinttypes>
#include <cstdio>

#include "core/check.h"
#include "parallel/comm.h"
#include "serve/engine_state.h"

namespace dsv3::serve {

void Engine::apply_placement_now(PlacementReport r) {
  Impl& I = *impl_;
  // Checked before it is sent: past the broadcast every rank must apply it.
  std::vector<ExpertPlacement> pl = placements_from(model_.config(), r.phy2log, model_.ep()->size());
  I.ep->place(r.phy2log, r.slots);  // the other ranks apply it before the next step's message
  model_.set_expert_placement(pl);
  log_placement("rebalanced", r);
  std::lock_guard<std::mutex> lk(I.mu);
  for (auto& row : I.m.rank_load) std::fill(row.begin(), row.end(), 0);
  I.m.placement = std::move(r);
  ++I.m.rebalances;
  std::fill(I.window_load.begin(), I.window_load.end(), 0);
  I.steps_since_place = 0;
}

PlacementReport Engine::replan() {
  Impl& I = *impl_;
  const ModelConfig& c = model_.config();
  const int64_t L = c.num_hidden_layers, E = c.n_routed_experts;
  std::vector<std::vector<double>> load(size_t(L), std::vector<double>(size_t(E), 0.0));
  double window = 0, total = 0;
  {
    std::lock_guard<std::mutex> lk(I.mu);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t e = 0; e < E; ++e) {
        window += double(I.window_load[size_t(l * E + e)]);
        total += double(I.m.expert_load[size_t(l)][size_t(e)]);
      }
    for (int64_t l = 0; l < L; ++l)
      for (int64_t e = 0; e < E; ++e)
        load[size_t(l)][size_t(e)] = window > 0 ? double(I.window_load[size_t(l * E + e)])
                                                : double(I.m.expert_load[size_t(l)][size_t(e)]);
  }
  DSV3_CHECK(total > 0, "no token has been routed to an expert yet: there is no load to balance");
  PlacementReport r;
  plan_placement(c, load, model_.ep()->size(), opt_.redundant_experts, model_.expert_placement(), &r);
  r.source = window > 0 ? "window" : "total";
  apply_placement_now(r);
  return r;
}

void Engine::serve_rebalance_calls(const std::string& error) {
  Impl& I = *impl_;
  std::vector<std::shared_ptr<Impl::RebalanceCall>> calls;
  {
    std::lock_guard<std::mutex> lk(I.mu);
    calls.swap(I.rebalance_calls);
  }
  if (calls.empty()) return;
  PlacementReport r;
  std::string err = error;
  if (err.empty()) {
    try {  // one plan answers every call that waited for this step boundary
      r = replan();
    } catch (const Error& ex) {
      err = ex.what();
    }
  }
  std::lock_guard<std::mutex> lk(I.mu);
  for (auto& call : calls) {
    call->done = true;
    call->report = r;
    call->error = err;
  }
  I.rebalance_cv.notify_all();
}

}  // namespace dsv3::serve
