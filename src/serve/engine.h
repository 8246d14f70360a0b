// The serving engine: one scheduler loop over plain state (vLLM / SGLang style, STYLE.md).
// The HTTP layer turns requests into Engine::submit calls and Stream events into chunks; it
// never touches the model.
//
// Each step of the loop: admit waiting requests (prefix-cache lookup, block allocation),
// prefill at most `prefill_chunk` prompt tokens (chunked: a long prompt never stalls the
// running decodes for more than one chunk), decode one token for every running sequence in
// ONE batched forward over the paged latent cache (serve/kv_pool.h), sample, emit events,
// free what finished or was cancelled. When the block pool runs dry the newest sequence
// is preempted (its blocks freed, its prompt + generated tokens recomputed later).
//
// Batch invariance (docs/serve.md): a sequence's logits are bit-identical whether it runs
// alone or beside others, and equal `dsv3 generate`'s, because every kernel of the batched
// step computes a row the same way whatever the batch (see Model::forward_batch).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "infer/sampler.h"
#include "infer/spec_policy.h"
#include "serve/kv_transfer.h"
#include "serve/rebalance.h"

namespace dsv3 {
class Model;
namespace tok { class Tokenizer; }
namespace dist { class Comm; }
}  // namespace dsv3

namespace dsv3::serve {

struct EngineOptions {
  int64_t max_running = 16;     // sequences in the running batch at once
  int64_t max_queue = 256;      // waiting requests; submit() refuses beyond (HTTP 429)
  int64_t kv_cache_mb = 0;      // latent-cache pool in MiB; 0 = max_running full contexts
  int64_t kv_cache_blocks = 0;  // the pool in blocks (overrides kv_cache_mb; tests)
  int64_t context = 0;          // positions per sequence (prompt + completion);
                                // 0 = min(max_position_embeddings, 4096)
  int64_t prefill_chunk = 256;  // prompt tokens per step over all sequences; chunks end at
                                // multiples of it (= kPrefillChunk, as dsv3 generate cuts them)
  bool prefix_cache = true;     // share full blocks of identical prefixes between sequences
  bool batch_invariant = true;  // false: one GEMM over the whole batch (faster, not invariant)
  int64_t speculative_draft = 0;  // MTP drafts per decode step (0 = off)
  // With speculative_draft: Mtp drafts every step, Auto only while drafting pays at the
  // step's batch size (infer/spec_policy.h; plain on a model without MTP), Off never.
  SpecMode speculative_mode = SpecMode::Mtp;
  SpecPolicyOptions speculative_policy;  // Auto: thresholds and the cost source
  bool log_requests = true;     // one line per finished request on stderr
  // Expert-parallel serving (serve/ep_step.h): this engine is rank 0 of `ep`, whose other
  // ranks run ep_follow; the loop thread broadcasts each step to them and, at exit, the stop.
  // The model must have been loaded with the same group (ModelOptions::ep). No speculation.
  const dist::Comm* ep = nullptr;
  // Redundant experts (with ep; serve/rebalance.h): extra expert slots per MoE layer; the
  // steps between automatic rebalances (0: only when rebalance() asks); how the placement
  // the model was given before serving was made (start_placement; slots = 0: contiguous).
  int64_t redundant_experts = 0;
  int64_t rebalance_every = 0;
  PlacementReport start_placement;
};

// One completion request as the engine takes it (the HTTP layer has tokenized the prompt and
// checked the JSON). submit() throws dsv3::Error (→ HTTP 400) for what is still wrong.
struct Request {
  std::vector<int32_t> prompt;      // ≥ 1 token, ids < vocab
  int64_t max_tokens = 16;          // ≥ 0; prompt + max_tokens ≤ context (else Error)
  SamplingParams sampling;          // temperature 0 = greedy; seed
  float presence_penalty = 0;       // [-2, 2], OpenAI semantics over the generated tokens
  float frequency_penalty = 0;      // [-2, 2]
  std::vector<std::string> stop;    // stop strings (not part of the output)
  int top_logprobs = -1;            // -1: no logprobs; 0..20: chosen token's + k alternatives
  bool ignore_eos = false;
  // The seed is the client's, so the same request must give the same tokens: under
  // speculative auto such a sampled request decodes plainly (which steps draft depends on
  // timing, and drafting changes how the seed's random numbers are used).
  bool seeded = true;
  std::string tag;                  // printed in the request's log line (e.g. the HTTP id)
  // Prefill/decode disaggregation (serve/kv_transfer.h, docs/serve.md "Deployment"):
  // import_kv: the prompt was prefilled on another instance. Its rows are copied into this
  // sequence's blocks and the first token is drawn from its logits (no forward); the tokens
  // must equal the prompt. A sequence preempted later recomputes from its tokens as usual.
  // export_kv: prefill only. When the prompt's last logits are computed, they and the
  // prompt's rows are written to *export_kv and the request finishes ("length") with no token.
  std::shared_ptr<const KvSequence> import_kv;
  std::shared_ptr<KvSequence> export_kv;
};

struct TokenLogprob {
  int32_t id = -1;
  float logprob = 0;
};

struct Event {
  enum class Kind { Token, Finish, Error };
  Kind kind = Kind::Token;
  // Token: the new token and the text that became safe to show with it (may be "": inside
  // a UTF-8 character or a possible stop string). Finish: text held back until the end.
  int32_t id = -1;
  std::string text;
  float logprob = 0;                 // Token, when top_logprobs ≥ 0: log p(id) at T = 1
  std::vector<TokenLogprob> top;     // Token: the top_logprobs most likely tokens
  // Finish: "stop" (EOS or a stop string) | "length" (max_tokens or the context).
  // Error: the message (the engine failed the request; the HTTP layer answers 500-class).
  std::string finish_reason;
  int64_t prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;  // Finish
};

// One request's event queue, shared by the engine and the HTTP handler.
class Stream {
 public:
  explicit Stream(uint64_t id) : id_(id) {}
  uint64_t id() const { return id_; }
  // Waits up to timeout_s for the next event; false when none came. After a Finish or an
  // Error event no more events come.
  bool next(Event* e, double timeout_s);
  // The client went away: the engine drops the request within one step.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

