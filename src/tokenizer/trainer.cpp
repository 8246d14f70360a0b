#include "tokenizer/trainer.h"

#include <algorithm>
#include <queue>
#include <unordered_map>

#include "core/check.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {

using ordered_json = nlohmann::ordered_json;

namespace {

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

struct Word {
  std::vector<int32_t> syms;  // current token ids
  int64_t count = 0;          // occurrences in the corpus
};

// The classic incremental BPE trainer: pair counts kept exact under merges, a lazy
// max-heap (stale entries re-pushed with their current count) picks the next merge, and
// each pair remembers the words it occurs in so a merge touches only those.
class Trainer {
 public:
  explicit Trainer(std::vector<Word> words) : words_(std::move(words)) {
    for (int32_t w = 0; w < int32_t(words_.size()); ++w) {
      const auto& s = words_[size_t(w)].syms;
      for (size_t i = 0; i + 1 < s.size(); ++i) add(pair_key(s[i], s[i + 1]), words_[size_t(w)].count, w);
    }
    for (const auto& [k, c] : count_) heap_.push({c, k});
  }

  // The most frequent pair (ties: the smallest ids), or false when none reaches min_count.
  bool best(int64_t min_count, uint64_t& key) {
    while (!heap_.empty()) {
      const auto [c, k] = heap_.top();
      heap_.pop();
      const auto it = count_.find(k);
      const int64_t now = it == count_.end() ? 0 : it->second;
      if (now != c) {
        if (now > 0) heap_.push({now, k});
        continue;
      }
      if (c < min_count) return false;
      key = k;
      return true;
    }
    return false;
  }

  void merge(uint64_t key, int32_t merged) {
    const auto a = int32_t(key >> 32), b = int32_t(uint32_t(key));
    std::vector<int32_t> ws = std::move(where_[key]);
    where_.erase(key);
    std::sort(ws.begin(), ws.end());
    ws.erase(std::unique(ws.begin(), ws.end()), ws.end());
    changed_.clear();
    for (const int32_t w : ws) {
      auto& s = words_[size_t(w)].syms;
      const int64_t f = words_[size_t(w)].count;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        if (s[i] != a || s[i + 1] != b) continue;
        if (i > 0) {
          add(pair_key(s[i - 1], a), -f, -1);
          add(pair_key(s[i - 1], merged), f, w);
        }
        if (i + 2 < s.size()) {
          add(pair_key(b, s[i + 2]), -f, -1);
          add(pair_key(merged, s[i + 2]), f, w);
        }
        add(key, -f, -1);
        s[i] = merged;
        s.erase(s.begin() + long(i) + 1);
      }
    }
    count_.erase(key);
    for (const uint64_t k : changed_) {
      const auto it = count_.find(k);
      if (it != count_.end() && it->second > 0) heap_.push({it->second, k});
    }
  }

 private:
  void add(uint64_t k, int64_t delta, int32_t w) {
    int64_t& c = count_[k];
    c += delta;
    if (w >= 0) where_[k].push_back(w);
    changed_.push_back(k);
  }
  struct Cmp {  // max count first; among equal counts the smallest pair key
    bool operator()(const std::pair<int64_t, uint64_t>& x,
                    const std::pair<int64_t, uint64_t>& y) const {
      return x.first != y.first ? x.first < y.first : x.second > y.second;
    }
  };
  std::vector<Word> words_;
  std::unordered_map<uint64_t, int64_t> count_;
  std::unordered_map<uint64_t, std::vector<int32_t>> where_;
  std::priority_queue<std::pair<int64_t, uint64_t>, std::vector<std::pair<int64_t, uint64_t>>, Cmp>
      heap_;
  std::vector<uint64_t> changed_;
};

}  // namespace

