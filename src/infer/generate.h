// Autoregressive text generation over a Model: a Generator owns the latent KV cache and the
// token history it holds, so successive calls (chat turns) prefill only the tokens past the
// longest common prefix of the cached history and the new prompt.
//
// One call: prefill the prompt's new part (one forward, logits of the last position only),
// sample, then decode steps until a stop. A step is either plain (one token) or speculative
// (infer/speculative.h: MTP drafts + one verify forward + KvCache::truncate of the rejected
// tokens, several tokens per step); the loop emits, stops on and counts tokens the same way
// for both. Under SpecMode::Auto a SpecPolicy (infer/spec_policy.h), kept across calls,
// picks one or the other before every step from the measured costs and acceptance.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "infer/spec_policy.h"
#include "infer/speculative.h"
#include "model/model.h"

namespace dsv3 {

namespace tok { class Tokenizer; }

// Prompt positions forwarded per prefill call; chunks end at multiples of it (the server's
// default --prefill-chunk too, so both cut a prompt alike).
inline constexpr int64_t kPrefillChunk = 256;

struct GenerateOptions {
  int64_t max_new_tokens = 128;    // ≥ 0
  SamplingParams sampling;         // a fresh Sampler (seeded from sampling.seed) per call
  std::vector<std::string> stop;   // stop strings (need a tokenizer); not part of the text
  bool stop_at_eos = true;         // config eos_token_id, and the tokenizer's eos if different
  // MTP speculative decoding: draft this many tokens per step (0 = off). Needs a model
  // loaded with its MTP modules; greedy output is that of plain decoding, sampled output
  // has the same distribution.
  int64_t speculative_draft = 0;
  // When to draft, with speculative_draft > 0: Mtp every step; Auto only while drafting pays
  // on this model and machine (infer/spec_policy.h; on a model without MTP modules Auto is
  // plain decoding); Off never. Output does not depend on it.
  SpecMode speculative_mode = SpecMode::Mtp;
  SpecPolicyOptions speculative_policy;  // Auto: thresholds and the cost source
  // Adaptive draft length (infer/speculative.h): stop drafting once the product of the
  // drafts' own probabilities falls below this (0: always speculative_draft). Output is
  // unaffected; only speed changes.
  double speculative_min_p = 0;
};

enum class StopReason {
  Eos,         // "eos": an end-of-sequence token was sampled (kept in ids, not in text)
  MaxTokens,   // "length": max_new_tokens reached
  StopString,  // "stop": a stop string completed (ids end with the token that completed it)
  Context,     // "context": the history filled the context (prompt + new = --context)
};
const char* stop_reason_name(StopReason r);

struct GenerateStats {
  int64_t prompt_tokens = 0;   // the prompt given
  int64_t reused_tokens = 0;   // prompt tokens already in the cache (prefix reuse)
  int64_t prefill_tokens = 0;  // prompt tokens forwarded: prompt_tokens − reused_tokens
  int64_t new_tokens = 0;
  int64_t decode_steps = 0;    // decode forwards (the first new token comes from the prefill)
  double prefill_s = 0, prefill_tokens_per_s = 0;
  // decode tokens: the new tokens after the first (which comes from the prefill's logits);
  // decode tokens/s = decode tokens / decode_s (= decode_steps / decode_s when plain).
  double decode_s = 0, decode_tokens_per_s = 0;
  bool speculative = false;     // a speculative call (mode mtp, or auto on a model with MTP)
  SpeculativeStats spec;       // its drafting steps (all decode steps under mtp)
  SpecReport speculation;      // the mode, the policy's choice at the end and why
};

struct GenerateResult {
  std::vector<int32_t> ids;  // the new tokens
  std::string text;          // their text (empty without a tokenizer), stop string cut off
  StopReason stop_reason = StopReason::MaxTokens;
  GenerateStats stats;
};

// Called once per new token with the text that became safe to show (often "", e.g. inside
// a UTF-8 character or a possible stop string), and at the end once with id = −1 for any
// held-back text that turned out not to be a stop string.
using OnToken = std::function<void(int32_t id, const std::string& text)>;

class Generator {
 public:
  // context: the cache capacity in positions; 0 = min(max_position_embeddings, 4096).
  // tokenizer may be null (no text, no stop strings); it must outlive the Generator.
  Generator(Model& model, const tok::Tokenizer* tokenizer, int64_t context = 0);

  // Throws dsv3::Error for an empty prompt, an id outside the vocabulary, a prompt longer
  // than the context, stop strings without a tokenizer, or bad sampling parameters.
  GenerateResult generate(const std::vector<int32_t>& prompt, const GenerateOptions& o,
                          const OnToken& on_token = {});

  // Forgets the history (the next call prefills its whole prompt).
  void reset();
  int64_t context() const { return cache_.capacity; }
  // Prompt + generated tokens of the last call; the cache holds the first cached() of them.
  const std::vector<int32_t>& history() const { return history_; }
  int64_t cached() const { return cache_.len; }
  // For tests: the cache, and per MTP module how many of its rows are valid (speculative.h).
  const KvCache& cache() const { return cache_; }
  const std::vector<int64_t>& mtp_valid() const { return spec_.valid(); }
  // The Auto policy (its estimates carry over from call to call, e.g. chat turns).
  const SpecPolicy& policy() const { return policy_; }

 private:
  // Forwards prompt[reuse..) at cache position `reuse`; leaves the last position's logits
  // (and with keep_hidden every forwarded position's state after model.norm for spec_).
  void prefill(const std::vector<int32_t>& prompt, int64_t reuse, bool keep_hidden);
  // Plain decode strategy: forwards history_.back() (the one token not yet in the cache)
  // and samples the next token into `out` (cleared first). The speculative step is
  // Speculator::step.
  void decode_step(Sampler& sampler, std::vector<int32_t>& out);

  Model& model_;
  const tok::Tokenizer* tok_;
  KvCache cache_;
  std::vector<int32_t> history_;   // tokens whose positions are (or will be) in the cache
  std::vector<float> logits_;      // [V]: the last forwarded position's logits
  std::vector<float> hidden_;      // [T, H]: a speculative prefill's states
  ForwardScratch scratch_;
  Speculator spec_;                // the MTP caches' bookkeeping (kept across calls)
  SpecPolicy policy_;              // when to draft (rebuilt when the mode or options change)
};

}  // namespace dsv3
