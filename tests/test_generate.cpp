// Generation on tiny random checkpoints: greedy decoding equals a full-recompute argmax loop,
// sampling is reproducible from the seed, prefix reuse prefills only new tokens and changes
// no result, the stops (EOS, stop string, max_new_tokens, full context), bad input, and the
// `dsv3 generate` / `dsv3 chat` commands.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/check.h"
#include "infer/generate.h"
#include "io/random_checkpoint.h"
#include "kernels/softmax.h"
#include "model/model.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"
#include "model_test_util.h"

namespace fs = std::filesystem;
using namespace dsv3;

namespace {

std::vector<std::string> g_dirs;  // removed at exit

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("dsv3_gen_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  g_dirs.push_back(p.string());
  return p.string();
}

// F32 weights: the decode path (absorbed MLA, GEMV) and a full recompute (naive MLA, GEMM)
// then differ only by F32 reassociation (~1e-6 relative, test_model), far below the gap
// between the top two logits of a random model, so greedy choices must agree exactly.
std::string make_model(const std::string& name) {
  const std::string dir = temp_dir(name);
  RandomCheckpointOptions o;
  o.format = CheckpointFormat::F32;
  o.seed = 11;
  write_random_checkpoint(tiny_v3_config(), dir, o);
  return dir;
}

// A byte-level BPE of exactly the tiny model's 300 ids (BOS 0, EOS 1 as the model's
// config, the chat template's role markers, 256 bytes, 40 merges), with BOS added on
// encode as DeepSeek-V3's tokenizer_config.json asks.
void add_tokenizer(const std::string& dir) {
  tok::TrainOptions opt;
  opt.vocab_size = 300;
  opt.special_tokens = {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"};
  std::string text;
  for (int i = 0; i < 4; ++i)
    text += "The quick brown fox jumps over the lazy dog. A tiny model writes tokens, one "
            "at a time, and then it stops when the sentence ends. Hello world, hello there! ";
  const auto t = tok::train_bpe({text}, opt);
  ASSERT_EQ(t->vocab_size(), 300);
  std::ofstream(dir + "/tokenizer.json") << tok::to_tokenizer_json(*t);
  std::ofstream(dir + "/tokenizer_config.json")
      << R"({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>", )"
      << R"("add_bos_token": true, "add_eos_token": false})";
}

using dsv3::testing::ids_for;

GenerateOptions greedy(int64_t n, bool stop_at_eos = false) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.stop_at_eos = stop_at_eos;
  return o;
}

// The reference: recompute the whole sequence in a fresh cache for every new token.
std::vector<int32_t> full_recompute_greedy(Model& m, std::vector<int32_t> seq, int64_t n) {
  const int64_t V = m.vocab();
  std::vector<float> logits(static_cast<size_t>(V));
  std::vector<int32_t> out;
  ForwardScratch s;
  for (int64_t k = 0; k < n; ++k) {
    KvCache cache = m.new_cache(int64_t(seq.size()));
    ForwardArgs a;
    a.ids = seq.data();
    a.T = int64_t(seq.size());
    a.logits = logits.data();
    a.logits_from = a.T - 1;
    a.form = AttnForm::Naive;
    m.forward(cache, a, s);
    const int32_t best = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(best);
    seq.push_back(best);
  }
  return out;
}

TEST(Generate, GreedyEqualsFullRecompute) {
  Model m(make_model("greedy"));
  Generator g(m, nullptr, 64);
  const auto prompt = ids_for(7, m.vocab(), 3);
  const GenerateResult r = g.generate(prompt, greedy(12));
  EXPECT_EQ(r.ids, full_recompute_greedy(m, prompt, 12));
  EXPECT_EQ(r.stop_reason, StopReason::MaxTokens);
  EXPECT_EQ(r.stats.prompt_tokens, 7);
  EXPECT_EQ(r.stats.prefill_tokens, 7);
  EXPECT_EQ(r.stats.new_tokens, 12);
  EXPECT_EQ(r.stats.decode_steps, 11);  // the first token comes from the prefill's logits
  EXPECT_TRUE(r.text.empty());
  std::vector<int32_t> hist = prompt;
  hist.insert(hist.end(), r.ids.begin(), r.ids.end());
  EXPECT_EQ(g.history(), hist);
  EXPECT_EQ(g.cached(), int64_t(hist.size()) - 1);
  // max_new_tokens = 0 generates nothing.
  EXPECT_TRUE(g.generate(prompt, greedy(0)).ids.empty());
}

