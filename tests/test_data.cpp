// The data pipeline: `data prepare` round trip (decoded tokens = documents), the packing
// loader (each document once per epoch, EOS separators, T+1 windows overlapping by one),
// determinism and resume, FIM rate and exact PSM/SPM layout, and bad input.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/check.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"
#include "tokenizer/utf8.h"

namespace dsv3::data {
namespace {

namespace fs = std::filesystem;

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f << text;
  ASSERT_TRUE(f.good()) << p;
}

void expect_error(const std::function<void()>& fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing '" << part << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

std::string jsonl_line(const std::string& text, const char* kind) {
  nlohmann::json j = {{"text", text}};
  if (kind) j["kind"] = kind;
  return j.dump() + "\n";
}

// One temp directory per test binary run; removed at exit.
const fs::path& root() {
  static const fs::path dir = [] {
    char tmpl[] = "/tmp/dsv3-test-data.XXXXXX";
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

// A small BPE trained here with DeepSeek-V3's special tokens (FIM ones optional).
std::string make_tokenizer(bool with_fim) {
  const fs::path p = root() / (with_fim ? "tok_fim.json" : "tok_plain.json");
  if (fs::exists(p)) return p.string();
  tok::TrainOptions opt;
  opt.vocab_size = 400;
  opt.special_tokens = {kBosToken, kEosToken};
  if (with_fim) {
    for (const char* s : {kFimBeginToken, kFimHoleToken, kFimEndToken, "<｜User｜>", "<｜Assistant｜>"})
      opt.special_tokens.push_back(s);
  }
  const std::vector<std::string> texts = {
      "int main() { return 0; }\nstatic inline void f(int x) { if (x) return; }\n",
      "The quick brown fox jumps over the lazy dog. 天下大事，必作于细。\n",
      "template <class T> struct vector { T* data; size_t size; };\n"};
  const auto t = tok::train_bpe(texts, opt);
  write(p, tok::to_tokenizer_json(*t));
  return p.string();
}

const tok::Tokenizer& tokenizer(bool with_fim) {
  static std::map<bool, std::unique_ptr<tok::Tokenizer>> cache;
  auto& t = cache[with_fim];
  if (!t) t = tok::Tokenizer::from_path(make_tokenizer(with_fim));
  return *t;
}

struct Corpus {
  fs::path dir;
  std::vector<std::string> texts;  // in the order prepare must write them
  std::vector<DocKind> kinds;
};

// Mixed inputs: a JSONL file (text and code, one empty document, one line with an invalid
// UTF-8 byte), then a directory with a .txt, a .cpp, an extension-less header under
// include/ and a file prepare must skip.
Corpus mixed_corpus() {
  Corpus c;
  c.dir = root() / "mixed";
  std::string jl;
  const std::vector<std::pair<std::string, const char*>> lines = {
      {"The quick brown fox.\n", nullptr}, {"int main() { return 0; }\n", "code"},
      {"", "text"}, {"天下大事，必作于细。", "text"}, {"void f(int x);", "code"}};
  for (const auto& [text, kind] : lines) {
    jl += jsonl_line(text, kind);
    if (text.empty()) continue;
    c.texts.push_back(text);
    c.kinds.push_back(kind && std::string(kind) == "code" ? DocKind::kCode : DocKind::kText);
  }
  jl += "\n{\"text\": \"bad \xff byte\"}\n";  // blank line skipped; U+FFFD replaces 0xFF
  c.texts.push_back("bad \xEF\xBF\xBD byte");
  c.kinds.push_back(DocKind::kText);
  write(c.dir / "a.jsonl", jl);
  write(c.dir / "tree/notes.txt", "Some notes.\n");
  write(c.dir / "tree/src/x.cpp", "struct X { int v; };\n");
  write(c.dir / "tree/include/vector", "template <class T> class vector;\n");
  write(c.dir / "tree/image.bin", "not a document");
  write(c.dir / "tree/.hidden/y.cpp", "hidden");
  // Sorted paths: include/vector < notes.txt < src/x.cpp.
  for (const auto& [text, kind] : std::vector<std::pair<std::string, DocKind>>{
           {"template <class T> class vector;\n", DocKind::kCode},
           {"Some notes.\n", DocKind::kText},
           {"struct X { int v; };\n", DocKind::kCode}}) {
    c.texts.push_back(text);
    c.kinds.push_back(kind);
  }
  return c;
}

PrepareStats prepare(const std::vector<std::string>& inputs, const fs::path& out,
                     bool with_fim = true) {
  PrepareOptions o;
  o.tokenizer = make_tokenizer(with_fim);
  o.inputs = inputs;
  o.out = out.string();
  o.threads = 2;
  return prepare_data(o);
}

std::vector<int32_t> doc_ids(const DataSet& ds, int64_t i) {
  const uint32_t* p = ds.doc_tokens(i);
  return std::vector<int32_t>(p, p + ds.doc(i).length);
}

TEST(Data, CodePaths) {
  EXPECT_TRUE(is_code_path("a/b.cpp"));
  EXPECT_TRUE(is_code_path("x.PY"));
  EXPECT_TRUE(is_code_path("/usr/include/c++/12/vector"));
  EXPECT_FALSE(is_code_path("README"));
  EXPECT_FALSE(is_code_path("a/notes.txt"));
}

TEST(Data, PrepareRoundTrip) {
  const Corpus c = mixed_corpus();
  const fs::path out = root() / "ds_mixed";
  const PrepareStats st = prepare({(c.dir / "a.jsonl").string(), (c.dir / "tree").string()}, out);
  EXPECT_EQ(st.dropped_empty, 1);
  const DataSet ds = DataSet::open(out.string(), tokenizer_hash(make_tokenizer(true)));
  const tok::Tokenizer& t = tokenizer(true);
  ASSERT_EQ(ds.n_docs(), int64_t(c.texts.size()));
  int64_t n_tokens = 0, n_code = 0;
  for (int64_t i = 0; i < ds.n_docs(); ++i) {
    EXPECT_EQ(t.decode(doc_ids(ds, i)), c.texts[size_t(i)]) << "document " << i;
    EXPECT_EQ(ds.doc(i).kind, c.kinds[size_t(i)]) << "document " << i;
    EXPECT_EQ(doc_ids(ds, i), t.encode(c.texts[size_t(i)])) << "document " << i;
    n_tokens += ds.doc(i).length;
    n_code += ds.doc(i).kind == DocKind::kCode;
  }
  const DataMeta& m = ds.meta();
  EXPECT_EQ(m.n_tokens, n_tokens);
  EXPECT_EQ(m.n_docs_code, n_code);
  EXPECT_EQ(m.vocab_size, t.vocab_size());
  EXPECT_EQ(m.eos_id, t.token_to_id(kEosToken));
  EXPECT_EQ(m.bos_id, t.token_to_id(kBosToken));
  EXPECT_EQ(m.fim_begin_id, t.token_to_id(kFimBeginToken));
  EXPECT_EQ(m.fim_hole_id, t.token_to_id(kFimHoleToken));
  EXPECT_EQ(m.fim_end_id, t.token_to_id(kFimEndToken));
  EXPECT_GE(m.fim_end_id, 0);
  EXPECT_EQ(m.sources, 4);  // a.jsonl + three recognised files of tree/
  EXPECT_FALSE(fs::exists(out.string() + ".tmp-" + std::to_string(::getpid())));

  // Re-preparing into the same directory replaces it with identical bytes (thread count
  // does not matter: output order is input order).
  PrepareOptions o;
  o.tokenizer = make_tokenizer(true);
  o.inputs = {(c.dir / "a.jsonl").string(), (c.dir / "tree").string()};
  o.out = (root() / "ds_mixed_1t").string();
  o.threads = 1;
  prepare_data(o);
  for (const char* f : {"tokens.bin", "docs.bin", "meta.json"}) {
    std::ifstream a(out / f, std::ios::binary), b(fs::path(o.out) / f, std::ios::binary);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}),
              std::string(std::istreambuf_iterator<char>(b), {})) << f;
  }
}

// Chat documents ({"messages": [...]}, OpenAI form) are rendered with DeepSeek-V3's chat
// template, as the server renders a request: the turns with their role tokens and one EOS
// after each assistant turn — less the template's leading BOS (no other document has one)
// and its last EOS, which the loader's separator supplies.
TEST(Data, ChatDocuments) {
  const fs::path d = root() / "chat";
  const tok::Tokenizer& t = tokenizer(true);
  const std::string m1 = R"([{"role":"user","content":"Tell me a fortune."},)"
                         R"({"role":"assistant","content":"You will write many tests."}])";
  const std::string m2 = R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},)"
                         R"({"role":"assistant","content":"Hello."},{"role":"user","content":"Bye"},)"
                         R"({"role":"assistant","content":"Bye!"}])";
  write(d / "c.jsonl", jsonl_line("plain text first", "text") + "{\"messages\": " + m1 + "}\n" +
                           "{\"messages\": " + m2 + ", \"kind\": \"text\"}\n");
  prepare({(d / "c.jsonl").string()}, d / "out");
  const DataSet ds = DataSet::open((d / "out").string());
  ASSERT_EQ(ds.n_docs(), 3);
  const int32_t bos = t.token_to_id(kBosToken), eos = t.token_to_id(kEosToken);
  const int32_t user = t.token_to_id("<｜User｜>"), asst = t.token_to_id("<｜Assistant｜>");
  int k = 1;
  for (const std::string& m : {m1, m2}) {
    const auto msgs = tok::parse_chat_messages(nlohmann::json::parse(m));
    std::vector<int32_t> want =
        t.encode(tok::render_chat_deepseek_v3(msgs, false, kBosToken), false);
    ASSERT_EQ(want.back(), eos);
    ASSERT_EQ(want.front(), bos);
    want.pop_back();
    want.erase(want.begin());
    const std::vector<int32_t> got = doc_ids(ds, k++);
    EXPECT_EQ(got, want);
    EXPECT_EQ(std::count(got.begin(), got.end(), bos), 0);
  }
  // The two-turn conversation keeps the EOS between its turns.
  const std::vector<int32_t> two = doc_ids(ds, 2);
  EXPECT_EQ(std::count(two.begin(), two.end(), eos), 1);
  EXPECT_EQ(std::count(two.begin(), two.end(), user), 2);
  EXPECT_EQ(std::count(two.begin(), two.end(), asst), 2);
  const std::vector<int32_t> one = doc_ids(ds, 1);
  EXPECT_EQ(std::count(one.begin(), one.end(), eos), 0);
  EXPECT_EQ(std::count(one.begin(), one.end(), user), 1);
  EXPECT_EQ(std::count(one.begin(), one.end(), asst), 1);
  const std::string text = t.decode(one);
  EXPECT_LT(text.find("Tell me a fortune."), text.find("You will write many tests."));
  EXPECT_NE(text.find("You will write many tests."), std::string::npos);

  write(d / "both.jsonl", "{\"text\": \"x\", \"messages\": " + m1 + "}\n");
  expect_error([&] { prepare({(d / "both.jsonl").string()}, d / "o1"); }, "both.jsonl:1");
  write(d / "notarray.jsonl", "{\"messages\": \"hello\"}\n");
  expect_error([&] { prepare({(d / "notarray.jsonl").string()}, d / "o2"); }, "notarray.jsonl:1");
  write(d / "norole.jsonl", "{\"messages\": [{\"content\": \"hi\"}]}\n");
  expect_error([&] { prepare({(d / "norole.jsonl").string()}, d / "o3"); }, "role");
  write(d / "emptymsgs.jsonl", "{\"messages\": []}\n");
  expect_error([&] { prepare({(d / "emptymsgs.jsonl").string()}, d / "o4"); }, "empty");
  write(d / "codechat.jsonl", "{\"messages\": " + m1 + ", \"kind\": \"code\"}\n");
  expect_error([&] { prepare({(d / "codechat.jsonl").string()}, d / "o5"); }, "kind");
  write(d / "role.jsonl", jsonl_line("ok", "text") +
                              R"({"messages": [{"role": "human", "content": "hi"}]})" "\n");
  expect_error([&] { prepare({(d / "role.jsonl").string()}, d / "o6"); }, "role.jsonl:2");
  write(d / "unanswered.jsonl", R"({"messages": [{"role": "user", "content": "hi"}]})" "\n");
  expect_error([&] { prepare({(d / "unanswered.jsonl").string()}, d / "o7"); }, "assistant turn");
  // A tokenizer without the role markers (the FIM-less test tokenizer has only BOS/EOS).
  PrepareOptions o;
  o.tokenizer = make_tokenizer(false);
  o.inputs = {(d / "c.jsonl").string()};
  o.out = (d / "o8").string();
  expect_error([&] { prepare_data(o); }, "<｜User｜>");
  EXPECT_FALSE(fs::exists(d / "o8"));
}

