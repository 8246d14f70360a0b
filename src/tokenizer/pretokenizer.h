// Pre-tokenization: the Hugging Face pre_tokenizer pipeline (Sequence of Split / Digits /
// ByteLevel) that cuts a text segment into words before BPE. Regexes run through PCRE2
// (UTF + UCP, JIT), each on one piece at a time exactly as HF runs them, so look-arounds
// such as `\s+(?!\S)` see the end of the piece and not the text beyond it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3::tok {

// A word: a byte range of the segment; prefix_space marks ByteLevel(add_prefix_space).
struct Piece {
  uint32_t begin = 0, end = 0;
  bool prefix_space = false;
};

// HF SplitDelimiterBehavior.
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

class Regex {
 public:
  explicit Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends the [begin, end) byte offsets of every non-empty match in text[begin, end)
  // (the subject is exactly that range) to out as pairs.
  void find_all(std::string_view text, uint32_t begin, uint32_t end,
                std::vector<uint32_t>& out) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

struct PreTokenizerStep {
  enum class Kind { Split, ByteLevel } kind = Kind::Split;
  std::shared_ptr<Regex> regex;  // Split (also ByteLevel with use_regex)
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
};

class PreTokenizer {
 public:
  // Parses tokenizer.json's "pre_tokenizer" (null, one step, or a Sequence).
  static PreTokenizer from_json(const nlohmann::json& j);
  // DeepSeek-V3's pipeline, used by the trainer as the default.
  static PreTokenizer deepseek_v3();

  // Cuts text into pieces (scratch is reused between calls to avoid allocation).
  void split(std::string_view text, std::vector<Piece>& out, std::vector<Piece>& scratch,
             std::vector<uint32_t>& matches) const;

  nlohmann::json to_json() const;
  bool has_byte_level() const { return has_byte_level_; }

 private:
  void add_from_json(const nlohmann::json& j, const std::string& where);
  std::vector<PreTokenizerStep> steps_;
  bool has_byte_level_ = false;
  std::vector<nlohmann::json> source_;  // the steps' JSON, written back by to_json
};

}  // namespace dsv3::tok