  // Engine side.
  void push(Event e);

 private:
  uint64_t id_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> q_;
};

// Cumulative counters and current gauges (GET /metrics).
struct Histogram {
  std::vector<double> bounds;     // upper bounds (seconds), ascending; +Inf implied
  std::vector<uint64_t> counts;   // [bounds + 1] per bucket (not cumulative)
  double sum = 0;
  uint64_t count = 0;
  void observe(double v);
};

struct EngineMetrics {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_used = 0, kv_blocks_total = 0, kv_block_positions = 0;
  uint64_t requests_finished = 0, requests_cancelled = 0, requests_rejected = 0;
  uint64_t prompt_tokens = 0, generation_tokens = 0;
  uint64_t prefix_queries = 0, prefix_hits = 0;  // prompt tokens looked up / found cached
  uint64_t spec_drafted = 0, spec_accepted = 0;
  SpecMode spec_mode = SpecMode::Off;  // the mode that runs (auto without MTP: auto)
  std::string spec_reason;             // why nothing drafts, when no policy runs
  std::vector<SpecReport> spec;        // the policy per batch-size range seen (decode steps)
  uint64_t preemptions = 0;
  uint64_t steps = 0;
  // Routed (token, expert) assignments per main layer and expert since start, the prompt's
  // and the generated tokens' [num_hidden_layers][n_routed_experts] (dense layers: zeros).
  // What EPLB balances (`dsv3 eplb --load`; GET /v1/expert_load).
  std::vector<std::vector<uint64_t>> expert_load;
  // Expert parallelism: the routed rows each rank computed, per main layer since the current
  // placement took effect [L][P], and since start over all layers [P]; the placement and how
  // it was made (slots = 0, phy2log empty: the contiguous layout); the placements made after
  // the first.
  std::vector<std::vector<int64_t>> rank_load;
  std::vector<int64_t> rank_rows_total;
  PlacementReport placement;
  uint64_t rebalances = 0;
  Histogram ttft, tpot;                          // seconds
};

class Engine {
 public:
  // The engine's loop is the only caller of the model's forwards while it runs, and changes
  // the model (RoPE positions; under expert parallelism its expert placement).
  Engine(Model& model, const tok::Tokenizer* tokenizer, const EngineOptions& o);
  ~Engine();  // stops the loop; pending streams get an Error event
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Throws dsv3::Error (HTTP 400) when it is invalid (empty prompt, id
  // outside the vocabulary, prompt + max_tokens beyond the context, bad sampling values).
  // Returns nullptr when max_running + max_queue requests are outstanding or the engine no
  // longer admits (HTTP 429 / 503).
  std::shared_ptr<Stream> submit(Request r);

  // Stop admitting: later submit() calls return nullptr (draining() true → HTTP 503).
  void stop_admitting();
  bool draining() const { return !admitting_.load(); }
  // Waits until nothing runs or waits, up to deadline_s; then cancels what is left.
  // Returns true when everything finished in time.
  bool drain(double deadline_s);

  EngineMetrics metrics() const;

  // Expert-parallel serving: plans a new expert placement from the load counted since the
  // last one (EPLB; the load since start when none was counted since), has every rank apply
  // it between two steps, and returns its report. Throws dsv3::Error when the engine is not
  // expert-parallel, no token has been routed yet, or the loop did not get to it within
  // timeout_s (a step runs at a time).
  PlacementReport rebalance(double timeout_s = 120);
  int64_t context() const { return context_; }
  const EngineOptions& options() const { return opt_; }
  const Model& model() const { return model_; }

 private:
  struct Impl;
  void loop();
  // Expert placement, on the loop thread (serve/engine_placement.cpp): apply a new one on
  // every rank; plan one from the counted load and apply it; answer the waiting rebalance()
  // calls (error: fail them with it).
  void apply_placement_now(PlacementReport r);
  PlacementReport replan();
  void serve_rebalance_calls(const std::string& error = "");

  Model& model_;
  const tok::Tokenizer* tok_;
  EngineOptions opt_;
  int64_t context_ = 0;
  std::atomic<bool> admitting_{true}, stop_{false};
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

}  // namespace dsv3::serve
