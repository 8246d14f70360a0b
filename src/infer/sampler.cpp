// Sampler: greedy / temperature / top-k / top-p draws, and the speculative accept rule.
#include "infer/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "core/check.h"
#include "kernels/topk.h"

namespace dsv3 {

namespace {

constexpr int64_t kMaxVocab = std::numeric_limits<int32_t>::max();  // token ids are int32

// Top-p buckets: a non-negative float's bits are monotone in its value; w ≤ 1 has bits ≤
// 0x3F800000, so bits >> 16 (exponent + 7 mantissa bits: 128 buckets per octave) < kBuckets.
constexpr size_t kBuckets = (0x3F800000u >> 16) + 1;
// Below this many candidates top-p sorts them all instead (zeroing kBuckets costs more).
constexpr size_t kSortAll = 4096;
size_t bucket_of(float w) { return std::bit_cast<uint32_t>(w) >> 16; }

void check_vocab(const void* p, int64_t V, const char* what) {
  DSV3_CHECK(V > 0 && V <= kMaxVocab, what, ": vocabulary size V=", V, " must be in [1, 2^31)");
  DSV3_CHECK(p != nullptr, what, ": null pointer");
}

// Inverse CDF over weights produced by weight(i), i in [0, n): the first i whose cumulative
// sum exceeds u·total. total must be the same double sum in the same order, so the walk ends
// exactly at total; if u·total rounds up to total, the last positive weight is taken.
// Zero weights are never chosen (the cumulative sum does not move past them).
template <class Weight>
int64_t inverse_cdf(int64_t n, double total, double u, Weight weight) {
  const double target = u * total;
  double cum = 0;
  int64_t last_positive = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double w = weight(i);
    if (w <= 0) continue;
    cum += w;
    last_positive = i;
    if (cum > target) return i;
  }
  DSV3_ASSERT(last_positive >= 0);
  return last_positive;
}

// Σ probs over [0, V) in double, checking every entry is finite and ≥ 0.
double checked_total(const float* probs, int64_t V, const char* what) {
  double total = 0;
  for (int64_t i = 0; i < V; ++i) {
    const float p = probs[i];
    DSV3_CHECK(std::isfinite(p) && p >= 0, what, ": probability [", i, "] = ", p,
               " is not a finite non-negative number");
    total += p;
  }
  return total;
}

}  // namespace

void validate(const SamplingParams& params) {
  DSV3_CHECK(std::isfinite(params.temperature) && params.temperature >= 0,
             "sampling: temperature=", params.temperature, " must be finite and >= 0 (0 = greedy)");
  DSV3_CHECK(params.top_k >= 0, "sampling: top_k=", params.top_k, " must be >= 0 (0 = off)");
  DSV3_CHECK(params.top_p > 0 && params.top_p <= 1, "sampling: top_p=", params.top_p,
             " must be in (0, 1] (1 = off)");
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  validate(params_);
}

// One pass: rejects +inf and rows without a finite logit; returns the first index of the
// largest finite logit (NaN and −inf skipped), the greedy choice.
static int64_t scan_logits(const float* logits, int64_t V) {
  check_vocab(logits, V, "sampler");
  // One compare per element: NaN compares false and −inf is never > −inf, so neither wins.
  int64_t best = -1;
  float best_v = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < V; ++i) {
    if (logits[i] > best_v) {
      best = i;
      best_v = logits[i];
    }
  }
  DSV3_CHECK(best >= 0, "sampler: all ", V, " logits are NaN or -inf");
  DSV3_CHECK(best_v != std::numeric_limits<float>::infinity(), "sampler: logit [", best,
             "] is +inf (the model output is broken)");
  return best;
}

double Sampler::keep(const float* logits, int64_t V, int64_t argmax) {
  const float m = logits[argmax];
  const float T = params_.temperature;
  auto weight = [&](float l) { return std::isnan(l) ? 0.0f : std::exp((l - m) / T); };

  // K: the top_k largest logits (the topk kernel's order: value desc, lower index first;
  // it only returns NaN when fewer than k are non-NaN, and those get weight 0), else all.
  const int64_t k = params_.top_k;
  if (k > 0 && k < V) {
    topk_val_.resize(size_t(k));
    topk_idx_.resize(size_t(k));
    topk_forward(topk_val_.data(), topk_idx_.data(), logits, V, 1, V, k, 1);
    kept_.resize(size_t(k));
    for (int64_t j = 0; j < k; ++j) kept_[size_t(j)] = {weight(topk_val_[size_t(j)]), topk_idx_[size_t(j)]};
  } else {
    kept_.resize(size_t(V));
    for (int64_t i = 0; i < V; ++i) kept_[size_t(i)] = {weight(logits[i]), int32_t(i)};
  }
  double total = 0;
  for (const Cand& c : kept_) total += c.w;
  if (params_.top_p >= 1.0f) return total;

  // N: smallest prefix by (w desc, id asc) with mass ≥ top_p · total. Instead of sorting K,
  // bucket the weights by their top float bits (monotone for w ≥ 0; 128 buckets per octave)
  // and accumulate each bucket's mass; every bucket above the one where the running mass
  // reaches the target lies wholly inside N, so only that boundary bucket is sorted.
  const double target = double(params_.top_p) * total;
  auto before = [](const Cand& a, const Cand& b) { return a.w > b.w || (a.w == b.w && a.id < b.id); };
  if (kept_.size() <= kSortAll) {  // small K (top-k, tiny vocabularies): sorting is cheaper
    std::sort(kept_.begin(), kept_.end(), before);  // a total order: same result everywhere
    double cum = 0;
    size_t n = 0;
    while (n < kept_.size() && cum < target) cum += kept_[n++].w;
    kept_.resize(std::max<size_t>(n, 1));
    total = 0;
    for (const Cand& c : kept_) total += c.w;
    return total;
  }
  bucket_mass_.assign(kBuckets, 0.0);
  for (const Cand& c : kept_) bucket_mass_[bucket_of(c.w)] += c.w;
  double above = 0;  // mass of the buckets above the boundary one
  size_t boundary = 0;
  for (size_t b = kBuckets; b-- > 1;) {  // bucket 0 holds only w = 0
    if (above + bucket_mass_[b] >= target) {
      boundary = b;
      break;
    }
    above += bucket_mass_[b];
  }
  if (boundary == 0) {  // rounding kept the running sum under the target: keep all of K
    kept_.erase(std::remove_if(kept_.begin(), kept_.end(), [](const Cand& c) { return c.w <= 0; }),
                kept_.end());
  } else {
    // Stable partition by hand (index order kept, so the result does not depend on the
    // standard library): buckets above the boundary first, then the boundary bucket.
    size_t n_above = 0;
    edge_.clear();
    for (const Cand& c : kept_) {
      const size_t b = bucket_of(c.w);
      if (b > boundary) kept_[n_above++] = c;
      else if (b == boundary) edge_.push_back(c);
    }
    std::sort(edge_.begin(), edge_.end(), before);
    kept_.resize(n_above);
    double cum = above;
    for (const Cand& c : edge_) {
      kept_.push_back(c);
      cum += c.w;
      if (cum >= target) break;
    }
  }
  DSV3_ASSERT(!kept_.empty());
  total = 0;
  for (const Cand& c : kept_) total += c.w;
  return total;
}