TEST(Generate, SeedReproducesSampling) {
  Model m(make_model("seed"));
  Generator g(m, nullptr, 64);
  const auto prompt = ids_for(5, m.vocab(), 9);
  auto sample = [&](uint64_t seed) {
    GenerateOptions o = greedy(16);
    o.sampling.temperature = 1.5f;
    o.sampling.top_p = 0.95f;
    o.sampling.seed = seed;
    return g.generate(prompt, o).ids;
  };
  const auto a = sample(1);
  EXPECT_EQ(a.size(), 16u);
  EXPECT_EQ(sample(1), a);
  // 16 draws at temperature 1.5 over 300 ids: four other seeds all giving the same sequence
  // would mean the seed is ignored.
  int differ = 0;
  for (uint64_t s = 2; s <= 5; ++s) differ += sample(s) != a;
  EXPECT_GT(differ, 0);
}

TEST(Generate, PrefixReuseOnlyPrefillsNewTokens) {
  Model m(make_model("reuse"));
  Generator g(m, nullptr, 64);
  const auto p1 = ids_for(7, m.vocab(), 5);
  const GenerateResult r1 = g.generate(p1, greedy(8));
  // The next prompt extends the whole history (the last generated token was never
  // forwarded, so it is prefilled with the 3 new ones).
  std::vector<int32_t> p2 = g.history();
  for (int32_t id : ids_for(3, m.vocab(), 6)) p2.push_back(id);
  const GenerateResult r2 = g.generate(p2, greedy(6));
  EXPECT_EQ(r2.stats.reused_tokens, 7 + 8 - 1);
  EXPECT_EQ(r2.stats.prefill_tokens, 4);
  Generator fresh(m, nullptr, 64);
  const GenerateResult f2 = fresh.generate(p2, greedy(6));
  EXPECT_EQ(f2.stats.prefill_tokens, int64_t(p2.size()));
  EXPECT_EQ(r2.ids, f2.ids);

  // A prompt that leaves the history after 3 tokens reuses those 3.
  std::vector<int32_t> p3(p2.begin(), p2.begin() + 3);
  p3.push_back((p2[3] + 1) % int32_t(m.vocab()));
  p3.push_back(7);
  const GenerateResult r3 = g.generate(p3, greedy(5));
  EXPECT_EQ(r3.stats.reused_tokens, 3);
  EXPECT_EQ(r3.ids, Generator(m, nullptr, 64).generate(p3, greedy(5)).ids);
  // The same prompt again: all but its last token reused (its logits are needed).
  const GenerateResult r4 = g.generate(p3, greedy(5));
  EXPECT_EQ(r4.stats.prefill_tokens, 1);
  EXPECT_EQ(r4.ids, r3.ids);
  // reset() forgets everything.
  g.reset();
  EXPECT_EQ(g.generate(p3, greedy(5)).stats.prefill_tokens, int64_t(p3.size()));
}

TEST(Generate, StopsAtEos) {
  const std::string dir = make_model("eos");
  const auto prompt = ids_for(6, 300, 8);
  std::vector<int32_t> free_run;
  {
    Model m(dir);
    free_run = Generator(m, nullptr, 64).generate(prompt, greedy(10)).ids;
  }
  // Make the 6th generated token the model's EOS: generation must end at its first
  // occurrence, keeping it in ids.
  const int32_t eos = free_run[5];
  const size_t first = size_t(std::find(free_run.begin(), free_run.end(), eos) - free_run.begin());
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
  cfg["eos_token_id"] = eos;
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  Model m(dir);
  Generator g(m, nullptr, 64);
  const GenerateResult r = g.generate(prompt, greedy(10, true));
  EXPECT_EQ(r.stop_reason, StopReason::Eos);
  EXPECT_EQ(r.ids, std::vector<int32_t>(free_run.begin(), free_run.begin() + long(first) + 1));
  // stop_at_eos = false runs through it.
  EXPECT_EQ(g.generate(prompt, greedy(10, false)).ids, free_run);
}

// Cuts s at a UTF-8 character boundary at or after byte i.
size_t char_boundary(const std::string& s, size_t i) {
  while (i < s.size() && (uint8_t(s[i]) & 0xC0) == 0x80) ++i;
  return i;
}

