#include "model/expert_placement.h"

#include <algorithm>

#include "core/check.h"

namespace dsv3 {

ExpertPlacement ExpertPlacement::contiguous(int64_t n_experts, int ranks) {
  std::vector<int> p(static_cast<size_t>(n_experts));
  for (int64_t e = 0; e < n_experts; ++e) p[size_t(e)] = int(e);
  return from_phy2log(p, n_experts, ranks);
}

ExpertPlacement ExpertPlacement::from_phy2log(const std::vector<int>& phy2log, int64_t n_experts,
                                              int ranks) {
  const int64_t S = int64_t(phy2log.size()), E = n_experts;
  DSV3_CHECK(ranks >= 1, "expert placement: the EP group has ", ranks, " ranks");
  DSV3_CHECK(E >= 1, "expert placement: the layer has ", E, " routed experts");
  DSV3_CHECK(S >= E && S % ranks == 0, "expert placement: ", S, " slots for ", E, " experts on ",
             ranks, " ranks (need at least one slot per expert and the same number on every rank)");
  ExpertPlacement p;
  p.ranks_ = ranks;
  p.phy2log_.resize(size_t(S));
  p.copy_off_.assign(size_t(E) + 1, 0);
  for (int64_t s = 0; s < S; ++s) {
    const int e = phy2log[size_t(s)];
    DSV3_CHECK(e >= 0 && e < E, "expert placement: slot ", s, " holds expert ", e, ", outside [0, ", E, ")");
    p.phy2log_[size_t(s)] = e;
    ++p.copy_off_[size_t(e) + 1];
  }
  for (int64_t e = 0; e < E; ++e) {
    DSV3_CHECK(p.copy_off_[size_t(e) + 1] > 0, "expert placement: expert ", e, " has no slot");
    p.single_ &= p.copy_off_[size_t(e) + 1] == 1;
    p.copy_off_[size_t(e) + 1] += p.copy_off_[size_t(e)];
  }
  p.slot_of_copy_.resize(size_t(S));
  std::vector<int32_t> fill(p.copy_off_.begin(), p.copy_off_.end() - 1);
  for (int64_t s = 0; s < S; ++s) p.slot_of_copy_[size_t(fill[size_t(p.phy2log_[size_t(s)])]++)] = int32_t(s);
  return p;
}

bool ExpertPlacement::holds(int rank, int64_t e) const {
  for (int j = 0; j < copies(e); ++j)
    if (rank_of_slot(copy_slot(e, j)) == rank) return true;
  return false;
}

void ExpertPlacement::assign(const int32_t* expert, const int32_t* rows, int64_t n, int32_t* out_rank,
                             int64_t* balance, int64_t* rank_rows, Scratch& s) const {
  s.load.assign(size_t(ranks_), 0);  // this call's rows per rank
  auto so_far = [&](int r) { return s.load[size_t(r)] + (balance ? balance[r] : 0); };
  if (single_) {
    for (int64_t u = 0; u < n; ++u) {
      out_rank[u] = rank_of_slot(copy_slot(expert[u], 0));
      s.load[size_t(out_rank[u])] += rows[u];
    }
  } else {
    s.order.resize(size_t(n));
    for (int64_t u = 0; u < n; ++u) s.order[size_t(u)] = int32_t(u);
    std::stable_sort(s.order.begin(), s.order.end(), [&](int32_t a, int32_t b) { return rows[a] > rows[b]; });
    for (const int32_t u : s.order) {
      const int64_t e = expert[u];
      int best = rank_of_slot(copy_slot(e, 0));
      for (int j = 1; j < copies(e); ++j) {
        const int r = rank_of_slot(copy_slot(e, j));
        if (so_far(r) < so_far(best)) best = r;
      }
      out_rank[u] = best;
      s.load[size_t(best)] += rows[u];
    }
  }
  for (int r = 0; r < ranks_; ++r) {
    if (balance) balance[r] += s.load[size_t(r)];
    if (rank_rows) rank_rows[r] += s.load[size_t(r)];
  }
}

double rank_imbalance(const int64_t* rank_rows, int ranks) {
  int64_t mx = 0, sum = 0;
  for (int r = 0; r < ranks; ++r) {
    mx = std::max(mx, rank_rows[r]);
    sum += rank_rows[r];
  }
  return sum == 0 ? 1.0 : double(mx) * ranks / double(sum);
}

void expected_rank_load(const ExpertPlacement& p, const double* load, double* out) {
  std::fill(out, out + p.ranks(), 0.0);
  for (int64_t s = 0; s < p.slots(); ++s) {
    const int32_t e = p.phy2log()[size_t(s)];
    out[p.rank_of_slot(s)] += load[e] / p.copies(e);
  }
}

}  // namespace dsv3
