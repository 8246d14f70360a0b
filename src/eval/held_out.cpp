// Opening the held-out split and turning it into token streams (held_out.h).
#include "eval/held_out.h"

#include <filesystem>

#include "tokenizer/tokenizer.h"

namespace dsv3::eval {

namespace fs = std::filesystem;

std::string HeldOut::describe() const {
  return is_val_split ? set.dir() + " (held-out split)"
                      : set.dir() + " (no val/ split: the whole prepared set, which may be "
                                    "training data; prepare with --val-fraction)";
}

HeldOut open_held_out(const std::string& dir, const std::string& expect_tokenizer_hash) {
  const fs::path val = fs::path(dir) / "val";
  std::error_code ec;
  const bool has_val = fs::exists(val / "meta.json", ec);
  return HeldOut{data::DataSet::open(has_val ? val.string() : dir, expect_tokenizer_hash), has_val};
}

std::vector<int32_t> packed_stream(const data::DataSet& ds, int64_t max_tokens) {
  std::vector<int32_t> ids;
  const int32_t eos = ds.meta().eos_id;
  for (int64_t d = 0; d < ds.n_docs(); ++d) {
    const data::DocEntry e = ds.doc(d);
    const uint32_t* p = ds.doc_tokens(d);
    ids.insert(ids.end(), p, p + e.length);
    ids.push_back(eos);
    if (max_tokens > 0 && int64_t(ids.size()) >= max_tokens) {
      ids.resize(size_t(max_tokens));
      break;
    }
  }
  return ids;
}

std::vector<int32_t> haystack_stream(const data::DataSet& ds, const tok::Tokenizer& t,
                                     int64_t min_tokens) {
  const std::vector<int32_t> sep = t.encode("\n\n", false);
  std::vector<int32_t> ids;
  for (const data::DocKind kind : {data::DocKind::kText, data::DocKind::kCode}) {
    for (int64_t d = 0; d < ds.n_docs() && int64_t(ids.size()) < min_tokens; ++d) {
      const data::DocEntry e = ds.doc(d);
      if (e.kind != kind) continue;
      if (!ids.empty()) ids.insert(ids.end(), sep.begin(), sep.end());
      const uint32_t* p = ds.doc_tokens(d);
      ids.insert(ids.end(), p, p + e.length);
    }
  }
  return ids;
}

}  // namespace dsv3::eval
