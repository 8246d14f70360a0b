// Added (special) tokens: parsed from tokenizer.json's "added_tokens" and matched in the
// text before pre-tokenization, leftmost first and longest at a position (HF matches them
// with a leftmost-longest Aho-Corasick automaton; a byte trie walked from candidate
// positions gives the same answer).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::tok {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false, normalized = false, lstrip = false, rstrip = false,
       single_word = false;
};

std::vector<AddedToken> parse_added_tokens(const nlohmann::json& j);
nlohmann::json added_token_json(const AddedToken& t);

// A span of text: an added token (id >= 0) or plain text to pre-tokenize (id == -1).
struct Segment {
  uint32_t begin, end;
  int32_t id;
};

class AddedMatcher {
 public:
  void build(const std::vector<const AddedToken*>& tokens);
  bool empty() const { return tokens_.empty(); }
  // Splits text[begin, end) into segments, appending them to out.
  void split(std::string_view text, uint32_t begin, uint32_t end,
             std::vector<Segment>& out) const;

 private:
  // Longest token matching at pos, or -1; sets len.
  int32_t longest_at(std::string_view text, uint32_t pos, uint32_t end, uint32_t& len) const;
  std::vector<const AddedToken*> tokens_;
  std::unordered_map<uint64_t, int32_t> child_;  // (node << 8 | byte) -> node
  std::vector<int32_t> terminal_;                // node -> index into tokens_, or -1
  bool first_byte_[256] = {};
  int single_first_ = -1;  // the one byte all tokens start with, or -1
};

}  // namespace dsv3::tok
