// Internal state of the serving engine, shared by engine.cpp (set-up, submit, metrics) and
// scheduler.cpp (the loop). Not part of the interface.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "infer/stop.h"
#include "model/model.h"
#include "serve/engine.h"
#include "serve/ep_step.h"
#include "serve/kv_pool.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::serve {

struct Seq {
  std::shared_ptr<Stream> stream;
  Request req;
  uint64_t order = 0;              // arrival order: the newest is preempted first
  std::vector<int32_t> tokens;     // prompt, then generated tokens
  int64_t n_prompt = 0;
  std::vector<int32_t> table;      // block ids covering positions [0, computed)
  int64_t computed = 0;            // positions whose cache rows are valid
  int64_t published = 0;           // leading blocks offered to the prefix cache
  std::vector<uint64_t> hashes;    // chain hash of each published block
  int64_t cached_tokens = 0;       // prompt positions found in the prefix cache (first admission)
  bool admitted_once = false;
  int64_t generated = 0;
  std::optional<Sampler> sampler;
  std::optional<tok::StreamDecoder> dec;
  std::optional<StopMatcher> stop;
  std::map<int32_t, int32_t> counts;  // generated token -> occurrences (penalties)
  double t_arrival = 0, t_first = 0, t_last = 0;
  // MTP speculation (one draft per step; infer/speculative.h has the scheme): module 1's rows
  // live in a private cache (the pool holds main layers only), valid for [0, m1); hid holds
  // the main model's states after model.norm for positions [m1, m1 + rows) to catch up over.
  bool spec = false;
  KvCache mtp;
  int64_t m1 = 0;
  std::vector<float> hid;
  int32_t vids[2] = {};            // this step's verify rows: t_L, the draft
  bool verifying = false;
  int64_t drafted = 0, accepted = 0;  // this request's drafts (the log line)
  std::vector<float> q;            // the draft's distribution (sampling)
  std::string finish;              // set when done
};

struct Engine::Impl {
  std::unique_ptr<KvPool> pool;
  std::mutex mu;                   // guards incoming, and the metrics snapshot
  std::condition_variable cv;
  std::deque<std::unique_ptr<Seq>> incoming;
  std::deque<std::unique_ptr<Seq>> waiting;   // loop thread only
  std::vector<std::unique_ptr<Seq>> running;  // loop thread only
  uint64_t next_id = 1, next_order = 0;
  int64_t outstanding = 0;         // submitted and not yet retired (under mu)
  EngineMetrics m;                 // counters (loop thread writes, under mu)
  std::vector<int32_t> eos;
  ForwardScratch scratch;
  std::vector<float> logits;       // [rows with logits, V]
  std::vector<BatchSeq> batch;
  std::vector<Seq*> batch_seq;
  std::vector<int32_t> ids;
  std::vector<float> hidden;       // [rows wanting states, H]
  std::vector<float> mtp_logits;   // [V]
  std::vector<float> p;            // [V] target distribution (speculative sampling)
  std::vector<uint64_t> step_load; // [layers, E] this step's expert load (ForwardScratch)
  // Expert parallelism (serve/rebalance.h): this step's rows per rank [layers, P]; the
  // expert load since the last placement [layers, E]; steps since it; the placement the
  // loop applies first; rebalance() calls waiting for the loop (under mu).
  std::vector<int64_t> step_rank_load;
  std::vector<uint64_t> window_load;
  int64_t steps_since_place = 0;
  struct RebalanceCall {
    bool done = false;
    PlacementReport report;
    std::string error;
  };
  std::vector<std::shared_ptr<RebalanceCall>> rebalance_calls;
  std::condition_variable rebalance_cv;
  bool loop_done = false;          // under mu: the loop has exited (no call will be served)
  bool speculate = false;          // MTP drafting may run (mtp, or auto with MTP modules)
  std::unique_ptr<EpLeader> ep;    // expert-parallel serving: rank 0's broadcasts
  SpecPolicy policy;               // when to draft: its mode is fixed (submit reads it), the
                                   // rest is the loop thread's (reports are copied into m)
};

}  // namespace dsv3::serve
