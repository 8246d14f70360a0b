// GET /metrics in the Prometheus text exposition format 0.0.4: "# HELP", "# TYPE", then
// samples; histograms as cumulative _bucket{le="..."} series ending at +Inf, _sum, _count.
#include <algorithm>
#include <charconv>
#include <string>

#include "serve/openai_api.h"

namespace dsv3::serve {
namespace {

// Shortest text that reads back to the same double ("0.005", "1e-05"), as Prometheus parses.
std::string num(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void gauge(std::string& out, const char* name, const char* help, int64_t v) {
  header(out, name, "gauge", help);
  out += std::string(name) + ' ' + std::to_string(v) + '\n';
}

// One sample per speculation batch-size range: name{batch="1"} v, name{batch="2-3"} v, ...
template <class F>
void spec_gauge(std::string& out, const EngineMetrics& m, const char* name, const char* help, F value) {
  header(out, name, "gauge", help);
  for (const SpecReport& r : m.spec)
    out += std::string(name) + "{batch=\"" + r.batch_label() + "\"} " + num(value(r)) + '\n';
}

void counter(std::string& out, const char* name, const char* help, uint64_t v) {
  header(out, name, "counter", help);
  out += std::string(name) + ' ' + std::to_string(v) + '\n';
}

void histogram(std::string& out, const char* name, const char* help, const Histogram& h) {
  header(out, name, "histogram", help);
  const std::string n = name;
  uint64_t cum = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cum += i < h.counts.size() ? h.counts[i] : 0;
    out += n + "_bucket{le=\"" + num(h.bounds[i]) + "\"} " + std::to_string(cum) + '\n';
  }
  // +Inf holds every observation, whatever the finite buckets add up to.
  out += n + "_bucket{le=\"+Inf\"} " + std::to_string(h.count) + '\n';
  out += n + "_sum " + num(h.sum) + '\n';
  out += n + "_count " + std::to_string(h.count) + '\n';
}

}  // namespace

json expert_load_json(const EngineMetrics& m) {
  json weight = json::array(), layers = json::array(), totals = json::array();
  for (size_t l = 0; l < m.expert_load.size(); ++l) {
    uint64_t sum = 0;
    for (uint64_t v : m.expert_load[l]) sum += v;
    if (sum == 0) continue;  // a dense layer, or nothing served yet
    weight.push_back(m.expert_load[l]);
    layers.push_back(l);
    totals.push_back(sum);
  }
  json out = {{"weight", weight}, {"layers", layers}, {"assignments", totals}};
  if (m.rank_load.empty()) return out;
  // Expert parallelism: each listed layer's rows per rank since the placement, and the
  // placement (serve/rebalance.h).
  const PlacementReport& r = m.placement;
  json ranks = json::array(), p2l = json::array();
  for (const json& l : layers) {
    const size_t i = l.get<size_t>();
    ranks.push_back(m.rank_load[i]);
    p2l.push_back(i < r.phy2log.size() && !r.phy2log[i].empty() ? json(r.phy2log[i]) : json(nullptr));
  }
  out["rank_load"] = ranks;
  out["placement"] = {{"phy2log", p2l},
                      {"contiguous", r.phy2log.empty()},
                      {"slots", r.slots},
                      {"source", r.source},
                      {"expected_imbalance_before", r.before},
                      {"expected_imbalance_after", r.after},
                      {"rebalances", m.rebalances},
                      {"rank_imbalance", mean_rank_imbalance(m.rank_load)}};
  return out;
}

std::string metrics_text(const EngineMetrics& m) {
  std::string o;
  gauge(o, "dsv3_requests_running", "Requests in the running batch.", m.running);
  gauge(o, "dsv3_requests_waiting", "Requests waiting to be admitted.", m.waiting);
  gauge(o, "dsv3_kv_blocks_used", "Latent-cache blocks in use.", m.kv_blocks_used);
  gauge(o, "dsv3_kv_blocks_total", "Latent-cache blocks in the pool.", m.kv_blocks_total);
  counter(o, "dsv3_prompt_tokens_total", "Prompt tokens of admitted requests.", m.prompt_tokens);
  counter(o, "dsv3_generation_tokens_total", "Tokens generated.", m.generation_tokens);
  counter(o, "dsv3_requests_finished_total", "Requests finished (stop or length).", m.requests_finished);
  counter(o, "dsv3_requests_cancelled_total", "Requests cancelled (client gone or drain deadline).",
          m.requests_cancelled);
  counter(o, "dsv3_requests_rejected_total", "Requests refused (queue full or draining).",
          m.requests_rejected);
  counter(o, "dsv3_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
          m.prefix_queries);
  counter(o, "dsv3_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", m.prefix_hits);
  counter(o, "dsv3_spec_drafted_tokens_total", "Tokens drafted by the MTP modules.", m.spec_drafted);
  counter(o, "dsv3_spec_accepted_tokens_total", "Drafted tokens accepted.", m.spec_accepted);
  // Which speculation mode runs (an info-style gauge), and auto's state per batch size.
  header(o, "dsv3_spec_mode", "gauge", "The --speculative mode that runs (value 1).");
  o += std::string("dsv3_spec_mode{mode=\"") + spec_mode_name(m.spec_mode) + "\"} 1\n";
  if (!m.spec.empty()) {
    spec_gauge(o, m, "dsv3_spec_drafting", "1 while decode steps of this batch size draft (auto's choice).",
               [](const SpecReport& r) { return r.drafting ? 1.0 : 0.0; });
    spec_gauge(o, m, "dsv3_spec_plain_step_seconds", "A plain decode step per sequence (median of recent steps).",
               [](const SpecReport& r) { return r.plain_step_s; });
    spec_gauge(o, m, "dsv3_spec_verify_step_seconds",
               "A drafting + verify step per sequence (median of recent steps).",
               [](const SpecReport& r) { return r.verify_step_s; });
    spec_gauge(o, m, "dsv3_spec_estimated_speedup",
               "Tokens per verify x plain step / verify step (0 until both are measured).",
               [](const SpecReport& r) { return r.speedup; });
    header(o, "dsv3_spec_acceptance", "gauge", "Accepted / drafted tokens (moving average).");
    o += "dsv3_spec_acceptance " + num(m.spec.front().acceptance) + '\n';
  }
  counter(o, "dsv3_preemptions_total", "Sequences preempted when the block pool ran dry.", m.preemptions);
  counter(o, "dsv3_engine_steps_total", "Scheduler steps run.", m.steps);
  histogram(o, "dsv3_time_to_first_token_seconds", "Time from arrival to the first token.", m.ttft);
  histogram(o, "dsv3_time_per_output_token_seconds", "Time between output tokens.", m.tpot);
  // Expert load per MoE layer (the full table: GET /v1/expert_load, dsv3 eplb's input).
  bool any = false;
  for (const auto& row : m.expert_load)
    for (uint64_t v : row) any |= v > 0;
  if (any) {
    header(o, "dsv3_expert_assignments_total", "counter", "Routed (token, expert) assignments per MoE layer.");
    for (size_t l = 0; l < m.expert_load.size(); ++l) {
      uint64_t sum = 0;
      for (uint64_t v : m.expert_load[l]) sum += v;
      if (sum) o += "dsv3_expert_assignments_total{layer=\"" + std::to_string(l) + "\"} " + std::to_string(sum) + '\n';
    }
    header(o, "dsv3_expert_load_imbalance", "gauge",
           "Busiest expert's assignments over the mean per expert, per MoE layer (1 = balanced).");
    for (size_t l = 0; l < m.expert_load.size(); ++l) {
      uint64_t sum = 0, mx = 0;
      for (uint64_t v : m.expert_load[l]) sum += v, mx = std::max(mx, v);
      if (sum)
        o += "dsv3_expert_load_imbalance{layer=\"" + std::to_string(l) + "\"} " +
             num(double(mx) * double(m.expert_load[l].size()) / double(sum)) + '\n';
    }
  }
  if (!m.rank_rows_total.empty()) {
    header(o, "dsv3_ep_rank_rows_total", "counter",
           "Routed (token, expert) rows each rank of the expert-parallel group computed, all MoE layers.");
    for (size_t r = 0; r < m.rank_rows_total.size(); ++r)
      o += "dsv3_ep_rank_rows_total{rank=\"" + std::to_string(r) + "\"} " + std::to_string(m.rank_rows_total[r]) + '\n';
    header(o, "dsv3_ep_rank_imbalance", "gauge",
           "Busiest rank's rows over the mean rank's since the expert placement took effect, mean over MoE layers.");
    o += "dsv3_ep_rank_imbalance " + num(mean_rank_imbalance(m.rank_load)) + '\n';
    counter(o, "dsv3_expert_rebalances_total", "Expert placements made after the first (POST /admin/rebalance, "
            "--rebalance-every).", m.rebalances);
  }
  return o;
}

}  // namespace dsv3::serve