// n documents of varying length, every third one code; returns the data set directory.
fs::path many_docs(const std::string& name, int n, bool with_fim = true) {
  const fs::path out = root() / name;
  if (fs::exists(out)) return out;
  std::string jl;
  for (int i = 0; i < n; ++i) {
    std::string text = "doc " + std::to_string(i) + ":";
    for (int k = 0; k < 1 + (i * 7) % 13; ++k) text += " int x" + std::to_string(k) + ";";
    jl += jsonl_line(text, i % 3 == 0 ? "code" : "text");
  }
  write(root() / (name + ".jsonl"), jl);
  prepare({(root() / (name + ".jsonl")).string()}, out, with_fim);
  return out;
}

// Lane `lane`'s stream as its windows (row `lane` of each batch) cut it: first window
// whole, then each next window minus the token it shares with the previous one. Also checks
// the [B, T+1] shape and the overlap.
std::vector<int32_t> lane_stream(Loader& L, int batches, int64_t lane) {
  const int64_t T1 = L.options().seq_len + 1, B = L.options().batch;
  std::vector<int32_t> s;
  std::vector<int32_t> b;
  for (int k = 0; k < batches; ++k) {
    L.next(b);
    EXPECT_EQ(int64_t(b.size()), B * T1);
    const int32_t* row = b.data() + lane * T1;
    if (!s.empty()) {
      EXPECT_EQ(row[0], s.back()) << "a lane's windows must overlap by one token";
    }
    s.insert(s.end(), row + (s.empty() ? 0 : 1), row + T1);
  }
  return s;
}

