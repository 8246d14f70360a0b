// The BPE model of a byte-level tokenizer: vocabulary, merge ranks and the merge loop.
// Tokens are kept as raw bytes (the byte-level alphabet is undone at load), so encoding
// never maps text to the alphabet: a word's bytes index the 256 single-byte tokens directly.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::tok {

// Open-addressing map from a token pair to (rank, merged id): the hot lookup of the merge
// loop, so a flat table with linear probing instead of std::unordered_map.
class PairMap {
 public:
  struct Entry {
    uint64_t key = kEmpty;  // (left << 32) | right
    int32_t rank = 0, merged = 0;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  void reserve(size_t n);
  // Returns false when the pair is already present (the first rank wins, as in HF).
  bool insert(int32_t a, int32_t b, int32_t rank, int32_t merged);
  const Entry* find(int32_t a, int32_t b) const {
    const uint64_t key = (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      const Entry& e = table_[i];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return size_t(k);
  }
  std::vector<Entry> table_;
  size_t mask_ = 0, size_ = 0;
};

// Reusable buffers of the merge loop, so encoding a word allocates nothing.
struct BpeScratch {
  struct Sym {
    int32_t id, prev, next, right_rank;  // right_rank: rank of (this, next), or kNoRank
  };
  std::vector<Sym> syms;
  std::vector<uint64_t> heap;  // (rank << 32) | position, min-heap
};

class Bpe {
 public:
  static constexpr int32_t kNoRank = INT32_MAX;

  // Parses tokenizer.json's "model" (type BPE); errors name the offending field.
  static Bpe from_json(const nlohmann::json& model);
  // Builds a model from raw-byte tokens (index = id) and merges given as id pairs in rank
  // order; used by the trainer.
  // literal marks tokens whose bytes are plain text (special tokens), see is_literal.
  static Bpe from_tokens(std::vector<std::string> tokens, std::vector<uint8_t> literal,
                         const std::vector<std::pair<int32_t, int32_t>>& merges);

  // Appends the ids of one word (raw bytes). Bytes without a single-byte token are
  // dropped, as HF's BPE does without an unk_token.
  void encode_word(std::string_view word, std::vector<int32_t>& out, BpeScratch& s) const;
  // The same with the quadratic scan or the heap forced (the two must agree; tests).
  void encode_word_scan(std::string_view word, std::vector<int32_t>& out, BpeScratch& s) const;
  void encode_word_heap(std::string_view word, std::vector<int32_t>& out, BpeScratch& s) const;

  int32_t size() const { return int32_t(token_off_.size()) - 1; }  // ids 0..size()-1 may exist
  bool has_id(int32_t id) const { return id >= 0 && id < size() && present_[size_t(id)]; }
  std::string_view token_bytes(int32_t id) const {
    return std::string_view(token_data_).substr(token_off_[size_t(id)],
                                                token_off_[size_t(id) + 1] - token_off_[size_t(id)]);
  }
  // The id of the token with these raw bytes, or -1.
  int32_t id_of_bytes(std::string_view raw) const;
  // True for a vocab key outside the byte-level alphabet: its bytes are its UTF-8 text.
  bool is_literal(int32_t id) const { return literal_[size_t(id)] != 0; }
  bool ignore_merges() const { return ignore_merges_; }
  int32_t byte_id(uint8_t b) const { return byte_id_[b]; }
  // The merges as id pairs in rank order (for writing tokenizer.json).
  const std::vector<std::pair<int32_t, int32_t>>& merge_list() const { return merge_list_; }

 private:
  void finish_vocab();
  void init_symbols(std::string_view word, BpeScratch& s) const;
  void set_rank(BpeScratch& s, int32_t i) const;
  void merge_at(BpeScratch& s, int32_t i) const;
  void emit(const BpeScratch& s, std::vector<int32_t>& out) const;

  std::string token_data_;                 // all tokens' raw bytes, concatenated
  std::vector<uint32_t> token_off_;        // [size + 1] offsets into token_data_
  std::vector<uint8_t> present_;           // [size] id is in the vocabulary
  std::vector<uint8_t> literal_;           // [size] key was not byte-level (see is_literal)
  std::unordered_map<std::string, int32_t> by_bytes_;  // raw bytes -> id
  int32_t byte_id_[256];
  PairMap merges_;
  std::vector<std::pair<int32_t, int32_t>> merge_list_;
  bool ignore_merges_ = false;
};

}  // namespace dsv3::tok
