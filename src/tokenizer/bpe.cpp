#include "tokenizer/bpe.h"

#include <algorithm>

#include "core/check.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {

using nlohmann::json;

void PairMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap <<= 1;  // load factor <= 0.5 keeps probe chains short
  table_.assign(cap, Entry{});
  mask_ = cap - 1;
  size_ = 0;
}

bool PairMap::insert(int32_t a, int32_t b, int32_t rank, int32_t merged) {
  DSV3_ASSERT(size_ * 2 < table_.size());
  const uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
  for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
    Entry& e = table_[i];
    if (e.key == key) return false;
    if (e.key == kEmpty) {
      e = {key, rank, merged};
      ++size_;
      return true;
    }
  }
}

void Bpe::finish_vocab() {
  std::fill(byte_id_, byte_id_ + 256, -1);
  by_bytes_.reserve(size_t(size()));
  for (int32_t id = 0; id < size(); ++id) {
    if (!present_[size_t(id)]) continue;
    const std::string_view t = token_bytes(id);
    by_bytes_.emplace(std::string(t), id);
    if (t.size() == 1) byte_id_[uint8_t(t[0])] = id;
  }
}

int32_t Bpe::id_of_bytes(std::string_view raw) const {
  const auto it = by_bytes_.find(std::string(raw));
  return it == by_bytes_.end() ? -1 : it->second;
}

Bpe Bpe::from_json(const json& m) {
  DSV3_CHECK(m.is_object(), "model: expected an object");
  if (m.contains("type")) {
    DSV3_CHECK(m["type"].is_string() && m["type"].get<std::string>() == "BPE",
               "model.type: unsupported model '", m["type"].dump(),
               "' (only BPE is supported)");
  }
  DSV3_CHECK(m.contains("vocab") && m["vocab"].is_object(),
             "model.vocab: missing or not an object of token -> id");
  DSV3_CHECK(m.contains("merges") && m["merges"].is_array(),
             "model.merges: missing or not an array");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    DSV3_CHECK(!m.contains(key) || m[key].is_null() ||
                   (m[key].is_string() && m[key].get<std::string>().empty()),
               "model.", key, ": not supported by the byte-level BPE (must be null)");
  }
  DSV3_CHECK(!m.contains("dropout") || m["dropout"].is_null() ||
                 (m["dropout"].is_number() && m["dropout"].get<double>() == 0.0),
             "model.dropout: BPE dropout is a training-time option and is not supported");
  DSV3_CHECK(!m.contains("byte_fallback") || !m["byte_fallback"].is_boolean() ||
                 !m["byte_fallback"].get<bool>(),
             "model.byte_fallback: not supported (only byte-level BPE)");

  Bpe bpe;
  if (m.contains("ignore_merges") && m["ignore_merges"].is_boolean())
    bpe.ignore_merges_ = m["ignore_merges"].get<bool>();
  // Vocabulary: each key is a byte-level string; undo the alphabet to raw bytes. A key
  // with characters outside the alphabet (e.g. "<｜begin▁of▁sentence｜>") can never come
  // out of the merge loop; it keeps its UTF-8 bytes, as HF's ByteLevel decoder does.
  const json& vocab = m["vocab"];
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    DSV3_CHECK(it.value().is_number_integer(), "model.vocab[\"", it.key(),
               "\"]: expected an integer id");
    const int64_t id = it.value().get<int64_t>();
    DSV3_CHECK(id >= 0 && id < (int64_t(1) << 30), "model.vocab[\"", it.key(), "\"]: id ", id,
               " out of range");
    max_id = std::max(max_id, int32_t(id));
  }
  // Tables below are sized by the largest id: a corrupt file with one huge id would
  // allocate gigabytes. Real vocabularies are (nearly) dense.
  DSV3_CHECK(int64_t(max_id) < 2 * int64_t(vocab.size()) + 1024, "model.vocab: largest id ",
             max_id, " but only ", vocab.size(), " tokens (ids this sparse are not supported)");
  std::vector<std::string> tokens(size_t(max_id + 1));
  bpe.present_.assign(size_t(max_id + 1), 0);
  bpe.literal_.assign(size_t(max_id + 1), 0);
  std::string raw;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const auto id = size_t(it.value().get<int64_t>());
    DSV3_CHECK(!bpe.present_[id], "model.vocab: id ", id, " is used by two tokens");
    bpe.present_[id] = 1;
    if (bytelevel_to_bytes(it.key(), raw)) {
      tokens[id] = raw;
    } else {
      tokens[id] = it.key();
      bpe.literal_[id] = 1;
    }
  }
  bpe.token_off_.assign(1, 0);
  for (const std::string& t : tokens) {
    bpe.token_data_ += t;
    bpe.token_off_.push_back(uint32_t(bpe.token_data_.size()));
  }
  bpe.finish_vocab();

  // Merges: "a b" strings (older files) or ["a", "b"] pairs (tokenizers >= 0.20).
  const json& merges = m["merges"];
  bpe.merges_.reserve(merges.size());
  std::string a, b;
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& e = merges[r];
    std::string left, right;
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ', 1);
      DSV3_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
                 "model.merges[", r, "]: expected \"left right\", got \"", s, "\"");
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      left = e[0].get<std::string>();
      right = e[1].get<std::string>();
    } else {
      DSV3_FAIL("model.merges[", r, "]: expected \"left right\" or [\"left\", \"right\"]");
    }
    const auto lookup = [&](const std::string& t, std::string& buf) {
      const int32_t id = bpe.id_of_bytes(bytelevel_to_bytes(t, buf) ? buf : t);
      DSV3_CHECK(id >= 0, "model.merges[", r, "]: token \"", t, "\" is not in model.vocab");
      return id;
    };
    const int32_t ia = lookup(left, a), ib = lookup(right, b);
    const int32_t im = lookup(left + right, raw);
    if (bpe.merges_.insert(ia, ib, int32_t(r), im)) bpe.merge_list_.push_back({ia, ib});
  }
  return bpe;
}