TEST(Loader, PackingEveryDocumentOncePerEpoch) {
  const DataSet ds = DataSet::open(many_docs("ds_many", 40).string());
  LoaderOptions o;
  o.seq_len = 7;
  o.batch = 3;
  o.seed = 11;
  o.fim_rate = 0;
  const int64_t n = ds.n_docs(), B = o.batch;
  const int64_t per_epoch = ds.meta().n_tokens + n;  // tokens + EOS each
  const int32_t eos = ds.meta().eos_id;
  // Lane b packs sequence positions g = b, b + B, ... (epoch g / n, index g % n): split
  // each lane's stream at EOS and check every document is the one at its position.
  std::vector<std::vector<int64_t>> seen(2);  // per epoch, the ids the lanes packed
  Loader probe(ds, o);
  for (int64_t b = 0; b < B; ++b) {
    Loader L(ds, o);
    // Two epochs' worth of tokens per lane is more than a lane's share of two epochs.
    const std::vector<int32_t> s = lane_stream(L, int(2 * per_epoch / o.seq_len) + 2, b);
    size_t at = 0;
    for (int64_t g = b; g < 2 * n; g += B) {
      const size_t end = size_t(std::find(s.begin() + int64_t(at), s.end(), eos) - s.begin());
      ASSERT_LT(end, s.size());
      const int64_t id = probe.doc_at(g / n, g % n);
      EXPECT_EQ(std::vector<int32_t>(s.begin() + int64_t(at), s.begin() + int64_t(end)), doc_ids(ds, id))
          << "lane " << b << " position " << g;
      seen[size_t(g / n)].push_back(id);
      at = end + 1;
    }
  }
  for (auto& e : seen) {
    std::sort(e.begin(), e.end());
    ASSERT_EQ(int64_t(e.size()), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(e[size_t(i)], i) << "every document once per epoch";
  }
  std::vector<int64_t> e0, e1;
  for (int64_t i = 0; i < n; ++i) e0.push_back(probe.doc_at(0, i)), e1.push_back(probe.doc_at(1, i));
  EXPECT_NE(e0, e1) << "each epoch must have its own order";
}

TEST(Loader, RowsOfABatchComeFromDifferentDocuments) {
  // One document far longer than a batch: with B consecutive windows of one stream it
  // would fill whole batches; with lanes it fills one row per batch.
  std::string big, jl;
  for (int i = 0; i < 3000; ++i) {
    big += 'w';
    big += std::to_string(i % 97);
    big += ' ';
  }
  jl += jsonl_line(big, "text");
  for (int i = 0; i < 30; ++i) jl += jsonl_line(std::string("short document ") += std::to_string(i), "text");
  write(root() / "ds_long.jsonl", jl);
  const fs::path out = root() / "ds_long";
  fs::remove_all(out);
  prepare({(root() / "ds_long.jsonl").string()}, out, false);
  const DataSet ds = DataSet::open(out.string());
  LoaderOptions o;
  o.seq_len = 32;
  o.batch = 4;
  o.seed = 3;
  Loader L(ds, o);
  const int64_t T1 = o.seq_len + 1;
  // The first window of lane b starts with the document at position b.
  const std::vector<int32_t> first = L.next();
  for (int64_t b = 0; b < o.batch; ++b) {
    const std::vector<int32_t> d = doc_ids(ds, L.doc_at(0, b));
    const size_t k = std::min(d.size(), size_t(T1));
    EXPECT_EQ(std::vector<int32_t>(first.begin() + b * T1, first.begin() + b * T1 + int64_t(k)),
              std::vector<int32_t>(d.begin(), d.begin() + int64_t(k)))
        << "row " << b;
  }
  // However long the big document, no later batch is made of it alone.
  for (int k = 0; k < 40; ++k) {
    const std::vector<int32_t> batch = L.next();
    std::set<std::vector<int32_t>> rows;
    for (int64_t b = 0; b < o.batch; ++b)
      rows.insert(std::vector<int32_t>(batch.begin() + b * T1, batch.begin() + (b + 1) * T1));
    EXPECT_EQ(int64_t(rows.size()), o.batch) << "batch " << k << " repeats a row";
  }
}

TEST(Loader, StreamIsEmittedDocumentsWithFim) {
  const DataSet ds = DataSet::open(many_docs("ds_many", 40).string());
  LoaderOptions o;
  o.seq_len = 16;
  o.batch = 2;
  o.seed = 5;
  o.fim_rate = 0.5;
  const int64_t n = ds.n_docs();
  for (int64_t b = 0; b < o.batch; ++b) {
    Loader L(ds, o);
    ASSERT_TRUE(L.fim_enabled());
    const int64_t per_epoch = ds.meta().n_tokens + n + 3 * ds.meta().n_docs_code;
    const std::vector<int32_t> s = lane_stream(L, int(per_epoch / o.seq_len) + 2, b);
    std::vector<int32_t> want, d;
    for (int64_t g = b; g < n; g += o.batch) {
      L.emitted_doc(0, g, d);
      want.insert(want.end(), d.begin(), d.end());
    }
    ASSERT_GE(s.size(), want.size());
    EXPECT_EQ(std::vector<int32_t>(s.begin(), s.begin() + int64_t(want.size())), want) << "lane " << b;
  }
}

TEST(Loader, DeterministicBySeed) {
  const DataSet ds = DataSet::open(many_docs("ds_many", 40).string());
  LoaderOptions o;
  o.seq_len = 9;
  o.batch = 2;
  o.seed = 1;
  Loader a(ds, o), b(ds, o);
  o.seed = 2;
  Loader c(ds, o);
  bool differ = false;
  for (int k = 0; k < 5; ++k) {
    const auto x = a.next(), y = b.next(), z = c.next();
    EXPECT_EQ(x, y);
    differ |= x != z;
  }
  EXPECT_TRUE(differ);
  std::vector<int64_t> pa, pc;
  for (int64_t i = 0; i < ds.n_docs(); ++i) pa.push_back(a.doc_at(0, i)), pc.push_back(c.doc_at(0, i));
  EXPECT_NE(pa, pc);
}

TEST(Loader, ResumeGivesIdenticalBatches) {
  const DataSet ds = DataSet::open(many_docs("ds_many", 40).string());
  LoaderOptions o;
  o.seq_len = 13;
  o.batch = 3;
  o.seed = 99;
  o.fim_rate = 0.5;
  o.fim_spm_rate = 0.5;
  // k spans mid-document, mid-FIM-document and past the first epoch (~1 epoch = 20 batches).
  for (int k : {0, 1, 4, 9, 17, 23, 31}) {
    Loader a(ds, o);
    for (int i = 0; i < k; ++i) a.next();
    const LoaderState saved = LoaderState::from_json(a.state().to_json());
    EXPECT_EQ(saved, a.state());
    EXPECT_EQ(saved.batches, k);
    Loader b(ds, o);
    b.restore(saved);
    for (int i = 0; i < 8; ++i) ASSERT_EQ(a.next(), b.next()) << "k " << k << " batch " << i;
  }
  Loader a(ds, o);
  LoaderState s = a.state();
  ASSERT_EQ(int64_t(s.lanes.size()), o.batch);
  s.seed = 3;
  expect_error([&] { a.restore(s); }, "seed");
  s = a.state();
  s.lanes[1].offset = 1 << 30;
  expect_error([&] { a.restore(s); }, "lane 1 offset");
  s = a.state();
  s.lanes[2].position = 4;  // lane 2 of 3 packs positions 2, 5, 8, ...
  expect_error([&] { a.restore(s); }, "not lane 2's");
  s = a.state();
  s.lanes.pop_back();
  expect_error([&] { a.restore(s); }, "saved with batch 2");
  const LoaderState before = a.state();
  expect_error([&] { s.lanes[0].offset = 1 << 30; a.restore(s); }, "batch");
  EXPECT_EQ(a.state(), before) << "a refused restore changes nothing";
  expect_error([] { LoaderState::from_json("{\"seed\": 1}"); }, "n_docs");
  expect_error([] { LoaderState::from_json("[1"); }, "not valid JSON");
  expect_error([] { LoaderState::from_json(R"({"seed":1,"n_docs":4,"epoch":0,"index":0,"offset":0,"batches":0})"); },
               "written before the loader had lanes");
  expect_error([] { LoaderState::from_json(R"({"seed":1,"n_docs":4,"lanes":[{"position":-1,"offset":0}],"batches":0})"); },
               "lanes[0].position");
}

// Parses one emitted document: returns prefix/middle/suffix by the framing.
struct Fim {
  bool fim = false;
  std::vector<int32_t> prefix, middle, suffix;
};

Fim parse_fim(const std::vector<int32_t>& e, const DataMeta& m, bool spm) {
  Fim f;
  EXPECT_EQ(e.back(), m.eos_id);
  if (e.empty() || e[0] != m.fim_begin_id) return f;
  f.fim = true;
  const auto hole = std::find(e.begin(), e.end(), m.fim_hole_id);
  const auto end = std::find(e.begin(), e.end(), m.fim_end_id);
  EXPECT_TRUE(hole < end && end < e.end());  // middle may be empty (i == j)
  if (!spm) {  // begin prefix hole suffix end middle eos
    f.prefix.assign(e.begin() + 1, hole);
    f.suffix.assign(hole + 1, end);
    f.middle.assign(end + 1, e.end() - 1);
  } else {  // begin hole suffix end prefix+middle eos (one split: prefix empty here)
    EXPECT_EQ(hole, e.begin() + 1);
    f.suffix.assign(hole + 1, end);
    f.middle.assign(end + 1, e.end() - 1);
  }
  return f;
}

TEST(Loader, FimRateAndLayout) {
  const DataSet ds = DataSet::open(many_docs("ds_fim", 3000).string());
  const DataMeta& m = ds.meta();
  for (bool spm : {false, true}) {
    LoaderOptions o;
    o.seq_len = 32;
    o.batch = 1;
    o.seed = 7;
    o.fim_spm_rate = spm ? 1.0 : 0.0;
    Loader L(ds, o);
    int64_t n_code = 0, n_fim = 0;
    std::vector<int32_t> e;
    for (int64_t i = 0; i < ds.n_docs(); ++i) {
      L.emitted_doc(0, i, e);
      const int64_t id = L.doc_at(0, i);
      const std::vector<int32_t> d = doc_ids(ds, id);
      const Fim f = parse_fim(e, m, spm);
      if (ds.doc(id).kind != DocKind::kCode) {
        EXPECT_FALSE(f.fim) << "text documents never get FIM";
        continue;
      }
      ++n_code;
      if (!f.fim) {
        EXPECT_EQ(std::vector<int32_t>(e.begin(), e.end() - 1), d);
        continue;
      }
      ++n_fim;
      EXPECT_EQ(e.size(), d.size() + 4);  // three FIM tokens + EOS
      std::vector<int32_t> back = f.prefix;
      back.insert(back.end(), f.middle.begin(), f.middle.end());
      back.insert(back.end(), f.suffix.begin(), f.suffix.end());
      EXPECT_EQ(back, d) << "prefix + middle + suffix must be the document";
    }
    // Binomial(n_code, 0.1): 5 standard deviations (false alarm ~6e-7).
    const double mean = 0.1 * double(n_code), sd = std::sqrt(n_code * 0.1 * 0.9);
    EXPECT_EQ(n_code, m.n_docs_code);
    EXPECT_NEAR(double(n_fim), mean, 5 * sd) << n_fim << " of " << n_code;
  }
}

TEST(Loader, FimOffWithoutFimTokens) {
  const DataSet ds = DataSet::open(many_docs("ds_nofim", 30, false).string());
  EXPECT_EQ(ds.meta().fim_begin_id, -1);
  LoaderOptions o;
  o.seq_len = 8;
  o.batch = 2;
  o.fim_rate = 1.0;
  Loader L(ds, o);
  EXPECT_FALSE(L.fim_enabled());
  std::vector<int32_t> e;
  for (int64_t i = 0; i < ds.n_docs(); ++i) {
    L.emitted_doc(0, i, e);
    e.pop_back();
    EXPECT_EQ(e, doc_ids(ds, L.doc_at(0, i)));
  }
  expect_error([&] { LoaderOptions bad = o; bad.seq_len = 0; Loader x(ds, bad); }, "seq_len");
}

TEST(Data, BadInput) {
  const fs::path d = root() / "bad";
  expect_error([&] { prepare({(d / "missing").string()}, d / "o1"); }, "does not exist");
  fs::create_directories(d / "empty_dir");
  expect_error([&] { prepare({(d / "empty_dir").string()}, d / "o2"); }, "no documents");
  write(d / "empty.jsonl", jsonl_line("", nullptr) + "\n");
  expect_error([&] { prepare({(d / "empty.jsonl").string()}, d / "o3"); }, "no documents");
  write(d / "broken.jsonl", jsonl_line("ok", nullptr) + "{\"text\": \"unterminated\n");
  expect_error([&] { prepare({(d / "broken.jsonl").string()}, d / "o4"); }, "broken.jsonl:2");
  write(d / "kind.jsonl", jsonl_line("ok", "poetry"));
  expect_error([&] { prepare({(d / "kind.jsonl").string()}, d / "o5"); }, "kind.jsonl:1");
  write(d / "notext.jsonl", "{\"body\": \"x\"}\n");
  expect_error([&] { prepare({(d / "notext.jsonl").string()}, d / "o6"); }, "notext.jsonl:1");
  write(d / "occupied/file", "x");
  expect_error([&] { prepare({(d / "kind.jsonl").string()}, d / "occupied"); }, "not a dsv3 data set");
  EXPECT_FALSE(fs::exists(d / "o4")) << "a failed prepare must leave nothing behind";

  // Damaged data sets: each copy of a good one with one fault.
  const fs::path good = many_docs("ds_many", 40);
  auto damaged = [&](const std::string& name, const std::function<void(const fs::path&)>& harm) {
    const fs::path p = d / name;
    fs::copy(good, p, fs::copy_options::recursive);
    harm(p);
    return p.string();
  };
  expect_error([] { DataSet::open("/nonexistent/dsv3-data"); }, "not a directory");
  const auto truncated = damaged("truncated", [](const fs::path& p) {
    fs::resize_file(p / "tokens.bin", fs::file_size(p / "tokens.bin") - 4);
  });
  expect_error([&] { DataSet::open(truncated); }, "truncated");
  const auto docs_cut = damaged("docs_cut", [](const fs::path& p) {
    fs::resize_file(p / "docs.bin", fs::file_size(p / "docs.bin") - 3);
  });
  expect_error([&] { DataSet::open(docs_cut); }, "docs.bin");
  const auto meta_bad = damaged("meta_bad", [](const fs::path& p) { write(p / "meta.json", "{\"format\":"); });
  expect_error([&] { DataSet::open(meta_bad); }, "meta.json");
  const auto meta_ver = damaged("meta_ver", [](const fs::path& p) {
    std::ifstream f(p / "meta.json");
    auto j = nlohmann::json::parse(f);
    j["version"] = 99;
    write(p / "meta.json", j.dump());
  });
  expect_error([&] { DataSet::open(meta_ver); }, "version 99");
  const auto rec = damaged("record", [](const fs::path& p) {
    std::fstream f(p / "docs.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(16 + 8);  // second record's length
    const uint32_t len = 1u << 30;
    f.write(reinterpret_cast<const char*>(&len), 4);
  });
  expect_error([&] { DataSet::open(rec); }, "record");
  const auto big_id = damaged("big_id", [](const fs::path& p) {
    std::fstream f(p / "tokens.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    const uint32_t id = 1u << 20;
    f.write(reinterpret_cast<const char*>(&id), 4);
  });
  expect_error([&] { DataSet::open(big_id); }, "not below vocab_size");
  expect_error([&] { DataSet::open(good.string(), tokenizer_hash(make_tokenizer(false))); },
               "another tokenizer");
}

}  // namespace
}  // namespace dsv3::data
