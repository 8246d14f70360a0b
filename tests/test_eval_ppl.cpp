// Strided perplexity (eval/perplexity.h) on a tiny random checkpoint, against direct
// computations: stride = L is the token-weighted mean of the per-window losses of forwards
// we run ourselves; stride < L scores each token once, and token p's loss is that of a
// forward over exactly the context the plan gives it. Plus the window plan and bad options.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include "core/check.h"
#include "eval/perplexity.h"
#include "io/random_checkpoint.h"
#include "kernels/softmax.h"
#include "model/model.h"
#include "model_test_util.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using dsv3::testing::ids_for;

Model& tiny_model() {
  static const std::string dir = [] {
    const fs::path p = fs::temp_directory_path() / ("dsv3_eval_ppl_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(fs::temp_directory_path() / ("dsv3_eval_ppl_" + std::to_string(::getpid())), ec);
    });
    RandomCheckpointOptions o;
    o.format = CheckpointFormat::F32;
    o.seed = 5;
    o.with_mtp = false;
    write_random_checkpoint(tiny_v3_config(), p.string(), o);
    return p.string();
  }();
  static Model m(dir, ModelOptions{.with_mtp = false});
  return m;
}

// -log p(ids[b + t + 1] | ids[b .. b + t]) for t in [0, e - b - 1): one forward, all logits.
std::vector<double> window_nll(Model& m, const std::vector<int32_t>& ids, int64_t b, int64_t e) {
  const int64_t T = e - b, V = m.vocab();
  std::vector<float> logits(static_cast<size_t>(T * V));
  KvCache cache = m.new_cache(T);
  ForwardScratch s;
  ForwardArgs a;
  a.ids = ids.data() + b;
  a.T = T;
  a.logits = logits.data();
  m.forward(cache, a, s);
  std::vector<double> out;
  for (int64_t t = 0; t + 1 < T; ++t) {
    const float* row = logits.data() + t * V;
    out.push_back(double(row_logsumexp(row, V)) - double(row[ids[size_t(b + t + 1)]]));
  }
  return out;
}

TEST(PerplexityPlan, StrideBelowLScoresEveryTokenOnce) {
  for (const auto& [n, L, S] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {100, 32, 12}, {100, 32, 31}, {100, 32, 1}, {33, 32, 16}, {10, 32, 8}, {64, 32, 16}}) {
    const auto plan = eval::plan_windows(n, L, S);
    std::vector<int> scored(static_cast<size_t>(n), 0);
    for (const auto& w : plan) {
      EXPECT_LE(w.end - w.begin, L);
      EXPECT_EQ(w.begin % S, 0);
      EXPECT_GT(w.score_from, w.begin);
      // Every scored token has at least L - S tokens of context (the first window: all it has).
      if (w.begin > 0) {
        EXPECT_GE(w.score_from - w.begin, L - S);
      }
      for (int64_t p = w.score_from; p < w.end; ++p) ++scored[size_t(p)];
    }
    EXPECT_EQ(plan.back().end, n);
    EXPECT_EQ(scored[0], 0);
    for (int64_t p = 1; p < n; ++p) EXPECT_EQ(scored[size_t(p)], 1) << n << " " << L << " " << S << " p " << p;
  }
}

TEST(PerplexityPlan, StrideLIsDisjointWindows) {
  const auto plan = eval::plan_windows(100, 32, 32);  // [0,32) [32,64) [64,96) [96,100)
  ASSERT_EQ(plan.size(), 4u);
  for (size_t k = 0; k < plan.size(); ++k) {
    EXPECT_EQ(plan[k].begin, int64_t(k) * 32);
    EXPECT_EQ(plan[k].score_from, plan[k].begin + 1);
  }
  EXPECT_EQ(plan.back().end, 100);
  // A last window of one token scores nothing and is left out.
  EXPECT_EQ(eval::plan_windows(97, 32, 32).size(), 3u);
  EXPECT_EQ(eval::plan_windows(2, 32, 0).size(), 1u);  // stride 0 = L
}

TEST(Perplexity, StrideLEqualsMeanOfWindowLosses) {
  Model& m = tiny_model();
  const std::vector<int32_t> ids = ids_for(150, m.vocab(), 42);
  const int64_t L = 48;
  double sum = 0;
  int64_t count = 0;
  for (int64_t b = 0; b < int64_t(ids.size()); b += L) {
    const int64_t e = std::min<int64_t>(b + L, int64_t(ids.size()));
    if (e - b < 2) continue;
    for (double v : window_nll(m, ids, b, e)) sum += v, ++count;
  }
  eval::PerplexityOptions o;
  o.seq_len = L;
  o.head_chunk = 7;  // chunks that do not divide the window
  const eval::PerplexityResult r = eval::strided_perplexity(m, ids, o);
  EXPECT_EQ(r.windows, 4);
  EXPECT_EQ(r.tokens_scored, count);
  EXPECT_EQ(count, 150 - 4);
  EXPECT_NEAR(r.nll_sum, sum, 1e-6 * std::abs(sum) + 1e-6);
  EXPECT_NEAR(r.perplexity(), std::exp(sum / double(count)), 1e-5 * r.perplexity());
  // A random model over 300 ids sits near log(300) nats.
  EXPECT_GT(r.mean_nll(), 0.5 * std::log(300.0));
  EXPECT_LT(r.mean_nll(), 2.0 * std::log(300.0));
}

TEST(Perplexity, StrideBelowLScoresEachTokenOnceWithItsContext) {
  Model& m = tiny_model();
  const std::vector<int32_t> ids = ids_for(90, m.vocab(), 9);
  const int64_t L = 32, S = 12, n = int64_t(ids.size());
  // Token p is scored by the first window [kS, kS + L) that holds it with some context
  // before it; its loss is that of a forward over ids[kS .. p) alone.
  double sum = 0;
  for (int64_t p = 1; p < n; ++p) {
    int64_t b = 0;
    while (b + L <= p) b += S;
    ASSERT_LT(b, p);
    sum += window_nll(m, ids, b, p + 1).back();
  }
  eval::PerplexityOptions o;
  o.seq_len = L;
  o.stride = S;
  const eval::PerplexityResult r = eval::strided_perplexity(m, ids, o);
  EXPECT_EQ(r.tokens_scored, n - 1);
  EXPECT_NEAR(r.nll_sum, sum, 1e-5 * std::abs(sum));

  // With more context per token the result differs from the disjoint windows' (not a
  // relabelling of the same numbers).
  o.stride = L;
  const eval::PerplexityResult d = eval::strided_perplexity(m, ids, o);
  EXPECT_NE(d.tokens_scored, r.tokens_scored);
}

TEST(Perplexity, BadOptionsAreRefused) {
  Model& m = tiny_model();
  const std::vector<int32_t> ids = ids_for(50, m.vocab(), 1);
  const auto expect_error = [&](const std::vector<int32_t>& x, int64_t L, int64_t S, const char* part) {
    eval::PerplexityOptions o;
    o.seq_len = L;
    o.stride = S;
    try {
      eval::strided_perplexity(m, x, o);
      ADD_FAILURE() << "no error; expected '" << part << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error(ids, 1, 0, "--seq-len");
  expect_error(ids, 16, 17, "--stride");
  expect_error(ids, 16, -1, "--stride");
  expect_error(ids, 2000, 0, "max_position_embeddings");  // tiny: 1024
  expect_error({5}, 16, 0, "at least 2");
  expect_error({5, 300}, 16, 0, "vocabulary");
}

}  // namespace
}  // namespace dsv3