Bpe Bpe::from_tokens(std::vector<std::string> tokens, std::vector<uint8_t> literal,
                     const std::vector<std::pair<int32_t, int32_t>>& merges) {
  Bpe bpe;
  DSV3_ASSERT(literal.size() == tokens.size());
  bpe.present_.assign(tokens.size(), 1);
  bpe.literal_ = std::move(literal);
  bpe.token_off_.assign(1, 0);
  for (const std::string& t : tokens) {
    bpe.token_data_ += t;
    bpe.token_off_.push_back(uint32_t(bpe.token_data_.size()));
  }
  bpe.finish_vocab();
  bpe.merges_.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto [ia, ib] = merges[r];
    const int32_t im = bpe.id_of_bytes(std::string(bpe.token_bytes(ia)) +
                                       std::string(bpe.token_bytes(ib)));
    DSV3_ASSERT(im >= 0);
    if (bpe.merges_.insert(ia, ib, int32_t(r), im)) bpe.merge_list_.push_back({ia, ib});
  }
  return bpe;
}

void Bpe::init_symbols(std::string_view word, BpeScratch& s) const {
  s.syms.clear();
  for (char c : word) {
    const int32_t id = byte_id_[uint8_t(c)];
    if (id < 0) continue;
    const auto n = int32_t(s.syms.size());
    s.syms.push_back({id, n - 1, n + 1, kNoRank});
  }
  if (!s.syms.empty()) s.syms.back().next = -1;
  for (int32_t i = 0; i + 1 < int32_t(s.syms.size()); ++i) set_rank(s, i);
}

void Bpe::set_rank(BpeScratch& s, int32_t i) const {
  BpeScratch::Sym& a = s.syms[size_t(i)];
  if (a.next < 0) { a.right_rank = kNoRank; return; }
  const PairMap::Entry* e = merges_.find(a.id, s.syms[size_t(a.next)].id);
  a.right_rank = e ? e->rank : kNoRank;
}

