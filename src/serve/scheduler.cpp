// The serving engine's loop (serve/engine.h has the design; engine_state.h the state).
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>

#include "core/check.h"
#include "core/clock.h"
#include "infer/speculative.h"
#include "model/linear.h"
#include "parallel/comm.h"
#include "serve/engine_state.h"

namespace dsv3::serve {
namespace {

// log p(id) at temperature 1 for every id: l − max − log Σ exp(l − max), in double.
double log_normaliser(const float* l, int64_t V) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i)
    if (l[i] > mx) mx = l[i];
  double sum = 0;
  for (int64_t i = 0; i < V; ++i) sum += std::exp(double(l[i]) - double(mx));
  return double(mx) + std::log(sum);
}

}  // namespace

void Engine::loop() {
  Impl& I = *impl_;
  KvPool& pool = *I.pool;
  const int64_t V = model_.vocab(), B = kBlockRows;

  auto release_blocks = [&](Seq& s) {
    for (int32_t b : s.table) pool.release(b);
    s.table.clear();
    s.hashes.clear();
    s.computed = s.published = 0;
    s.m1 = 0;  // module 1 catches up from the recomputed prefill's states
    s.hid.clear();
    s.verifying = false;
  };
  // Speculation on the log line: the mode; with a policy, what it chose for the batch size
  // the request ended at and why, and the request's own drafts.
  auto spec_note = [&](const Seq& s) {
    const SpecMode mode = I.m.spec_mode;
    if (!I.speculate)
      return mode == SpecMode::Off ? std::string(" spec=off")
                                   : str_cat(" spec=", spec_mode_name(mode), " (", I.m.spec_reason, ")");
    const SpecReport r = I.policy.report(std::max<int64_t>(1, int64_t(I.running.size())));
    std::string note = str_cat(" spec=", spec_mode_name(mode), " drafted=", s.drafted,
                               " accepted=", s.accepted);
    if (mode == SpecMode::Auto)
      note += str_cat(" chose=", r.drafting ? "mtp" : "plain", " (", r.reason, ")");
    if (!s.spec) note += " (this request plainly: a seed, penalties, a prefix-cache hit or a disaggregated prefill)";
    return note;
  };
  auto log_line = [&](const Seq& s) {
    if (!opt_.log_requests) return;
    const double ttft = s.t_first > 0 ? s.t_first - s.t_arrival : 0;
    const double dt = s.t_last - s.t_first;
    const double tps = s.generated > 1 && dt > 0 ? double(s.generated - 1) / dt : 0;
    std::fprintf(stderr,
                 "dsv3 serve: request %s prompt=%" PRId64 " cached=%" PRId64 " generated=%" PRId64
                 " ttft=%.3fs tokens/s=%.1f finish=%s%s\n",
                 s.req.tag.empty() ? std::to_string(s.stream->id()).c_str() : s.req.tag.c_str(),
                 s.n_prompt, s.cached_tokens, s.generated, ttft, tps, s.finish.c_str(),
                 spec_note(s).c_str());
  };
  // Ends a sequence: the Finish event (unless the client left), metrics, its blocks back.
  auto retire = [&](Seq& s) {
    // "cancelled": the client left; "error": it got an Error event already.
    const bool cancelled = s.finish == "cancelled" || s.finish == "error";
    if (!cancelled) {
      Event e;
      e.kind = Event::Kind::Finish;
      e.finish_reason = s.finish;
      e.prompt_tokens = s.n_prompt;
      e.cached_tokens = s.cached_tokens;
      e.completion_tokens = s.generated;
      // Text held back (an unfinished character, a possible stop string that never completed).
      if (s.dec && !s.stop->stopped()) {
        std::string tail = s.stop->push(s.dec->finish());
        if (!s.stop->stopped()) tail += s.stop->finish();
        e.text = std::move(tail);
      }
      s.stream->push(std::move(e));
    }
    {
      std::lock_guard<std::mutex> lk(I.mu);
      --I.outstanding;
      if (cancelled) {
        ++I.m.requests_cancelled;
      } else {
        ++I.m.requests_finished;
        if (s.t_first > 0) I.m.ttft.observe(s.t_first - s.t_arrival);
        if (s.generated > 1) I.m.tpot.observe((s.t_last - s.t_first) / double(s.generated - 1));
      }
    }
    release_blocks(s);
    log_line(s);
  };

  // The request fails: an Error event; the sweep below retires it.
  auto fail = [&](Seq& s, std::string message) {
    Event e;
    e.kind = Event::Kind::Error;
    e.finish_reason = std::move(message);
    s.stream->push(std::move(e));
    s.finish = "error";
  };
  // Retires and removes every sequence of q that has a finish reason.
  auto sweep = [&](auto& q) {
    for (auto& s : q)
      if (!s->finish.empty()) retire(*s);
    std::erase_if(q, [](const std::unique_ptr<Seq>& s) { return !s->finish.empty(); });
  };

  // Offers the sequence's newly full blocks to the prefix cache.
  auto publish = [&](Seq& s) {
    while (s.published + B <= s.computed) {
      const int64_t j = s.published / B;
      const uint64_t prev = j > 0 ? s.hashes[size_t(j - 1)] : 0;
      const int32_t* tk = s.tokens.data() + j * B;
      const uint64_t h = KvPool::chain_hash(prev, tk, B);
      pool.publish(s.table[size_t(j)], h, prev, tk);
      if (int64_t(s.hashes.size()) <= j) s.hashes.push_back(h);
      s.published += B;
    }
  };
  // Appends a new token and streams it; sets s.finish when it ends the request. l: the raw
  // logits it was drawn from (for logprobs), or nullptr.
  auto emit = [&](Seq& s, int32_t id, const float* l, double now, uint64_t& new_tokens) {
    Event e;
    e.kind = Event::Kind::Token;
    if (l && s.req.top_logprobs >= 0) {
      const double lse = log_normaliser(l, V);
      e.logprob = float(double(l[id]) - lse);
      const int64_t k = s.req.top_logprobs;
      std::vector<int32_t> idx(static_cast<size_t>(V));
      for (int64_t v = 0; v < V; ++v) idx[size_t(v)] = int32_t(v);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
        return l[a] > l[b] || (l[a] == l[b] && a < b);
      });
      for (int64_t j = 0; j < k; ++j)
        e.top.push_back({idx[size_t(j)], float(double(l[idx[size_t(j)]]) - lse)});
    }
    s.tokens.push_back(id);
    ++s.generated;
    ++new_tokens;
    ++s.counts[id];
    if (s.t_first == 0) s.t_first = now;
    s.t_last = now;
    e.id = id;
    const bool eos = !s.req.ignore_eos && std::find(I.eos.begin(), I.eos.end(), id) != I.eos.end();
    if (eos) {
      s.finish = "stop";
    } else {
      if (s.dec) e.text = s.stop->push(s.dec->push(id));
      if (s.stop->stopped()) s.finish = "stop";
    }
    if (s.finish.empty() &&
        (s.generated >= s.req.max_tokens || int64_t(s.tokens.size()) >= context_))
      s.finish = "length";
    s.stream->push(std::move(e));
  };
  // A plain step's token: penalties (OpenAI: l −= presence·[c > 0] + frequency·c over the
  // generated tokens), draw, emit with the unpenalised logits' logprobs.
  auto sample_emit = [&](Seq& s, float* l, double now, uint64_t& new_tokens) {
    std::vector<std::pair<int32_t, float>> saved;
    if (s.req.presence_penalty != 0 || s.req.frequency_penalty != 0)
      for (const auto& [id, c] : s.counts) {
        saved.emplace_back(id, l[id]);
        l[id] -= s.req.presence_penalty + s.req.frequency_penalty * float(c);
      }
    const int32_t id = s.sampler->sample(l, V);
    for (const auto& [sid, v] : saved) l[sid] = v;
    emit(s, id, l, now, new_tokens);
  };
  // MTP draft (infer/speculative.h, one draft): module 1 forwards positions [m1, L) — catch-up
  // over the tokens accepted since its last step, h^0 from s.hid — and its last row (token
  // t_L) drafts t_{L+1}. The verify rows are then [t_L, draft] at positions L, L + 1.
  // Returns whether the catch-up was longer than after a drafting step (1 or 2 positions):
  // then the step is `cold` for the policy (spec_policy.h).
  // Module 1's forward over [m1, L), with the last row's logits when drafting. Without,
  // it only catches up (kMtpCatchUpRows: bounds s.hid while auto decodes plainly).
  auto catch_up = [&](Seq& s, bool logits) {
    const int64_t L = s.computed, Hd = model_.config().hidden_size;
    DSV3_ASSERT(int64_t(s.hid.size()) == (L - s.m1) * Hd && L > s.m1);
    MtpArgs a;
    a.k = 1;
    a.ids = s.tokens.data() + s.m1 + 1;  // t_{i+1} for i in [m1, L)
    a.h_prev = s.hid.data();
    a.T = L - s.m1;
    if (logits) {
      I.mtp_logits.resize(size_t(V));
      a.logits = I.mtp_logits.data();
      a.logits_from = a.T - 1;
    }
    s.mtp.mtp_len[0] = s.m1;
    model_.mtp_forward(s.mtp, a, I.scratch);
    s.m1 = L;
    s.hid.clear();
  };
  auto draft = [&](Seq& s) {
    const bool cold = s.computed - s.m1 > 2;
    catch_up(s, true);
    int32_t d;
    if (s.req.sampling.temperature == 0) {
      d = s.sampler->sample(I.mtp_logits.data(), V);
    } else {
      s.sampler->distribution(I.mtp_logits.data(), V, &s.q);
      d = sample_from(s.q.data(), V, *s.sampler);
    }
    s.vids[0] = s.tokens.back();
    s.vids[1] = d;
    s.verifying = true;
    ++s.drafted;
    return cold;
  };
  // Verify: row 0's distribution decides the draft (greedy: its argmax; sampling: the
  // speculative accept rule, exact in distribution); accepted, row 1 gives a bonus token.
  // Rejected, the draft's cache row at L + 1 is left outside `computed` and overwritten later.
  // Disaggregation (Request::import_kv / export_kv). Import at admission: the transferred
  // rows into fresh blocks, then the first token from the transferred logits, as if this
  // engine had just prefilled the prompt. Returns the tokens emitted (0 or 1).
  auto import_prefill = [&](Seq& s) -> uint64_t {
    const KvSequence& kv = *s.req.import_kv;
    const int64_t P = s.n_prompt;
    while (int64_t(s.table.size()) < (P + B - 1) / B) {
      const int32_t b = pool.allocate();
      if (b < 0) {  // not expected: admission saw enough blocks
        fail(s, "no cache blocks for the transferred prefill");
        return 0;
      }
      s.table.push_back(b);
    }
    pool.write_rows(s.table.data(), P, kv.rows());
    s.computed = P;
    s.cached_tokens = kv.cached;  // the prefill instance's prefix-cache hit
    if (opt_.prefix_cache) publish(s);
    std::vector<float> l = kv.logits;  // sample_emit penalises in place
    s.req.import_kv.reset();           // a preempted sequence recomputes from its tokens
    uint64_t new_tokens = 0;
    try {
      sample_emit(s, l.data(), now_s(), new_tokens);
    } catch (const std::exception& ex) {
      fail(s, ex.what());
    }
    return new_tokens;
  };
  // Export after the forward that computed the prompt's last logits: rows and logits out,
  // finished without a token.
  auto export_prefill = [&](Seq& s, const float* l) {
    KvSequence& kv = *s.req.export_kv;
    const int64_t P = s.n_prompt;
    DSV3_ASSERT(s.computed == P);
    kv.tokens.assign(s.tokens.begin(), s.tokens.begin() + P);
    kv.cached = s.cached_tokens;
    pool.read_rows(s.table.data(), P, kv.alloc_rows(size_t(pool.n_layers() * P * pool.row_bytes())));
    kv.logits.assign(l, l + V);
    s.t_first = s.t_last = now_s();
    s.finish = "length";
  };

  int64_t step_accepted = 0;  // this step's accepted drafts (the policy's record)
  auto verify = [&](Seq& s, float* l, double now, uint64_t& new_tokens) {
    const int32_t d = s.vids[1];
    bool accepted;
    int32_t first;
    if (s.req.sampling.temperature == 0) {
      first = s.sampler->sample(l, V);
      accepted = first == d;
    } else {
      s.sampler->distribution(l, V, &I.p);
      const SpecDecision dec = speculative_accept(d, I.p.data(), s.q.data(), V, *s.sampler);
      accepted = dec.accepted;
      first = dec.token;
    }
    {
      std::lock_guard<std::mutex> lk(I.mu);
      ++I.m.spec_drafted;
      if (accepted) ++I.m.spec_accepted;
    }
    if (accepted) {
      ++s.accepted;
      ++step_accepted;
    }
    s.computed += accepted ? 2 : 1;
    if (!accepted) s.hid.resize(size_t(model_.config().hidden_size));  // position L's state only
    emit(s, first, l, now, new_tokens);
    if (accepted && s.finish.empty()) emit(s, s.sampler->sample(l + V, V), l + V, now, new_tokens);
  };

  // Expert-parallel serving: the other ranks allocate the same pool (serve/ep_step.h).
  if (I.ep) I.ep->setup(pool.n_blocks(), pool.n_layers(), context_);
  while (true) {
    {
      std::unique_lock<std::mutex> lk(I.mu);
      I.m.running = int64_t(I.running.size());
      // Arrivals not yet taken count as waiting (submit() counts them too): a reader never
      // sees an idle engine while a request it submitted is on its way in.
      I.m.waiting = int64_t(I.waiting.size() + I.incoming.size());
      I.m.kv_blocks_used = pool.used();
      if (I.waiting.empty() && I.running.empty())
        I.cv.wait(lk, [&] { return stop_.load() || !I.incoming.empty() || !I.rebalance_calls.empty(); });
      while (!I.incoming.empty()) {
        I.waiting.push_back(std::move(I.incoming.front()));
        I.incoming.pop_front();
      }
    }
    if (stop_.load()) break;
    // Expert placement changes between steps (serve/rebalance.h), when asked for.
    if (I.ep) serve_rebalance_calls();

    // Cancelled sequences go first: their blocks serve this step.
    for (auto& s : I.running)
      if (s->stream->cancelled()) s->finish = "cancelled";
    for (auto& s : I.waiting)
      if (s->stream->cancelled()) s->finish = "cancelled";
    sweep(I.running);
    sweep(I.waiting);

    // Admission, oldest first: prefix-cache lookup, then only if the pool can take the rest
    // of the prompt (decoding growth is met by preemption).
    while (int64_t(I.running.size()) < opt_.max_running && !I.waiting.empty()) {
      Seq& s = *I.waiting.front();
      if (s.generated >= s.req.max_tokens && !s.admitted_once) {  // max_tokens = 0
        s.finish = "length";
        retire(s);
        I.waiting.pop_front();
        continue;
      }
      const int64_t len = int64_t(s.tokens.size());
      // A speculating sequence needs the main states of every position for module 1's
      // catch-up, which a reused prefix would not give it. Under mtp it skips the lookup;
      // under auto the prefix cache comes first (the prefill it saves is certain, drafting's
      // gain is not): a sequence that finds its prefix decodes plainly.
      const bool importing = s.req.import_kv != nullptr;
      if (opt_.prefix_cache && !importing && !(s.spec && I.policy.mode() == SpecMode::Mtp)) {
        const int64_t full = (len - 1) / B;  // the last token is always forwarded (its logits)
        uint64_t prev = 0;
        for (int64_t j = 0; j < full; ++j) {
          const uint64_t h = KvPool::chain_hash(prev, s.tokens.data() + j * B, B);
          const int32_t b = pool.lookup(h, prev, s.tokens.data() + j * B);
          if (b < 0) break;
          s.table.push_back(b);
          s.hashes.push_back(h);
          prev = h;
        }
        s.computed = s.published = int64_t(s.table.size()) * B;
        if (!s.table.empty()) s.spec = false;
      }
      if (s.spec && s.mtp.capacity == 0) s.mtp = model_.new_mtp_cache(context_);
      const int64_t need = (len + B - 1) / B - int64_t(s.table.size());
      if (need > pool.available() && !I.running.empty()) {
        release_blocks(s);  // not now: wait for blocks to come back
        break;
      }
      if (!s.admitted_once) {
        s.admitted_once = true;
        s.cached_tokens = s.computed;
        std::lock_guard<std::mutex> lk(I.mu);
        I.m.prefix_queries += uint64_t(len - 1);
        I.m.prefix_hits += uint64_t(s.computed);
        I.m.prompt_tokens += uint64_t(s.n_prompt);
      }
      if (importing) {
        const uint64_t t = import_prefill(s);
        std::lock_guard<std::mutex> lk(I.mu);
        I.m.generation_tokens += t;
      }
      I.running.push_back(std::move(I.waiting.front()));
      I.waiting.pop_front();
    }
    sweep(I.running);  // imports whose first token ended them
    if (I.running.empty()) continue;

    // This step's rows: one token per decoding sequence; prefill chunks end at multiples of
    // prefill_chunk (so a prompt is cut the same way whatever else runs: batch invariance),
    // at least one chunk per step, more while the budget lasts. Blocks oldest first; when the
    // pool is dry the newest sequence is preempted (recomputed from its tokens later).
    std::sort(I.running.begin(), I.running.end(),
              [](const auto& a, const auto& b) { return a->order < b->order; });
    // Whether this step drafts is the policy's choice for its decode batch (the sequences
    // with one token to forward); the step's time, drafts included, is its cost.
    const double t_step = now_s();
    int64_t n_decoding = 0;
    for (const auto& s : I.running) n_decoding += int64_t(s->tokens.size()) - s->computed == 1;
    const bool drafting = I.speculate && n_decoding > 0 && I.policy.draft(n_decoding);
    bool cold = false;
    std::vector<std::pair<Seq*, int64_t>> plan;  // (sequence, tokens this step)
    int64_t budget_used = 0;
    for (size_t i = 0; i < I.running.size(); ++i) {
      Seq& s = *I.running[i];
      const int64_t len = int64_t(s.tokens.size()), C = opt_.prefill_chunk;
      int64_t T = len - s.computed;
      DSV3_ASSERT(T >= 1);
      s.verifying = false;
      if (T == 1 && s.spec && drafting && s.generated + 2 <= s.req.max_tokens && len + 1 < context_) {
        cold |= draft(s);
        T = 2;
      } else if (T == 1 && s.spec && s.computed - s.m1 >= kMtpCatchUpRows) {
        catch_up(s, false);
      } else if (T > 1) {
        T = std::min(len, (s.computed / C + 1) * C) - s.computed;
        if (budget_used > 0 && budget_used + T > C) continue;
        budget_used += T;
      }
      const int64_t need = (s.computed + T + B - 1) / B;
      bool preempted_self = false;
      while (int64_t(s.table.size()) < need) {
        const int32_t b = pool.allocate();
        if (b >= 0) {
          s.table.push_back(b);
          continue;
        }
        // Preempt the newest running sequence (possibly this one).
        Seq& victim = *I.running.back();
        release_blocks(victim);
        {
          std::lock_guard<std::mutex> lk(I.mu);
          ++I.m.preemptions;
        }
        std::erase_if(plan, [&](const auto& p) { return p.first == &victim; });
        const bool self = &victim == &s;
        I.waiting.push_front(std::move(I.running.back()));
        I.running.pop_back();
        if (self) {
          preempted_self = true;
          break;
        }
      }
      if (preempted_self) break;
      plan.emplace_back(&s, T);
    }
    if (plan.empty()) continue;

    // One forward: sequences of ≤ kLinearGemvMaxM rows first (Model::forward_batch).
    std::stable_partition(plan.begin(), plan.end(),
                          [](const auto& p) { return p.second <= kLinearGemvMaxM; });
    const size_t n = plan.size();
    I.batch.assign(n, BatchSeq{});
    int64_t n_logits = 0;
    std::vector<int64_t> hid_off(n, 0);
    int64_t n_hid = 0;
    for (size_t i = 0; i < n; ++i) {
      Seq& s = *plan[i].first;
      if (s.verifying) n_logits += 2;
      else if (s.computed + plan[i].second == int64_t(s.tokens.size())) ++n_logits;
      if (s.spec) {
        hid_off[i] = n_hid;
        n_hid += plan[i].second;
      }
    }
    const int64_t H = model_.config().hidden_size;
    if (int64_t(I.hidden.size()) < n_hid * H) I.hidden.resize(size_t(n_hid * H));
    if (int64_t(I.logits.size()) < n_logits * V) I.logits.resize(size_t(n_logits * V));
    int64_t li = 0;
    std::vector<float*> seq_logits(n, nullptr);
    for (size_t i = 0; i < n; ++i) {
      Seq& s = *plan[i].first;
      BatchSeq& b = I.batch[i];
      b.ids = s.verifying ? s.vids : s.tokens.data() + s.computed;
      b.T = plan[i].second;
      b.p0 = s.computed;
      b.table = s.table.data();
      if (s.spec) b.hidden = I.hidden.data() + hid_off[i] * H;
      if (s.verifying) {
        b.logits = seq_logits[i] = I.logits.data() + li * V;
        b.logits_from = 0;
        li += 2;
      } else if (s.computed + b.T == int64_t(s.tokens.size())) {
        b.logits = seq_logits[i] = I.logits.data() + li * V;
        b.logits_from = b.T - 1;
        ++li;
      }
    }
    try {
      if (I.ep) I.ep->step(I.batch.data(), int(n), opt_.batch_invariant, B);
      I.scratch.expert_load = I.step_load.empty() ? nullptr : I.step_load.data();
      I.scratch.rank_load = I.step_rank_load.empty() ? nullptr : I.step_rank_load.data();
      std::fill(I.step_load.begin(), I.step_load.end(), 0);
      std::fill(I.step_rank_load.begin(), I.step_rank_load.end(), 0);
      model_.forward_batch(pool.view(), I.batch.data(), int(n), opt_.batch_invariant, I.scratch);
      I.scratch.expert_load = nullptr;
      I.scratch.rank_load = nullptr;
    } catch (const std::exception& ex) {  // not expected: inputs were checked at submit
      // Under expert parallelism the other ranks may wait in this step's collectives: end
      // the job (parallel/comm.h) rather than leave them hanging.
      if (I.ep) dist::fatal(std::string("the forward failed: ") + ex.what());
      for (size_t i = 0; i < n; ++i)
        fail(*plan[i].first, std::string("the forward failed: ") + ex.what());
      sweep(I.running);
      continue;
    }
    const double step_s = now_s() - t_step;
    SpecStep ps;  // a decode-only step (a prefill chunk would swamp its cost)
    ps.seqs = 0;
    ps.cold = cold;
    bool decode_only = true;
    for (const auto& [sp, T] : plan) {
      decode_only &= sp->verifying || T == 1;
      ++ps.seqs;
      ps.drafted += sp->verifying;
    }
    step_accepted = 0;

    // Sample, emit, publish full blocks.
    const double now = now_s();
    uint64_t new_tokens = 0;
    for (size_t i = 0; i < n; ++i) {
      Seq& s = *plan[i].first;
      try {  // a failure here (e.g. an id the tokenizer lacks) fails this request only
        if (s.spec) {  // keep the new positions' states for module 1's next catch-up
          const float* h = I.hidden.data() + hid_off[i] * H;
          s.hid.insert(s.hid.end(), h, h + plan[i].second * H);
        }
        if (s.verifying) {
          verify(s, seq_logits[i], now, new_tokens);
        } else {
          s.computed += plan[i].second;
          if (seq_logits[i] && s.req.export_kv) export_prefill(s, seq_logits[i]);
          else if (seq_logits[i]) sample_emit(s, seq_logits[i], now, new_tokens);
        }
        if (opt_.prefix_cache) publish(s);
      } catch (const std::exception& ex) {
        fail(s, ex.what());
      }
    }
    ps.accepted = step_accepted;
    const bool record = I.speculate && decode_only && ps.seqs > 0;
    if (record) I.policy.record(ps, step_s);
    sweep(I.running);

    std::unique_lock<std::mutex> lk(I.mu);  // the gauges are set at the top of the loop
    I.m.generation_tokens += new_tokens;
    for (size_t l = 0; l < I.m.expert_load.size(); ++l) {
      std::vector<uint64_t>& row = I.m.expert_load[l];
      const uint64_t* add = I.step_load.data() + l * row.size();
      for (size_t e = 0; e < row.size(); ++e) row[e] += add[e];
    }
    for (size_t i = 0; i < I.window_load.size(); ++i) I.window_load[i] += I.step_load[i];
    for (size_t l = 0; l < I.m.rank_load.size(); ++l) {
      std::vector<int64_t>& row = I.m.rank_load[l];
      for (size_t r = 0; r < row.size(); ++r) {
        row[r] += I.step_rank_load[l * row.size() + r];
        I.m.rank_rows_total[r] += I.step_rank_load[l * row.size() + r];
      }
    }
    ++I.steps_since_place;
    ++I.m.steps;
    if (record) I.m.spec = I.policy.reports();
    lk.unlock();
    // A rebalance that comes due runs now, not after the next idle wait (it would then add
    // its rebinding to the next request's first token).
    if (I.ep && opt_.rebalance_every > 0 && I.steps_since_place >= opt_.rebalance_every) {
      try {
        replan();
      } catch (const Error& ex) {
        std::fprintf(stderr, "dsv3 serve: rebalance skipped: %s\n", ex.what());
        I.steps_since_place = 0;
      }
    }
  }

  if (I.ep) I.ep->stop();  // the other ranks leave ep_follow and exit
  serve_rebalance_calls("the server shut down before the rebalance ran");

  // Shutting down: whatever is left gets an error event.
  std::lock_guard<std::mutex> lk(I.mu);
  auto fail_all = [&](auto& q) {
    for (auto& s : q) {
      fail(*s, "the server shut down before this request finished");
      release_blocks(*s);
    }
  };
  fail_all(I.waiting);
  fail_all(I.incoming);
  fail_all(I.running);
  I.outstanding = 0;
  I.waiting.clear();
  I.incoming.clear();
  I.running.clear();
  I.loop_done = true;
  I.rebalance_cv.notify_all();
  I.m.running = I.m.waiting = 0;
  I.m.kv_blocks_used = pool.used();
}

}  // namespace dsv3::serve
