// Token sampling from logits: greedy, temperature, top-k, top-p (nucleus), and the
// speculative-sampling accept rule.
//
// The distribution a Sampler draws from, for logits l[0..V) and T = temperature > 0:
//
//   w[i] = exp((l[i] − max_j l[j]) / T)       (NaN and −inf logits give w = 0)
//   K    = the top_k largest logits (ties: lower index first), or every token if top_k = 0
//   N    = the smallest prefix of K sorted by w descending (ties: lower index first) whose
//          mass Σ w ≥ top_p · Σ_{K} w; always at least one token (Holtzman et al. 2020)
//   p[i] = w[i] / Σ_{N} w  for i ∈ N, else 0
//
// T = 0 is greedy: p is one-hot at the argmax (ties: lower index; NaN never wins).
// Logits must hold at least one finite value and no +inf (a model that emits +inf is broken;
// the limit would be a tie among the +inf entries, which we refuse rather than guess).
//
// Determinism: the random stream is our own xoshiro256** (core/rng.h), so the
// same seed gives the same uniforms on every platform (std:: distributions differ between
// standard libraries). Probabilities use the scalar libm exp and double sums — never the
// ISA-dispatched softmax kernels — so the chosen token does not depend on the CPU's ISA.
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"

namespace dsv3 {

struct SamplingParams {
  float temperature = 0;  // 0 = greedy; must be finite and ≥ 0
  int64_t top_k = 0;      // 0 = off; ≥ V also means all tokens
  float top_p = 1.0f;     // (0, 1]; 1 = off
  uint64_t seed = 0;
};

// Throws dsv3::Error naming the bad parameter.
void validate(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  const SamplingParams& params() const { return params_; }

  // logits [V] -> one token id drawn from p above (consumes one uniform unless greedy).
  int32_t sample(const float* logits, int64_t V);
  // logits [V] -> probs [V]: the p above (one-hot for greedy). Consumes no randomness.
  void distribution(const float* logits, int64_t V, std::vector<float>* probs);

  // The next draws from this sampler's stream (for speculative sampling).
  float uniform() { return rng_.uniform(); }
  double uniform_double() { return rng_.uniform_double(); }

 private:
  struct Cand {
    float w;     // exp((l − max) / T)
    int32_t id;  // token id
  };
  // Fills kept_[0..n) with the kept set N (for T > 0) and returns Σ w over it (double, summed
  // in kept_ order, the order the draw walks).
  double keep(const float* logits, int64_t V, int64_t argmax);

  SamplingParams params_;
  Rng rng_;
  // Scratch reused across calls so steady-state sampling does not allocate.
  std::vector<Cand> kept_;         // [≤ V] candidates, then the kept set
  std::vector<float> topk_val_;    // [top_k]
  std::vector<int32_t> topk_idx_;  // [top_k]
  std::vector<double> bucket_mass_;  // [kBuckets] top-p: mass per weight bucket
  std::vector<Cand> edge_;         // top-p: candidates in the boundary bucket
};

// Inverse-CDF draw in index order from non-negative weights probs [V] (need not sum to 1;
// zero entries are never chosen). Throws on negative/NaN/inf entries or an all-zero vector.
int32_t sample_from(const float* probs, int64_t V, Sampler& rng);

// softmax(logits)[id] at temperature 1, in double (a draft's confidence, infer/speculative.h).
double softmax_prob(const float* logits, int64_t V, int32_t id);

// Speculative sampling (Leviathan et al. 2023, Chen et al. 2023): the draft model proposed
// draft_token ~ q; accept it with probability min(1, p[x]/q[x]); on rejection draw from the
// residual norm(max(0, p − q)) (from p when that residual is all zero). The returned token is
// then distributed exactly as p. p_target, q_draft: [V] distributions (e.g. from
// Sampler::distribution of the target and draft models).
struct SpecDecision {
  bool accepted;
  int32_t token;  // draft_token when accepted, else the resampled token
};
SpecDecision speculative_accept(int32_t draft_token, const float* p_target, const float* q_draft,
                                int64_t V, Sampler& rng);

}  // namespace dsv3
