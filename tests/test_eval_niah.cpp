// Needle in a Haystack (eval/niah.h): prompts of exactly the cell's length with the needle
// at a sentence boundary near the depth; a constructed answerer that copies the key from
// the prompt scores 100% and one that answers a wrong key 0%; the grid, niah.json and
// niah.png; bad options. Then `dsv3 eval ppl` and `dsv3 eval niah` end to end on a tiny
// random checkpoint with a tokenizer and a prepared data set with a held-out split.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "data/dataset.h"
#include "data/prepare.h"
#include "eval/niah.h"
#include "io/random_checkpoint.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"

namespace dsv3::eval {
namespace {

namespace fs = std::filesystem;

const fs::path& root() {
  static const fs::path dir = [] {
    char tmpl[] = "/tmp/dsv3-test-niah.XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(root(), ec);
    });
    return fs::path(d ? d : "/tmp");
  }();
  return dir;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

// Sentence i of the haystack text.
std::string sentence(int i) {
  static const char* const kWords[] = {"river", "hill", "lamp", "garden", "window", "road", "bird"};
  return "The " + std::string(kWords[i % 7]) + " near the " + kWords[(i * 3 + 1) % 7] +
         " was quiet on day " + std::to_string(i) + ".";
}

std::string haystack_text(int sentences, int first = 0) {
  std::string s;
  for (int i = first; i < first + sentences; ++i) {
    if (i > first) s += i % 5 == 0 ? '\n' : ' ';
    s += sentence(i);
  }
  return s;
}

// A byte-level BPE of exactly the tiny model's 300 ids (BOS 0, EOS 1 as its config), BOS
// added on encode, written into dir as tokenizer.json + tokenizer_config.json.
std::string write_tokenizer(const fs::path& dir) {
  fs::create_directories(dir);
  tok::TrainOptions opt;
  opt.vocab_size = 300;
  opt.special_tokens = {data::kBosToken, data::kEosToken, "<｜User｜>", "<｜Assistant｜>"};
  const auto t = tok::train_bpe({haystack_text(60), "What is the secret number? The secret "
                                 "number is 48213. The secret number is 90210."}, opt);
  EXPECT_EQ(t->vocab_size(), 300);
  std::ofstream(dir / "tokenizer.json") << tok::to_tokenizer_json(*t);
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>", )"
      << R"("add_bos_token": true, "add_eos_token": false})";
  return (dir / "tokenizer.json").string();
}

const tok::Tokenizer& tokenizer() {
  static const auto t = tok::Tokenizer::from_path(write_tokenizer(root() / "tok"));
  return *t;
}

// Copies the tokens after the first occurrence of the needle's prefix: a model with perfect
// retrieval.
NiahAnswerer copying_answerer(const NiahBuilder& b) {
  return [&b](const std::vector<int32_t>& prompt, int64_t max_new) {
    const auto& pre = b.needle_prefix();
    const auto at = std::search(prompt.begin(), prompt.end(), pre.begin(), pre.end());
    EXPECT_NE(at, prompt.end());
    const auto from = at + int64_t(pre.size());
    return std::vector<int32_t>(from, from + std::min<int64_t>(max_new, prompt.end() - from));
  };
}

TEST(Niah, AnswerMatching) {
  EXPECT_TRUE(niah_answer_matches(" 48213", "48213"));
  EXPECT_TRUE(niah_answer_matches(" 48213.", "48213"));
  EXPECT_TRUE(niah_answer_matches("48213 and", "48213"));
  EXPECT_FALSE(niah_answer_matches(" 482130", "48213"));
  EXPECT_FALSE(niah_answer_matches(" 4821", "48213"));
  EXPECT_FALSE(niah_answer_matches(" the 48213", "48213"));
  EXPECT_FALSE(niah_answer_matches("", "48213"));
  for (int k = 0; k < 50; ++k) {
    const std::string key = niah_key(3, 256, 50, k);
    ASSERT_EQ(key.size(), 5u);
    EXPECT_EQ(key, niah_key(3, 256, 50, k));
  }
  EXPECT_NE(niah_key(3, 256, 50, 0), niah_key(3, 256, 50, 1));
}

TEST(Niah, PromptHasTheLengthAndTheNeedleAtASentenceBoundary) {
  const tok::Tokenizer& t = tokenizer();
  const NiahBuilder b(t, t.encode(haystack_text(80), false));
  const int64_t prefix = int64_t(t.prefix_ids().size());
  ASSERT_EQ(prefix, 1);  // BOS
  for (int64_t length : {64, 100, 257, 600}) {
    int64_t prev = -1;
    for (int64_t depth : {0, 10, 25, 50, 75, 90, 100}) {
      const NiahPrompt p = b.build(length, depth, "48213");
      ASSERT_EQ(int64_t(p.ids.size()), length);
      EXPECT_EQ(p.ids[0], t.prefix_ids()[0]);
      EXPECT_GE(p.needle_at, prev) << "deeper needles come later";
      prev = p.needle_at;
      const auto& pre = b.needle_prefix();
      ASSERT_TRUE(std::equal(pre.begin(), pre.end(), p.ids.begin() + p.needle_at));
      EXPECT_TRUE(std::equal(p.answer.begin(), p.answer.end(), p.ids.begin() + p.needle_at + int64_t(pre.size())));
      EXPECT_TRUE(std::equal(pre.begin(), pre.end(), p.ids.end() - int64_t(pre.size())))
          << "the question ends as the needle's prefix";
      EXPECT_EQ(t.decode(p.answer), " 48213");
      // A boundary: the haystack's start, its end (only the question follows the needle),
      // or after a token that ends a sentence.
      const int64_t needle_end = p.needle_at + int64_t(pre.size() + p.answer.size()) + 1;
      const std::string after = t.decode(std::vector<int32_t>(p.ids.begin() + needle_end, p.ids.end()));
      const std::string before = std::string(t.token_bytes(p.ids[size_t(p.needle_at - 1)]));
      const bool sentence_end = before.back() == '.' || before.back() == '\n';
      EXPECT_TRUE(p.needle_at == prefix || after.rfind("\nWhat is", 0) == 0 || sentence_end)
          << "needle after '" << before << "' at depth " << depth << ", length " << length;
      if (depth == 0) {
        EXPECT_EQ(p.needle_at, prefix);
      }
      // Near d% of the haystack: within a sentence (under 60 tokens with this small BPE).
      const int64_t question = int64_t(t.encode("\nWhat is the secret number?").size() + pre.size());
      const int64_t h = length - prefix - int64_t(pre.size() + p.answer.size() + 1) - question;
      EXPECT_NEAR(double(p.needle_at - prefix), depth / 100.0 * double(h), 60.0) << length << " " << depth;
    }
  }
  // Depth 100: the needle ends the haystack; only the question follows it.
  const NiahPrompt last = b.build(200, 100, "12345");
  const std::string tail = t.decode(std::vector<int32_t>(last.ids.begin() + last.needle_at, last.ids.end()));
  EXPECT_EQ(tail, " The secret number is 12345.\nWhat is the secret number? The secret number is");
}

TEST(Niah, CopyingModelScoresOneWrongKeyZero) {
  const tok::Tokenizer& t = tokenizer();
  const NiahBuilder b(t, t.encode(haystack_text(80), false));
  NiahOptions o;
  o.lengths = {64, 128, 256};
  o.depths = {0, 25, 50, 75, 100};
  o.trials = 3;
  o.seed = 11;
  int64_t calls = 0;
  const NiahAnswerer copy = copying_answerer(b);
  const NiahResult good = run_niah(b, o, [&](const std::vector<int32_t>& p, int64_t n) {
    ++calls;
    return copy(p, n);
  });
  EXPECT_EQ(calls, 3 * 5 * 3);
  ASSERT_EQ(good.score.size(), 15u);
  for (double s : good.score) EXPECT_EQ(s, 1.0);
  EXPECT_EQ(good.mean(), 1.0);

  const std::vector<int32_t> wrong = t.encode(" 00000.", false);  // keys are 10000..99999
  const NiahResult bad = run_niah(b, o, [&](const std::vector<int32_t>&, int64_t) { return wrong; });
  for (double s : bad.score) EXPECT_EQ(s, 0.0);

  // Trial 0 of each cell answered wrongly, the other two copied: 2/3 everywhere.
  const NiahResult part = run_niah(b, o, [&](const std::vector<int32_t>& p, int64_t n) {
    const std::vector<int32_t> got = copy(p, n);
    static int k = 0;
    return (k++ % 3 == 0) ? wrong : got;
  });
  for (double s : part.score) EXPECT_NEAR(s, 2.0 / 3.0, 1e-12);

  // The grid text, niah.json and the heatmap.
  const std::string grid = niah_grid_text(good);
  EXPECT_NE(grid.find("    256"), std::string::npos) << grid;
  EXPECT_NE(grid.find("100%"), std::string::npos) << grid;
  EXPECT_NE(grid.find("mean 1.000"), std::string::npos) << grid;
  const nlohmann::json j = nlohmann::json::parse(niah_json(part, "tiny-model"));
  EXPECT_EQ(j["model"], "tiny-model");
  EXPECT_EQ(j["seed"], 11);
  EXPECT_EQ(j["trials"], 3);
  EXPECT_EQ(j["lengths"], nlohmann::json({64, 128, 256}));
  EXPECT_EQ(j["depths"], nlohmann::json({0, 25, 50, 75, 100}));
  ASSERT_EQ(j["scores"].size(), 3u);
  for (const auto& col : j["scores"]) {
    ASSERT_EQ(col.size(), 5u);
    for (const auto& v : col) EXPECT_NEAR(v.get<double>(), 2.0 / 3.0, 1e-12);
  }
  ASSERT_EQ(j["examples"].size(), 3u);
  EXPECT_EQ(j["examples"][0][0]["key"], niah_key(11, 64, 0, 0));
  EXPECT_EQ(j["examples"][0][0]["answer"], " 00000.");  // trial 0 answered wrongly
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) GTEST_SKIP() << "gnuplot not installed";
  const std::string png = (root() / "grid" / "niah.png").string();
  fs::create_directories(root() / "grid");
  write_niah_png(part, "test \"grid\"", png);
  ASSERT_TRUE(fs::exists(png));
  EXPECT_EQ(slurp(png).substr(0, 4), "\x89PNG");
}

