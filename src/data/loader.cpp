// The packing loader with FIM (loader.h).
#include "data/loader.h"

#include <algorithm>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/rng.h"

namespace dsv3::data {

using nlohmann::json;

namespace {

// Stream tags, so that the permutation and the FIM draws never share random numbers.
constexpr uint64_t kPermTag = 0x7065726d75746521ull;
constexpr uint64_t kFimTag = 0x66696d2d70736d21ull;

void make_perm(uint64_t seed, int64_t epoch, int64_t n, std::vector<uint32_t>& perm) {
  perm.resize(size_t(n));
  std::iota(perm.begin(), perm.end(), 0u);
  Rng r(mix_key(seed ^ kPermTag, uint64_t(epoch)));
  for (int64_t i = n - 1; i > 0; --i)  // Fisher-Yates
    std::swap(perm[size_t(i)], perm[size_t(r.below(uint64_t(i) + 1))]);
}

}  // namespace

std::string LoaderState::to_json() const {
  json lanes_j = json::array();
  for (const LaneState& l : lanes) lanes_j.push_back({{"position", l.position}, {"offset", l.offset}});
  json j = {{"seed", seed}, {"n_docs", n_docs}, {"lanes", lanes_j}, {"batches", batches}};
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
  auto get = [](const json& o, const char* key, const std::string& where) -> int64_t {
    DSV3_CHECK(o.contains(key) && o[key].is_number_integer(), "loader state: '", where, key,
               "' must be an integer");
    const int64_t v = o[key].get<int64_t>();
    DSV3_CHECK(v >= 0, "loader state: '", where, key, "' = ", v, " is negative");
    return v;
  };
  LoaderState s;
  DSV3_CHECK(j.contains("seed") && j["seed"].is_number_unsigned(),
             "loader state: 'seed' must be a non-negative integer");
  s.seed = j["seed"].get<uint64_t>();
  s.n_docs = get(j, "n_docs", "");
  // A state of the single-stream loader (before lanes) has epoch/index instead.
  DSV3_CHECK(j.contains("lanes") && j["lanes"].is_array() && !j["lanes"].empty(),
             "loader state: 'lanes' must be a non-empty array (a state written before the "
             "loader had lanes cannot be resumed)");
  for (size_t i = 0; i < j["lanes"].size(); ++i) {
    const json& l = j["lanes"][i];
    const std::string where = "lanes[" + std::to_string(i) + "].";
    DSV3_CHECK(l.is_object(), "loader state: '", where, "' must be an object");
    s.lanes.push_back({get(l, "position", where), get(l, "offset", where)});
  }
  s.batches = get(j, "batches", "");
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
  DSV3_CHECK(ds.n_docs() >= 1, "loader: the data set has no documents");
  lanes_.resize(size_t(opt_.batch));
  for (int64_t b = 0; b < opt_.batch; ++b) {
    lanes_[size_t(b)].position = b;
    load(lanes_[size_t(b)]);
  }
}

const std::vector<uint32_t>& Loader::perm(int64_t epoch) const {
  auto it = perms_.find(epoch);
  if (it != perms_.end()) return it->second;
  if (perms_.size() >= 4) perms_.erase(perms_.begin());  // the oldest epoch
  std::vector<uint32_t>& p = perms_[epoch];
  make_perm(opt_.seed, epoch, ds_.n_docs(), p);
  return p;
}

int64_t Loader::doc_at(int64_t epoch, int64_t index) const {
  DSV3_ASSERT(epoch >= 0 && index >= 0 && index < ds_.n_docs());
  return perm(epoch)[size_t(index)];
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
    Rng r(mix_key(opt_.seed ^ kFimTag, uint64_t(epoch), uint64_t(index)));
    fim = r.uniform_double() < opt_.fim_rate;
    if (fim) {
      i = r.below(n + 1);
      j = r.below(n + 1);
      if (i > j) std::swap(i, j);
      spm = opt_.fim_spm_rate > 0 && r.uniform_double() < opt_.fim_spm_rate;
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

void Loader::load(Lane& l) const {
  emitted_doc(l.position / ds_.n_docs(), l.position % ds_.n_docs(), l.cur);
}

void Loader::next(std::vector<int32_t>& out) {
  const int64_t T1 = opt_.seq_len + 1;
  out.resize(size_t(opt_.batch * T1));
  for (int64_t b = 0; b < opt_.batch; ++b) {
    Lane& l = lanes_[size_t(b)];
    int32_t* row = out.data() + b * T1;  // [T+1]
    int64_t have = 0;
    while (have < T1) {
      if (l.offset == int64_t(l.cur.size())) {
        l.position += opt_.batch;  // the lane's next document
        load(l);
        l.offset = 0;
      }
      const int64_t k = std::min(T1 - have, int64_t(l.cur.size()) - l.offset);
      std::copy_n(l.cur.data() + l.offset, k, row + have);
      have += k;
      l.offset += k;
    }
    // The lane's next window starts at this one's last token (see loader.h); that token
    // came from the current document, so offset >= 1 here.
    DSV3_ASSERT(l.offset >= 1);
    --l.offset;
  }
  ++batches_;
}

LoaderState Loader::state() const {
  LoaderState s{opt_.seed, ds_.n_docs(), {}, batches_};
  for (const Lane& l : lanes_) s.lanes.push_back({l.position, l.offset});
  return s;
}

void Loader::restore(const LoaderState& s) {
  DSV3_CHECK(s.seed == opt_.seed, "loader state: saved with seed ", s.seed,
             ", this loader has seed ", opt_.seed);
  DSV3_CHECK(s.n_docs == ds_.n_docs(), "loader state: saved for a data set of ", s.n_docs,
             " documents, this one has ", ds_.n_docs());
  DSV3_CHECK(int64_t(s.lanes.size()) == opt_.batch, "loader state: saved with batch ",
             s.lanes.size(), " (one lane per row), this loader has batch ", opt_.batch);
  std::vector<Lane> lanes(lanes_.size());
  for (size_t b = 0; b < lanes.size(); ++b) {
    const LaneState& ls = s.lanes[b];
    DSV3_CHECK(ls.position >= 0 && ls.position % opt_.batch == int64_t(b), "loader state: lane ", b,
               " is at document position ", ls.position, ", which is not lane ", b, "'s (≡ ", b,
               " mod ", opt_.batch, ")");
    Lane& l = lanes[b];
    l.position = ls.position;
    load(l);
    DSV3_CHECK(ls.offset >= 0 && ls.offset < int64_t(l.cur.size()), "loader state: lane ", b,
               " offset ", ls.offset, " is outside its document's ", l.cur.size(), " tokens");
    l.offset = ls.offset;
  }
  lanes_ = std::move(lanes);
  batches_ = s.batches;
}

}  // namespace dsv3::data
