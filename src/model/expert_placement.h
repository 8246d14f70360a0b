// Which rank computes what under expert-parallel serving with redundant experts (report
// §3.4: "redundant experts", SPEC §5; docs/serve.md "Redundant experts").
//
// One MoE layer has S ≥ E physical expert slots spread over the P ranks of the EP group,
// S / P consecutive slots per rank — the layout of eplb::Plan::phy2log (parallel/eplb.h): slot
// p lives on rank p / (S / P). A slot holds one logical expert; a hot expert may have several
// slots (copies), on the same or on different ranks. With S = E and slot e holding expert e
// this is the plain layout (model/moe.h ep_first_expert's contiguous blocks).
//
// Work is split in units: the tokens one expert runs as one matmul (a prefill sequence's
// rows of that expert — the GEMM's M is then what one process uses, so the bits are too), or
// one decode task (≤ kGemvMaxM tokens, each computed independently of the others). assign()
// gives every unit to one copy of its expert. It is a pure function of the routing, which
// every rank computes identically, so every rank reaches the same assignment without a
// message. The combine adds every (token, expert) output in the one-process order whoever
// computed it: the placement changes where work runs, never the result's bits.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv3 {

class ExpertPlacement {
 public:
  ExpertPlacement() = default;  // no layer (slots() == 0)
  // S = E slots, slot e holding expert e: rank r computes experts [r E/P, (r+1) E/P).
  static ExpertPlacement contiguous(int64_t n_experts, int ranks);
  // From one layer of eplb's phy2log (slot → expert). Throws dsv3::Error naming what is
  // wrong: S not a positive multiple of P, an id outside [0, E), an expert without a slot.
  static ExpertPlacement from_phy2log(const std::vector<int>& phy2log, int64_t n_experts, int ranks);

  int ranks() const { return ranks_; }
  int64_t slots() const { return int64_t(phy2log_.size()); }
  int64_t n_experts() const { return int64_t(copy_off_.empty() ? 0 : copy_off_.size() - 1); }
  int rank_of_slot(int64_t slot) const { return int(slot / (slots() / ranks_)); }
  const std::vector<int32_t>& phy2log() const { return phy2log_; }
  // Copies of expert e: its slots, ascending.
  int copies(int64_t e) const { return copy_off_[size_t(e) + 1] - copy_off_[size_t(e)]; }
  int32_t copy_slot(int64_t e, int j) const { return slot_of_copy_[size_t(copy_off_[size_t(e)] + j)]; }
  // Whether some slot of `rank` holds expert e (its weights must be there).
  bool holds(int rank, int64_t e) const;
  // Every expert has exactly one slot: the rank of each is fixed and assign() is a lookup.
  bool single_copy() const { return single_; }

  // Gives n units to ranks: unit u is rows[u] rows of expert expert[u]; out_rank[u] is the
  // rank that computes it. Greedy, heaviest unit first (ties: the lower unit index), each
  // to the copy whose rank has the fewest rows so far (ties: the lower slot) — the
  // longest-processing-time rule of eplb's packing. "So far" starts from balance [P] when
  // given (the rows each rank took in earlier calls, updated here): a hot expert's copies
  // then share its work across calls, even when each call's work is one unit — counted from
  // zero in every call, the first copy would take every call's heaviest unit. rank_rows [P],
  // when given, is added this call's rows per rank (the figure rebalancing lowers).
  struct Scratch {
    std::vector<int32_t> order;  // [n]
    std::vector<int64_t> load;   // [P]
  };
  void assign(const int32_t* expert, const int32_t* rows, int64_t n, int32_t* out_rank, int64_t* balance,
              int64_t* rank_rows, Scratch& s) const;

  bool operator==(const ExpertPlacement& o) const { return ranks_ == o.ranks_ && phy2log_ == o.phy2log_; }

 private:
  int ranks_ = 1;
  bool single_ = true;
  std::vector<int32_t> phy2log_;       // [S]
  std::vector<int32_t> copy_off_;      // [E + 1]: expert e's copies at [copy_off[e], copy_off[e + 1])
  std::vector<int32_t> slot_of_copy_;  // [S]: the slots, grouped by expert, ascending
};

// Max over ranks / mean over ranks of rank_rows [P] (1 when balanced; 0 rows: 1).
double rank_imbalance(const int64_t* rank_rows, int ranks);

// The rows each rank would compute if each expert's load split evenly over its copies —
// what a placement promises for a load (the `dsv3 eplb` summary and the server's
// rebalance answer compare placements by it). load [E]; out [P], added in slot order.
void expected_rank_load(const ExpertPlacement& p, const double* load, double* out);

}  // namespace dsv3
