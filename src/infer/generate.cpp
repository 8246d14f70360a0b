#include "infer/generate.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "core/check.h"
#include "core/clock.h"
#include "infer/stop.h"
#include "tokenizer/tokenizer.h"

namespace dsv3 {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Eos: return "eos";
    case StopReason::MaxTokens: return "length";
    case StopReason::StopString: return "stop";
    case StopReason::Context: return "context";
  }
  return "?";
}

Generator::Generator(Model& model, const tok::Tokenizer* tokenizer, int64_t context)
    : model_(model), tok_(tokenizer), spec_(model) {
  DSV3_CHECK(context >= 0, "the context size must be positive, got ", context);
  if (context == 0) context = std::min<int64_t>(model.config().max_position_embeddings, 4096);
  cache_ = model_.new_cache(context);
  logits_.resize(size_t(model_.vocab()));
}

void Generator::reset() {
  history_.clear();
  cache_.truncate(0);
  spec_.reset();
}

void Generator::prefill(const std::vector<int32_t>& prompt, int64_t reuse, bool keep_hidden) {
  cache_.truncate(reuse);
  const int64_t P = int64_t(prompt.size()), T = P - reuse, H = model_.config().hidden_size;
  if (keep_hidden) hidden_.resize(size_t(T * H));
  // In chunks ending at multiples of kPrefillChunk: memory stays bounded on long prompts, and
  // the server (serve/engine.h) cuts a prompt at the same places, so both compute the same bits.
  for (int64_t p = reuse; p < P;) {
    const int64_t end = std::min(P, (p / kPrefillChunk + 1) * kPrefillChunk);
    ForwardArgs a;
    a.ids = prompt.data() + p;
    a.T = end - p;
    if (end == P) {
      a.logits = logits_.data();
      a.logits_from = a.T - 1;  // only the last position's logits are needed
    }
    if (keep_hidden) a.hidden = hidden_.data() + (p - reuse) * H;
    model_.forward(cache_, a, scratch_);
    p = end;
  }
  if (keep_hidden) spec_.after_prefill(hidden_.data(), reuse, T);
}

void Generator::decode_step(Sampler& sampler, std::vector<int32_t>& out) {
  DSV3_ASSERT(cache_.len + 1 == int64_t(history_.size()));
  ForwardArgs a;
  a.ids = &history_.back();
  a.T = 1;
  a.logits = logits_.data();
  model_.forward(cache_, a, scratch_);
  out.clear();
  out.push_back(sampler.sample(logits_.data(), model_.vocab()));
}

