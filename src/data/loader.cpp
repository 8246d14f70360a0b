// The packing loader with FIM (loader.h).
#include "data/loader.h"

#include <algorithm>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "data/rng.h"

namespace dsv3::data {

using nlohmann::json;

namespace {

// Stream tags, so that the permutation and the FIM draws never share random numbers.
constexpr uint64_t kPermTag = 0x7065726d75746521ull;
constexpr uint64_t kFimTag = 0x66696d2d70736d21ull;

void make_perm(uint64_t seed, int64_t epoch, int64_t n, std::vector<uint32_t>& perm) {
  perm.resize(size_t(n));
  std::iota(perm.begin(), perm.end(), 0u);
  Xoshiro256 r(mix_key(seed ^ kPermTag, uint64_t(epoch)));
  for (int64_t i = n - 1; i > 0; --i)  // Fisher-Yates
    std::swap(perm[size_t(i)], perm[size_t(r.below(uint64_t(i) + 1))]);
}

}  // namespace

std::string LoaderState::to_json() const {
  json j = {{"seed", seed}, {"n_docs", n_docs}, {"epoch", epoch},
            {"index", index}, {"offset", offset}, {"batches", batches}};
  return j.dump();
}

LoaderState LoaderState::from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    DSV3_FAIL("loader state: not valid JSON (", e.what(), ")");
  }
  DSV3_CHECK(j.is_object(), "loader state: expected a JSON object");
  auto get = [&](const char* key) -> int64_t {
    DSV3_CHECK(j.contains(key) && j[key].is_number_integer(), "loader state: '", key,
               "' must be an integer");
    const int64_t v = j[key].get<int64_t>();
    DSV3_CHECK(v >= 0, "loader state: '", key, "' = ", v, " is negative");
    return v;
  };
  LoaderState s;
  DSV3_CHECK(j.contains("seed") && j["seed"].is_number_unsigned(),
             "loader state: 'seed' must be a non-negative integer");
  s.seed = j["seed"].get<uint64_t>();
  s.n_docs = get("n_docs");
  s.epoch = get("epoch");
  s.index = get("index");
  s.offset = get("offset");
  s.batches = get("batches");
  return s;
}

Loader::Loader(const DataSet& ds, const LoaderOptions& opt) : ds_(ds), opt_(opt) {
  const DataMeta& m = ds.meta();
  DSV3_CHECK(opt_.seq_len >= 1, "loader: seq_len must be >= 1, got ", opt_.seq_len);
  DSV3_CHECK(opt_.batch >= 1, "loader: batch must be >= 1, got ", opt_.batch);
  DSV3_CHECK(opt_.fim_rate >= 0 && opt_.fim_rate <= 1, "loader: fim_rate must be in [0, 1], got ",
             opt_.fim_rate);
  DSV3_CHECK(opt_.fim_spm_rate >= 0 && opt_.fim_spm_rate <= 1,
             "loader: fim_spm_rate must be in [0, 1], got ", opt_.fim_spm_rate);
  auto pick = [&](int32_t& id, int32_t meta_id, const char* name) {
    if (id < 0) id = meta_id;
    DSV3_CHECK(id < m.vocab_size, "loader: ", name, " ", id, " is not below the vocabulary size ",
               m.vocab_size);
  };
  pick(opt_.eos_id, m.eos_id, "eos_id");
  pick(opt_.fim_begin_id, m.fim_begin_id, "fim_begin_id");
  pick(opt_.fim_hole_id, m.fim_hole_id, "fim_hole_id");
  pick(opt_.fim_end_id, m.fim_end_id, "fim_end_id");
  DSV3_CHECK(opt_.eos_id >= 0, "loader: no EOS id (the data set's meta.json has none)");
  fim_on_ = opt_.fim_rate > 0 && opt_.fim_begin_id >= 0 && opt_.fim_hole_id >= 0 &&
            opt_.fim_end_id >= 0;
  set_epoch(0);
  load_current();
}

void Loader::set_epoch(int64_t epoch) {
  if (epoch == epoch_) return;
  make_perm(opt_.seed, epoch, ds_.n_docs(), perm_);
  epoch_ = epoch;
}