TEST(Niah, BadOptionsAreRefused) {
  const tok::Tokenizer& t = tokenizer();
  const auto expect_error = [](const std::function<void()>& fn, const std::string& part) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected '" << part << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  NiahOptions o;
  o.lengths = {64};
  o.depths = {0, 101};
  expect_error([&] { validate_niah_options(o, 1000); }, "--depths");
  o.depths = {-5};
  expect_error([&] { validate_niah_options(o, 1000); }, "--depths");
  o.depths = {50};
  o.lengths = {64, 2000};
  expect_error([&] { validate_niah_options(o, 1018); }, "max_position_embeddings");
  o.lengths = {64};
  o.trials = 0;
  expect_error([&] { validate_niah_options(o, 1000); }, "--trials");
  o.trials = 1;
  const NiahBuilder small(t, t.encode(haystack_text(3), false));
  const NiahAnswerer none = [](const std::vector<int32_t>&, int64_t) { return std::vector<int32_t>{}; };
  o.lengths = {64, 512};
  expect_error([&] { run_niah(small, o, none); }, "haystack has");
  o.lengths = {8};
  expect_error([&] { run_niah(small, o, none); }, "cannot hold the needle");
}

// ---- the commands, end to end ------------------------------------------------------------

struct CliRun {
  int rc;
  std::string out, err;
};

