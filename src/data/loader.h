// The training loader: documents of a DataSet in a seeded shuffled order per epoch, each
// followed by EOS, packed back to back into one endless token stream (no cross-document
// attention mask: DeepSeek-V3 report §4.1 packs documents without one), cut into windows
// of T+1 tokens. Each batch is B consecutive windows, row-major [B, T+1] int32:
// inputs = [:, :T], targets = [:, 1:].
//
// Windows overlap by one token: window k is stream[k*T, k*T + T + 1), so the last token of
// a window is the first of the next and every stream token after the first is a target
// exactly once.
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
// document's FIM draw from (seed, epoch, position), so the whole stream is a function of
// the seed, and LoaderState (epoch, position, offset) is all a resumed run needs.
#pragma once
#include <cstdint>
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

struct LoaderState {
  uint64_t seed = 0;   // checked on restore: the state only means something for this seed
  int64_t n_docs = 0;  // checked on restore: and for this data set
  int64_t epoch = 0;   // permutation of this epoch
  int64_t index = 0;   // position in the permutation of the document the next window starts in
  int64_t offset = 0;  // token of that document's emitted sequence (FIM'd tokens + EOS)
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
  // Continues from a state() of a loader with the same data set, seed and FIM options
  // (checked: data set size and seed). T and B may differ: they only cut the same stream.
  void restore(const LoaderState& s);

  const LoaderOptions& options() const { return opt_; }
  bool fim_enabled() const { return fim_on_; }

  // The emitted sequence of the document at `index` of `epoch`'s permutation (its tokens,
  // FIM-transformed when drawn, then EOS) — exposed for tests and tools.
  void emitted_doc(int64_t epoch, int64_t index, std::vector<int32_t>& out) const;
  // The document id at position index of epoch's permutation.
  int64_t doc_at(int64_t epoch, int64_t index) const;

 private:
  void set_epoch(int64_t epoch);
  void load_current();

  const DataSet& ds_;
  LoaderOptions opt_;
  bool fim_on_ = false;
  int64_t epoch_ = -1, index_ = 0, offset_ = 0, batches_ = 0;
  std::vector<uint32_t> perm_;  // [n_docs] this epoch's order
  std::vector<int32_t> cur_;    // emitted sequence of the current document
  mutable std::vector<uint32_t> other_perm_;  // doc_at() for another epoch
  mutable int64_t other_epoch_ = -1;
};

}  // namespace dsv3::data
