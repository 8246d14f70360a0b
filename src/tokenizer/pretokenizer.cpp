#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/pretokenizer.h"

#include <pcre2.h>

#include "core/check.h"

namespace dsv3::tok {

using nlohmann::json;

namespace {

// One match-data block per thread, shared by all patterns: we only read group 0, so a
// fixed ovector suffices (pcre2_match returns 0 when it is too small, still filling 0).
struct MatchData {
  pcre2_match_data* md = pcre2_match_data_create(16, nullptr);
  ~MatchData() { pcre2_match_data_free(md); }
};

pcre2_match_data* thread_match_data() {
  thread_local MatchData m;
  return m.md;
}

// DeepSeek-V3's tokenizer.json pre_tokenizer patterns (SPEC §6), verbatim.
constexpr const char* kDsv3Digits = R"(\p{N}{1,3})";
constexpr const char* kDsv3Cjk = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+";
constexpr const char* kDsv3Main =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
    "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
// GPT-2's pattern, used by ByteLevel when use_regex is true.
constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

SplitBehavior parse_behavior(const json& j, const std::string& where) {
  DSV3_CHECK(j.is_string(), where, ".behavior: expected a string");
  const std::string b = j.get<std::string>();
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  DSV3_FAIL(where, ".behavior: unsupported value '", b,
            "' (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)");
}

// Quotes a literal for PCRE2.
std::string quote_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}-/#").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

bool get_bool(const json& j, const char* key, bool dflt, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  DSV3_CHECK(j[key].is_boolean(), where, ".", key, ": expected true or false");
  return j[key].get<bool>();
}

// HF runs these patterns with Oniguruma, whose Unicode \s and \w differ from PCRE2's with
// UCP (10.42): PCRE2's \s also matches U+180E (through \h), and its \w is only L, N and
// '_'. Rewrites them to Oniguruma's sets: \s = [\t-\r\x{85}\p{Z}]; \w = Unicode's word
// class of UTS #18 (Alphabetic, marks, decimal digits, connector punctuation; not ZWJ)
// plus the Latin-1 digits ² ³ ¹ ¼ ½ ¾ that Oniguruma's 8-bit table also counts as word
// characters (checked against HF on tests/data/tokenizer/pretokenizer_variants.jsonl).
// Inside a character class \s and \w become the bare ranges and \S gains U+180E; \W
// there stays PCRE2's (a class cannot subtract; tokenizer files do not use it).
std::string to_oniguruma_classes(const std::string& p) {
  static const char* kSpace = "\\t-\\r\\x{85}\\p{Z}";
  static const char* kWord =
      "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      const bool space = e == 's' || e == 'S', word = e == 'w' || e == 'W';
      if (space || word) {
        const char* set = space ? kSpace : kWord;
        const bool negated = e == 'S' || e == 'W';
        if (!in_class) out += str_cat(negated ? "[^" : "[", set, "]");
        else if (!negated) out += set;
        else if (space) out += "\\S\\x{180E}";
        else out += "\\W";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      const size_t end = p.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(p, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

Regex::Regex(const std::string& source, const std::string& where) : pattern_(source) {
  int err = 0;
  PCRE2_SIZE err_off = 0;
  const std::string pattern = to_oniguruma_classes(source);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    DSV3_FAIL(where, ": regex does not compile at offset ", err_off, ": ",
              reinterpret_cast<const char*>(msg));
  }
  // Falls back to the interpreter when JIT is unavailable (pcre2_jit_match needs JIT code).
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view text, uint32_t begin, uint32_t end,
                     std::vector<uint32_t>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = thread_match_data();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data() + begin);
  const PCRE2_SIZE n = end - begin;
  PCRE2_SIZE pos = 0;
  while (pos < n) {
    // The text was made valid UTF-8 before pre-tokenization, and pieces begin and end on
    // character boundaries, so PCRE2 need not re-check it.
    const int rc = jit_ ? pcre2_jit_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK, md, nullptr)
                        : pcre2_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    DSV3_CHECK(rc >= 0, "regex match failed (PCRE2 error ", rc, ") for pattern ", pattern_);
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    if (ov[1] == ov[0]) {  // empty match: contributes nothing, step one character
      pos = ov[0] + 1;
      while (pos < n && (uint8_t(subject[pos]) & 0xC0) == 0x80) ++pos;
      continue;
    }
    out.push_back(begin + uint32_t(ov[0]));
    out.push_back(begin + uint32_t(ov[1]));
    pos = ov[1];
  }
}

void PreTokenizer::add_from_json(const json& j, const std::string& where) {
  DSV3_CHECK(j.is_object() && j.contains("type") && j["type"].is_string(), where,
             ".type: missing (expected a pre-tokenizer object)");
  const std::string type = j["type"].get<std::string>();
  if (type == "Sequence") {
    DSV3_CHECK(j.contains("pretokenizers") && j["pretokenizers"].is_array(), where,
               ".pretokenizers: expected an array");
    for (size_t i = 0; i < j["pretokenizers"].size(); ++i)
      add_from_json(j["pretokenizers"][i], str_cat(where, ".pretokenizers[", i, "]"));
    return;
  }
  DSV3_CHECK(steps_.empty() || !steps_.back().add_prefix_space, where,
             ": a pre-tokenizer after ByteLevel(add_prefix_space=true) is not supported");
  PreTokenizerStep s;
  if (type == "Split") {
    DSV3_CHECK(j.contains("pattern") && j["pattern"].is_object(), where,
               ".pattern: expected {\"Regex\": ...} or {\"String\": ...}");
    const json& p = j["pattern"];
    if (p.contains("Regex") && p["Regex"].is_string()) {
      s.regex = std::make_shared<Regex>(p["Regex"].get<std::string>(), where + ".pattern.Regex");
    } else if (p.contains("String") && p["String"].is_string()) {
      s.regex = std::make_shared<Regex>(quote_literal(p["String"].get<std::string>()),
                                        where + ".pattern.String");
    } else {
      DSV3_FAIL(where, ".pattern: expected {\"Regex\": ...} or {\"String\": ...}");
    }
    DSV3_CHECK(j.contains("behavior"), where, ".behavior: missing");
    s.behavior = parse_behavior(j["behavior"], where);
    s.invert = get_bool(j, "invert", false, where);
  } else if (type == "Digits") {
    // HF Digits splits on char::is_numeric (Unicode N*): each digit alone, or runs of them.
    const bool individual = get_bool(j, "individual_digits", false, where);
    s.regex = std::make_shared<Regex>(individual ? R"(\p{N})" : R"(\p{N}+)", where);
  } else if (type == "ByteLevel") {
    s.kind = PreTokenizerStep::Kind::ByteLevel;
    s.add_prefix_space = get_bool(j, "add_prefix_space", true, where);
    if (get_bool(j, "use_regex", true, where)) {
      // Prefixing a space changes what the GPT-2 regex matches at the start of a piece;
      // we would need to run it on a copy. Refuse rather than tokenize differently.
      DSV3_CHECK(!s.add_prefix_space, where,
                 ": ByteLevel with both add_prefix_space and use_regex true is not supported");
      s.regex = std::make_shared<Regex>(kGpt2, where);
    }
    has_byte_level_ = true;
  } else {
    DSV3_FAIL(where, ".type: unsupported pre-tokenizer '", type,
              "' (supported: Sequence, Split, Digits, ByteLevel)");
  }
  steps_.push_back(std::move(s));
  source_.push_back(j);
}

PreTokenizer PreTokenizer::from_json(const json& j) {
  PreTokenizer p;
  if (!j.is_null()) p.add_from_json(j, "pre_tokenizer");
  return p;
}

PreTokenizer PreTokenizer::deepseek_v3() {
  const auto split = [](const char* re) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"},
                {"invert", false}};
  };
  const json j = {{"type", "Sequence"},
                  {"pretokenizers",
                   {split(kDsv3Digits), split(kDsv3Cjk), split(kDsv3Main),
                    {{"type", "ByteLevel"}, {"add_prefix_space", false},
                     {"trim_offsets", true}, {"use_regex", false}}}}};
  return from_json(j);
}