TEST(Generate, StopStringCutsTheText) {
  const std::string dir = make_model("stopstr");
  add_tokenizer(dir);
  Model m(dir);
  const auto t = tok::Tokenizer::from_path(dir);
  Generator g(m, t.get(), 128);
  const auto prompt = t->encode("Hello world, the quick", true);
  ASSERT_EQ(prompt.front(), 0);  // BOS from tokenizer_config.json
  const GenerateResult free_run = g.generate(prompt, greedy(24));
  EXPECT_EQ(free_run.text, t->decode(free_run.ids));
  ASSERT_GE(free_run.text.size(), 8u) << "the random model produced too little text to test";
  // A stop string from the middle of the free-running text.
  const std::string& T = free_run.text;
  const size_t b = char_boundary(T, T.size() / 3), e = char_boundary(T, b + 2);
  const std::string stop = T.substr(b, e - b);
  GenerateOptions o = greedy(24);
  o.stop = {stop, "a string that never appears \x01"};
  std::string streamed;
  const GenerateResult r =
      g.generate(prompt, o, [&](int32_t, const std::string& piece) { streamed += piece; });
  EXPECT_EQ(r.stop_reason, StopReason::StopString);
  EXPECT_EQ(r.text, T.substr(0, T.find(stop)));
  EXPECT_EQ(streamed, r.text);
  ASSERT_LE(r.ids.size(), free_run.ids.size());
  EXPECT_TRUE(std::equal(r.ids.begin(), r.ids.end(), free_run.ids.begin()));
  // The last id completed the stop string: without it the text does not contain it.
  const std::vector<int32_t> shorter(r.ids.begin(), r.ids.end() - 1);
  EXPECT_NE(t->decode(r.ids).find(stop), std::string::npos);
  EXPECT_EQ(t->decode(shorter).find(stop), std::string::npos);
}

TEST(Generate, ContextFullAndBadInput) {
  Model m(make_model("ctx"));
  Generator g(m, nullptr, 12);
  EXPECT_EQ(g.context(), 12);
  const auto prompt = ids_for(5, m.vocab(), 4);
  const GenerateResult r = g.generate(prompt, greedy(100));
  EXPECT_EQ(r.stop_reason, StopReason::Context);
  EXPECT_EQ(r.ids.size(), 7u);
  EXPECT_EQ(g.history().size(), 12u);
  EXPECT_STREQ(stop_reason_name(r.stop_reason), "context");
  EXPECT_STREQ(stop_reason_name(StopReason::MaxTokens), "length");

  auto expect_error = [&](const std::vector<int32_t>& p, const GenerateOptions& o,
                          std::vector<std::string> words) {
    try {
      g.generate(p, o);
      ADD_FAILURE() << "no error for " << words[0];
    } catch (const Error& e) {
      for (const auto& w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
  };
  expect_error(ids_for(13, m.vocab(), 1), greedy(4), {"13", "12", "context"});
  expect_error({}, greedy(4), {"empty"});
  expect_error({1, 2, 300}, greedy(4), {"300", "vocabulary"});
  expect_error({1, -1}, greedy(4), {"-1", "vocabulary"});
  GenerateOptions bad = greedy(4);
  bad.sampling.temperature = -1;
  expect_error({1, 2}, bad, {"temperature"});
  bad = greedy(4);
  bad.stop = {"x"};
  expect_error({1, 2}, bad, {"tokenizer"});
  // The generator still works after refusals.
  EXPECT_EQ(g.generate(prompt, greedy(3)).ids.size(), 3u);
  EXPECT_THROW(Generator(m, nullptr, 2000), Error);  // > max_position_embeddings = 1024
}

// ---- the CLI ----

struct CliRun {
  int rc;
  std::string out, err;
};

CliRun run_cli(const std::string& args, const std::string& stdin_text = "") {
  const char* bin = std::getenv("DSV3_BIN");
  const std::string dir = temp_dir("cli_io");
  const std::string in = dir + "/in", out = dir + "/out", err = dir + "/err";
  std::ofstream(in) << stdin_text;
  CliRun r;
  r.rc = std::system((std::string(bin) + " " + args + " <" + in + " >" + out + " 2>" + err).c_str());
  std::ifstream fo(out), fe(err);
  r.out.assign(std::istreambuf_iterator<char>(fo), {});
  r.err.assign(std::istreambuf_iterator<char>(fe), {});
  return r;
}

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

TEST(GenerateCli, GenerateJsonAndStreaming) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string dir = make_model("cli_gen");
  const auto prompt = ids_for(6, 300, 2);
  std::vector<int32_t> expect;
  {
    Model m(dir);
    expect = Generator(m, nullptr).generate(prompt, greedy(9, true)).ids;
  }
  // No tokenizer: --json has ids but no text; plain output prints the ids.
  CliRun r = run_cli("generate --model " + dir + " --ids " + join_ids(prompt) + " --max-new-tokens 9 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["ids"].get<std::vector<int32_t>>(), expect);
  EXPECT_FALSE(j.contains("text"));
  EXPECT_EQ(j["stop_reason"], expect.size() == 9 ? "length" : "eos");
  EXPECT_EQ(j["stats"]["prompt_tokens"], 6);
  EXPECT_EQ(j["stats"]["new_tokens"].get<size_t>(), expect.size());
  EXPECT_GT(j["stats"]["decode_tokens_per_s"].get<double>(), 0);
  r = run_cli("generate --model " + dir + " --ids " + join_ids(prompt) + " --max-new-tokens 9");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, join_ids(expect) + "\n");
  EXPECT_NE(r.err.find("stop:"), std::string::npos) << r.err;

  // With a tokenizer: --prompt adds BOS; the streamed text equals the JSON text.
  add_tokenizer(dir);
  const auto t = tok::Tokenizer::from_path(dir);
  r = run_cli("generate --model " + dir + " --prompt 'Hello world' --max-new-tokens 12 --json "
              "--temperature 0.8 --top-k 50 --top-p 0.9 --seed 3");
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json k = nlohmann::json::parse(r.out);
  EXPECT_EQ(k["stats"]["prompt_tokens"].get<size_t>(), t->encode("Hello world", true).size());
  const std::string text = k["text"];
  r = run_cli("generate --model " + dir + " --prompt 'Hello world' --max-new-tokens 12 "
              "--temperature 0.8 --top-k 50 --top-p 0.9 --seed 3");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, text + "\n");
}

