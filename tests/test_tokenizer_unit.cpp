// Pieces of the tokenizer on small inputs: UTF-8 handling, the byte-level alphabet,
// HF's split behaviours, added-token matching, and clear errors for malformed files.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {
namespace {

using nlohmann::json;

const std::string kFFFD = "\xEF\xBF\xBD";

TEST(TokenizerUtf8, LossyFollowsUnicodeMaximalSubparts) {
  // Unicode 15 §3.9, Table 3-8: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64 becomes
  // a FFFD FFFD FFFD b FFFD c FFFD FFFD d.
  EXPECT_EQ(utf8_lossy("a\xF1\x80\x80\xE1\x80\xC2" "b\x80" "c\x80\xBF" "d"),
            "a" + kFFFD + kFFFD + kFFFD + "b" + kFFFD + "c" + kFFFD + kFFFD + "d");
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), kFFFD + kFFFD);              // overlong: C0 never leads
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), kFFFD + kFFFD + kFFFD);  // surrogate D800
  EXPECT_EQ(utf8_lossy("\xF4\x90\x80\x80"), kFFFD + kFFFD + kFFFD + kFFFD);  // > U+10FFFF
  EXPECT_EQ(utf8_lossy("\xE4\xBD"), kFFFD);                      // truncated at the end
  EXPECT_EQ(utf8_lossy("ok \xE4\xBD\xA0"), "ok \xE4\xBD\xA0");
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xF0\x9F\x98"));
}

TEST(TokenizerUtf8, IncompleteTail) {
  EXPECT_EQ(utf8_incomplete_tail(""), 0);
  EXPECT_EQ(utf8_incomplete_tail("abc"), 0);
  EXPECT_EQ(utf8_incomplete_tail("a\xF0"), 1);
  EXPECT_EQ(utf8_incomplete_tail("a\xF0\x9F"), 2);
  EXPECT_EQ(utf8_incomplete_tail("a\xF0\x9F\x98"), 3);
  EXPECT_EQ(utf8_incomplete_tail("a\xF0\x9F\x98\x80"), 0);
  EXPECT_EQ(utf8_incomplete_tail("a\xF0\x41"), 0);   // already broken: nothing to wait for
  EXPECT_EQ(utf8_incomplete_tail("a\xE0\x80"), 0);   // E0 80 can never complete
  EXPECT_EQ(utf8_incomplete_tail("\x80\x80"), 0);
}

TEST(TokenizerUtf8, ByteLevelAlphabetIsABijection) {
  std::vector<int> seen(400, 0);
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = byte_to_cp(uint8_t(b));
    ASSERT_LT(cp, 400u);
    ++seen[cp];
    EXPECT_EQ(cp_to_byte(cp), b);
  }
  for (int c : seen) EXPECT_LE(c, 1);
  // GPT-2: space is Ġ (U+0120), newline Ċ (U+010A), printable ASCII keeps its code point.
  EXPECT_EQ(byte_to_cp(' '), 0x120u);
  EXPECT_EQ(byte_to_cp('\n'), 0x10Au);
  EXPECT_EQ(byte_to_cp('A'), uint32_t('A'));
  std::string raw;
  EXPECT_TRUE(bytelevel_to_bytes(bytes_to_bytelevel("a b\n\xFF"), raw));
  EXPECT_EQ(raw, "a b\n\xFF");
  EXPECT_FALSE(bytelevel_to_bytes("\xEF\xBD\x9C", raw));  // ｜ is not in the alphabet
}

std::vector<std::string> split_with(const std::string& behavior, const std::string& text,
                                    bool invert = false) {
  const json j = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior},
                  {"invert", invert}};
  const PreTokenizer p = PreTokenizer::from_json(j);
  std::vector<Piece> out, scratch;
  std::vector<uint32_t> m;
  p.split(text, out, scratch, m);
  std::vector<std::string> words;
  for (const Piece& x : out) words.push_back(text.substr(x.begin, x.end - x.begin));
  return words;
}