// Merges symbol i with its right neighbour (the pair's rank is known to exist).
void Bpe::merge_at(BpeScratch& s, int32_t i) const {
  BpeScratch::Sym& a = s.syms[size_t(i)];
  const BpeScratch::Sym& b = s.syms[size_t(a.next)];
  a.id = merges_.find(a.id, b.id)->merged;
  a.next = b.next;
  if (a.next >= 0) s.syms[size_t(a.next)].prev = i;
}

void Bpe::emit(const BpeScratch& s, std::vector<int32_t>& out) const {
  for (int32_t i = s.syms.empty() ? -1 : 0; i >= 0; i = s.syms[size_t(i)].next)
    out.push_back(s.syms[size_t(i)].id);
}

// Lowest rank first, leftmost among equal ranks: the order of HF's merge heap. The scan
// re-reads only cached ranks, so each merge costs one pass over the word plus two lookups;
// quadratic in the word length, but fastest for the short words that dominate text.
void Bpe::encode_word_scan(std::string_view word, std::vector<int32_t>& out,
                           BpeScratch& s) const {
  init_symbols(word, s);
  for (;;) {
    int32_t best = -1, best_rank = kNoRank;
    for (int32_t i = s.syms.empty() ? -1 : 0; i >= 0; i = s.syms[size_t(i)].next) {
      if (s.syms[size_t(i)].right_rank < best_rank) {
        best_rank = s.syms[size_t(i)].right_rank;
        best = i;
      }
    }
    if (best < 0) break;
    merge_at(s, best);
    set_rank(s, best);
    if (s.syms[size_t(best)].prev >= 0) set_rank(s, s.syms[size_t(best)].prev);
  }
  emit(s, out);
}

// The same order through a min-heap of (rank, position): O(n log n) for long words.
// A popped entry is stale when the rank cached at its position has changed (a pair's rank
// identifies the pair, and merged symbols never revert).
void Bpe::encode_word_heap(std::string_view word, std::vector<int32_t>& out,
                           BpeScratch& s) const {
  init_symbols(word, s);
  s.heap.clear();
  const auto key = [](int32_t rank, int32_t pos) { return (uint64_t(rank) << 32) | uint32_t(pos); };
  const auto push = [&](int32_t i) {
    const int32_t r = s.syms[size_t(i)].right_rank;
    if (r == kNoRank) return;
    s.heap.push_back(key(r, i));
    std::push_heap(s.heap.begin(), s.heap.end(), std::greater<>());
  };
  for (int32_t i = 0; i < int32_t(s.syms.size()); ++i) push(i);
  while (!s.heap.empty()) {
    std::pop_heap(s.heap.begin(), s.heap.end(), std::greater<>());
    const uint64_t top = s.heap.back();
    s.heap.pop_back();
    const auto pos = int32_t(uint32_t(top)), rank = int32_t(top >> 32);
    BpeScratch::Sym& a = s.syms[size_t(pos)];
    if (a.right_rank != rank) continue;  // stale (a was merged away: rank set to kNoRank)
    const int32_t removed = a.next;
    merge_at(s, pos);
    s.syms[size_t(removed)].right_rank = kNoRank;  // its entries become stale
    set_rank(s, pos);
    push(pos);
    if (a.prev >= 0) {
      set_rank(s, a.prev);
      push(a.prev);
    }
  }
  emit(s, out);
}

void Bpe::encode_word(std::string_view word, std::vector<int32_t>& out, BpeScratch& s) const {
  if (ignore_merges_) {
    const int32_t id = id_of_bytes(word);
    if (id >= 0) { out.push_back(id); return; }
  }
  // Crossover measured on text with bench tokenize; both orders are identical (tests).
  if (word.size() <= 48) encode_word_scan(word, out, s);
  else encode_word_heap(word, out, s);
}

}  // namespace dsv3::tok