CliRun run_cli(const std::string& args) {
  const std::string out = (root() / "cli.out").string(), err = (root() / "cli.err").string();
  CliRun r;
  r.rc = std::system((std::string(std::getenv("DSV3_BIN")) + " " + args + " >" + out + " 2>" + err).c_str());
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

TEST(EvalCli, PerplexityAndNiahOnATinyCheckpoint) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const fs::path model = root() / "model", data_dir = root() / "data";
  RandomCheckpointOptions co;
  co.with_mtp = false;
  write_random_checkpoint(tiny_v3_config(), model.string(), co);
  const std::string tok_path = write_tokenizer(model);
  {
    std::ofstream f(root() / "corpus.jsonl");
    for (int d = 0; d < 40; ++d) f << nlohmann::json({{"text", haystack_text(6, d * 6)}}).dump() << "\n";
  }
  data::PrepareOptions po;
  po.tokenizer = tok_path;
  po.inputs = {(root() / "corpus.jsonl").string()};
  po.out = data_dir.string();
  po.val_fraction = 0.5;
  po.seed = 2;
  const data::PrepareStats st = data::prepare_data(po);
  ASSERT_EQ(st.val.n_docs, 20);

  const std::string m = " --model " + model.string();
  CliRun r = run_cli("eval ppl" + m + " --data " + data_dir.string() + " --seq-len 64 --stride 32 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["split"], "val");
  EXPECT_EQ(j["tokens"], st.val.n_tokens + 20);
  EXPECT_EQ(j["tokens_scored"], st.val.n_tokens + 20 - 1);
  EXPECT_GT(j["perplexity"].get<double>(), 1.0);
  r = run_cli("eval ppl" + m + " --data " + data_dir.string() + " --seq-len 64 --max-tokens 300");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("held-out split"), std::string::npos) << r.out;
  // 300 tokens in windows of 64: 5 windows, each one's first token context only.
  EXPECT_NE(r.out.find("295 tokens scored in 5 windows"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("perplexity"), std::string::npos) << r.out;

  const fs::path out = root() / "niah_out";
  r = run_cli("eval niah" + m + " --data " + data_dir.string() +
              " --lengths 64,128 --depths 0,50,100 --trials 2 --seed 4 --out " + out.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("held-out split"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("depth \\ length"), std::string::npos) << r.out;
  const nlohmann::json nj = nlohmann::json::parse(slurp(out / "niah.json"));
  EXPECT_EQ(nj["lengths"], nlohmann::json({64, 128}));
  EXPECT_EQ(nj["depths"], nlohmann::json({0, 50, 100}));
  EXPECT_EQ(nj["trials"], 2);
  ASSERT_EQ(nj["scores"].size(), 2u);
  for (const auto& col : nj["scores"]) {
    ASSERT_EQ(col.size(), 3u);
    for (const auto& v : col) EXPECT_TRUE(v == 0.0 || v == 0.5 || v == 1.0) << v;
  }
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    EXPECT_TRUE(fs::exists(out / "niah.png"));
  }

  // A text file as the haystack.
  std::ofstream(root() / "hay.txt") << haystack_text(60);
  r = run_cli("eval niah" + m + " --haystack " + (root() / "hay.txt").string() +
              " --lengths 100 --depths 0,100 --out " + (root() / "niah_txt").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(fs::exists(root() / "niah_txt" / "niah.json"));

  // Bad arguments: a message naming what is wrong and a non-zero exit.
  std::ofstream(root() / "short.txt") << "Too short.";
  fs::create_directories(root() / "no_tok");
  write_random_checkpoint(tiny_v3_config(), (root() / "no_tok").string(), co);
  const std::string niah = "eval niah" + m + " --data " + data_dir.string() + " --out " + out.string();
  for (const auto& [args, part] : std::vector<std::pair<std::string, std::string>>{
           {niah + " --lengths 64 --depths 0,101", "--depths: 101 is outside 0..100"},
           {niah + " --lengths 64,2000", "max_position_embeddings"},
           {niah + " --lengths 64,x", "--lengths: 'x' is not an integer"},
           {"eval niah --model " + (root() / "no_tok").string() + " --data " + data_dir.string() +
                " --lengths 64 --out " + out.string(), "no tokenizer.json"},
           {"eval niah" + m + " --haystack " + (root() / "short.txt").string() +
                " --lengths 256 --out " + out.string(), "haystack has"},
           {"eval niah" + m + " --lengths 64 --out " + out.string(), "exactly one of --data"},
           {"eval ppl" + m + " --data " + data_dir.string() + " --seq-len 64 --stride 65", "--stride"},
           {"eval ppl" + m + " --data " + data_dir.string() + " --seq-len 4096", "max_position_embeddings"},
       }) {
    r = run_cli(args);
    EXPECT_NE(r.rc, 0) << args;
    EXPECT_NE(r.err.find(part), std::string::npos) << args << "\n" << r.err;
  }
}

}  // namespace
}  // namespace dsv3::eval