// --activations bf16: the CLI's greedy ids are Generator's on a model loaded with
// bf16_activations; a bad value names the accepted ones.
TEST(GenerateCli, ActivationsFlag) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string dir = temp_dir("cli_act");  // FP8: the flag changes its linears
  RandomCheckpointOptions o;
  o.format = CheckpointFormat::FP8;
  o.seed = 11;
  write_random_checkpoint(tiny_v3_config(), dir, o);
  const auto prompt = ids_for(6, 300, 4);
  ModelOptions mo;
  mo.bf16_activations = true;
  Model m(dir, mo);
  const auto expect = Generator(m, nullptr).generate(prompt, greedy(9, true)).ids;
  CliRun r = run_cli("generate --model " + dir + " --ids " + join_ids(prompt) +
                     " --max-new-tokens 9 --activations bf16");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, join_ids(expect) + "\n");
  r = run_cli("generate --model " + dir + " --ids 1,2 --activations fp16");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--activations: expected f32 or bf16, got 'fp16'"), std::string::npos) << r.err;
}

// --kv-cache: generate's tokens and score's log-probs with each stored form are the library's
// with that ModelOptions::kv_cache (bf16 when the flag is absent: the default), the three
// forms' log-probs differ (the flag is not ignored), and an unknown form is refused by name.
TEST(GenerateCli, KvCacheFlag) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string dir = temp_dir("cli_kv");
  RandomCheckpointOptions o;
  o.format = CheckpointFormat::BF16;
  o.seed = 12;
  write_random_checkpoint(tiny_v3_config(), dir, o);
  EXPECT_EQ(ModelOptions().kv_cache, CacheDtype::BF16);
  const auto prompt = ids_for(40, 300, 5);
  std::vector<std::vector<double>> lps;
  for (const char* kv : {"", "f32", "bf16", "fp8"}) {
    ModelOptions mo;
    if (*kv) {
      ASSERT_TRUE(parse_cache_dtype(kv, &mo.kv_cache));
    }
    Model m(dir, mo);
    const std::string flag = *kv ? std::string(" --kv-cache ") + kv : std::string();
    const auto expect = Generator(m, nullptr).generate(prompt, greedy(12, true)).ids;
    CliRun r = run_cli("generate --model " + dir + " --ids " + join_ids(prompt) + " --max-new-tokens 12" + flag);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out, join_ids(expect) + "\n") << kv;
    // score: one prefill of 40 tokens (naive form over the rounded rows); its head runs in
    // chunks of rows, so logits differ from the one-call head by F32 order (~5e-7 seen).
    r = run_cli("score --model " + dir + " --ids " + join_ids(prompt) + " --json" + flag);
    ASSERT_EQ(r.rc, 0) << r.err;
    lps.push_back(nlohmann::json::parse(r.out).at("logprobs").get<std::vector<double>>());
    const int64_t V = m.vocab(), n = int64_t(prompt.size());
    KvCache cache = m.new_cache(n);
    ForwardScratch s;
    std::vector<float> logits(static_cast<size_t>(n * V));
    ForwardArgs a;
    a.ids = prompt.data();
    a.T = n;
    a.logits = logits.data();
    m.forward(cache, a, s);
    ASSERT_EQ(int64_t(lps.back().size()), n - 1);
    for (int64_t i = 0; i + 1 < n; ++i) {
      const float* row = logits.data() + i * V;
      EXPECT_NEAR(lps.back()[size_t(i)], double(row[prompt[size_t(i + 1)]]) - double(row_logsumexp(row, V)), 2e-6)
          << kv << " position " << i;
    }
  }
  auto max_diff = [](const std::vector<double>& x, const std::vector<double>& y) {
    double d = 0;
    for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::fabs(x[i] - y[i]));
    return d;
  };
  EXPECT_EQ(max_diff(lps[0], lps[2]), 0.0) << "no flag = bf16";
  EXPECT_GT(max_diff(lps[1], lps[2]), 2e-5) << "f32 vs bf16";
  EXPECT_GT(max_diff(lps[2], lps[3]), 2e-5) << "bf16 vs fp8";
  CliRun r = run_cli("generate --model " + dir + " --ids 1,2 --kv-cache f16");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--kv-cache: expected bf16, fp8 or f32, got 'f16'"), std::string::npos) << r.err;
}

