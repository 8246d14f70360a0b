// The BPE trainer: its incremental pair counting against a slow recount-everything twin,
// determinism, and the tokenizer.json it writes, encoded by the Rust HF tokenizers
// (trained_expected.jsonl, from tools/tokenizer/gen_trained.sh) and by us.
#include <algorithm>
#include <map>

#include "test_tokenizer_util.h"
#include "core/check.h"
#include "tokenizer/trainer.h"
#include "tokenizer/utf8.h"

namespace dsv3::tok {
namespace {

using namespace dsv3::tok::testing;

std::vector<std::string> corpus() { return {read_text(std::string(kDataDir) + "train_corpus.txt")}; }

// Slow twin: recount every pair of every word before each merge; the most frequent pair
// wins, ties to the smallest (left id, right id) — the rule the trainer documents.
std::vector<std::pair<int32_t, int32_t>> naive_merges(const Tokenizer& trained,
                                                      const std::vector<std::string>& texts,
                                                      int32_t vocab_size, int64_t min_freq) {
  const Bpe& bpe = trained.bpe();
  std::map<std::string, int64_t> counts;
  const PreTokenizer pre = PreTokenizer::deepseek_v3();
  std::vector<Piece> pieces, scratch;
  std::vector<uint32_t> m;
  for (const std::string& text : texts) {
    // Cut out the special tokens (the corpus has some), then pre-tokenize each part.
    std::vector<std::string> parts{text};
    for (const AddedToken& a : trained.added_tokens()) {
      std::vector<std::string> next;
      for (const std::string& part : parts) {
        size_t from = 0;
        for (size_t at; (at = part.find(a.content, from)) != std::string::npos; from = at + a.content.size())
          next.push_back(part.substr(from, at - from));
        next.push_back(part.substr(from));
      }
      parts = next;
    }
    for (const std::string& t : parts) {
      pre.split(t, pieces, scratch, m);
      for (const Piece& p : pieces) ++counts[t.substr(p.begin, p.end - p.begin)];
    }
  }
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [w, c] : counts) {
    std::vector<int32_t> s;
    for (char ch : w) s.push_back(bpe.byte_id(uint8_t(ch)));
    words.push_back({s, c});
  }
  std::map<std::string, int32_t> ids;
  for (int32_t id = 0; id < bpe.size(); ++id) ids[std::string(bpe.token_bytes(id))] = id;
  int32_t n_tokens = 2 + 256;
  std::vector<std::pair<int32_t, int32_t>> merges;
  while (n_tokens < vocab_size) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pc;
    for (const auto& [s, c] : words)
      for (size_t i = 0; i + 1 < s.size(); ++i) pc[{s[i], s[i + 1]}] += c;
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_c = 0;
    for (const auto& [p, c] : pc)
      if (c > best_c) { best_c = c; best = p; }  // map order: smallest pair first on ties
    if (best_c < min_freq) break;
    merges.push_back(best);
    const std::string tok = std::string(bpe.token_bytes(best.first)) + std::string(bpe.token_bytes(best.second));
    const int32_t merged = ids.at(tok);  // the trained vocabulary must hold it
    if (merged >= n_tokens) ++n_tokens;
    for (auto& [s, c] : words) {
      std::vector<int32_t> o;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) { o.push_back(merged); ++i; }
        else o.push_back(s[i]);
      }
      s = o;
    }
  }
  return merges;
}

