// The held-out text an evaluation reads: the validation split DATA/val/ that `dsv3 data
// prepare --val-fraction` writes, or, for a data set prepared without one, DATA/ itself
// (then the text may be training data, and the caller says so).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace dsv3::tok { class Tokenizer; }

namespace dsv3::eval {

struct HeldOut {
  data::DataSet set;
  bool is_val_split = false;  // DATA/val/ (false: the whole of DATA/)
  // "DATA/val (held-out split)" or "DATA (no val/ split: the whole prepared set)".
  std::string describe() const;
};

// Opens DATA/val/ when it exists, else DATA/. expect_tokenizer_hash as DataSet::open.
HeldOut open_held_out(const std::string& dir, const std::string& expect_tokenizer_hash = "");

// The documents packed as the training loader packs them (data/loader.h): each followed by
// EOS, back to back, cut to max_tokens (0: all).
std::vector<int32_t> packed_stream(const data::DataSet& ds, int64_t max_tokens = 0);

// Real text for a haystack: the text documents (then, if these are too few, the code ones)
// in order, separated by the ids of "\n\n", until min_tokens are gathered (or the documents
// run out: the caller checks the length).
std::vector<int32_t> haystack_stream(const data::DataSet& ds, const tok::Tokenizer& t,
                                     int64_t min_tokens);

}  // namespace dsv3::eval