TEST(TokenizerPreTokenizer, SplitBehavioursAsDocumentedByHuggingFace) {
  // The example of HF's SplitDelimiterBehavior documentation: "the-final--countdown".
  using V = std::vector<std::string>;
  const std::string s = "the-final--countdown";
  EXPECT_EQ(split_with("Removed", s), (V{"the", "final", "countdown"}));
  EXPECT_EQ(split_with("Isolated", s), (V{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(split_with("MergedWithPrevious", s), (V{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(split_with("MergedWithNext", s), (V{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(split_with("Contiguous", s), (V{"the", "-", "final", "--", "countdown"}));
  EXPECT_EQ(split_with("Removed", s, true), (V{"-", "-", "-"}));
  EXPECT_EQ(split_with("Isolated", ""), V{});
}

TEST(TokenizerPreTokenizer, DeepSeekPipelineSplitsDigitsAndCjk) {
  const PreTokenizer p = PreTokenizer::deepseek_v3();
  const std::string text = "abc 12345 你好世界 end\r\n  x";
  std::vector<Piece> out, scratch;
  std::vector<uint32_t> m;
  p.split(text, out, scratch, m);
  std::vector<std::string> words;
  for (const Piece& x : out) words.push_back(text.substr(x.begin, x.end - x.begin));
  EXPECT_EQ(words, (std::vector<std::string>{"abc", " ", "123", "45", " ", "你好世界", " end",
                                             "\r\n", " ", " x"}));
}

// A tiny byte-level tokenizer.json: bytes a, b, c, space (Ġ) and merges a b, ab c.
json tiny() {
  json vocab = json::object();
  vocab["a"] = 0; vocab["b"] = 1; vocab["c"] = 2; vocab["\xC4\xA0"] = 3;
  vocab["ab"] = 4; vocab["abc"] = 5;
  return {{"version", "1.0"},
          {"added_tokens", json::array({{{"id", 6}, {"content", "<s>"}, {"special", true}},
                                        {{"id", 7}, {"content", "<s>x"}, {"special", false},
                                         {"normalized", true}}})},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a b", "ab c"}}}}};
}

TEST(TokenizerLoad, TinyTokenizerEncodesAndDecodes) {
  const auto t = Tokenizer::from_json(tiny().dump());
  EXPECT_EQ(t->encode("abc ab"), (std::vector<int32_t>{5, 3, 4}));
  EXPECT_EQ(t->encode("cab"), (std::vector<int32_t>{2, 4}));
  // Non-normalized added tokens are matched first, on the raw text: "<s>" wins at 0
  // although the normalized "<s>x" is longer there (HF's two passes).
  EXPECT_EQ(t->encode("<s>xa"), (std::vector<int32_t>{6, 0}));  // 'x' has no token: dropped
  EXPECT_EQ(t->decode({5, 3, 6}), "abc <s>");
  EXPECT_EQ(t->decode({5, 3, 6}, true), "abc ");
  EXPECT_EQ(t->vocab_size(), 8);
  EXPECT_THROW(t->decode({8}), Error);
}

TEST(TokenizerLoad, AddedTokensWithSeveralFirstBytes) {
  // Tokens starting with different bytes take the bitmap scan instead of memchr.
  json j = tiny();
  j["added_tokens"].push_back({{"id", 8}, {"content", "cc"}, {"special", false}});
  j["added_tokens"].push_back({{"id", 9}, {"content", "ccc"}, {"special", false}});
  const auto t = Tokenizer::from_json(j.dump());
  EXPECT_EQ(t->encode("accca<s>cc"), (std::vector<int32_t>{0, 9, 0, 6, 8}));
  EXPECT_EQ(t->encode("acab"), (std::vector<int32_t>{0, 2, 4}));
}

TEST(TokenizerLoad, AddedTokenStripAndSingleWord) {
  // lstrip/rstrip swallow Unicode whitespace (Rust's char::is_whitespace) around the
  // token; single_word tokens only match between non-word characters.
  json j = tiny();
  j["added_tokens"].push_back({{"id", 8}, {"content", "[M]"}, {"lstrip", true}, {"rstrip", true}});
  j["added_tokens"].push_back({{"id", 9}, {"content", "cab"}, {"single_word", true}});
  const auto t = Tokenizer::from_json(j.dump());
  EXPECT_EQ(t->encode("a \u3000\t[M] \nb"), (std::vector<int32_t>{0, 8, 1}));
  EXPECT_EQ(t->encode("a[M]b"), (std::vector<int32_t>{0, 8, 1}));
  EXPECT_EQ(t->encode(" cab "), (std::vector<int32_t>{3, 9, 3}));
  EXPECT_EQ(t->encode("acab"), (std::vector<int32_t>{0, 2, 4}));  // 'a' before: not a word
}

// Loads a broken variant and checks that the error names the field.
void expect_error(const json& j, const std::string& field) {
  try {
    Tokenizer::from_json(j.dump());
    ADD_FAILURE() << "no error; expected one naming " << field;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos)
        << "message '" << e.what() << "' does not name " << field;
  }
}

TEST(TokenizerLoad, MalformedFilesNameTheField) {
  EXPECT_THROW(Tokenizer::from_json("{not json"), Error);
  EXPECT_THROW(Tokenizer::from_json("[]"), Error);
  json j = tiny(); j.erase("model"); expect_error(j, "model");
  j = tiny(); j["model"]["type"] = "WordPiece"; expect_error(j, "model.type");
  j = tiny(); j["model"].erase("vocab"); expect_error(j, "model.vocab");
  j = tiny(); j["model"]["vocab"]["a"] = "zero"; expect_error(j, "model.vocab[\"a\"]");
  j = tiny(); j["model"]["vocab"]["b"] = 0; expect_error(j, "model.vocab");
  j = tiny(); j["model"]["merges"] = {"a x"}; expect_error(j, "model.merges[0]");
  j = tiny(); j["model"]["merges"] = {"abc"}; expect_error(j, "model.merges[0]");
  j = tiny(); j["model"]["merges"] = {42}; expect_error(j, "model.merges[0]");
  j = tiny(); j["model"]["byte_fallback"] = true; expect_error(j, "model.byte_fallback");
  j = tiny(); j["model"]["continuing_subword_prefix"] = "##"; expect_error(j, "model.continuing_subword_prefix");
  j = tiny(); j["normalizer"] = {{"type", "NFKC"}}; expect_error(j, "normalizer");
  j = tiny(); j["decoder"] = {{"type", "WordPiece"}}; expect_error(j, "decoder");
  j = tiny(); j["pre_tokenizer"] = {{"type", "Whitespace"}}; expect_error(j, "pre_tokenizer.type");
  j = tiny();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "(["}}}, {"behavior", "Isolated"}}, {{"type", "ByteLevel"}}}}};
  expect_error(j, "pre_tokenizer.pretokenizers[0].pattern.Regex");
  j = tiny();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}}, {{"type", "ByteLevel"}}}}};
  expect_error(j, "pre_tokenizer.pretokenizers[0].behavior");
  j = tiny(); j["added_tokens"][0].erase("content"); expect_error(j, "added_tokens[0].content");
  j = tiny(); j["added_tokens"][1]["id"] = -3; expect_error(j, "added_tokens[1].id");
  // Huge but in-range ids: rejected before any table is sized by them (used to allocate
  // tens of GB and get OOM-killed).
  j = tiny(); j["added_tokens"][1]["id"] = (1 << 30) - 1; expect_error(j, "added_tokens[1].id");
  j = tiny(); j["model"]["vocab"]["abc"] = (1 << 30) - 1; expect_error(j, "model.vocab");
  j = tiny(); j["post_processor"] = {{"type", "RobertaProcessing"}}; expect_error(j, "post_processor.type");
}

TEST(TokenizerLoad, MissingPathsAreErrors) {
  EXPECT_THROW(Tokenizer::from_path("/nonexistent/tokenizer.json"), Error);
  EXPECT_THROW(Tokenizer::from_path("/"), Error);  // a directory without tokenizer.json
}

}  // namespace
}  // namespace dsv3::tok
