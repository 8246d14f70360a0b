// MTP speculative decoding (SPEC §1 "MTP"; Leviathan et al. 2023, Chen et al. 2023): the
// model's own multi-token-prediction modules draft up to N tokens, one main-model forward
// over [newest token, draft_1..draft_N] verifies them all (absorbed MLA over the latent cache,
// N+1 rows of logits), and KvCache truncation rolls back the rejected positions.
//
// Notation: the main cache holds positions [0, L) for tokens t_0..t_{L−1}; t_L (the newest
// token, the last of the history) is not yet forwarded. Module k at position i takes
// h^{k−1}_i (k = 1: the main state after model.norm; k ≥ 2: module k−1's state after its
// shared_head.norm) and the token t_{i+k}, and predicts t_{i+k+1}.
//
// THE MTP CACHE INVARIANT. valid_[k−1] = m_k counts the positions [0, m_k) of module k's
// cache layer that were computed from accepted inputs only: every t_{i+k} is a token of the
// history and every h^{k−1}_i is the state of accepted inputs. Hence m_k ≤ L + 1 − k
// (i + k ≤ L) and m_1 ≥ m_2 ≥ ... ≥ m_D. Positions past m_k (cache.mtp_len may be longer)
// hold speculative rows computed from draft tokens or from a chained hidden state; they are
// dropped (mtp_len := m_k) at the start of every step before anything attends to them.
//
// One step, with N' = drafts this step (≤ N, limited by the caller):
//  1. Draft. Module 1 forwards positions [m_1, L) in one call: the rows [m_1, L) are
//     catch-up over tokens accepted since the last step (their h^0 are the main model's
//     hidden rows kept from the last verify or prefill), and its last row (position L − 1,
//     token t_L) gives draft_1's logits. Then m_1 = L. Module k = 2..min(N', D) forwards
//     positions [m_k, L) likewise, its tokens t_{i+k} being history tokens or drafts
//     (positions past L − k use draft_1..draft_{k−1}) and its h^{k−1} module k−1's outputs
//     (kept per position in hprev_); its last row drafts draft_k, and m_k = L + 1 − k.
//     Drafts past D chain module D on its own output after shared_head.norm at positions
//     L, L+1, ... (speculative rows only).
//     Adaptive length: with min_p > 0 drafting stops early, after draft_j (j < N'), once
//     the product of the drafts' own probabilities c_1·…·c_j falls below min_p — c_j is the
//     probability the draft distribution gives draft_j (greedy: softmax of the MTP logits at
//     temperature 1; sampling: q_j). A draft that is unlikely to survive makes the ones
//     after it nearly worthless, and each costs one more MTP forward and one more verify
//     row. The rule looks at draft-side quantities only, so the accept/resample rule keeps
//     the sampled distribution exact, and greedy output is unchanged whatever min_p is.
//  2. Verify. The main model forwards [t_L, draft_1..draft_N'] at positions [L, L + N'],
//     keeping logits and hidden states of every row. Greedy: draft_j is accepted while it
//     equals the argmax of row j − 1; the first mismatch is replaced by that argmax, and
//     with all accepted the argmax of row N' is a bonus token. Sampling: speculative_accept
//     with p = the target distribution of row j − 1 and q = the draft distribution (the
//     same temperature/top-k/top-p applied to the MTP logits); the bonus token is drawn
//     from row N'. Either way a accepted drafts yield a + 1 tokens.
//  3. Roll back. The main cache keeps [0, L + a + 1) (t_L and the accepted drafts); the
//     hidden rows of those positions are kept for the next step's module-1 catch-up.
#pragma once
#include <cstdint>
#include <vector>

#include "infer/sampler.h"
#include "model/model.h"