// dsv3 score over more than one prefill chunk (kPrefillChunk): its log-probs equal those of
// the whole sequence in one forward (naive form, F32 cache) to F32 summation order, and the
// MTP module's too; the chunks' later parts run the absorbed form over the cache.
TEST(GenerateCli, ScoreInChunksEqualsOneForward) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string dir = temp_dir("cli_score_chunks");
  RandomCheckpointOptions o;
  o.format = CheckpointFormat::BF16;
  o.seed = 13;
  write_random_checkpoint(tiny_v3_config(), dir, o);
  const int64_t n = 2 * kPrefillChunk + 77;
  const auto ids = ids_for(n, 300, 6);
  const CliRun r = run_cli("score --model " + dir + " --ids " + join_ids(ids) + " --json --mtp --kv-cache f32");
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  const auto lp = j.at("logprobs").get<std::vector<double>>();
  ASSERT_EQ(int64_t(lp.size()), n - 1);
  ModelOptions mo;
  mo.kv_cache = CacheDtype::F32;
  Model m(dir, mo);
  const int64_t V = m.vocab();
  KvCache cache = m.new_cache(n);
  ForwardScratch s;
  std::vector<float> logits(static_cast<size_t>(n * V));
  ForwardArgs a;
  a.ids = ids.data();
  a.T = n;
  a.logits = logits.data();
  m.forward(cache, a, s);
  double worst = 0;
  for (int64_t i = 0; i + 1 < n; ++i) {
    const float* row = logits.data() + i * V;
    float mx = row[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, row[v]);
    double se = 0;
    for (int64_t v = 0; v < V; ++v) se += std::exp(double(row[v]) - mx);
    const double want = double(row[ids[size_t(i + 1)]]) - mx - std::log(se);
    worst = std::max(worst, std::fabs(lp[size_t(i)] - want));
  }
  EXPECT_LT(worst, 1e-4);
  // MTP module 1 over the main hidden rows, in one call too.
  std::vector<float> hidden(static_cast<size_t>(n * m.config().hidden_size));
  {
    KvCache c2 = m.new_cache(n);
    ForwardArgs h;
    h.ids = ids.data();
    h.T = n;
    h.hidden = hidden.data();
    m.forward(c2, h, s);
    MtpArgs ma;
    ma.k = 1;
    ma.ids = ids.data() + 1;
    ma.h_prev = hidden.data();
    ma.T = n - 1;
    ma.logits = logits.data();
    m.mtp_forward(c2, ma, s);
  }
  const auto mlp = j.at("mtp_logprobs").at(0).get<std::vector<double>>();
  ASSERT_EQ(int64_t(mlp.size()), n - 2);
  double mworst = 0;
  for (int64_t i = 0; i + 2 < n; ++i) {
    const float* row = logits.data() + i * V;
    mworst = std::max(mworst, std::fabs(mlp[size_t(i)] - (double(row[ids[size_t(i + 2)]]) -
                                                          double(row_logsumexp(row, V)))));
  }
  EXPECT_LT(mworst, 1e-4);
}

