#include "infer/speculative.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace dsv3 {

void Speculator::reset() {
  valid_.assign(size_t(model_.n_mtp()), 0);
  main_h_.clear();
  main_h0_ = 0;
}

void Speculator::begin(KvCache& cache, int64_t lcp) {
  const int64_t D = model_.n_mtp();
  valid_.resize(size_t(D), 0);
  for (int64_t k = 1; k <= D; ++k) {
    int64_t& m = valid_[size_t(k - 1)];
    m = std::min(m, std::max<int64_t>(0, lcp - k));  // t_{i+k} must lie in the shared prefix
    if (k > 1) m = std::min(m, valid_[size_t(k - 2)]);  // h^{k−1}_i must be valid too
    cache.mtp_len[size_t(k - 1)] = m;
  }
  // main_h_ holds the states of positions [main_h0_, main_h0_ + rows) and main_h0_ = m_1
  // whenever module 1 can use them; a state stays valid while its position's tokens do.
  const int64_t H = model_.config().hidden_size, m1 = D > 0 ? valid_[0] : 0;
  if (D == 0 || m1 != main_h0_) {
    main_h_.clear();
    main_h0_ = m1;
  } else {
    const int64_t keep = std::clamp<int64_t>(lcp - main_h0_, 0, int64_t(main_h_.size()) / H);
    main_h_.resize(size_t(keep * H));
  }
}

int64_t Speculator::prefill_from() const {
  if (valid_.empty()) return 0;
  return main_h0_ + int64_t(main_h_.size()) / model_.config().hidden_size;
}

void Speculator::after_prefill(const float* h, int64_t p0, int64_t T) {
  const int64_t H = model_.config().hidden_size;
  DSV3_ASSERT(p0 <= prefill_from() && main_h0_ <= p0 + T);
  if (p0 >= main_h0_) {  // keep the held states before p0, append the prefill's
    main_h_.resize(size_t((p0 - main_h0_) * H));
    main_h_.insert(main_h_.end(), h, h + T * H);
  } else {
    main_h_.assign(h + (main_h0_ - p0) * H, h + T * H);
  }
}

void Speculator::catch_up(KvCache& cache, ForwardScratch& s, const std::vector<int32_t>& history) {
  const int64_t D = model_.n_mtp(), H = model_.config().hidden_size, L = cache.len;
  DSV3_ASSERT(D >= 1 && L + 1 == int64_t(history.size()));
  for (size_t k = 0; k < valid_.size(); ++k) cache.mtp_len[k] = valid_[k];
  const int64_t m = valid_[0], T = L - m;
  if (T <= 0) return;
  DSV3_ASSERT(m == main_h0_ && int64_t(main_h_.size()) == T * H);
  ids_.assign(history.begin() + m + 1, history.begin() + L + 1);  // t_{i+1}, i in [m, L)
  MtpArgs a;
  a.k = 1;
  a.ids = ids_.data();
  a.h_prev = main_h_.data();
  a.T = T;
  if (D >= 2) {  // module 2 reads module 1's outputs by position
    if (hprev_.size() < size_t(D - 1))
      hprev_.assign(size_t(D - 1), std::vector<float>(size_t(cache.capacity * H)));
    a.hidden = hprev_[0].data() + m * H;
  }
  model_.mtp_forward(cache, a, s);
  valid_[0] = L;
  main_h_.clear();
  main_h0_ = L;
}

int32_t Speculator::pick_draft(const float* logits, int64_t j, Sampler& sampler, float* conf) {
  const int64_t V = model_.vocab();
  if (sampler.params().temperature == 0) {
    const int32_t best = sampler.sample(logits, V);  // argmax
    if (conf) *conf = float(softmax_prob(logits, V, best));
    return best;
  }
  sampler.distribution(logits, V, &q_[size_t(j)]);
  const int32_t d = sample_from(q_[size_t(j)].data(), V, sampler);
  if (conf) *conf = q_[size_t(j)][size_t(d)];
  return d;
}