json PreTokenizer::to_json() const {
  if (source_.empty()) return nullptr;
  if (source_.size() == 1) return source_[0];
  return {{"type", "Sequence"}, {"pretokenizers", source_}};
}

namespace {

// Applies one split to piece p given the match offsets inside it (HF's
// NormalizedString::split with a SplitDelimiterBehavior), appending to out.
void split_piece(const Piece& p, const std::vector<uint32_t>& m, SplitBehavior behavior,
                 bool invert, std::vector<Piece>& out) {
  // Walk (range, is_match) pairs covering the piece in order, as HF's find_matches does.
  const size_t first = out.size();
  bool prev_match = false;
  bool any = false;
  const auto emit = [&](uint32_t b, uint32_t e, bool is_match) {
    if (invert) is_match = !is_match;
    switch (behavior) {
      case SplitBehavior::Removed:
        if (!is_match) out.push_back({b, e, false});
        break;
      case SplitBehavior::Isolated:
        out.push_back({b, e, false});
        break;
      case SplitBehavior::MergedWithPrevious:
        if (is_match && !prev_match && out.size() > first) out.back().end = e;
        else out.push_back({b, e, false});
        break;
      case SplitBehavior::MergedWithNext:  // resolved below, in a second pass
        out.push_back({b, e, is_match});
        break;
      case SplitBehavior::Contiguous:
        if (any && is_match == prev_match) out.back().end = e;
        else out.push_back({b, e, false});
        break;
    }
    prev_match = is_match;
    any = true;
  };
  uint32_t prev = p.begin;
  for (size_t i = 0; i < m.size(); i += 2) {
    if (m[i] != prev) emit(prev, m[i], false);
    emit(m[i], m[i + 1], true);
    prev = m[i + 1];
  }
  if (prev != p.end) emit(prev, p.end, false);
  if (behavior == SplitBehavior::MergedWithNext) {
    // HF folds from the right: a match joins the piece that follows it.
    std::vector<Piece> tmp(out.begin() + long(first), out.end());
    out.resize(first);
    std::vector<Piece> rev;
    bool prev_m = false;
    for (size_t i = tmp.size(); i-- > 0;) {
      const bool is_match = tmp[i].prefix_space;  // carried the flag in the pass above
      if (is_match && !prev_m && !rev.empty()) rev.back().begin = tmp[i].begin;
      else rev.push_back({tmp[i].begin, tmp[i].end, false});
      prev_m = is_match;
    }
    out.insert(out.end(), rev.rbegin(), rev.rend());
  }
}

}  // namespace