int64_t Loader::doc_at(int64_t epoch, int64_t index) const {
  DSV3_ASSERT(index >= 0 && index < ds_.n_docs());
  if (epoch == epoch_) return perm_[size_t(index)];
  if (epoch != other_epoch_) {
    make_perm(opt_.seed, epoch, ds_.n_docs(), other_perm_);
    other_epoch_ = epoch;
  }
  return other_perm_[size_t(index)];
}

void Loader::emitted_doc(int64_t epoch, int64_t index, std::vector<int32_t>& out) const {
  const int64_t id = doc_at(epoch, index);
  const DocEntry e = ds_.doc(id);
  const uint32_t* d = ds_.doc_tokens(id);  // [length]
  const uint64_t n = e.length;
  out.clear();
  out.reserve(n + 4);
  bool fim = false, spm = false;
  uint64_t i = 0, j = 0;
  if (fim_on_ && e.kind == DocKind::kCode) {
    Xoshiro256 r(mix_key(opt_.seed ^ kFimTag, uint64_t(epoch), uint64_t(index)));
    fim = r.uniform() < opt_.fim_rate;
    if (fim) {
      i = r.below(n + 1);
      j = r.below(n + 1);
      if (i > j) std::swap(i, j);
      spm = opt_.fim_spm_rate > 0 && r.uniform() < opt_.fim_spm_rate;
    }
  }
  if (!fim) {
    out.assign(d, d + n);
  } else if (!spm) {  // PSM
    out.push_back(opt_.fim_begin_id);
    out.insert(out.end(), d, d + i);
    out.push_back(opt_.fim_hole_id);
    out.insert(out.end(), d + j, d + n);
    out.push_back(opt_.fim_end_id);
    out.insert(out.end(), d + i, d + j);
  } else {  // SPM
    out.push_back(opt_.fim_begin_id);
    out.push_back(opt_.fim_hole_id);
    out.insert(out.end(), d + j, d + n);
    out.push_back(opt_.fim_end_id);
    out.insert(out.end(), d, d + j);
  }
  out.push_back(opt_.eos_id);
}

void Loader::load_current() { emitted_doc(epoch_, index_, cur_); }

void Loader::next(std::vector<int32_t>& out) {
  const int64_t T1 = opt_.seq_len + 1;
  out.resize(size_t(opt_.batch * T1));
  for (int64_t b = 0; b < opt_.batch; ++b) {
    int32_t* row = out.data() + b * T1;  // [T+1]
    int64_t have = 0;
    while (have < T1) {
      if (offset_ == int64_t(cur_.size())) {
        if (++index_ == ds_.n_docs()) {
          set_epoch(epoch_ + 1);
          index_ = 0;
        }
        load_current();
        offset_ = 0;
      }
      const int64_t k = std::min(T1 - have, int64_t(cur_.size()) - offset_);
      std::copy_n(cur_.data() + offset_, k, row + have);
      have += k;
      offset_ += k;
    }
    // The next window starts at this one's last token (see loader.h); that token came
    // from the current document, so offset_ >= 1 here.
    DSV3_ASSERT(offset_ >= 1);
    --offset_;
  }
  ++batches_;
}

LoaderState Loader::state() const {
  return {opt_.seed, ds_.n_docs(), epoch_, index_, offset_, batches_};
}

void Loader::restore(const LoaderState& s) {
  DSV3_CHECK(s.seed == opt_.seed, "loader state: saved with seed ", s.seed,
             ", this loader has seed ", opt_.seed);
  DSV3_CHECK(s.n_docs == ds_.n_docs(), "loader state: saved for a data set of ", s.n_docs,
             " documents, this one has ", ds_.n_docs());
  DSV3_CHECK(s.epoch >= 0 && s.index >= 0 && s.index < s.n_docs, "loader state: epoch ",
             s.epoch, " / index ", s.index, " out of range");
  set_epoch(s.epoch);
  index_ = s.index;
  load_current();
  DSV3_CHECK(s.offset >= 0 && s.offset < int64_t(cur_.size()), "loader state: offset ",
             s.offset, " is outside document ", s.index, "'s ", cur_.size(), " tokens");
  offset_ = s.offset;
  batches_ = s.batches;
}

}  // namespace dsv3::data
