#include "tokenizer/added_tokens.h"

#include <cstring>

#include "core/check.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {

using nlohmann::json;

namespace {

bool get_flag(const json& e, const char* key, size_t i) {
  if (!e.contains(key) || e[key].is_null()) return false;
  DSV3_CHECK(e[key].is_boolean(), "added_tokens[", i, "].", key, ": expected true or false");
  return e[key].get<bool>();
}

// Rust's char::is_whitespace (the White_Space property), which HF's lstrip/rstrip use.
bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// Length of the whitespace character ending at text[i] (exclusive), not before lo; or 0.
uint32_t space_before(std::string_view text, uint32_t lo, uint32_t i) {
  uint32_t s = i - 1;  // back to the lead byte (a character is at most 4 bytes)
  while (s > lo && i - s < 4 && (uint8_t(text[s]) & 0xC0) == 0x80) --s;
  const int n = utf8_seq_len(text, s);
  if (n <= 0 || s + uint32_t(n) != i) return 0;
  return is_white_space(decode_utf8_at(text, s, n)) ? uint32_t(n) : 0;
}

// Length of the whitespace character starting at text[i], or 0.
uint32_t space_after(std::string_view text, uint32_t i, uint32_t end) {
  const int n = utf8_seq_len(text.substr(0, end), i);
  if (n <= 0) return 0;
  return is_white_space(decode_utf8_at(text, i, n)) ? uint32_t(n) : 0;
}

bool is_word_byte(char c) {
  // Approximates HF's char::is_alphanumeric on the neighbouring character: ASCII letters,
  // digits, '_' and any non-ASCII byte (a letter in most scripts).
  const auto u = uint8_t(c);
  return (u >= '0' && u <= '9') || (u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') ||
         u == '_' || u >= 0x80;
}

}  // namespace

std::vector<AddedToken> parse_added_tokens(const json& j) {
  std::vector<AddedToken> out;
  if (j.is_null()) return out;
  DSV3_CHECK(j.is_array(), "added_tokens: expected an array");
  for (size_t i = 0; i < j.size(); ++i) {
    const json& e = j[i];
    DSV3_CHECK(e.is_object(), "added_tokens[", i, "]: expected an object");
    DSV3_CHECK(e.contains("id") && e["id"].is_number_integer() && e["id"].get<int64_t>() >= 0 &&
                   e["id"].get<int64_t>() < (int64_t(1) << 30),
               "added_tokens[", i, "].id: missing or not a non-negative integer");
    DSV3_CHECK(e.contains("content") && e["content"].is_string() &&
                   !e["content"].get<std::string>().empty(),
               "added_tokens[", i, "].content: missing or empty");
    AddedToken t;
    t.id = int32_t(e["id"].get<int64_t>());
    t.content = e["content"].get<std::string>();
    t.special = get_flag(e, "special", i);
    t.normalized = get_flag(e, "normalized", i);
    t.lstrip = get_flag(e, "lstrip", i);
    t.rstrip = get_flag(e, "rstrip", i);
    t.single_word = get_flag(e, "single_word", i);
    out.push_back(std::move(t));
  }
  return out;
}

json added_token_json(const AddedToken& t) {
  return {{"id", t.id},           {"content", t.content}, {"single_word", t.single_word},
          {"lstrip", t.lstrip},   {"rstrip", t.rstrip},   {"normalized", t.normalized},
          {"special", t.special}};
}

void AddedMatcher::build(const std::vector<const AddedToken*>& tokens) {
  tokens_ = tokens;
  child_.clear();
  terminal_.assign(1, -1);
  std::fill(first_byte_, first_byte_ + 256, false);
  for (size_t k = 0; k < tokens_.size(); ++k) {
    const std::string& c = tokens_[k]->content;
    first_byte_[uint8_t(c[0])] = true;
    int32_t node = 0;
    for (char ch : c) {
      const uint64_t key = (uint64_t(node) << 8) | uint8_t(ch);
      auto it = child_.find(key);
      if (it == child_.end()) {
        it = child_.emplace(key, int32_t(terminal_.size())).first;
        terminal_.push_back(-1);
      }
      node = it->second;
    }
    if (terminal_[size_t(node)] < 0) terminal_[size_t(node)] = int32_t(k);  // first wins
  }
  single_first_ = -1;
  for (int b = 0; b < 256; ++b) {
    if (!first_byte_[b]) continue;
    if (single_first_ >= 0) { single_first_ = -1; break; }
    single_first_ = b;
  }
}

int32_t AddedMatcher::longest_at(std::string_view text, uint32_t pos, uint32_t end,
                                 uint32_t& len) const {
  int32_t best = -1, node = 0;
  for (uint32_t i = pos; i < end; ++i) {
    const auto it = child_.find((uint64_t(node) << 8) | uint8_t(text[i]));
    if (it == child_.end()) break;
    node = it->second;
    if (terminal_[size_t(node)] >= 0) {
      best = terminal_[size_t(node)];
      len = i + 1 - pos;
    }
  }
  return best;
}

void AddedMatcher::split(std::string_view text, uint32_t begin, uint32_t end,
                         std::vector<Segment>& out) const {
  uint32_t plain = begin;  // start of the pending plain-text span
  for (uint32_t i = begin; i < end; ++i) {
    if (single_first_ >= 0) {
      // Every token starts with the same byte (DeepSeek-V3: '<'): memchr skips to it.
      const void* hit = std::memchr(text.data() + i, single_first_, end - i);
      if (!hit) break;
      i = uint32_t(static_cast<const char*>(hit) - text.data());
    } else if (!first_byte_[uint8_t(text[i])]) {
      continue;
    }
    uint32_t len = 0;
    const int32_t k = longest_at(text, i, end, len);
    if (k < 0) continue;
    const AddedToken& t = *tokens_[size_t(k)];
    uint32_t s = i, e = i + len;
    if (t.single_word && ((s > begin && is_word_byte(text[s - 1])) ||
                          (e < end && is_word_byte(text[e])))) {
      i = e - 1;  // HF's automaton resumes after the rejected match, not inside it
      continue;
    }
    if (t.lstrip)
      for (uint32_t n; s > plain && (n = space_before(text, plain, s)) > 0;) s -= n;
    if (t.rstrip)
      for (uint32_t n; e < end && (n = space_after(text, e, end)) > 0;) e += n;
    if (s > plain) out.push_back({plain, s, -1});
    out.push_back({s, e, t.id});
    plain = e;
    i = e - 1;
  }
  if (plain < end) out.push_back({plain, end, -1});
}

}  // namespace dsv3::tok
