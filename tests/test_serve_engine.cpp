// The serving engine (serve/engine.h) against the single-sequence Generator on tiny random
// checkpoints in the real formats:
//  * batch invariance: 16 requests at once give, token for token, what Generator gives for
//    each prompt alone (greedy), and the log-probs of every token are bit-identical to a
//    solo run of the same request through the engine;
//  * prompts longer than one prefill chunk (kPrefillChunk) are cut at the same places;
//  * the block pool: blocks return to zero, the prefix cache reports reused positions,
//    preemption under a small pool still completes every request, cancellation frees;
//  * bad requests are refused with a message; a full queue refuses with nullptr.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "core/check.h"
#include "infer/generate.h"
#include "io/random_checkpoint.h"
#include "model/model.h"
#include "model_test_util.h"
#include "serve_test_util.h"
#include "serve/engine.h"
#include "serve/kv_pool.h"
#include "serve/openai_api.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using serve::Engine;
using serve::EngineOptions;
using serve::Event;
using serve::Request;

std::string make_model(CheckpointFormat f, const std::string& name) {
  const fs::path p = fs::temp_directory_path() /
                     ("dsv3_serve_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  RandomCheckpointOptions o;
  o.format = f;
  o.seed = 7;
  write_random_checkpoint(tiny_v3_config(), p.string(), o);
  return p.string();
}

using testing::collect;
using testing::Outcome;

Request greedy(const std::vector<int32_t>& prompt, int64_t max_tokens) {
  Request r;
  r.prompt = prompt;
  r.max_tokens = max_tokens;
  r.top_logprobs = 2;
  return r;
}

// n token ids in [2, V): no BOS/EOS inside prompts.
std::vector<int32_t> body_ids(int64_t n, int64_t V, uint32_t seed) {
  auto ids = testing::ids_for(n, V, seed);
  for (auto& v : ids) v = 2 + v % int32_t(V - 2);
  return ids;
}

// Prompts of assorted lengths, one longer than a prefill chunk.
std::vector<std::vector<int32_t>> prompts(int n, int64_t V) {
  std::vector<std::vector<int32_t>> p;
  for (int i = 0; i < n; ++i)
    p.push_back(body_ids(i == 3 ? kPrefillChunk + 37 : 1 + (i * 7) % 45, V, 100 + uint32_t(i)));
  return p;
}

// The reference: Generator, one prompt at a time from an empty cache, greedy.
std::vector<std::vector<int32_t>> generate_each(Model& model,
                                                const std::vector<std::vector<int32_t>>& ps,
                                                int64_t tokens, int64_t context, bool stop_at_eos) {
  std::vector<std::vector<int32_t>> want;
  Generator g(model, nullptr, context);
  GenerateOptions go;
  go.max_new_tokens = tokens;
  go.stop_at_eos = stop_at_eos;
  for (const auto& p : ps) {
    g.reset();
    want.push_back(g.generate(p, go).ids);
  }
  return want;
}

void wait_idle(const Engine& e) {
  for (int i = 0; i < 500; ++i) {
    const auto m = e.metrics();
    if (m.running == 0 && m.waiting == 0 && m.kv_blocks_used == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << "the engine did not become idle within 5 s";
}

class ServeEngine : public ::testing::TestWithParam<CheckpointFormat> {};

TEST_P(ServeEngine, BatchedEqualsAloneAndGenerate) {
  const std::string dir = make_model(GetParam(), checkpoint_format_name(GetParam()));
  Model model(dir);
  const int64_t V = model.vocab(), kTokens = 20;
  const auto ps = prompts(16, V);

  const auto want = generate_each(model, ps, kTokens, 1024, true);

  EngineOptions eo;
  eo.max_running = 16;
  eo.context = 1024;
  eo.log_requests = false;
  Engine engine(model, nullptr, eo);
  std::vector<std::shared_ptr<serve::Stream>> streams;
  for (const auto& p : ps) {
    auto st = engine.submit(greedy(p, kTokens));
    ASSERT_TRUE(st);
    streams.push_back(st);
  }
  std::vector<Outcome> batched;
  for (auto& st : streams) batched.push_back(collect(*st));
  for (size_t i = 0; i < ps.size(); ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i) + " of " + std::to_string(ps[i].size()) + " tokens");
    EXPECT_FALSE(batched[i].error);
    EXPECT_EQ(batched[i].ids, want[i]);
    EXPECT_EQ(batched[i].prompt_tokens, int64_t(ps[i].size()));
    EXPECT_EQ(batched[i].completion_tokens, int64_t(want[i].size()));
  }
  wait_idle(engine);
  EXPECT_EQ(engine.metrics().kv_blocks_used, 0);

  // Solo runs through a fresh engine (no prefix-cache hits): bit-identical log-probs.
  Engine solo_engine(model, nullptr, eo);
  for (size_t i : {size_t(0), size_t(3), size_t(9), size_t(15)}) {
    SCOPED_TRACE("solo prompt " + std::to_string(i));
    auto st = solo_engine.submit(greedy(ps[i], kTokens));
    const Outcome solo = collect(*st);
    EXPECT_EQ(solo.ids, batched[i].ids);
    ASSERT_EQ(solo.logprobs.size(), batched[i].logprobs.size());
    EXPECT_EQ(0, std::memcmp(solo.logprobs.data(), batched[i].logprobs.data(),
                             solo.logprobs.size() * sizeof(float)));
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, ServeEngine,
                         ::testing::Values(CheckpointFormat::FP8, CheckpointFormat::BF16,
                                           CheckpointFormat::F32),
                         [](const auto& info) { return checkpoint_format_name(info.param); });

struct Fixture : ::testing::Test {
  static void SetUpTestSuite() { dir = new std::string(make_model(CheckpointFormat::FP8, "pool")); }
  static void TearDownTestSuite() {
    fs::remove_all(*dir);
    delete dir;
  }
  static std::string* dir;
};
std::string* Fixture::dir = nullptr;

TEST_F(Fixture, PrefixCacheReusesFullBlocks) {
  Model model(*dir);
  EngineOptions eo;
  eo.context = 512;
  eo.log_requests = false;
  Engine engine(model, nullptr, eo);
  const auto p = body_ids(40, model.vocab(), 5);
  Request ra = greedy(p, 12);
  ra.ignore_eos = true;
  const Outcome a = collect(*engine.submit(ra));  // fills positions [0, 51): three blocks
  EXPECT_EQ(a.cached_tokens, 0);
  const Outcome b = collect(*engine.submit(greedy(p, 4)));
  EXPECT_EQ(b.cached_tokens, 32);  // two full blocks of 16; the last token is recomputed
  // A conversation's next turn: the first turn's prompt and answer, then more.
  std::vector<int32_t> turn2 = p;
  turn2.insert(turn2.end(), a.ids.begin(), a.ids.end());
  turn2.insert(turn2.end(), {5, 6, 7, 8, 9, 10, 11, 12, 13, 14});
  const Outcome c = collect(*engine.submit(greedy(turn2, 4)));
  EXPECT_EQ(c.cached_tokens, 48);  // 62 tokens: the three blocks turn 1 filled
  wait_idle(engine);
  const auto m = engine.metrics();
  EXPECT_EQ(m.prefix_hits, 80u);
  EXPECT_EQ(m.prefix_queries, 39u + 39u + 61u);
  EXPECT_EQ(m.kv_blocks_used, 0);
}

TEST_F(Fixture, PreemptionUnderASmallPoolCompletesEverything) {
  Model model(*dir);
  EngineOptions eo;
  eo.context = 512;
  eo.max_running = 8;
  eo.kv_cache_blocks = 12;  // 8 sequences of up to 60 positions need 32
  eo.log_requests = false;
  eo.prefix_cache = false;
  Engine engine(model, nullptr, eo);
  std::vector<std::shared_ptr<serve::Stream>> st;
  for (int i = 0; i < 8; ++i) {
    Request r = greedy(body_ids(20, model.vocab(), 50 + uint32_t(i)), 40);
    r.ignore_eos = true;
    st.push_back(engine.submit(r));
    ASSERT_TRUE(st.back());
  }
  for (auto& s : st) {
    const Outcome o = collect(*s);
    EXPECT_FALSE(o.error);
    EXPECT_EQ(o.finish, "length");
    EXPECT_EQ(o.ids.size(), 40u);
  }
  wait_idle(engine);
  EXPECT_GT(engine.metrics().preemptions, 0u);
  EXPECT_EQ(engine.metrics().kv_blocks_used, 0);
}

// The engine's expert load (EngineMetrics::expert_load, GET /v1/expert_load): every
// forwarded row's routed experts, per MoE layer — the same counts, expert by expert, as the
// routing a single-sequence forward reports (ForwardTrace "layer.L.route_ids") over the same
// rows: each prompt prefilled, then each generated token but the last decoded.
TEST_F(Fixture, ExpertLoadCountsEveryRoutedRow) {
  Model model(*dir);
  const ModelConfig& c = model.config();
  EngineOptions eo;
  eo.context = 256;
  eo.log_requests = false;
  eo.prefix_cache = false;
  Engine engine(model, nullptr, eo);
  std::vector<std::vector<int32_t>> ps = {body_ids(10, model.vocab(), 71), body_ids(20, model.vocab(), 72),
                                          body_ids(5, model.vocab(), 73)};
  std::vector<std::shared_ptr<serve::Stream>> st;
  for (const auto& p : ps) {
    Request r = greedy(p, 7);
    r.ignore_eos = true;
    st.push_back(engine.submit(r));
  }
  std::vector<std::vector<uint64_t>> want(size_t(c.num_hidden_layers),
                                          std::vector<uint64_t>(size_t(c.n_routed_experts), 0));
  std::vector<Outcome> outs;
  for (auto& s : st) outs.push_back(collect(*s));
  wait_idle(engine);  // the reference forwards below run with the engine idle
  ForwardScratch fs;
  for (size_t i = 0; i < ps.size(); ++i) {
    const Outcome& o = outs[i];
    ASSERT_EQ(o.ids.size(), 7u);
    ForwardTrace trace = [&](const std::string& name, const float* d, int64_t rows, int64_t cols) {
      const std::string suffix = ".route_ids";
      if (name.rfind("layer.", 0) != 0 || name.size() <= suffix.size() ||
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
        return;
      const int l = std::atoi(name.c_str() + 6);
      for (int64_t j = 0; j < rows * cols; ++j) ++want[size_t(l)][size_t(d[j])];
    };
    KvCache cache = model.new_cache(64);
    std::vector<int32_t> rows = ps[i];
    rows.insert(rows.end(), o.ids.begin(), o.ids.end() - 1);
    ForwardArgs a;
    a.trace = &trace;
    a.ids = rows.data();
    a.T = int64_t(ps[i].size());
    model.forward(cache, a, fs);
    for (size_t t = ps[i].size(); t < rows.size(); ++t) {
      a.ids = rows.data() + t;
      a.T = 1;
      model.forward(cache, a, fs);
    }
  }
  const auto m = engine.metrics();
  ASSERT_EQ(m.expert_load.size(), size_t(c.num_hidden_layers));
  uint64_t moe_rows = 0;
  for (const auto& p : ps) moe_rows += p.size() + 6;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    uint64_t sum = 0;
    for (uint64_t v : m.expert_load[size_t(l)]) sum += v;
    EXPECT_EQ(sum, l < c.first_k_dense_replace ? 0 : moe_rows * uint64_t(c.num_experts_per_tok)) << "layer " << l;
    EXPECT_EQ(m.expert_load[size_t(l)], want[size_t(l)]) << "layer " << l;
  }
  // As `dsv3 eplb --load` reads it: the MoE layers only.
  const serve::json j = serve::expert_load_json(m);
  ASSERT_EQ(j.at("weight").size(), size_t(c.num_hidden_layers - c.first_k_dense_replace));
  EXPECT_EQ(j.at("layers")[0].get<int64_t>(), c.first_k_dense_replace);
  EXPECT_EQ(j.at("weight")[0].get<std::vector<uint64_t>>(), m.expert_load[size_t(c.first_k_dense_replace)]);
}

TEST_F(Fixture, CancelFreesBlocksAndFullQueueRefuses) {
  Model model(*dir);
  EngineOptions eo;
  eo.context = 512;
  eo.max_running = 1;
  eo.max_queue = 0;
  eo.log_requests = false;
  Engine engine(model, nullptr, eo);
  Request r = greedy(testing::ids_for(30, model.vocab(), 9), 400);
  r.ignore_eos = true;
  auto st = engine.submit(r);
  ASSERT_TRUE(st);
  EXPECT_EQ(engine.submit(greedy({2, 3}, 1)), nullptr);  // one running, no queue
  Event e;
  ASSERT_TRUE(st->next(&e, 30.0));
  EXPECT_EQ(e.kind, Event::Kind::Token);
  st->cancel();
  wait_idle(engine);
  const auto m = engine.metrics();
  EXPECT_EQ(m.kv_blocks_used, 0);
  EXPECT_EQ(m.requests_cancelled, 1u);
  EXPECT_EQ(m.requests_rejected, 1u);
  auto again = engine.submit(greedy({2, 3}, 1));
  ASSERT_TRUE(again);
  EXPECT_EQ(collect(*again).finish, "length");
}

TEST_F(Fixture, BadRequestsAreRefusedWithAMessage) {
  Model model(*dir);
  EngineOptions eo;
  eo.context = 64;
  eo.log_requests = false;
  Engine engine(model, nullptr, eo);
  auto msg = [&](Request r) {
    try {
      engine.submit(std::move(r));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(msg(greedy({}, 1)).find("empty"), std::string::npos);
  EXPECT_NE(msg(greedy({2, int32_t(model.vocab())}, 1)).find("vocabulary"), std::string::npos);
  EXPECT_NE(msg(greedy(std::vector<int32_t>(60, 2), 10)).find("context"), std::string::npos);
  Request t = greedy({2}, 1);
  t.sampling.temperature = -1;
  EXPECT_NE(msg(t), "");
  Request lp = greedy({2}, 1);
  lp.top_logprobs = 21;
  EXPECT_NE(msg(lp).find("top_logprobs"), std::string::npos);
  Request pen = greedy({2}, 1);
  pen.frequency_penalty = 3;
  EXPECT_NE(msg(pen).find("frequency_penalty"), std::string::npos);
}

// MTP speculation inside the batched step (one draft per step): greedy output equals plain
// decoding token for token, and sampled requests complete with both accept-rule branches run.
// A 12-token vocabulary makes a random model's MTP draft right often enough to exercise
// acceptance; one thread makes a verify row's attention the same sums as a decode row's.
// A 12-token vocabulary (drafts accepted often enough) BF16 model with one MTP module.
fs::path make_spec_model(const std::string& name) {
  ModelConfig c = tiny_v3_config();
  c.vocab_size = 12;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  const fs::path p = fs::temp_directory_path() / ("dsv3_serve_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  RandomCheckpointOptions ro;
  ro.format = CheckpointFormat::BF16;
  ro.seed = 3;
  write_random_checkpoint(c, p.string(), ro);
  return p;
}

TEST(ServeSpeculative, GreedyEqualsPlainAndSamplingCompletes) {
  const fs::path p = make_spec_model("spec");
  ModelOptions mo;
  mo.threads = 1;
  Model model(p.string(), mo);
  const int64_t V = model.vocab(), kTokens = 24;
  std::vector<std::vector<int32_t>> ps;
  for (int i = 0; i < 8; ++i) ps.push_back(body_ids(3 + i, V, 70 + uint32_t(i)));
  const auto want = generate_each(model, ps, kTokens, 256, false);
  EngineOptions eo;
  eo.context = 256;
  eo.speculative_draft = 1;
  eo.log_requests = false;
  Engine engine(model, nullptr, eo);
  std::vector<std::shared_ptr<serve::Stream>> st;
  for (const auto& q : ps) {
    Request r = greedy(q, kTokens);
    r.ignore_eos = true;
    st.push_back(engine.submit(r));
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    const Outcome o = collect(*st[i]);
    EXPECT_EQ(o.ids, want[i]) << "prompt " << i;
    EXPECT_EQ(o.completion_tokens, kTokens);
  }
  wait_idle(engine);
  const auto m1 = engine.metrics();
  std::printf("greedy: drafted %llu accepted %llu\n", (unsigned long long)m1.spec_drafted,
              (unsigned long long)m1.spec_accepted);
  EXPECT_GT(m1.spec_accepted, 0u);
  EXPECT_LT(m1.spec_accepted, m1.spec_drafted);

  st.clear();
  for (int i = 0; i < 16; ++i) {
    Request r = greedy(ps[size_t(i) % ps.size()], kTokens);
    r.sampling.temperature = 0.9f;
    r.sampling.top_k = 8;
    r.sampling.seed = uint64_t(i);
    r.ignore_eos = true;
    st.push_back(engine.submit(r));
  }
  for (auto& s : st) {
    const Outcome o = collect(*s);
    EXPECT_FALSE(o.error);
    EXPECT_EQ(o.completion_tokens, kTokens);
    for (int32_t id : o.ids) EXPECT_TRUE(id >= 0 && id < V);
  }
  wait_idle(engine);
  const auto m2 = engine.metrics();
  EXPECT_GT(m2.spec_accepted, m1.spec_accepted);
  EXPECT_LT(m2.spec_accepted - m1.spec_accepted, m2.spec_drafted - m1.spec_drafted);
  EXPECT_EQ(m2.kv_blocks_used, 0);
  fs::remove_all(p);
}

// --speculative auto inside the engine, under a cost model the test sets (per sequence:
// plain 1 ms, verify `ratio` ms, cold verify steps 1 s, which must not count): greedy output
// equals plain decoding in every mode and whatever auto chooses; the decode batch the run
// spends most steps at ends up plain when verify costs 3x and drafting when it costs 1x (the
// memory-bound ideal: any accepted draft pays, and auto here drafts from S > 1.02).
// Under auto a prefix-cache hit is taken (that sequence decodes plainly), and a seeded
// sampled request decodes plainly so that its seed gives the same tokens as without drafts.
TEST(ServeSpeculative, AutoEqualsPlainInEveryModeAndFollowsTheCosts) {
  const fs::path p = make_spec_model("auto");
  ModelOptions mo;
  mo.threads = 1;
  Model model(p.string(), mo);
  const int64_t V = model.vocab(), kTokens = 32;
  std::vector<std::vector<int32_t>> ps;
  for (int i = 0; i < 8; ++i) ps.push_back(body_ids(3 + i, V, 90 + uint32_t(i)));
  const auto want = generate_each(model, ps, kTokens, 256, false);
  struct Cost : SpecCostModel {
    double ratio = 1;
    double step_cost(const SpecStep& s, double) const override {
      return 1e-3 * double(s.seqs) * (s.drafted == 0 ? 1.0 : s.cold ? 1e3 : ratio);
    }
  } cost;
  const auto long_prompt = body_ids(40, V, 77);
  Request sampled = greedy(body_ids(6, V, 5), 20);
  sampled.ignore_eos = true;
  sampled.sampling.temperature = 0.9f;
  sampled.sampling.seed = 11;
  std::vector<int32_t> sampled_plain;
  struct Run {
    SpecMode mode;
    double ratio;
  };
  for (const Run run : {Run{SpecMode::Off, 1}, Run{SpecMode::Mtp, 1}, Run{SpecMode::Auto, 3},
                        Run{SpecMode::Auto, 1}}) {
    SCOPED_TRACE(std::string(spec_mode_name(run.mode)) + " ratio " + std::to_string(run.ratio));
    cost.ratio = run.ratio;
    EngineOptions eo;
    eo.context = 256;
    eo.speculative_draft = 1;
    eo.speculative_mode = run.mode;
    eo.speculative_policy.costs = &cost;
    eo.speculative_policy.probe_every = 4;
    eo.speculative_policy.probe_max = 8;
    eo.speculative_policy.enter = 1.02;
    eo.log_requests = false;
    Engine engine(model, nullptr, eo);
    std::vector<std::shared_ptr<serve::Stream>> st;
    for (const auto& q : ps) {
      Request r = greedy(q, kTokens);
      r.ignore_eos = true;
      st.push_back(engine.submit(r));
    }
    for (size_t i = 0; i < ps.size(); ++i) EXPECT_EQ(collect(*st[i]).ids, want[i]) << "prompt " << i;
    wait_idle(engine);
    const auto m = engine.metrics();
    EXPECT_EQ(m.spec_mode, run.mode);
    if (run.mode == SpecMode::Off) {
      EXPECT_EQ(m.spec_drafted, 0u);
      EXPECT_TRUE(m.spec.empty());
    } else {
      EXPECT_GT(m.spec_drafted, 0u);  // auto: its calibration
      ASSERT_FALSE(m.spec.empty());
      const SpecReport* most = &m.spec[0];
      for (const SpecReport& r : m.spec)
        if (r.plain_steps + r.verify_steps > most->plain_steps + most->verify_steps) most = &r;
      std::printf("%s ratio %.2f: drafted %llu accepted %llu; batch %s: %lld plain, %lld verify steps, "
                  "%s (%s)\n", spec_mode_name(run.mode), run.ratio, (unsigned long long)m.spec_drafted,
                  (unsigned long long)m.spec_accepted, most->batch_label().c_str(),
                  (long long)most->plain_steps, (long long)most->verify_steps,
                  most->drafting ? "drafting" : "plain", most->reason.c_str());
      if (run.mode == SpecMode::Auto) {
        EXPECT_EQ(most->drafting, run.ratio == 1) << "batch " << most->batch_label() << ": " << most->reason;
      }
    }
    // The same long prompt twice: the second finds three blocks cached, except under mtp
    // (a drafting sequence needs module 1's states of every position).
    const Outcome a = collect(*engine.submit(greedy(long_prompt, 4)));
    const Outcome b = collect(*engine.submit(greedy(long_prompt, 4)));
    EXPECT_EQ(a.ids, b.ids);
    EXPECT_EQ(b.cached_tokens, run.mode == SpecMode::Mtp ? 0 : 32);
    // Seeded sampling: the tokens plain decoding gives (mtp drafts, so other tokens).
    const Outcome o = collect(*engine.submit(sampled));
    EXPECT_FALSE(o.error);
    if (run.mode == SpecMode::Off) sampled_plain = o.ids;
    if (run.mode == SpecMode::Auto) {
      EXPECT_EQ(o.ids, sampled_plain);
    }
    wait_idle(engine);
  }
  // A long request under auto that decodes plainly (no probe for 400 steps): module 1
  // catches up every kMtpCatchUpRows positions meanwhile, then the probe drafts from there;
  // the tokens are plain decoding's.
  {
    cost.ratio = 3;
    EngineOptions eo;
    eo.context = 512;
    eo.speculative_draft = 1;
    eo.speculative_mode = SpecMode::Auto;
    eo.speculative_policy.costs = &cost;
    eo.speculative_policy.probe_every = eo.speculative_policy.probe_max = 400;
    eo.log_requests = false;
    Engine engine(model, nullptr, eo);
    Request r = greedy(ps[1], 440);
    r.ignore_eos = true;
    const Outcome o = collect(*engine.submit(r));
    Generator g(model, nullptr, 512);
    GenerateOptions go;
    go.max_new_tokens = 440;
    go.stop_at_eos = false;
    EXPECT_EQ(o.ids, g.generate(ps[1], go).ids);
    wait_idle(engine);
    EXPECT_GT(engine.metrics().spec_drafted, 4u);  // calibration, then the probe
  }
  // Auto on a model loaded without its MTP module: plain, and says why; mtp is refused.
  mo.with_mtp = false;
  Model bare(p.string(), mo);
  EngineOptions eo;
  eo.context = 64;
  eo.speculative_draft = 1;
  eo.speculative_mode = SpecMode::Auto;
  eo.log_requests = false;
  {
    Engine engine(bare, nullptr, eo);
    EXPECT_EQ(collect(*engine.submit(greedy(ps[0], 8))).ids,
              std::vector<int32_t>(want[0].begin(), want[0].begin() + 8));
    const auto m = engine.metrics();
    EXPECT_EQ(m.spec_mode, SpecMode::Auto);
    EXPECT_NE(m.spec_reason.find("MTP"), std::string::npos) << m.spec_reason;
    EXPECT_EQ(m.spec_drafted, 0u);
  }
  eo.speculative_mode = SpecMode::Mtp;
  EXPECT_THROW(Engine(bare, nullptr, eo), Error);
  fs::remove_all(p);
}

TEST_F(Fixture, FastModeCompletes) {
  Model model(*dir);
  EngineOptions eo;
  eo.context = 512;
  eo.batch_invariant = false;
  eo.log_requests = false;
  Engine engine(model, nullptr, eo);
  std::vector<std::shared_ptr<serve::Stream>> st;
  for (int i = 0; i < 6; ++i) st.push_back(engine.submit(greedy(testing::ids_for(9, 300, uint32_t(i)), 8)));
  for (auto& s : st) EXPECT_FALSE(collect(*s).error);
}

}  // namespace
}  // namespace dsv3