std::unique_ptr<Tokenizer> train_bpe(const std::vector<std::string>& texts,
                                     const TrainOptions& opt) {
  const auto n_special = int32_t(opt.special_tokens.size());
  DSV3_CHECK(opt.vocab_size >= n_special + 256, "--vocab-size ", opt.vocab_size,
             " is too small: it must hold the ", n_special, " special tokens and the 256 bytes");
  DSV3_CHECK(opt.min_frequency >= 1, "--min-frequency must be at least 1");
  std::vector<AddedToken> added;
  for (int32_t i = 0; i < n_special; ++i) {
    DSV3_CHECK(!opt.special_tokens[size_t(i)].empty(), "special token ", i, " is empty");
    added.push_back({i, opt.special_tokens[size_t(i)], true, false, false, false, false});
  }
  std::vector<const AddedToken*> added_ptrs;
  for (const AddedToken& a : added) added_ptrs.push_back(&a);
  AddedMatcher matcher;
  matcher.build(added_ptrs);
  const PreTokenizer pre = PreTokenizer::deepseek_v3();

  // 1. Count words: special tokens are cut out first, the rest pre-tokenized as at encode.
  std::unordered_map<std::string, int64_t> counts;
  std::vector<Segment> segs;
  std::vector<Piece> pieces, scratch;
  std::vector<uint32_t> matches;
  for (const std::string& raw : texts) {
    const std::string text = utf8_lossy(raw);
    DSV3_CHECK(text.size() < (size_t(1) << 32), "a training text is larger than 4 GiB");
    segs.clear();
    matcher.split(text, 0, uint32_t(text.size()), segs);
    for (const Segment& s : segs) {
      if (s.id >= 0) continue;
      const std::string_view seg = std::string_view(text).substr(s.begin, s.end - s.begin);
      pre.split(seg, pieces, scratch, matches);
      for (const Piece& p : pieces) ++counts[std::string(seg.substr(p.begin, p.end - p.begin))];
    }
  }

  // 2. The alphabet: every byte, ordered as HF orders it (by its byte-level character).
  std::vector<std::string> tokens;
  std::vector<uint8_t> literal;
  for (const std::string& s : opt.special_tokens) {
    tokens.push_back(s);
    literal.push_back(1);
  }
  std::vector<int> bytes(256);
  for (int b = 0; b < 256; ++b) bytes[size_t(b)] = b;
  std::sort(bytes.begin(), bytes.end(),
            [](int x, int y) { return byte_to_cp(uint8_t(x)) < byte_to_cp(uint8_t(y)); });
  int32_t byte_id[256];
  for (int b : bytes) {
    byte_id[b] = int32_t(tokens.size());
    tokens.push_back(std::string(1, char(b)));
    literal.push_back(0);
  }
  std::unordered_map<std::string, int32_t> id_of;
  for (int32_t i = n_special; i < int32_t(tokens.size()); ++i) id_of[tokens[size_t(i)]] = i;

  // Words in a fixed order (sorted) so that training is deterministic.
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto& [w, c] : sorted) {
    Word x;
    for (char ch : w) x.syms.push_back(byte_id[uint8_t(ch)]);
    x.count = c;
    words.push_back(std::move(x));
  }

  // 3. Merge until the vocabulary is full or no pair is frequent enough.
  Trainer tr(std::move(words));
  std::vector<std::pair<int32_t, int32_t>> merges;
  uint64_t key = 0;
  while (int32_t(tokens.size()) < opt.vocab_size && tr.best(opt.min_frequency, key)) {
    const auto a = int32_t(key >> 32), b = int32_t(uint32_t(key));
    std::string t = tokens[size_t(a)] + tokens[size_t(b)];
    auto it = id_of.find(t);
    if (it == id_of.end()) {
      it = id_of.emplace(t, int32_t(tokens.size())).first;
      tokens.push_back(std::move(t));
      literal.push_back(0);
    }
    merges.push_back({a, b});
    tr.merge(key, it->second);
  }
  return std::make_unique<Tokenizer>(Bpe::from_tokens(std::move(tokens), std::move(literal), merges),
                                     pre, std::move(added));
}

std::string to_tokenizer_json(const Tokenizer& t) {
  const Bpe& bpe = t.bpe();
  const auto key_of = [&](int32_t id) {
    const std::string_view b = bpe.token_bytes(id);
    return bpe.is_literal(id) ? std::string(b) : bytes_to_bytelevel(b);
  };
  ordered_json added = ordered_json::array();
  for (const AddedToken& a : t.added_tokens())
    added.push_back({{"id", a.id}, {"content", a.content}, {"single_word", a.single_word},
                     {"lstrip", a.lstrip}, {"rstrip", a.rstrip}, {"normalized", a.normalized},
                     {"special", a.special}});
  ordered_json post = {{"type", "ByteLevel"}, {"add_prefix_space", true},
                       {"trim_offsets", false}, {"use_regex", true}};
  if (!t.prefix_ids().empty() || !t.suffix_ids().empty()) {
    // BOS/EOS as HF's TemplateProcessing; each special token named by its content.
    ordered_json single = ordered_json::array(), specials = ordered_json::object();
    const auto special = [&](int32_t id) {
      const std::string name(t.token_bytes(id));
      single.push_back({{"SpecialToken", {{"id", name}, {"type_id", 0}}}});
      specials[name] = {{"id", name}, {"ids", {id}}, {"tokens", {name}}};
    };
    for (int32_t id : t.prefix_ids()) special(id);
    single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
    for (int32_t id : t.suffix_ids()) special(id);
    ordered_json pair = single;
    pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
    post = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair},
            {"special_tokens", specials}};
  }
  const ordered_json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", ordered_json::parse(t.pre_tokenizer().to_json().dump())},
      {"post_processor", post},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model", "@MODEL@"}};
  // The model is written by hand: ordered_json's inserts are linear, far too slow for a
  // 128K vocabulary, and HF's own files list the vocabulary in id order.
  std::string model = str_cat(
      "{\n  \"type\": \"BPE\",\n  \"dropout\": null,\n  \"unk_token\": null,\n",
      "  \"continuing_subword_prefix\": null,\n  \"end_of_word_suffix\": null,\n",
      "  \"fuse_unk\": false,\n  \"byte_fallback\": false,\n  \"ignore_merges\": ",
      bpe.ignore_merges() ? "true" : "false", ",\n  \"vocab\": {");
  bool first = true;
  for (int32_t id = 0; id < bpe.size(); ++id) {
    if (!bpe.has_id(id)) continue;
    model += str_cat(first ? "\n   " : ",\n   ", ordered_json(key_of(id)).dump(), ": ", id);
    first = false;
  }
  model += "\n  },\n  \"merges\": [";
  first = true;
  for (const auto& [a, b] : bpe.merge_list()) {
    model += str_cat(first ? "\n   " : ",\n   ", ordered_json(key_of(a) + " " + key_of(b)).dump());
    first = false;
  }
  model += "\n  ]\n }";
  std::string out = j.dump(1, ' ', false);
  const size_t at = out.find("\"@MODEL@\"");
  DSV3_ASSERT(at != std::string::npos);
  out.replace(at, 9, model);
  return out + "\n";

}

}  // namespace dsv3::tok