void PreTokenizer::split(std::string_view text, std::vector<Piece>& out,
                         std::vector<Piece>& scratch, std::vector<uint32_t>& matches) const {
  out.clear();
  if (text.empty()) return;
  out.push_back({0, uint32_t(text.size()), false});
  for (const PreTokenizerStep& s : steps_) {
    if (!s.regex && !s.add_prefix_space) continue;  // ByteLevel without regex: bytes only
    scratch.clear();
    for (const Piece& p : out) {
      if (s.regex) {
        matches.clear();
        s.regex->find_all(text, p.begin, p.end, matches);
        if (s.kind == PreTokenizerStep::Kind::ByteLevel) {
          split_piece(p, matches, SplitBehavior::Isolated, false, scratch);
        } else {
          split_piece(p, matches, s.behavior, s.invert, scratch);
        }
      } else {
        scratch.push_back(p);
      }
    }
    out.swap(scratch);
    if (s.add_prefix_space) {
      // HF prepends " " to each piece that does not start with one (use_regex is false
      // here, so the piece stays whole and the space simply leads its bytes).
      for (Piece& p : out) p.prefix_space = p.end > p.begin && text[p.begin] != ' ';
    }
  }
  // Drop empty pieces (HF filters them).
  size_t k = 0;
  for (const Piece& p : out)
    if (p.end > p.begin) out[k++] = p;
  out.resize(k);
}

}  // namespace dsv3::tok
