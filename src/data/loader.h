// The training loader: documents of a DataSet in a seeded shuffled order per epoch, each
// followed by EOS, packed back to back (no cross-document attention mask: DeepSeek-V3
// report §4.1 packs documents without one) and cut into windows of T+1 tokens. A batch is
// [B, T+1] int32, row-major: inputs = [:, :T], targets = [:, 1:].
//
// Lanes: row b of every batch is the next window of lane b, an endless stream of its own.
// The documents of all epochs form one sequence, position g = epoch * n_docs + index (index:
// place in that epoch's permutation); lane b packs the positions g ≡ b (mod B) — b, b + B,
// b + 2B, ... — so the B rows of a batch come from B different places of the shuffled
// order, and one long document fills one row per batch instead of a whole batch (with B
// consecutive windows of one stream, a 20K-token header made entire batches of one file
// and the per-step loss swung by a nat). Every document is still packed exactly once per
// epoch, by exactly one lane.
//
// Within a lane windows overlap by one token: window k of the lane is lane[k*T, k*T + T + 1),
// so the last token of a window is the first of the lane's next window and every lane token
// after the first is a target exactly once.
//
// FIM (report §4.1, "Fill-in-the-Middle ... applied at a rate of 0.1" with the
// Prefix-Suffix-Middle framing): each code document, with probability fim_rate, is split
// at two uniform random token positions 0 <= i <= j <= n into prefix d[:i], middle d[i:j],
// suffix d[j:] and emitted as
//   PSM: <｜fim▁begin｜> prefix <｜fim▁hole｜> suffix <｜fim▁end｜> middle
//   SPM (with probability fim_spm_rate among FIM documents, as in Bavarian et al. 2022):
//        <｜fim▁begin｜> <｜fim▁hole｜> suffix <｜fim▁end｜> prefix middle
// then EOS. Only when all three FIM ids exist (>= 0); text documents never get FIM.
//
// Randomness is counter-based: the epoch's permutation comes from (seed, epoch) and a
// document's FIM draw from (seed, epoch, index), so every lane is a function of the seed
// and B, and LoaderState (per lane: document position and offset) is all a resumed run
// needs.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace dsv3::data {

struct LoaderOptions {
  int64_t seq_len = 0;  // T
  int64_t batch = 0;    // B
  uint64_t seed = 0;
  double fim_rate = 0.1;      // DeepSeek-V3: 10% of code documents
  double fim_spm_rate = 0.0;  // PSM only by default
  // Special ids; -1 (the default) takes the data set's meta.json value.
  int32_t eos_id = -1, fim_begin_id = -1, fim_hole_id = -1, fim_end_id = -1;
};

// Where one lane stands: the document at sequence position g (epoch = g / n_docs, index =
// g % n_docs) is being packed, and its emitted token `offset` starts the lane's next window.
struct LaneState {
  int64_t position = 0;
  int64_t offset = 0;
  bool operator==(const LaneState&) const = default;
};

struct LoaderState {
  uint64_t seed = 0;   // checked on restore: the state only means something for this seed
  int64_t n_docs = 0;  // checked on restore: and for this data set
  std::vector<LaneState> lanes;  // [B]; checked on restore: the batch size must match
  int64_t batches = 0; // batches served so far (informational)

  std::string to_json() const;
  static LoaderState from_json(const std::string& text);  // throws dsv3::Error on bad input
  bool operator==(const LoaderState&) const = default;
};

class Loader {
 public:
  // ds must outlive the loader.
  Loader(const DataSet& ds, const LoaderOptions& opt);

  // Fills out with the next batch, [B, T+1] row-major (resized).
  void next(std::vector<int32_t>& out);
  std::vector<int32_t> next() {
    std::vector<int32_t> v;
    next(v);
    return v;
  }

  LoaderState state() const;
  // Continues from a state() of a loader with the same data set, seed, batch size and FIM
  // options (checked: data set size, seed, batch). T may differ: it only cuts the same lanes.
  void restore(const LoaderState& s);

  const LoaderOptions& options() const { return opt_; }
  bool fim_enabled() const { return fim_on_; }

  // The emitted sequence of the document at `index` of `epoch`'s permutation (its tokens,
  // FIM-transformed when drawn, then EOS) — exposed for tests and tools.
  void emitted_doc(int64_t epoch, int64_t index, std::vector<int32_t>& out) const;
  // The document id at position index of epoch's permutation.
  int64_t doc_at(int64_t epoch, int64_t index) const;

 private:
  struct Lane {
    int64_t position = 0, offset = 0;
    std::vector<int32_t> cur;  // emitted sequence of the document at `position`
  };
  void load(Lane& l) const;
  const std::vector<uint32_t>& perm(int64_t epoch) const;

  const DataSet& ds_;
  LoaderOptions opt_;
  bool fim_on_ = false;
  int64_t batches_ = 0;
  std::vector<Lane> lanes_;  // [B]
  // Permutations of the epochs the lanes are in (lanes drift apart by document length),
  // a few at most; the oldest is dropped first and rebuilt if ever needed again.
  mutable std::map<int64_t, std::vector<uint32_t>> perms_;
};

}  // namespace dsv3::data