TEST(TokenizerTrain, IncrementalCountsMatchNaiveRecount) {
  TrainOptions opt;
  opt.vocab_size = 2 + 256 + 300;
  const auto t = train_bpe(corpus(), opt);
  EXPECT_EQ(t->bpe().merge_list(), naive_merges(*t, corpus(), opt.vocab_size, opt.min_frequency));
  EXPECT_EQ(t->vocab_size(), opt.vocab_size);
  EXPECT_EQ(t->token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(t->token_to_id("<｜end▁of▁sentence｜>"), 1);
}

TEST(TokenizerTrain, MinFrequencyStopsEarly) {
  TrainOptions opt;
  opt.vocab_size = 100000;
  opt.min_frequency = 50;
  const auto t = train_bpe(corpus(), opt);
  EXPECT_LT(t->vocab_size(), 2 + 256 + 300);
  EXPECT_EQ(t->bpe().merge_list(), naive_merges(*t, corpus(), opt.vocab_size, opt.min_frequency));
}

TEST(TokenizerTrain, DeterministicAndMatchesCommittedFile) {
  // gen_trained.sh wrote trained_tokenizer.json with this corpus and vocab size; our
  // trainer must reproduce it byte for byte (determinism across runs and builds).
  TrainOptions opt;
  opt.vocab_size = 1000;
  const std::string a = to_tokenizer_json(*train_bpe(corpus(), opt));
  EXPECT_EQ(a, to_tokenizer_json(*train_bpe(corpus(), opt)));
  EXPECT_EQ(a, read_text(std::string(kDataDir) + "trained_tokenizer.json"));
}

TEST(TokenizerTrain, TrainedFileEncodesLikeHuggingFace) {
  TrainOptions opt;
  opt.vocab_size = 1000;
  const auto trained = train_bpe(corpus(), opt);
  const auto loaded = Tokenizer::from_path(std::string(kDataDir) + "trained_tokenizer.json");
  const auto c = read_jsonl(std::string(kDataDir) + "trained_expected.jsonl");
  ASSERT_GE(c.size(), 200u);
  for (const auto& j : c) {
    const std::string text = j["text"];
    EXPECT_EQ(loaded->encode(text), ids_of(j["ids"])) << j["text"].dump();
    EXPECT_EQ(trained->encode(text), ids_of(j["ids"])) << j["text"].dump();
    EXPECT_EQ(loaded->decode(ids_of(j["ids"])), text);
  }
}

TEST(TokenizerTrain, OtherPreTokenizersEncodeLikeHuggingFace) {
  // The trained model under other pipelines (GPT-2's ByteLevel regex, Digits, each Split
  // behaviour, String patterns, invert, add_prefix_space): ids from the Rust HF tokenizers
  // (tools/tokenizer/gen_variants.js).
  auto base = nlohmann::json::parse(read_text(std::string(kDataDir) + "trained_tokenizer.json"));
  const auto texts = read_jsonl(std::string(kDataDir) + "parity_strings.jsonl");
  const auto variants = read_jsonl(std::string(kDataDir) + "pretokenizer_variants.jsonl");
  ASSERT_GE(variants.size(), 9u);
  for (const auto& v : variants) {
    base["pre_tokenizer"] = v["pre_tokenizer"];
    const auto t = Tokenizer::from_json(base.dump());
    ASSERT_EQ(v["ids"].size(), texts.size());
    int bad = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
      const std::string text = texts[i];
      if (t->encode(text) != ids_of(v["ids"][i]) && ++bad <= 3)
        ADD_FAILURE() << v["name"] << ": ids differ for " << texts[i].dump();
    }
    EXPECT_EQ(bad, 0) << v["name"];
  }
}

TEST(TokenizerTrain, SpecialTokensAreNeverLearned) {
  TrainOptions opt;
  opt.vocab_size = 2 + 256 + 50;
  std::string text;
  for (int i = 0; i < 200; ++i) text += "<｜end▁of▁sentence｜>hello world ";
  const auto t = train_bpe({text}, opt);
  for (const auto& [a, b] : t->bpe().merge_list()) {
    const std::string tok = std::string(t->bpe().token_bytes(a)) + std::string(t->bpe().token_bytes(b));
    EXPECT_EQ(tok.find("｜"), std::string::npos) << tok;
  }
  EXPECT_EQ(t->encode("<｜end▁of▁sentence｜>")[0], 1);
}

TEST(TokenizerTrain, BadOptionsAreErrors) {
  TrainOptions opt;
  opt.vocab_size = 100;  // < 2 specials + 256 bytes
  EXPECT_THROW(train_bpe(corpus(), opt), Error);
  opt.vocab_size = 1000;
  opt.min_frequency = 0;
  EXPECT_THROW(train_bpe(corpus(), opt), Error);
}

}  // namespace
}  // namespace dsv3::tok