int32_t Sampler::sample(const float* logits, int64_t V) {
  const int64_t argmax = scan_logits(logits, V);
  if (params_.temperature == 0) return int32_t(argmax);
  const double total = keep(logits, V, argmax);
  const int64_t j = inverse_cdf(int64_t(kept_.size()), total, rng_.uniform_double(),
                                [&](int64_t i) { return double(kept_[size_t(i)].w); });
  return kept_[size_t(j)].id;
}

void Sampler::distribution(const float* logits, int64_t V, std::vector<float>* probs) {
  DSV3_CHECK(probs != nullptr, "sampler: null output vector");
  const int64_t argmax = scan_logits(logits, V);
  probs->assign(size_t(V), 0.0f);
  if (params_.temperature == 0) {
    (*probs)[size_t(argmax)] = 1.0f;
    return;
  }
  const double total = keep(logits, V, argmax);
  for (const Cand& c : kept_) (*probs)[size_t(c.id)] = float(double(c.w) / total);
}

int32_t sample_from(const float* probs, int64_t V, Sampler& rng) {
  check_vocab(probs, V, "sample_from");
  const double total = checked_total(probs, V, "sample_from");
  DSV3_CHECK(total > 0, "sample_from: all ", V, " probabilities are zero");
  return int32_t(inverse_cdf(V, total, rng.uniform_double(),
                             [&](int64_t i) { return double(probs[i]); }));
}

double softmax_prob(const float* logits, int64_t V, int32_t id) {
  DSV3_CHECK(V > 0 && id >= 0 && id < V, "softmax_prob: id ", id, " outside [0, ", V, ")");
  float mx = logits[0];
  for (int64_t i = 1; i < V; ++i) mx = std::max(mx, logits[i]);
  double z = 0;
  for (int64_t i = 0; i < V; ++i) z += std::exp(double(logits[i]) - double(mx));
  return std::exp(double(logits[id]) - double(mx)) / z;
}

SpecDecision speculative_accept(int32_t draft_token, const float* p_target, const float* q_draft,
                                int64_t V, Sampler& rng) {
  check_vocab(p_target, V, "speculative_accept");
  check_vocab(q_draft, V, "speculative_accept");
  DSV3_CHECK(draft_token >= 0 && draft_token < V, "speculative_accept: draft token ", draft_token,
             " outside the vocabulary [0, ", V, ")");
  const float px = p_target[draft_token], qx = q_draft[draft_token];
  DSV3_CHECK(std::isfinite(px) && px >= 0 && std::isfinite(qx) && qx >= 0,
             "speculative_accept: p=", px, " or q=", qx, " of the draft token ", draft_token,
             " is not a finite non-negative probability");
  // Accept with probability min(1, p/q): u < p/q, written without the division so q = 0
  // (a token the draft could not have drawn) accepts exactly when p > 0.
  if (rng.uniform_double() * double(qx) < double(px)) return {true, draft_token};

  // Residual max(0, p − q) (Leviathan et al. 2023, Algorithm 1), evaluated twice (sum, then
  // the walk) instead of being stored, so the call does not allocate.
  auto residual = [&](int64_t i) { return std::max(0.0, double(p_target[i]) - double(q_draft[i])); };
  double total = 0;
  for (int64_t i = 0; i < V; ++i) {
    DSV3_CHECK(std::isfinite(p_target[i]) && p_target[i] >= 0 && std::isfinite(q_draft[i]) &&
                   q_draft[i] >= 0,
               "speculative_accept: p[", i, "]=", p_target[i], " or q[", i, "]=", q_draft[i],
               " is not a finite non-negative probability");
    total += residual(i);
  }
  // p = q gives an all-zero residual; rejection is then impossible in exact arithmetic, so
  // p is the distribution to fall back to.
  if (total <= 0) return {false, sample_from(p_target, V, rng)};
  return {false, int32_t(inverse_cdf(V, total, rng.uniform_double(), residual))};
}

}  // namespace dsv3
