// `data prepare --val-fraction`: the held-out split holds whole documents (each document in
// exactly one split, unchanged, input order kept), round(F * n) of them, chosen by the seed
// alone; fraction 0 writes exactly what prepare wrote before; bad fractions are refused.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "data/dataset.h"
#include "data/prepare.h"
#include "eval/held_out.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"

namespace dsv3::data {
namespace {

namespace fs = std::filesystem;

const fs::path& root() {
  static const fs::path dir = [] {
    char tmpl[] = "/tmp/dsv3-test-split.XXXXXX";
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

// Document i: distinct text, some of it code, of varied length.
std::string doc_text(int i) {
  std::string s = "Document " + std::to_string(i) + ": ";
  for (int k = 0; k <= i % 7; ++k) s += "the quick brown fox " + std::to_string(i * 31 + k) + ". ";
  return s;
}

struct Corpus {
  std::string tokenizer, input;
  std::vector<std::string> texts;
};

const Corpus& corpus() {
  static const Corpus c = [] {
    Corpus c;
    tok::TrainOptions opt;
    opt.vocab_size = 320;
    opt.special_tokens = {kBosToken, kEosToken};
    std::string all;
    for (int i = 0; i < 200; ++i) {
      c.texts.push_back(doc_text(i));
      all += c.texts.back();
    }
    const auto t = tok::train_bpe({all}, opt);
    c.tokenizer = (root() / "tokenizer.json").string();
    std::ofstream(c.tokenizer) << tok::to_tokenizer_json(*t);
    c.input = (root() / "corpus.jsonl").string();
    std::ofstream f(c.input);
    for (int i = 0; i < 200; ++i) {
      nlohmann::json j = {{"text", c.texts[size_t(i)]}};
      if (i % 5 == 0) j["kind"] = "code";
      f << j.dump() << "\n";
    }
    return c;
  }();
  return c;
}

PrepareStats prepare(const std::string& out, double fraction, uint64_t seed) {
  PrepareOptions o;
  o.tokenizer = corpus().tokenizer;
  o.inputs = {corpus().input};
  o.out = (root() / out).string();
  o.threads = 2;
  o.val_fraction = fraction;
  o.seed = seed;
  return prepare_data(o);
}

std::vector<std::string> decoded_docs(const DataSet& ds) {
  const auto t = tok::Tokenizer::from_path(corpus().tokenizer);
  std::vector<std::string> out;
  for (int64_t i = 0; i < ds.n_docs(); ++i) {
    const uint32_t* p = ds.doc_tokens(i);
    out.push_back(t->decode(std::vector<int32_t>(p, p + ds.doc(i).length)));
  }
  return out;
}

TEST(DataSplit, WholeDocumentsInOrderEachInOneSplit) {
  const PrepareStats st = prepare("split", 0.1, 7);
  const DataSet train = DataSet::open((root() / "split").string());
  const DataSet val = DataSet::open((root() / "split" / "val").string());
  EXPECT_EQ(val.n_docs(), 20);
  EXPECT_EQ(train.n_docs(), 180);
  EXPECT_EQ(st.meta.n_docs, 180);
  EXPECT_EQ(st.val.n_docs, 20);
  EXPECT_EQ(st.meta.n_tokens, train.meta().n_tokens);
  EXPECT_EQ(st.val.n_tokens, val.meta().n_tokens);
  EXPECT_FALSE(fs::exists(root() / "split" / "all"));
  EXPECT_EQ(train.meta().tokenizer_hash, val.meta().tokenizer_hash);

  // Every document is in exactly one split, whole; each split keeps the input order.
  std::map<std::string, int> index;
  for (size_t i = 0; i < corpus().texts.size(); ++i) index[corpus().texts[i]] = int(i);
  std::vector<int> seen(corpus().texts.size(), 0);
  int64_t code_docs = 0;
  for (const DataSet* ds : {&train, &val}) {
    int prev = -1;
    for (const std::string& text : decoded_docs(*ds)) {
      ASSERT_TRUE(index.count(text)) << "not a whole input document: " << text;
      const int i = index[text];
      EXPECT_GT(i, prev) << "input order not kept";
      prev = i;
      ++seen[size_t(i)];
    }
    code_docs += ds->meta().n_docs_code;
  }
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], 1) << "document " << i;
  EXPECT_EQ(code_docs, 40);

  // The eval side opens the split.
  const eval::HeldOut h = eval::open_held_out((root() / "split").string());
  EXPECT_TRUE(h.is_val_split);
  EXPECT_EQ(h.set.n_docs(), 20);
  const std::vector<int32_t> s = eval::packed_stream(h.set);
  EXPECT_EQ(int64_t(s.size()), val.meta().n_tokens + 20);  // + one EOS per document
}

TEST(DataSplit, DeterministicBySeed) {
  prepare("seed_a", 0.25, 3);
  prepare("seed_b", 0.25, 3);
  prepare("seed_c", 0.25, 4);
  for (const char* f : {"tokens.bin", "docs.bin", "meta.json", "val/tokens.bin", "val/docs.bin",
                        "val/meta.json"})
    EXPECT_EQ(slurp(root() / "seed_a" / f), slurp(root() / "seed_b" / f)) << f;
  EXPECT_NE(slurp(root() / "seed_a" / "val/docs.bin"), slurp(root() / "seed_c" / "val/docs.bin"));
  // Another seed picks other documents, as many.
  const DataSet a = DataSet::open((root() / "seed_a" / "val").string());
  const DataSet c = DataSet::open((root() / "seed_c" / "val").string());
  EXPECT_EQ(a.n_docs(), c.n_docs());
  EXPECT_NE(decoded_docs(a), decoded_docs(c));
}

TEST(DataSplit, FractionsRespected) {
  for (const auto& [f, want] : std::vector<std::pair<double, int64_t>>{
           {0.05, 10}, {0.5, 100}, {0.9, 180}, {0.001, 1}, {0.999, 199}}) {
    const PrepareStats st = prepare("frac", f, 1);
    EXPECT_EQ(st.val.n_docs, want) << f;
    EXPECT_EQ(st.meta.n_docs + st.val.n_docs, 200) << f;
    EXPECT_EQ(DataSet::open((root() / "frac" / "val").string()).n_docs(), want) << f;
  }
  // Replacing a split data set by one without a split leaves no stale val/.
  prepare("frac", 0, 1);
  EXPECT_FALSE(fs::exists(root() / "frac" / "val"));
}

TEST(DataSplit, FractionZeroIsUnchanged) {
  // The default options and an explicit 0 write the same files, with no val/.
  PrepareOptions o;
  o.tokenizer = corpus().tokenizer;
  o.inputs = {corpus().input};
  o.out = (root() / "default").string();
  o.threads = 2;
  const PrepareStats st = prepare_data(o);
  prepare("zero", 0, 99);
  EXPECT_EQ(st.val.n_docs, 0);
  EXPECT_EQ(st.meta.n_docs, 200);
  EXPECT_FALSE(fs::exists(root() / "zero" / "val"));
  for (const char* f : {"tokens.bin", "docs.bin", "meta.json"})
    EXPECT_EQ(slurp(root() / "default" / f), slurp(root() / "zero" / f)) << f;
  const eval::HeldOut h = eval::open_held_out((root() / "zero").string());
  EXPECT_FALSE(h.is_val_split);
  EXPECT_NE(h.describe().find("no val/ split"), std::string::npos);

  // The union of a split equals the unsplit data set, token for token, in input order.
  prepare("union", 0.3, 5);
  const DataSet all = DataSet::open((root() / "default").string());
  const DataSet tr = DataSet::open((root() / "union").string());
  const DataSet va = DataSet::open((root() / "union" / "val").string());
  EXPECT_EQ(tr.meta().n_tokens + va.meta().n_tokens, all.meta().n_tokens);
  EXPECT_EQ(tr.meta().n_tokens_code + va.meta().n_tokens_code, all.meta().n_tokens_code);
}

TEST(DataSplit, BadFractionsAreRefused) {
  for (double f : {-0.1, 1.0, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    try {
      prepare("bad", f, 0);
      ADD_FAILURE() << "no error for " << f;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--val-fraction"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(root() / "bad"));
  }
  // One document cannot be split into two non-empty sets.
  const std::string one = (root() / "one.txt").string();
  std::ofstream(one) << "A single document.";
  PrepareOptions o;
  o.tokenizer = corpus().tokenizer;
  o.inputs = {one};
  o.out = (root() / "one").string();
  o.val_fraction = 0.5;
  try {
    prepare_data(o);
    ADD_FAILURE() << "no error for a one-document split";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at least 2"), std::string::npos) << e.what();
  }
}

// The command line: "not a number" is refused by the CLI, and the summary names both splits.
TEST(DataSplit, Cli) {
  const char* bin = std::getenv("DSV3_BIN");
  if (!bin) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string base = std::string(bin) + " data prepare --tokenizer " + corpus().tokenizer +
                           " --input " + corpus().input + " --out " + (root() / "cli").string();
  const std::string out = (root() / "cli.out").string(), err = (root() / "cli.err").string();
  const auto run = [&](const std::string& extra) {
    return std::system((base + " " + extra + " >" + out + " 2>" + err).c_str());
  };
  EXPECT_NE(run("--val-fraction abc"), 0);
  EXPECT_NE(slurp(err).find("--val-fraction: 'abc' is not a number"), std::string::npos) << slurp(err);
  EXPECT_NE(run("--val-fraction 1"), 0);
  EXPECT_NE(slurp(err).find("outside [0, 1)"), std::string::npos) << slurp(err);
  ASSERT_EQ(run("--val-fraction 0.1 --seed 7"), 0) << slurp(err);
  const std::string o = slurp(out);
  EXPECT_NE(o.find("train"), std::string::npos) << o;
  EXPECT_NE(o.find("180 documents"), std::string::npos) << o;
  EXPECT_NE(o.find("20 documents"), std::string::npos) << o;
  // Same seed as the library call above: the same split.
  prepare("cli_ref", 0.1, 7);
  EXPECT_EQ(slurp(root() / "cli" / "val/docs.bin"), slurp(root() / "cli_ref" / "val/docs.bin"));
}

}  // namespace
}  // namespace dsv3::data
