// The serving engine's scheduler loop (serve/engine.h). Plain state: an incoming queue
// (filled by submit() under a mutex), a waiting deque and a running list owned by the loop
// thread, the block pool. Each step: take arrivals, drop cancelled sequences, admit, pick
// this step's rows (one token per decoding sequence, prefill chunks within the budget),
// one Model::forward_batch, sample, emit, publish full blocks to the prefix cache, retire.
#include "serve/engine.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>

#include "core/check.h"
#include "core/clock.h"
#include "infer/stop.h"
#include "model/model.h"
#include "parallel/comm.h"
#include "serve/engine_state.h"
#include "tokenizer/tokenizer.h"

namespace dsv3::serve {

// ---------------------------------------------------------------------------------------------
// Stream and histogram

bool Stream::next(Event* e, double timeout_s) {
  std::unique_lock<std::mutex> lk(mu_);
  if (!cv_.wait_for(lk, std::chrono::duration<double>(timeout_s), [&] { return !q_.empty(); }))
    return false;
  *e = std::move(q_.front());
  q_.pop_front();
  return true;
}

void Stream::push(Event e) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    q_.push_back(std::move(e));
  }
  cv_.notify_all();
}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v;
  ++count;
}

namespace {

Histogram make_histogram(std::vector<double> bounds) {
  Histogram h;
  h.bounds = std::move(bounds);
  h.counts.assign(h.bounds.size() + 1, 0);
  return h;
}

constexpr int64_t kDefaultPoolCapBytes = int64_t(4) << 30;

}  // namespace