GenerateResult Generator::generate(const std::vector<int32_t>& prompt, const GenerateOptions& o,
                                   const OnToken& on_token) {
  const int64_t P = int64_t(prompt.size()), C = cache_.capacity, V = model_.vocab();
  DSV3_CHECK(P > 0, "the prompt is empty: generation needs at least one token");
  for (size_t i = 0; i < prompt.size(); ++i)
    DSV3_CHECK(prompt[i] >= 0 && prompt[i] < V, "token id ", prompt[i], " at prompt position ", i,
               " is outside the model's vocabulary [0, ", V, ")");
  DSV3_CHECK(P <= C, "the prompt has ", P, " tokens, more than the context of ", C,
             " positions (raise --context, at most max_position_embeddings = ",
             model_.config().max_position_embeddings, ")");
  DSV3_CHECK(o.max_new_tokens >= 0, "max_new_tokens must be >= 0, got ", o.max_new_tokens);
  DSV3_CHECK(o.stop.empty() || tok_, "stop strings need the model's tokenizer (tokenizer.json)");
  validate(o.sampling);
  DSV3_CHECK(o.speculative_draft >= 0, "the number of draft tokens must be >= 0, got ",
             o.speculative_draft);
  DSV3_CHECK(o.speculative_min_p >= 0 && o.speculative_min_p <= 1,
             "the draft probability threshold must be in [0, 1], got ", o.speculative_min_p);
  const SpecMode mode = o.speculative_draft > 0 ? o.speculative_mode : SpecMode::Off;
  const char* no_mtp = model_.config().num_nextn_predict_layers == 0
                           ? "the config has num_nextn_predict_layers = 0"
                           : "the model was loaded without them (ModelOptions.with_mtp)";
  DSV3_CHECK(mode != SpecMode::Mtp || model_.n_mtp() >= 1,
             "speculative decoding needs the model's MTP modules, but ", no_mtp);
  // Auto on a model without MTP modules is plain decoding, silently. So is auto sampling:
  // which steps draft depends on timing, and a drafting step consumes the sampler's random
  // numbers differently, so drafting would make a seed's output vary from run to run (mtp
  // drafts every step and keeps it fixed).
  const bool sampled = o.sampling.temperature > 0;
  const bool speculate =
      mode == SpecMode::Mtp || (mode == SpecMode::Auto && model_.n_mtp() >= 1 && !sampled);
  if (speculate && (policy_.mode() != mode || !(policy_.options() == o.speculative_policy)))
    policy_ = SpecPolicy(mode, o.speculative_policy);

  std::vector<int32_t> eos;
  if (o.stop_at_eos) {
    if (model_.config().eos_token_id >= 0) eos.push_back(int32_t(model_.config().eos_token_id));
    if (tok_ && tok_->eos_id() >= 0 && (eos.empty() || tok_->eos_id() != eos.front()))
      eos.push_back(tok_->eos_id());
  }

  // Prefix reuse: positions [0, reuse) of the cache already hold prompt[0, reuse). At least
  // one prompt token is forwarded, because the next token's logits come from the last one.
  int64_t lcp = 0;
  const int64_t held = std::min<int64_t>(cache_.len, int64_t(history_.size()));
  while (lcp < held && lcp < P && history_[size_t(lcp)] == prompt[size_t(lcp)]) ++lcp;
  int64_t reuse = std::min(lcp, P - 1);
  // The MTP caches keep only rows whose tokens lie in the shared prefix; a speculative
  // prefill also starts where module 1 must catch up, to hand it the main hidden rows.
  spec_.begin(cache_, lcp);
  if (speculate) reuse = std::min(reuse, spec_.prefill_from());

  GenerateResult r;
  GenerateStats& st = r.stats;
  st.prompt_tokens = P;
  st.reused_tokens = reuse;
  st.prefill_tokens = P - reuse;
  st.speculative = speculate;

  std::optional<tok::StreamDecoder> dec;
  if (tok_) dec.emplace(*tok_);
  StopMatcher stop(o.stop);
  bool stopped = false;
  // Takes one new token; returns true when it ends generation (EOS or a stop string).
  const auto emit = [&](int32_t id) {
    history_.push_back(id);
    r.ids.push_back(id);
    if (std::find(eos.begin(), eos.end(), id) != eos.end()) {
      r.stop_reason = StopReason::Eos;
      if (on_token) on_token(id, "");
      return true;
    }
    std::string piece;
    if (dec) piece = stop.push(dec->push(id));
    r.text += piece;
    if (on_token) on_token(id, piece);
    if (stop.stopped()) r.stop_reason = StopReason::StopString;
    return stop.stopped();
  };

  auto t0 = std::chrono::steady_clock::now();
  try {
    prefill(prompt, reuse, speculate);
  } catch (...) {
    reset();  // the cache may hold part of the prompt: forget it all
    throw;
  }
  history_ = prompt;
  st.prefill_s = seconds_since(t0);
  Sampler sampler(o.sampling);
  std::vector<int32_t> step;  // tokens one step produced (1 for plain decoding)
  SpeculativeStats plain_steps;  // Auto's plain steps (Speculator::step without drafts)
  bool have_logits = true;    // logits_ are those of history_.back()'s position
  t0 = std::chrono::steady_clock::now();
  while (!stopped) {
    if (int64_t(r.ids.size()) >= o.max_new_tokens) {
      r.stop_reason = StopReason::MaxTokens;
      break;
    }
    // history_ ≤ C keeps every held token placeable in the cache (the next turn's prefix).
    if (int64_t(history_.size()) >= C) {
      r.stop_reason = StopReason::Context;
      break;
    }
    if (have_logits) {
      step.assign(1, sampler.sample(logits_.data(), V));
      have_logits = false;
    } else if (speculate) {
      // A step yields at most n + 1 tokens: draft no more than max_new_tokens and the
      // context can still take (history_ ≤ C), so no verified token is wasted. A plain step
      // of a speculative call goes through the Speculator too (with no draft), which keeps
      // its main state for module 1's next catch-up.
      const int64_t room = std::min(o.max_new_tokens - int64_t(r.ids.size()),
                                    C - int64_t(history_.size()));
      const bool drafting = policy_.draft(1);
      const int64_t n = drafting ? std::min(o.speculative_draft, room - 1) : 0;
      SpeculativeStats& into = drafting ? st.spec : plain_steps;
      if (n == 0 && spec_.behind(cache_) >= kMtpCatchUpRows) spec_.catch_up(cache_, scratch_, history_);
      SpecStep ps;
      ps.cold = n > 0 && spec_.behind(cache_) > o.speculative_draft + 1;
      ps.drafted = -into.drafted;
      ps.accepted = -into.accepted;
      const double t = now_s();
      spec_.step(cache_, scratch_, history_, n, o.speculative_min_p, sampler, into, step);
      ps.drafted += into.drafted;
      ps.accepted += into.accepted;
      policy_.record(ps, now_s() - t);
      ++st.decode_steps;
    } else {
      decode_step(sampler, step);
      ++st.decode_steps;
    }
    // The same limits as for one token, checked before each token of a multi-token step.
    for (size_t i = 0; i < step.size() && !stopped; ++i) {
      if (i > 0 && int64_t(r.ids.size()) >= o.max_new_tokens) break;
      if (i > 0 && int64_t(history_.size()) >= C) break;
      stopped = emit(step[i]);
    }
    // Tokens after a stop inside an accepted run are dropped: the cache must hold only
    // history tokens (it may hold all of them, the next call's prefix reuse allows it).
    cache_.truncate(std::min<int64_t>(cache_.len, int64_t(history_.size())));
  }
  st.decode_s = seconds_since(t0);

  if (dec && !stopped) {
    // Flush an unfinished character and what the matcher held back; a stop string can
    // still complete in the flushed bytes.
    std::string tail = stop.push(dec->finish());
    if (stop.stopped()) r.stop_reason = StopReason::StopString;
    else tail += stop.finish();
    r.text += tail;
    if (on_token && !tail.empty()) on_token(-1, tail);
  }
  st.new_tokens = int64_t(r.ids.size());
  if (speculate) {
    st.speculation = policy_.report(1);
  } else {
    st.speculation.mode = mode;  // off, or auto without MTP modules or sampling
    st.speculation.reason =
        mode == SpecMode::Off      ? std::string("speculation is off")
        : model_.n_mtp() == 0      ? std::string("no MTP module to draft with: ") + no_mtp
                                   : std::string("sampling: auto keeps a seed's output fixed, which "
                                                 "timed drafting would not (mtp drafts reproducibly)");
  }
  st.prefill_tokens_per_s = st.prefill_s > 0 ? double(st.prefill_tokens) / st.prefill_s : 0;
  const int64_t decode_tokens = std::max<int64_t>(0, st.new_tokens - 1);
  st.decode_tokens_per_s = st.decode_s > 0 ? double(decode_tokens) / st.decode_s : 0;
  return r;
}

}  // namespace dsv3