namespace dsv3 {

// While plain steps run in a speculative call (--speculative auto choosing plain), module 1
// falls behind and the main states it will catch up over pile up (H floats per position, for
// DeepSeek-V3 28 KB; 4096 positions would be 20% of the latent cache again). Once it is this
// far behind it catches up without drafting: one MTP forward over the rows, a GEMM, costing
// about what one decode step does, every 256 steps.
inline constexpr int64_t kMtpCatchUpRows = 256;

struct SpeculativeStats {
  int64_t steps = 0;                 // verify forwards
  int64_t drafted = 0, accepted = 0; // draft tokens proposed / accepted by the verifier
  std::vector<int64_t> drafted_at;   // [N]: steps that drafted a j-th token
  std::vector<int64_t> accepted_at;  // [N]: steps whose j-th draft was accepted
};

class Speculator {
 public:
  explicit Speculator(const Model& model) : model_(model) {}

  // Forgets every MTP row (the Generator forgot its history).
  void reset();
  // m_k per module (for tests of the invariant).
  const std::vector<int64_t>& valid() const { return valid_; }
  // A new prompt shares its first lcp tokens with the history: module k keeps at most the
  // positions whose token t_{i+k} lies in that prefix, and the kept main states those of
  // positions inside it (called for plain generation too, so a later speculative call finds
  // the invariant intact).
  void begin(KvCache& cache, int64_t lcp);
  // The main position from which a speculative prefill must run so that module 1 gets the
  // hidden rows it has to catch up over: m_1 plus the main states kept past it (plain steps
  // of a speculative call keep theirs, so a chat turn after them reuses the whole cache).
  int64_t prefill_from() const;
  // The prefill forwarded positions [p0, p0 + T) (p0 ≤ prefill_from()); h [T, H] are their
  // states after model.norm.
  void after_prefill(const float* h, int64_t p0, int64_t T);
  // Positions module 1 must catch up over before its next draft (L − m_1): 1 + the drafts
  // accepted at the last step while every step drafts, more after plain steps.
  int64_t behind(const KvCache& cache) const { return cache.len - (valid_.empty() ? 0 : valid_[0]); }
  // Module 1 forwards positions [m_1, L) without drafting (see kMtpCatchUpRows); history ends
  // with t_L (cache.len == L).
  void catch_up(KvCache& cache, ForwardScratch& s, const std::vector<int32_t>& history);
  // One draft + verify + rollback step with up to n_draft ≥ 0 drafts (0: a plain decode step
  // that keeps its hidden row; min_p: the adaptive length above, 0 = always n_draft).
  // history ends with the newest token t_L (cache.len == L); out receives the a + 1 new
  // tokens.
  void step(KvCache& cache, ForwardScratch& s, const std::vector<int32_t>& history,
            int64_t n_draft, double min_p, Sampler& sampler, SpeculativeStats& st,
            std::vector<int32_t>& out);

 private:
  // Drafts up to n tokens into drafts_ (and their distributions into q_ when sampling),
  // stopping early under min_p (see above).
  void draft(KvCache& cache, ForwardScratch& s, const std::vector<int32_t>& history, int64_t n,
             double min_p, Sampler& sampler);
  // The j-th draft from its logits; *conf receives its draft probability c_j when wanted.
  int32_t pick_draft(const float* logits, int64_t j, Sampler& sampler, float* conf);

  const Model& model_;
  std::vector<int64_t> valid_;        // [D]: m_k above
  std::vector<float> main_h_;         // [L − m_1, H]: main states of positions [m_1, L)
  int64_t main_h0_ = 0;               // the position of main_h_'s first row (= m_1)
  std::vector<std::vector<float>> hprev_;  // [D − 1][capacity, H]: module k's h^k by position
  std::vector<int32_t> drafts_, ids_;  // [N], [≤ L + N] scratch token rows
  std::vector<float> logits_, hidden_, chain_h_;  // scratch: [rows, V], [rows, H], [H]
  std::vector<std::vector<float>> q_;  // [N][V]: draft distributions (sampling only)
  std::vector<float> p_;              // [V]: a target distribution
};

}  // namespace dsv3