TEST(GenerateCli, ChatTwoTurnsReusesTheCache) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string dir = make_model("cli_chat");
  add_tokenizer(dir);
  const CliRun r = run_cli("chat --model " + dir + " --system 'Be brief.' --max-new-tokens 6",
                        "Hello there\n/reset\nHello there\nThe quick fox?\n");
  ASSERT_EQ(r.rc, 0) << r.err;
  // Each stats line: "[P prompt tokens (R reused, F prefilled) ...; N new tokens, ...".
  std::vector<long> reused, fresh;
  for (size_t at = 0; (at = r.err.find(" reused", at)) != std::string::npos; ++at) {
    const size_t open = r.err.rfind('(', at), semi = r.err.find("; ", at);
    reused.push_back(std::stol(r.err.substr(open + 1, at - open - 1)));
    fresh.push_back(std::stol(r.err.substr(semi + 2)));
  }
  ASSERT_EQ(reused.size(), 3u) << r.err;
  EXPECT_NE(r.err.find("history cleared"), std::string::npos) << r.err;
  // Turn 2 (after /reset) repeats turn 1's prompt: all of it but the last token is reused.
  // Turn 3 extends turn 2's conversation with the reply's own ids: everything cached is
  // reused (all of turn 2's prompt and reply but the reply's last token).
  const auto t = tok::Tokenizer::from_path(dir);
  const std::vector<tok::ChatMessage> turn1 = {{"system", "Be brief.", {}}, {"user", "Hello there", {}}};
  const long p1 = long(t->encode(tok::render_chat_deepseek_v3(turn1, true, t->bos_token()), false).size());
  EXPECT_EQ(reused[0], 0);
  EXPECT_EQ(reused[1], p1 - 1);
  EXPECT_EQ(reused[2], p1 + fresh[1] - 1) << r.err;
  EXPECT_NE(r.err.find("tok/s"), std::string::npos);
}

TEST(GenerateCli, BadInputExitsWithAMessage) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string dir = make_model("cli_bad");
  const std::string empty = temp_dir("cli_empty");
  const std::string gen = "generate --max-new-tokens 3 --model ";
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {gen + dir + " --ids ''", {"--ids", "empty"}},
      {gen + dir + " --ids 1,2,300", {"300", "vocabulary"}},
      {gen + dir + " --ids 1,x", {"'x'", "integer"}},
      {gen + dir + " --ids 1,2,3,4,5 --context 4", {"5 tokens", "context of 4"}},
      {gen + dir + " --ids 1,2 --context 5000", {"5000", "max_position_embeddings"}},
      {gen + empty + " --ids 1,2", {"config.json"}},
      {gen + dir + " --prompt hi", {"--prompt", "tokenizer.json"}},
      {gen + dir + " --ids 1 --stop x", {"--stop", "tokenizer.json"}},
      {gen + dir + " --ids 1 --prompt hi", {"exactly one"}},
      {gen + dir + " --ids 1 --temperature -2", {"temperature"}},
      {"chat --model " + dir, {"chat", "tokenizer.json"}},
  };
  for (const auto& [args, words] : cases) {
    const CliRun r = run_cli(args);
    EXPECT_NE(r.rc, 0) << args;
    EXPECT_NE(r.err.find("dsv3: error:"), std::string::npos) << args << ": " << r.err;
    for (const auto& w : words) EXPECT_NE(r.err.find(w), std::string::npos) << args << ": " << r.err;
  }
}

class Cleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const auto& d : g_dirs) fs::remove_all(d);
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);

}  // namespace