Engine::Engine(Model& model, const tok::Tokenizer* tokenizer, const EngineOptions& o)
    : model_(model), tok_(tokenizer), opt_(o), impl_(std::make_unique<Impl>()) {
  const ModelConfig& c = model.config();
  DSV3_CHECK(o.max_running >= 1, "--max-running must be >= 1, got ", o.max_running);
  DSV3_CHECK(o.max_queue >= 0, "--max-queue must be >= 0, got ", o.max_queue);
  DSV3_CHECK(o.prefill_chunk >= 1, "--prefill-chunk must be >= 1, got ", o.prefill_chunk);
  DSV3_CHECK(o.kv_cache_mb >= 0, "--kv-cache-mb must be >= 0, got ", o.kv_cache_mb);
  DSV3_CHECK(o.speculative_draft == 0 || o.speculative_draft == 1,
             "the server drafts one token per step with MTP (DeepSeek-V3 has one MTP module); got ",
             o.speculative_draft, " drafts");
  const SpecMode spec_mode = o.speculative_draft > 0 ? o.speculative_mode : SpecMode::Off;
  DSV3_CHECK(spec_mode != SpecMode::Mtp || model.n_mtp() >= 1,
             "speculative decoding needs the model's MTP module, but it was not loaded");
  // Auto on a model without MTP modules decodes plainly, silently.
  impl_->speculate = spec_mode == SpecMode::Mtp || (spec_mode == SpecMode::Auto && model.n_mtp() >= 1);
  if (o.ep && o.ep->size() > 1) {
    // The MTP drafts run outside forward_batch, which the other ranks would have to follow.
    DSV3_CHECK(!impl_->speculate, "expert-parallel serving does not draft with MTP");
    DSV3_CHECK(o.ep->rank() == 0 && model.ep() == o.ep, "expert-parallel serving: the engine "
               "runs on rank 0 with the model loaded over the same group");
    impl_->ep = std::make_unique<EpLeader>(*o.ep);
  }
  DSV3_CHECK(o.redundant_experts >= 0, "--redundant-experts must be >= 0, got ", o.redundant_experts);
  DSV3_CHECK(o.rebalance_every >= 0, "--rebalance-every must be >= 0, got ", o.rebalance_every);
  DSV3_CHECK(impl_->ep || (o.redundant_experts == 0 && o.rebalance_every == 0 && o.start_placement.slots == 0),
             "redundant experts and rebalancing need expert-parallel serving (mpirun -np N dsv3 serve --ep N)");
  if (impl_->ep) {
    const int P = o.ep->size();
    impl_->m.rank_load.assign(size_t(c.num_hidden_layers), std::vector<int64_t>(size_t(P), 0));
    impl_->m.rank_rows_total.assign(size_t(P), 0);
    impl_->step_rank_load.assign(size_t(c.num_hidden_layers * P), 0);
    impl_->m.placement = o.start_placement;  // every rank applied it before loading its experts
  }
  if (impl_->speculate) impl_->policy = SpecPolicy(spec_mode, o.speculative_policy);
  impl_->m.spec_mode = spec_mode;
  if (!impl_->speculate)
    impl_->m.spec_reason = spec_mode == SpecMode::Auto ? "no MTP module to draft with" : "speculation is off";
  context_ = o.context > 0 ? o.context : std::min<int64_t>(c.max_position_embeddings, 4096);
  DSV3_CHECK(context_ <= c.max_position_embeddings, "--context ", context_,
             " exceeds the model's max_position_embeddings (", c.max_position_embeddings, ")");
  model_.reserve_positions(context_);
  const int64_t layers = c.num_hidden_layers, row = mla_cache_row(c);
  const CacheDtype kv = model.kv_cache_dtype();
  const int64_t per_block = KvPool::bytes_per_block(kBlockRows, layers, row, kv);
  const int64_t blocks_per_seq = (context_ + kBlockRows - 1) / kBlockRows;
  int64_t n_blocks;
  if (o.kv_cache_blocks > 0) {
    n_blocks = o.kv_cache_blocks;
  } else if (o.kv_cache_mb > 0) {
    n_blocks = (o.kv_cache_mb << 20) / per_block;
    DSV3_CHECK(n_blocks >= 1, "--kv-cache-mb ", o.kv_cache_mb, " holds no cache block (one block = ",
               per_block, " bytes: ", kBlockRows, " positions x ", layers, " layers x ", row,
               " values in ", cache_dtype_name(kv), ")");
  } else {
    n_blocks = std::min(o.max_running * blocks_per_seq,
                        std::max<int64_t>(blocks_per_seq, kDefaultPoolCapBytes / per_block));
  }
  impl_->pool = std::make_unique<KvPool>(n_blocks, kBlockRows, layers, row, kv);
  if (c.eos_token_id >= 0) impl_->eos.push_back(int32_t(c.eos_token_id));
  if (tok_ && tok_->eos_id() >= 0 &&
      std::find(impl_->eos.begin(), impl_->eos.end(), tok_->eos_id()) == impl_->eos.end())
    impl_->eos.push_back(tok_->eos_id());
  if (tok_ && tok_->vocab_size() < c.vocab_size)
    std::fprintf(stderr, "dsv3 serve: warning: the tokenizer knows %d ids, the model emits up to %"
                 PRId64 "; a request that samples an unknown id fails with an error\n",
                 int(tok_->vocab_size()), c.vocab_size);
  EngineMetrics& m = impl_->m;
  m.ttft = make_histogram({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
  m.tpot = make_histogram({0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28});
  m.kv_blocks_total = n_blocks;
  if (c.n_routed_experts > 0) {
    m.expert_load.assign(size_t(c.num_hidden_layers), std::vector<uint64_t>(size_t(c.n_routed_experts), 0));
    impl_->step_load.assign(size_t(c.num_hidden_layers * c.n_routed_experts), 0);
    impl_->window_load.assign(size_t(c.num_hidden_layers * c.n_routed_experts), 0);
  }
  m.kv_block_positions = kBlockRows;
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  stop_.store(true);
  impl_->cv.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<Stream> Engine::submit(Request r) {
  const int64_t V = model_.vocab(), P = int64_t(r.prompt.size());
  DSV3_CHECK(P > 0, "the prompt is empty: at least one token is needed");
  DSV3_CHECK(!(r.import_kv && r.export_kv), "a request cannot both import and export its prefill");
  if (r.export_kv) r.max_tokens = 1;  // the prefill's logits are its only output
  if (r.import_kv) {
    const KvSequence& kv = *r.import_kv;
    DSV3_CHECK(kv.tokens == r.prompt, "the transferred prefill is of another prompt (",
               kv.tokens.size(), " tokens, the request has ", P, ")");
    const int64_t want = impl_->pool->n_layers() * P * impl_->pool->row_bytes();
    DSV3_CHECK(kv.buf && kv.rows_off + kv.rows_len <= kv.buf->size() && int64_t(kv.rows_len) == want &&
                   int64_t(kv.logits.size()) == V,
               "the transferred prefill has ", kv.rows_len, " bytes of rows and ", kv.logits.size(),
               " logits; this model needs ", want, " and ", V);
  }
  for (size_t i = 0; i < r.prompt.size(); ++i)
    DSV3_CHECK(r.prompt[i] >= 0 && r.prompt[i] < V, "token id ", r.prompt[i], " at prompt position ",
               i, " is outside the model's vocabulary [0, ", V, ")");
  DSV3_CHECK(r.max_tokens >= 0, "max_tokens must be >= 0, got ", r.max_tokens);
  DSV3_CHECK(P + r.max_tokens <= context_, "the prompt (", P, " tokens) plus max_tokens (",
             r.max_tokens, ") exceeds the context of ", context_, " positions");
  const int64_t need = (P + r.max_tokens + kBlockRows - 1) / kBlockRows;
  DSV3_CHECK(need <= impl_->pool->n_blocks(), "the prompt plus max_tokens needs ", need,
             " cache blocks but the whole pool has ", impl_->pool->n_blocks(),
             " (raise --kv-cache-mb)");
  validate(r.sampling);
  DSV3_CHECK(std::isfinite(r.presence_penalty) && std::abs(r.presence_penalty) <= 2,
             "presence_penalty must be in [-2, 2], got ", r.presence_penalty);
  DSV3_CHECK(std::isfinite(r.frequency_penalty) && std::abs(r.frequency_penalty) <= 2,
             "frequency_penalty must be in [-2, 2], got ", r.frequency_penalty);
  DSV3_CHECK(r.top_logprobs >= -1 && r.top_logprobs <= 20, "top_logprobs must be in [0, 20], got ",
             r.top_logprobs);
  for (const std::string& s : r.stop) DSV3_CHECK(!s.empty(), "a stop string is empty");
  DSV3_CHECK(r.stop.empty() || tok_, "stop strings need the model's tokenizer");

  auto s = std::make_unique<Seq>();
  s->tokens = r.prompt;
  s->n_prompt = P;
  s->sampler.emplace(r.sampling);
  if (tok_) s->dec.emplace(*tok_);
  s->stop.emplace(r.stop);
  // Penalties depend on every earlier token, which a verify row cannot know: plain steps.
  // Under auto a seeded sampled request decodes plainly too (Request::seeded).
  const bool keep_seed = impl_->policy.mode() == SpecMode::Auto && r.seeded && r.sampling.temperature > 0;
  // Disaggregated prefills carry no main-model states for MTP's catch-up: plain steps.
  s->spec = impl_->speculate && r.presence_penalty == 0 && r.frequency_penalty == 0 && !keep_seed &&
            !r.import_kv && !r.export_kv;
  s->req = std::move(r);
  s->t_arrival = now_s();
  std::shared_ptr<Stream> st;
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    if (!admitting_.load() || impl_->outstanding >= opt_.max_queue + opt_.max_running) {
      ++impl_->m.requests_rejected;
      return nullptr;
    }
    st = std::make_shared<Stream>(impl_->next_id++);
    s->stream = st;
    s->order = impl_->next_order++;
    ++impl_->outstanding;
    ++impl_->m.waiting;
    impl_->incoming.push_back(std::move(s));
  }
  impl_->cv.notify_all();
  return st;
}

void Engine::stop_admitting() { admitting_.store(false); }

bool Engine::drain(double deadline_s) {
  const double t_end = now_s() + deadline_s;
  while (now_s() < t_end) {
    {
      std::lock_guard<std::mutex> lk(impl_->mu);
      if (impl_->outstanding == 0) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stop_.store(true);  // the loop fails what is left and exits
  impl_->cv.notify_all();
  if (thread_.joinable()) thread_.join();
  return false;
}

PlacementReport Engine::rebalance(double timeout_s) {
  DSV3_CHECK(impl_->ep, "rebalancing needs expert-parallel serving (mpirun -np N dsv3 serve --ep N)");
  auto call = std::make_shared<Impl::RebalanceCall>();
  std::unique_lock<std::mutex> lk(impl_->mu);
  DSV3_CHECK(!impl_->loop_done, "the engine has stopped");
  impl_->rebalance_calls.push_back(call);
  impl_->cv.notify_all();
  impl_->rebalance_cv.wait_for(lk, std::chrono::duration<double>(timeout_s),
                               [&] { return call->done || impl_->loop_done; });
  if (!call->done) {  // withdrawn: a client told it failed must not see it happen later
    auto& q = impl_->rebalance_calls;
    q.erase(std::remove(q.begin(), q.end(), call), q.end());
  }
  DSV3_CHECK(call->done, impl_->loop_done ? "the engine stopped before the rebalance ran"
                                          : str_cat("the rebalance did not run within ", timeout_s, " s"));
  DSV3_CHECK(call->error.empty(), call->error);
  return call->report;
}

EngineMetrics Engine::metrics() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->m;
}

}  // namespace dsv3::serve