void Speculator::draft(KvCache& cache, ForwardScratch& s, const std::vector<int32_t>& history,
                       int64_t n, double min_p, Sampler& sampler) {
  const int64_t D = model_.n_mtp(), H = model_.config().hidden_size, V = model_.vocab();
  const int64_t L = cache.len;
  drafts_.clear();
  if (q_.size() < size_t(n)) q_.resize(size_t(n));
  if (D >= 2 && hprev_.size() < size_t(D - 1))
    hprev_.assign(size_t(D - 1), std::vector<float>(size_t(cache.capacity * H)));
  logits_.resize(size_t(V));
  // After draft_j: whether to draft j + 1 (the adaptive length of speculative.h).
  double joint = 1.0;
  float conf = 1.f;
  auto go_on = [&](int64_t j) {
    if (j >= n || min_p <= 0) return j < n;
    joint *= double(conf);
    return joint >= min_p;
  };
  float* want_conf = min_p > 0 ? &conf : nullptr;
  // Modules 1..min(n, D): catch up over [m_k, L) and draft from the last row (position L − 1).
  for (int64_t k = 1; k <= std::min(n, D); ++k) {
    const int64_t m = valid_[size_t(k - 1)], T = L - m;
    DSV3_ASSERT(T >= 1 && cache.mtp_len[size_t(k - 1)] == m);
    ids_.resize(size_t(T));
    for (int64_t i = m; i < L; ++i) {  // t_{i+k}: a history token, or a draft past t_L
      const int64_t t = i + k;
      ids_[size_t(i - m)] = t <= L ? history[size_t(t)] : drafts_[size_t(t - L - 1)];
    }
    hidden_.resize(size_t(T * H));
    MtpArgs a;
    a.k = int(k);
    a.ids = ids_.data();
    // h^{k−1} of positions [m, L): module 1 reads the kept main rows (which start at m_1),
    // module k ≥ 2 the outputs module k − 1 stored by position.
    a.h_prev = k == 1 ? main_h_.data() + (m - main_h0_) * H : hprev_[size_t(k - 2)].data() + m * H;
    a.T = T;  // Auto: naive after a prefill from position 0, absorbed otherwise
    a.logits = logits_.data();
    a.logits_from = T - 1;
    a.hidden = hidden_.data();
    if (k == 1) DSV3_ASSERT(m == main_h0_ && int64_t(main_h_.size()) == T * H);
    model_.mtp_forward(cache, a, s);
    if (k < D) std::memcpy(hprev_[size_t(k - 1)].data() + m * H, hidden_.data(), size_t(T * H) * sizeof(float));
    valid_[size_t(k - 1)] = L + 1 - k;  // rows past it used drafts
    drafts_.push_back(pick_draft(logits_.data(), k - 1, sampler, want_conf));
    if (k == 1) {  // module 1 consumed the kept main rows
      main_h_.clear();
      main_h0_ = L;
    }
    // Stopping before module D leaves modules k+1..D behind: they catch up next step.
    if (!go_on(k)) return;
    if (k == std::min(n, D)) chain_h_.assign(hidden_.end() - H, hidden_.end());
  }
  // Drafts past D: module D chained on its own output (after shared_head.norm) at positions
  // L, L+1, ... — speculative rows of its cache, dropped at the next step.
  for (int64_t j = D + 1; j <= n; ++j) {
    const int32_t prev = drafts_.back();
    MtpArgs a;
    a.k = int(D);
    a.ids = &prev;
    a.h_prev = chain_h_.data();
    a.T = 1;
    a.form = AttnForm::Absorbed;
    a.logits = logits_.data();
    hidden_.resize(size_t(H));
    a.hidden = hidden_.data();
    model_.mtp_forward(cache, a, s);
    chain_h_ = hidden_;
    drafts_.push_back(pick_draft(logits_.data(), j - 1, sampler, want_conf));
    if (!go_on(j)) return;
  }
}

void Speculator::step(KvCache& cache, ForwardScratch& s, const std::vector<int32_t>& history,
                      int64_t n_draft, double min_p, Sampler& sampler, SpeculativeStats& st,
                      std::vector<int32_t>& out) {
  const int64_t H = model_.config().hidden_size, V = model_.vocab(), L = cache.len;
  DSV3_ASSERT(L + 1 == int64_t(history.size()) && n_draft >= 0 && L + n_draft + 1 <= cache.capacity);
  DSV3_ASSERT(n_draft == 0 || model_.n_mtp() >= 1);
  // Drop every speculative MTP row of the last step (the invariant's "past m_k").
  for (size_t k = 0; k < valid_.size(); ++k) cache.mtp_len[k] = valid_[k];
  if (n_draft > 0) draft(cache, s, history, n_draft, min_p, sampler);
  else drafts_.clear();
  const int64_t n = int64_t(drafts_.size());  // ≤ n_draft under min_p

  // Verify [t_L, draft_1..draft_n] at positions [L, L + n] in one forward.
  ids_.assign(1, history.back());
  ids_.insert(ids_.end(), drafts_.begin(), drafts_.end());
  const int64_t T = n + 1;
  logits_.resize(size_t(T * V));
  hidden_.resize(size_t(T * H));
  ForwardArgs a;
  a.ids = ids_.data();
  a.T = T;
  a.form = AttnForm::Absorbed;  // the decode path, for every row
  a.logits = logits_.data();
  a.hidden = hidden_.data();
  model_.forward(cache, a, s);

  const bool greedy = sampler.params().temperature == 0;
  int64_t acc = 0;
  int32_t next = -1;
  for (; acc < n; ++acc) {
    const float* row = logits_.data() + acc * V;  // predicts the position of draft acc + 1
    const int32_t d = drafts_[size_t(acc)];
    if (greedy) {
      const int32_t best = sampler.sample(row, V);
      if (best != d) { next = best; break; }
    } else {
      sampler.distribution(row, V, &p_);
      const SpecDecision dec = speculative_accept(d, p_.data(), q_[size_t(acc)].data(), V, sampler);
      if (!dec.accepted) { next = dec.token; break; }
    }
  }
  if (acc == n) next = sampler.sample(logits_.data() + n * V, V);  // the bonus token

  // Keep t_L and the accepted drafts; their main states feed module 1's next catch-up.
  cache.truncate(L + acc + 1);
  main_h_.insert(main_h_.end(), hidden_.begin(), hidden_.begin() + (acc + 1) * H);
  out.assign(drafts_.begin(), drafts_.begin() + acc);
  out.push_back(next);

  ++st.steps;
  st.drafted += n;
  st.accepted += acc;
  for (int64_t j = 0; j < n; ++j) {
    if (st.drafted_at.size() <= size_t(j)) st.drafted_at.resize(size_t(j + 1), 0);
    if (st.accepted_at.size() <= size_t(j)) st.accepted_at.resize(size_t(j + 1), 0);
    ++st.drafted_at[size_t(j)];
    if (j < acc) ++st.accepted_at[size_t(j)];
  }
}

}  // namespace dsv3
