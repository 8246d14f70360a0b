// MTP speculative decoding on tiny random checkpoints with MTP modules (FP8 and BF16, one
// and two modules): greedy output identical to plain greedy decoding (drafts 1..3, so past D
// the chained module runs), under every limit (max_new_tokens, EOS, context); the main and
// MTP caches left consistent with the history; sampled output distributed as plain
// sampling (chi-square); consistent statistics; the `dsv3 generate --speculative` command.
//
// Random models accept few drafts; that is fine: rejection, rollback and catch-up are what
// most of these runs exercise, and acceptance happens often enough on a 12-token vocabulary.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "infer/generate.h"
#include "infer/spec_policy.h"
#include "io/random_checkpoint.h"
#include "model/model.h"
#include "model_test_util.h"

namespace fs = std::filesystem;
using namespace dsv3;

namespace {

std::vector<std::string> g_dirs;
struct Cleanup {
  ~Cleanup() {
    for (const auto& d : g_dirs) fs::remove_all(d);
  }
} g_cleanup;

std::string make_model(const std::string& name, ModelConfig c, CheckpointFormat fmt) {
  const fs::path p = fs::temp_directory_path() / ("dsv3_spec_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  g_dirs.push_back(p.string());
  RandomCheckpointOptions o;
  o.format = fmt;
  o.seed = 23;
  write_random_checkpoint(c, p.string(), o);
  return p.string();
}

// Rewrites config.json's eos_token_id (the weights stay).
void set_eos(const std::string& dir, int32_t eos) {
  nlohmann::json j;
  std::ifstream(dir + "/config.json") >> j;
  j["eos_token_id"] = eos;
  std::ofstream(dir + "/config.json") << j.dump(1);
}

// One thread: these models are so small that OpenMP fork/join would dominate.
// F32 cache: the tests below compare cache rows of two runs to a tolerance below BF16's
// rounding (a row computed with different F32 roundings may round to the neighbouring BF16
// value); SpecVariants' *_kvbf16 / *_kvfp8 cover the BF16 and FP8 caches by their tokens.
ModelOptions one_thread() {
  ModelOptions mo;
  mo.threads = 1;
  mo.kv_cache = CacheDtype::F32;
  return mo;
}

using dsv3::testing::ids_for;

GenerateOptions opts(int64_t n, int64_t draft, bool stop_at_eos = false) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.stop_at_eos = stop_at_eos;
  o.speculative_draft = draft;
  return o;
}

// accepted ≤ drafted per position, the per-position counts sum up, and every step yields
// accepted + 1 tokens unless an EOS inside an accepted run cut it.
void check_stats(const GenerateResult& r, int64_t draft) {
  const GenerateStats& s = r.stats;
  const SpeculativeStats& p = s.spec;
  ASSERT_TRUE(s.speculative);
  EXPECT_EQ(p.steps, s.decode_steps);
  EXPECT_LE(p.accepted, p.drafted);
  EXPECT_LE(p.drafted, draft * p.steps);
  ASSERT_EQ(p.drafted_at.size(), p.accepted_at.size());
  EXPECT_LE(int64_t(p.drafted_at.size()), draft);
  int64_t sd = 0, sa = 0;
  for (size_t j = 0; j < p.drafted_at.size(); ++j) {
    EXPECT_LE(p.accepted_at[j], p.drafted_at[j]);
    if (j > 0) {
      EXPECT_LE(p.drafted_at[j], p.drafted_at[j - 1]);
      EXPECT_LE(p.accepted_at[j], p.accepted_at[j - 1]);  // accepted in order
    }
    sd += p.drafted_at[j];
    sa += p.accepted_at[j];
  }
  EXPECT_EQ(sd, p.drafted);
  EXPECT_EQ(sa, p.accepted);
  const int64_t first = r.ids.empty() ? 0 : 1;  // from the prefill's logits
  if (r.stop_reason == StopReason::Eos) {
    EXPECT_LE(s.new_tokens, first + p.steps + p.accepted);
  } else {
    EXPECT_EQ(s.new_tokens, first + p.steps + p.accepted);
  }
}

struct Variant {
  const char* name;
  CheckpointFormat fmt;
  int mtp_modules;
  CacheDtype kv = CacheDtype::F32;
};
// The compact caches too: a verify step writes its rows from F32 sums ordered otherwise than
// plain decoding's, which can round a cached value to the neighbouring BF16/FP8 value; the
// logits move by that much more (~1e-3 relative), still far from these prompts' top-2 gaps.
const Variant kVariants[] = {{"fp8_d1", CheckpointFormat::FP8, 1},
                             {"bf16_d1", CheckpointFormat::BF16, 1},
                             {"bf16_d2", CheckpointFormat::BF16, 2},
                             {"bf16_d2_kvbf16", CheckpointFormat::BF16, 2, CacheDtype::BF16},
                             {"fp8_d1_kvfp8", CheckpointFormat::FP8, 1, CacheDtype::FP8}};

class SpecVariants : public ::testing::TestWithParam<int> {};

// Greedy: the verifier's argmax decides every token, so speculation may change only the
// speed. The verify forward runs several positions through the absorbed decode path at once
// and plain decoding one at a time: the logits differ by F32 reassociation (test_model
// "steps of 3 tokens": ~1e-6 relative, ≤ 2^-15 in the BF16 hi+lo split), far below the gap
// between the two best logits anywhere on these random checkpoints, so the ids must match
// exactly (a near-tie within that noise could flip either path; these prompts have none).
TEST_P(SpecVariants, GreedyIdenticalToPlain) {
  const Variant v = kVariants[GetParam()];
  ModelConfig c = tiny_v3_config();
  c.num_nextn_predict_layers = v.mtp_modules;
  const std::string dir = make_model(v.name, c, v.fmt);
  const int64_t kMax = 20;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> plain;
  ModelOptions mo = one_thread();
  mo.kv_cache = v.kv;
  {
    Model m(dir, mo);
    ASSERT_EQ(m.n_mtp(), v.mtp_modules);
    Generator g(m, nullptr, 64);
    for (int i = 0; i < 3; ++i) {
      prompts.push_back(ids_for(1 + 4 * i, m.vocab(), 7 + uint32_t(i)));
      plain.push_back(g.generate(prompts.back(), opts(kMax, 0)).ids);
      ASSERT_EQ(int64_t(plain.back().size()), kMax);
    }
    for (int64_t draft = 1; draft <= 3; ++draft) {
      // One Generator across prompts and limits: prefix reuse and the MTP bookkeeping too.
      Generator gs(m, nullptr, 64);
      for (size_t i = 0; i < prompts.size(); ++i)
        for (int64_t n : {int64_t(1), int64_t(2), int64_t(7), kMax}) {
          const GenerateResult r = gs.generate(prompts[i], opts(n, draft));
          EXPECT_EQ(r.ids, std::vector<int32_t>(plain[i].begin(), plain[i].begin() + n))
              << v.name << " prompt " << i << " draft " << draft << " max " << n;
          EXPECT_EQ(r.stop_reason, StopReason::MaxTokens);
          check_stats(r, draft);
        }
      // Adaptive length (min_p): any stopping rule leaves greedy output alone. min_p = 1
      // stops after the first draft of every step (no draft is certain on random weights),
      // a vanishing min_p never stops early, and 1.2/V — random weights give nearly flat
      // MTP distributions, whose top probability lies a little above 1/V — stops in some
      // steps and not in others (checked below), which with two modules leaves module 2
      // behind for a while and makes it catch up over several positions later.
      for (double min_p : {1.0, 1e-30, 1.2 / double(m.vocab())}) {
        Generator ga(m, nullptr, 64);
        int64_t went_on = 0, stopped = 0;
        for (size_t i = 0; i < prompts.size(); ++i) {
          GenerateOptions o = opts(kMax, draft);
          o.speculative_min_p = min_p;
          const GenerateResult r = ga.generate(prompts[i], o);
          EXPECT_EQ(r.ids, plain[i]) << v.name << " prompt " << i << " draft " << draft << " min_p " << min_p;
          check_stats(r, draft);
          const SpeculativeStats& p = r.stats.spec;
          // (The last step may have room for no draft at all.)
          if (min_p == 1.0) {
            EXPECT_LE(p.drafted, p.steps) << draft;
            EXPECT_GE(p.drafted, p.steps - 1) << draft;
          }
          // Every step but the last few (limited by max_new_tokens) drafts all of them.
          if (min_p == 1e-30) {
            EXPECT_GE(p.drafted, draft * (p.steps - draft)) << draft;
          }
          if (draft >= 2 && p.drafted_at.size() >= 2) {
            went_on += p.drafted_at[1];
            stopped += p.drafted_at[0] - p.drafted_at[1] - 1;  // the last step may lack room
          }
        }
        if (min_p < 1 && min_p > 1e-30 && draft >= 2) {
          EXPECT_GT(went_on, 0) << v.name << " draft " << draft;
          EXPECT_GT(stopped, 0) << v.name << " draft " << draft;
        }
      }
      // The context limit: a 12-position cache fills after 12 − 5 new tokens.
      Generator gc(m, nullptr, 12);
      const GenerateResult r = gc.generate(prompts[1], opts(kMax, draft));
      EXPECT_EQ(r.stop_reason, StopReason::Context);
      EXPECT_EQ(r.ids, std::vector<int32_t>(plain[1].begin(), plain[1].begin() + 7)) << draft;
      check_stats(r, draft);
    }
  }
  // EOS: a token plain decoding produces at its 8th-or-later step becomes the EOS.
  const int32_t eos = plain[2][9];
  set_eos(dir, eos);
  Model m(dir, mo);
  const auto cut = std::find(plain[2].begin(), plain[2].end(), eos) + 1;
  const std::vector<int32_t> expect(plain[2].begin(), cut);
  for (int64_t draft = 1; draft <= 3; ++draft) {
    Generator g(m, nullptr, 64);
    const GenerateResult r = g.generate(prompts[2], opts(kMax, draft, true));
    EXPECT_EQ(r.ids, expect) << draft;
    EXPECT_EQ(r.stop_reason, StopReason::Eos);
    check_stats(r, draft);
    EXPECT_LE(g.cached(), int64_t(g.history().size()));  // nothing past the EOS stays cached
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, SpecVariants, ::testing::Range(0, int(std::size(kVariants))));

double max_abs(const float* a, size_t n) {
  double d = 0;
  for (size_t i = 0; i < n; ++i) d = std::max(d, double(std::fabs(a[i])));
  return d;
}
double max_diff(const float* a, const float* b, size_t n) {
  double d = 0;
  for (size_t i = 0; i < n; ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

// After speculative generation (rejections rolled back, chained rows dropped) the cache rows
// the Generator keeps equal a fresh computation from the history: the main layers over
// [0, cached), and module k over its valid rows [0, m_k) (module 1 from the main states,
// module 2 from module 1's). Tolerance: 1e-3 of the magnitude, as test_model's decode vs
// recompute (the two paths differ by F32 reassociation and the BF16 hi+lo split).
TEST(Speculative, CachesMatchRecomputation) {
  ModelConfig c = tiny_v3_config();
  c.num_nextn_predict_layers = 2;
  const std::string dir = make_model("state", c, CheckpointFormat::BF16);
  Model m(dir, one_thread());
  const int64_t H = c.hidden_size, L = c.num_hidden_layers;
  Generator g(m, nullptr, 64);
  const auto prompt = ids_for(6, m.vocab(), 5);
  g.generate(prompt, opts(9, 3));
  std::vector<int32_t> hist = g.history();
  g.generate(hist, opts(14, 3));  // a second call: prefix reuse + MTP catch-up
  hist = g.history();
  const KvCache& kc = g.cache();
  const int64_t n = g.cached();
  const std::vector<int64_t> mv = g.mtp_valid();
  ASSERT_EQ(mv.size(), 2u);
  ASSERT_GT(mv[1], 0);
  EXPECT_LE(mv[0], n);
  EXPECT_LE(mv[1], mv[0]);
  EXPECT_LE(mv[0] + 1, int64_t(hist.size()));

  KvCache fresh = m.new_cache(64);
  ForwardScratch s;
  std::vector<float> h0(size_t(n * H)), h1(size_t(n * H)), h2(size_t(n * H));
  ForwardArgs a;
  a.ids = hist.data();
  a.T = n;
  a.hidden = h0.data();
  m.forward(fresh, a, s);
  MtpArgs b;
  b.k = 1;
  b.ids = hist.data() + 1;
  b.h_prev = h0.data();
  b.T = mv[0];
  b.hidden = h1.data();
  m.mtp_forward(fresh, b, s);
  b.k = 2;
  b.ids = hist.data() + 2;
  b.h_prev = h1.data();
  b.T = mv[1];
  b.hidden = h2.data();
  m.mtp_forward(fresh, b, s);

  const auto layer = [](const KvCache& c, int64_t l) {
    return reinterpret_cast<const float*>(c.data.data()) + l * c.capacity * c.row;
  };
  for (int64_t l = 0; l < L + 2; ++l) {
    const int64_t rows = l < L ? n : mv[size_t(l - L)];
    const size_t cnt = size_t(rows * kc.row);
    const double mag = max_abs(layer(fresh, l), cnt);
    EXPECT_GT(mag, 0.0);
    EXPECT_LT(max_diff(layer(kc, l), layer(fresh, l), cnt), 1e-3 * std::max(1.0, mag)) << "layer " << l;
  }
  // And a further plain or speculative step from this state equals a fresh start.
  Model m2(dir, one_thread());
  Generator ref(m2, nullptr, 64);
  const auto want = ref.generate(hist, opts(6, 0)).ids;
  EXPECT_EQ(g.generate(hist, opts(6, 0)).ids, want);
  EXPECT_EQ(g.generate(hist, opts(6, 2)).ids, want);
}

// Survival function of the chi-square distribution with k degrees of freedom (closed forms
// for integer k: even k a Poisson tail, odd k via erfc).
double chi2_sf(double x, int k) {
  const double y = x / 2;
  if (k % 2 == 0) {
    double term = 1, sum = 0;
    for (int i = 0; i < k / 2; ++i) {
      sum += term;
      term *= y / (i + 1);
    }
    return std::exp(-y) * sum;
  }
  double sum = std::erfc(std::sqrt(y));
  for (int i = 1; i <= (k - 1) / 2; ++i) sum += std::exp(-y + (i - 0.5) * std::log(y) - std::lgamma(i + 0.5));
  return sum;
}

// Two-sample chi-square test of equal distributions from counts a, b of the same total n:
// X² = Σ (a_i − b_i)² / (a_i + b_i) ~ χ²(cells − 1) under H0. Cells with a_i + b_i < 10 are
// pooled into one so the asymptotic law holds. Returns the p-value.
double two_sample_p(const std::vector<int>& a, const std::vector<int>& b) {
  double x2 = 0;
  int cells = 0, pa = 0, pb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] + b[i] < 10) {
      pa += a[i];
      pb += b[i];
      continue;
    }
    x2 += double(a[i] - b[i]) * (a[i] - b[i]) / (a[i] + b[i]);
    ++cells;
  }
  if (pa + pb > 0) {
    x2 += double(pa - pb) * (pa - pb) / (pa + pb);
    ++cells;
  }
  return cells > 1 ? chi2_sf(x2, cells - 1) : 1.0;
}

// Speculative sampling draws every token from the target distribution (Leviathan et al.
// 2023, Thm. 1). On a 12-token vocabulary, 3000 plain and 3000 speculative runs (distinct
// seeds) of 4 new tokens with 2 drafts per step: the marginal of each of the tokens 2..4
// (token 1 comes from the prefill in both) must pass a two-sample chi-square test at
// p ≥ 1e-4 — a false failure has probability ≤ 3e-4 over the seed choice (union bound).
// Temperature 0.9 with top-k 8 makes p and q sparse, exercising the q = 0 / residual paths.
TEST(Speculative, SamplingMatchesPlainDistribution) {
  // A smaller model than tiny_v3 (2 layers, narrower) run on one thread: 6000 generations
  // of a tiny model are dominated by fork/join overhead otherwise.
  ModelConfig c = tiny_v3_config();
  c.vocab_size = 12;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  c.num_hidden_layers = 2;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.moe_intermediate_size = 32;
  c.q_lora_rank = 48;
  c.kv_lora_rank = 32;
  const std::string dir = make_model("sample", c, CheckpointFormat::BF16);
  Model m(dir, one_thread());
#if defined(__SANITIZE_ADDRESS__)
  const int64_t kRuns = 400;  // sanitizers: the same test with less power, to stay fast
#else
  const int64_t kRuns = 3000;
#endif
  const int64_t V = m.vocab(), kNew = 4;
  const auto prompt = ids_for(5, V, 3);
  Generator gp(m, nullptr, 32), gs(m, nullptr, 32);
  std::vector<std::vector<int>> cp(kNew, std::vector<int>(size_t(V))), cs = cp, ca = cp;
  int64_t adaptive_at[3] = {0, 0, 0};
  int64_t drafted = 0, accepted = 0;
  for (int64_t r = 0; r < kRuns; ++r) {
    GenerateOptions o = opts(kNew, 0);
    o.sampling.temperature = 0.9f;
    o.sampling.top_k = 8;
    o.sampling.seed = uint64_t(r);
    const auto a = gp.generate(prompt, o).ids;
    o.speculative_draft = 2;
    o.sampling.seed = uint64_t(r + 1000000);
    const GenerateResult sr = gs.generate(prompt, o);
    check_stats(sr, 2);
    drafted += sr.stats.spec.drafted;
    accepted += sr.stats.spec.accepted;
    // Adaptive length: up to 3 drafts (2 fit in 4 new tokens), stopping where the draft
    // itself is unsure: 0.125 = 1/top_k, so about a third of the steps go on.
    o.speculative_draft = 3;
    o.speculative_min_p = 0.125;
    o.sampling.seed = uint64_t(r + 2000000);
    const GenerateResult ar = gs.generate(prompt, o);
    check_stats(ar, 3);
    for (size_t j = 0; j < ar.stats.spec.drafted_at.size(); ++j) adaptive_at[j] += ar.stats.spec.drafted_at[j];
    ASSERT_EQ(int64_t(a.size()), kNew);
    ASSERT_EQ(int64_t(sr.ids.size()), kNew);
    ASSERT_EQ(int64_t(ar.ids.size()), kNew);
    for (int64_t t = 0; t < kNew; ++t) {
      ++cp[size_t(t)][size_t(a[size_t(t)])];
      ++cs[size_t(t)][size_t(sr.ids[size_t(t)])];
      ++ca[size_t(t)][size_t(ar.ids[size_t(t)])];
    }
  }
  // The adaptive runs both stopped early and went on (so both branches were tested).
  std::printf("adaptive: steps drafting a 1st/2nd/3rd token %lld %lld %lld\n", (long long)adaptive_at[0],
              (long long)adaptive_at[1], (long long)adaptive_at[2]);
  EXPECT_GT(adaptive_at[1], 0);
  EXPECT_LT(adaptive_at[1], adaptive_at[0]);
  for (int64_t t = 0; t < kNew; ++t) {
    const double p = two_sample_p(cp[size_t(t)], ca[size_t(t)]);
    std::printf("adaptive token %lld: p = %.3g\n", (long long)t + 1, p);
    EXPECT_GE(p, 1e-4) << "adaptive, token " << t + 1;
  }
  std::printf("drafted %lld accepted %lld (%.1f%%)\n", (long long)drafted, (long long)accepted,
              100.0 * double(accepted) / double(drafted));
  EXPECT_GT(accepted, 0);            // both branches of the accept rule ran
  EXPECT_LT(accepted, drafted);
  for (int64_t t = 0; t < kNew; ++t) {
    const double p = two_sample_p(cp[size_t(t)], cs[size_t(t)]);
    std::printf("token %lld: p = %.3g\n", (long long)t + 1, p);
    EXPECT_GE(p, 1e-4) << "token " << t + 1;
  }
}

// Random checkpoints draw the MTP head independently: nothing to share.
TEST(Speculative, SeparateMtpHeadStaysSeparate) {
  const std::string dir = make_model("own_head", tiny_v3_config(), CheckpointFormat::BF16);
  const Model m(dir, one_thread());
  ASSERT_EQ(m.n_mtp(), 1);
  EXPECT_NE(m.weights().mtp[0].shared_head_head.w.data, m.weights().lm_head.w.data);
}

TEST(Speculative, RefusesAModelWithoutMtp) {
  const std::string dir = make_model("nomtp", tiny_v2_config(), CheckpointFormat::BF16);
  Model m(dir);
  Generator g(m, nullptr, 16);
  EXPECT_THROW(g.generate({3, 4}, opts(3, 1)), Error);
  EXPECT_THROW(g.generate({3, 4}, opts(3, -1)), Error);
  ModelOptions mo;
  mo.with_mtp = false;
  Model m3(make_model("v3_nomtp", tiny_v3_config(), CheckpointFormat::BF16), mo);
  Generator g3(m3, nullptr, 16);
  EXPECT_THROW(g3.generate({3, 4}, opts(3, 1)), Error);
}

// --speculative auto (infer/spec_policy.h) under a cost model the test turns: plain steps
// 1 ms, verify steps `ratio` ms, cold ones (the MTP catch-up after plain steps) 1 s, which
// must not count. Greedy output equals plain decoding whatever the policy chooses.
struct TurnedCost : SpecCostModel {
  double ratio = 1;
  double step_cost(const SpecStep& s, double) const override {
    return s.drafted == 0 ? 1e-3 : s.cold ? 1.0 : 1e-3 * ratio;
  }
};

// Short probe intervals (the runs are short), and drafting as soon as S > 1.02: with verify
// as cheap as a plain step (the memory-bound ideal) any accepted draft then pays.
GenerateOptions auto_opts(int64_t n, const SpecCostModel* cost) {
  GenerateOptions o = opts(n, 3);
  o.speculative_mode = SpecMode::Auto;
  o.speculative_policy.costs = cost;
  o.speculative_policy.probe_every = 4;
  o.speculative_policy.probe_max = 8;
  o.speculative_policy.enter = 1.02;
  return o;
}

// A 12-token vocabulary: a random model's drafts are accepted often enough to pay.
ModelConfig small_vocab_config() {
  ModelConfig c = tiny_v3_config();
  c.vocab_size = 12;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  return c;
}

// Every decode step is plain or drafting; the tokens add up (no EOS here).
void check_auto_stats(const GenerateResult& r) {
  const GenerateStats& s = r.stats;
  ASSERT_TRUE(s.speculative);
  EXPECT_EQ(s.speculation.mode, SpecMode::Auto);
  EXPECT_LE(s.spec.steps, s.decode_steps);
  EXPECT_LE(s.spec.accepted, s.spec.drafted);
  EXPECT_EQ(s.new_tokens, 1 + s.decode_steps + s.spec.accepted);
}

TEST(Speculative, AutoFollowsTheCostsAndKeepsGreedyOutput) {
  ModelConfig c = small_vocab_config();
  c.num_nextn_predict_layers = 2;
  const std::string dir = make_model("auto", c, CheckpointFormat::BF16);
  Model m(dir, one_thread());
  const int64_t kMax = 48;
  std::vector<std::vector<int32_t>> prompts, plain;
  Generator gp(m, nullptr, 128);
  for (int i = 0; i < 4; ++i) {
    prompts.push_back(ids_for(3 + 5 * i, m.vocab(), 40 + uint32_t(i)));
    gp.reset();
    plain.push_back(gp.generate(prompts.back(), opts(kMax, 0)).ids);
  }
  TurnedCost cost;
  Generator g(m, nullptr, 128);  // one policy across the calls, as in a chat
  // Verify 3x a plain step: after calibration only the probes draft.
  cost.ratio = 3;
  GenerateResult r = g.generate(prompts[0], auto_opts(kMax, &cost));
  EXPECT_EQ(r.ids, plain[0]);
  check_auto_stats(r);
  EXPECT_FALSE(r.stats.speculation.drafting) << r.stats.speculation.reason;
  EXPECT_NE(r.stats.speculation.reason.find("verify step 3.00x a plain step"), std::string::npos)
      << r.stats.speculation.reason;
  EXPECT_GT(r.stats.spec.steps, 0);                       // calibration and probes
  EXPECT_LT(r.stats.spec.steps, r.stats.decode_steps / 2);
  // Verify as cheap as a plain step: the drafts pay; the next probes see it and the policy
  // switches.
  cost.ratio = 1;
  r = g.generate(prompts[1], auto_opts(kMax, &cost));
  EXPECT_EQ(r.ids, plain[1]);
  check_auto_stats(r);
  EXPECT_TRUE(r.stats.speculation.drafting) << r.stats.speculation.reason;
  EXPECT_EQ(r.stats.speculation.switches, 1);
  EXPECT_GT(r.stats.speculation.tokens_per_verify, 1.02);
  EXPECT_LT(r.stats.speculation.verify_step_s, 2e-3);  // the 1 s cold steps left out
  std::printf("auto, verify = plain: %lld of %lld steps drafted, %.2f tokens per verify\n",
              (long long)r.stats.spec.steps, (long long)r.stats.decode_steps,
              r.stats.speculation.tokens_per_verify);
  // Expensive again: back to plain within a few steps.
  cost.ratio = 3;
  r = g.generate(prompts[2], auto_opts(kMax, &cost));
  EXPECT_EQ(r.ids, plain[2]);
  check_auto_stats(r);
  EXPECT_FALSE(r.stats.speculation.drafting);
  EXPECT_EQ(r.stats.speculation.switches, 2);
  // Every mode, the same ids: off, mtp, auto (fresh policies on the wall clock).
  for (SpecMode mode : {SpecMode::Off, SpecMode::Mtp, SpecMode::Auto}) {
    Generator ga(m, nullptr, 128);
    GenerateOptions o = opts(kMax, 3);
    o.speculative_mode = mode;
    const GenerateResult q = ga.generate(prompts[3], o);
    EXPECT_EQ(q.ids, plain[3]) << spec_mode_name(mode);
    EXPECT_EQ(q.stats.speculation.mode, mode);
    EXPECT_EQ(q.stats.speculative, mode != SpecMode::Off);
  }
}

// A chat turn after plain steps of an auto call reuses the whole cache: the plain steps kept
// their main states for module 1, so the next speculative prefill need not start back where
// module 1 last drafted.
TEST(Speculative, AutoTurnReusesTheWholeCache) {
  const std::string dir = make_model("auto_turns", tiny_v3_config(), CheckpointFormat::BF16);
  Model m(dir, one_thread());
  TurnedCost cost;
  cost.ratio = 3;  // plain after calibration
  Generator g(m, nullptr, 128);
  const auto prompt = ids_for(9, m.vocab(), 4);
  const GenerateResult a = g.generate(prompt, auto_opts(30, &cost));
  EXPECT_FALSE(a.stats.speculation.drafting);
  std::vector<int32_t> turn2 = g.history();
  turn2.insert(turn2.end(), {3, 4, 5});
  const int64_t cached = g.cached();
  const GenerateResult b = g.generate(turn2, auto_opts(10, &cost));
  EXPECT_EQ(b.stats.reused_tokens, cached);
  Generator fresh(m, nullptr, 128);
  EXPECT_EQ(b.ids, fresh.generate(turn2, opts(10, 0)).ids);
}

// Auto decoding plainly for long catches module 1 up every kMtpCatchUpRows positions (so the
// main states it needs do not pile up): its cache rows then equal a fresh computation, and
// drafting later from there gives plain decoding's ids.
TEST(Speculative, AutoCatchesModuleOneUpWhilePlain) {
  const std::string dir = make_model("auto_catchup", small_vocab_config(), CheckpointFormat::BF16);
  Model m(dir, one_thread());
  const int64_t C = 640, n1 = kMtpCatchUpRows + 60, n2 = 40;
  TurnedCost cost;
  cost.ratio = 3;
  GenerateOptions o = auto_opts(n1, &cost);
  o.speculative_policy.probe_every = o.speculative_policy.probe_max = 1000;  // no probe
  Generator g(m, nullptr, C);
  const auto prompt = ids_for(5, m.vocab(), 8);
  const GenerateResult a = g.generate(prompt, o);
  ASSERT_FALSE(a.stats.speculation.drafting);
  const int64_t m1 = g.mtp_valid()[0], n = g.cached();
  EXPECT_GE(m1, kMtpCatchUpRows);                  // caught up at least once while plain
  EXPECT_LT(n - m1, kMtpCatchUpRows);
  // Module 1's rows [0, m1) against a fresh main forward + module 1 over the history.
  const std::vector<int32_t> hist = g.history();
  const int64_t H = m.config().hidden_size, L = m.config().num_hidden_layers;
  KvCache fresh = m.new_cache(C);
  ForwardScratch s;
  std::vector<float> h0(size_t(n * H));
  ForwardArgs fa;
  fa.ids = hist.data();
  fa.T = n;
  fa.hidden = h0.data();
  m.forward(fresh, fa, s);
  MtpArgs b;
  b.k = 1;
  b.ids = hist.data() + 1;
  b.h_prev = h0.data();
  b.T = m1;
  m.mtp_forward(fresh, b, s);
  const KvCache& kc = g.cache();
  const float* got = reinterpret_cast<const float*>(kc.data.data()) + L * kc.capacity * kc.row;
  const float* want = reinterpret_cast<const float*>(fresh.data.data()) + L * fresh.capacity * fresh.row;
  double mag = 0, diff = 0;
  for (int64_t i = 0; i < m1 * kc.row; ++i) {
    mag = std::max(mag, double(std::fabs(want[i])));
    diff = std::max(diff, double(std::fabs(got[i] - want[i])));
  }
  EXPECT_GT(mag, 0.0);
  EXPECT_LT(diff, 1e-3 * std::max(1.0, mag));
  // Drafting from here (verify as cheap as plain) continues as plain decoding would.
  cost.ratio = 1;
  GenerateOptions o2 = auto_opts(n2, &cost);
  o2.speculative_policy = o.speculative_policy;
  o2.speculative_policy.probe_every = o2.speculative_policy.probe_max = 4;
  const GenerateResult c = g.generate(hist, o2);
  EXPECT_GT(c.stats.spec.steps, 0);
  Generator ref(m, nullptr, C);
  EXPECT_EQ(c.ids, ref.generate(hist, opts(n2, 0)).ids);
}

// Auto needs no MTP module (then it is plain decoding), and keeps a seed's sampled output
// fixed by decoding sampled requests plainly; mtp on such a model stays an error.
TEST(Speculative, AutoWithoutMtpOrWhenSamplingIsPlain) {
  const std::string dir = make_model("auto_nomtp", tiny_v2_config(), CheckpointFormat::BF16);
  Model m(dir, one_thread());
  Generator g(m, nullptr, 32);
  GenerateOptions o = opts(5, 3);
  o.speculative_mode = SpecMode::Auto;
  const GenerateResult r = g.generate({3, 4}, o);
  EXPECT_FALSE(r.stats.speculative);
  EXPECT_EQ(r.stats.speculation.mode, SpecMode::Auto);
  EXPECT_FALSE(r.stats.speculation.drafting);
  EXPECT_NE(r.stats.speculation.reason.find("MTP"), std::string::npos) << r.stats.speculation.reason;
  g.reset();
  EXPECT_EQ(r.ids, g.generate({3, 4}, opts(5, 0)).ids);
  o.speculative_mode = SpecMode::Mtp;
  EXPECT_THROW(g.generate({3, 4}, o), Error);

  Model m3(make_model("auto_sampled", tiny_v3_config(), CheckpointFormat::BF16), one_thread());
  Generator g3(m3, nullptr, 32);
  GenerateOptions so = opts(6, 3);
  so.speculative_mode = SpecMode::Auto;
  so.sampling.temperature = 0.8f;
  so.sampling.seed = 5;
  const GenerateResult s = g3.generate({3, 4}, so);
  EXPECT_FALSE(s.stats.speculative);
  EXPECT_NE(s.stats.speculation.reason.find("seed"), std::string::npos) << s.stats.speculation.reason;
  g3.reset();
  EXPECT_EQ(s.ids, g3.generate({3, 4}, [&] { GenerateOptions p = so; p.speculative_draft = 0; return p; }()).ids);
}

struct CliRun {
  int rc;
  std::string out, err;
};
CliRun run_cli(const std::string& args) {
  const std::string base = fs::temp_directory_path() / ("dsv3_spec_cli_" + std::to_string(::getpid()));
  CliRun r;
  r.rc = std::system((std::string(std::getenv("DSV3_BIN")) + " " + args + " </dev/null >" + base +
                      ".out 2>" + base + ".err").c_str());
  std::ifstream fo(base + ".out"), fe(base + ".err");
  r.out.assign(std::istreambuf_iterator<char>(fo), {});
  r.err.assign(std::istreambuf_iterator<char>(fe), {});
  fs::remove(base + ".out");
  fs::remove(base + ".err");
  return r;
}

TEST(Speculative, GenerateCommand) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string dir = make_model("cli", tiny_v3_config(), CheckpointFormat::FP8);
  const std::string base = "generate --model " + dir + " --ids 3,4,5,6 --max-new-tokens 9 --threads 1";
  // A fixed two drafts per step (--draft-min-p 0: the default 0.2 would stop after the first
  // on a random model, whose drafts are never confident).
  const CliRun r = run_cli(base + " --speculative mtp --draft 2 --draft-min-p 0 --compare --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  const auto& sp = j["stats"]["speculative"];
  EXPECT_EQ(sp["acceptance_by_position"].size(), 2u);
  EXPECT_LE(sp["accepted"].get<int64_t>(), sp["drafted"].get<int64_t>());
  EXPECT_EQ(sp["steps"].get<int64_t>(), j["stats"]["decode_steps"].get<int64_t>());
  EXPECT_NEAR(sp["drafts_per_step"].get<double>(),
              double(sp["drafted"].get<int64_t>()) / double(sp["steps"].get<int64_t>()), 1e-9);
  EXPECT_TRUE(j["stats"]["compare"]["same_ids"].get<bool>());
  EXPECT_GT(j["stats"]["compare"]["speedup"].get<double>(), 0.0);
  const CliRun plain = run_cli(base + " --json");
  ASSERT_EQ(plain.rc, 0) << plain.err;
  EXPECT_EQ(nlohmann::json::parse(plain.out)["ids"], j["ids"]);
  // Streaming: the speculative line on stderr (default: up to 3 drafts, cut off at 0.2).
  const CliRun s = run_cli(base + " --speculative mtp");
  ASSERT_EQ(s.rc, 0) << s.err;
  EXPECT_NE(s.err.find("[speculative:"), std::string::npos) << s.err;
  // Adaptive drafting from the command line: the same ids.
  const CliRun ad = run_cli(base + " --speculative mtp --draft 3 --draft-min-p 0.004 --json");
  ASSERT_EQ(ad.rc, 0) << ad.err;
  EXPECT_EQ(nlohmann::json::parse(ad.out)["ids"], j["ids"]);
  // auto (the default) and off: which mode ran and why; the same ids.
  for (const char* mode : {"", " --speculative auto", " --speculative off", " --speculative none"}) {
    const CliRun a = run_cli(base + mode + " --json");
    ASSERT_EQ(a.rc, 0) << mode << ": " << a.err;
    const auto k = nlohmann::json::parse(a.out);
    EXPECT_EQ(k["ids"], j["ids"]) << mode;
    const auto& sp = k["stats"]["speculation"];
    const bool off = std::string(mode).find("auto") == std::string::npos && *mode;
    EXPECT_EQ(sp["mode"], off ? "off" : "auto") << mode;
    EXPECT_TRUE(sp["chose"] == "plain" || sp["chose"] == "mtp") << sp;
    EXPECT_FALSE(sp["reason"].get<std::string>().empty()) << sp;
    for (const char* key : {"plain_step_ms", "verify_step_ms", "acceptance", "tokens_per_verify",
                            "est_speedup", "plain_steps", "verify_steps"})
      EXPECT_TRUE(sp.contains(key)) << key;
    EXPECT_EQ(sp["plain_steps"].get<int64_t>() + sp["verify_steps"].get<int64_t>(),
              k["stats"]["decode_steps"].get<int64_t>());
    EXPECT_EQ(k["stats"].contains("speculative"), !off) << mode;
  }
  EXPECT_EQ(nlohmann::json::parse(run_cli(base + " --speculative mtp --json").out)["stats"]["speculation"]["mode"],
            "mtp");
  // auto with --compare: plain beside auto, identical ids.
  const CliRun ac = run_cli(base + " --compare --json");
  ASSERT_EQ(ac.rc, 0) << ac.err;
  EXPECT_TRUE(nlohmann::json::parse(ac.out)["stats"]["compare"]["same_ids"].get<bool>());
  // Streaming under auto: its choice on stderr.
  const CliRun as = run_cli(base);
  ASSERT_EQ(as.rc, 0) << as.err;
  EXPECT_NE(as.err.find("[speculative auto: chose "), std::string::npos) << as.err;
  for (const char* bad : {" --speculative eagle", " --speculative mtp --draft 99",
                          " --speculative off --compare", " --speculative off --draft 2",
                          " --speculative none --draft-min-p 0.5", " --speculative mtp --draft-min-p 1.5",
                          " --draft-min-p -0.1"}) {
    const CliRun e = run_cli(base + bad);
    EXPECT_NE(e.rc, 0) << bad;
    EXPECT_NE(e.err.find("error"), std::string::npos) << bad << ": " << e.err;
  }
  // A bad mode names the accepted values.
  const CliRun e = run_cli(base + " --speculative foo");
  EXPECT_NE(e.rc, 0);
  for (const char* want : {"--speculative", "'foo'", "'auto'", "'mtp'", "'off'"})
    EXPECT_NE(e.err.find(want), std::string::npos) << want << ": " << e.err;
  // A model without MTP: auto is plain decoding, mtp an error.
  const std::string v2 = make_model("cli_v2", tiny_v2_config(), CheckpointFormat::BF16);
  const std::string v2base = "generate --model " + v2 + " --ids 3,4,5 --max-new-tokens 4 --threads 1";
  const CliRun nv = run_cli(v2base + " --json");
  ASSERT_EQ(nv.rc, 0) << nv.err;
  const auto nj = nlohmann::json::parse(nv.out)["stats"]["speculation"];
  EXPECT_EQ(nj["mode"], "auto");
  EXPECT_EQ(nj["chose"], "plain");
  EXPECT_NE(run_cli(v2base + " --speculative mtp").rc, 0);
}

}  // namespace
