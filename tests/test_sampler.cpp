// Sampler: parameter/logit checks, greedy, the kept set against an independent double-precision
// reference (full stable sort), draws against their distributions by chi-square, the
// speculative accept rule's output distribution equal to the target p, seed reproducibility.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

#include "core/check.h"
#include "infer/sampler.h"
#include "ops_testing.h"

namespace dsv3 {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Every statistical test below allows a false failure with probability ≈ 1e-6: its
// statistic is compared to the (1 − 1e-6) quantile of its chi-square distribution, computed
// here (not pasted) from the survival function
//   Q(x; 1) = erfc(√(x/2)),  Q(x; 2) = e^{−x/2},  Q(x; k+2) = Q(x; k) + (x/2)^{k/2} e^{−x/2} / Γ(k/2+1)
// and bisection. The draws use fixed seeds, so the tests are deterministic anyway; the bound
// says how unlucky a seed would have to be to fail a correct sampler.
constexpr double kFalseFailure = 1e-6;

double chi2_sf(double x, int dof) {
  double q = dof % 2 ? std::erfc(std::sqrt(x / 2)) : std::exp(-x / 2);
  for (int k = 2 - dof % 2; k < dof; k += 2)
    q += std::exp(0.5 * k * std::log(x / 2) - x / 2 - std::lgamma(0.5 * k + 1));
  return q;
}

double chi2_threshold(int dof) {
  double lo = 0, hi = 1000;
  for (int it = 0; it < 200; ++it) {
    const double mid = 0.5 * (lo + hi);
    (chi2_sf(mid, dof) > kFalseFailure ? lo : hi) = mid;
  }
  return hi;
}

// Pearson chi-square of counts against probs (n draws). Cells with probability 0 must stay
// empty (checked exactly); the others give dof = cells − 1.
void expect_matches(const std::vector<int64_t>& counts, const std::vector<double>& probs,
                    int64_t n, const char* what) {
  ASSERT_EQ(counts.size(), probs.size());
  double stat = 0;
  int cells = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0) {
      EXPECT_EQ(counts[i], 0) << what << ": drew token " << i << " of probability 0";
      continue;
    }
    const double e = probs[i] * double(n);
    ASSERT_GT(e, 5) << what << ": cell too small for the chi-square approximation";
    stat += (double(counts[i]) - e) * (double(counts[i]) - e) / e;
    ++cells;
  }
  if (cells < 2) return;
  EXPECT_LT(stat, chi2_threshold(cells - 1)) << what << ": " << cells - 1 << " dof";
}

// The sampler's distribution, written independently: exp and sums in double, a full stable
// sort for top-k (by logit) and top-p (by probability).
std::vector<double> reference_probs(const std::vector<float>& l, const SamplingParams& sp) {
  const size_t V = l.size();
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const bool na = std::isnan(l[size_t(a)]), nb = std::isnan(l[size_t(b)]);
    if (na || nb) return !na && nb;
    return l[size_t(a)] > l[size_t(b)];
  });
  std::vector<double> p(V, 0.0);
  if (sp.temperature == 0) {
    p[size_t(order[0])] = 1;
    return p;
  }
  const double m = l[size_t(order[0])];
  std::vector<double> w(V, 0.0);
  for (size_t i = 0; i < V; ++i)
    if (!std::isnan(l[i])) w[i] = std::exp((double(l[i]) - m) / sp.temperature);
  if (sp.top_k > 0 && size_t(sp.top_k) < V) order.resize(size_t(sp.top_k));
  double total = 0;
  for (int32_t i : order) total += w[size_t(i)];
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return w[size_t(a)] > w[size_t(b)]; });
  size_t n = order.size();
  double cum = 0;
  for (size_t j = 0; j < order.size(); ++j) {
    cum += w[size_t(order[j])];
    if (cum >= double(sp.top_p) * total) {
      n = j + 1;
      break;
    }
  }
  double kept = 0;
  for (size_t j = 0; j < n; ++j) kept += w[size_t(order[j])];
  for (size_t j = 0; j < n; ++j) p[size_t(order[j])] = w[size_t(order[j])] / kept;
  return p;
}

std::vector<float> random_logits(size_t V, uint64_t seed, float spread) {
  Rng rng(seed);
  std::vector<float> l(V);
  for (float& x : l) x = spread * (2 * rng.uniform() - 1);
  return l;
}

SamplingParams params(float T, int64_t k, float p, uint64_t seed = 1) {
  SamplingParams sp;
  sp.temperature = T;
  sp.top_k = k;
  sp.top_p = p;
  sp.seed = seed;
  return sp;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Sampler, ParametersAreValidatedByName) {
  EXPECT_NE(error_of([] { Sampler s(params(-1, 0, 1)); }).find("temperature"), std::string::npos);
  EXPECT_NE(error_of([] { Sampler s(params(kNaN, 0, 1)); }).find("temperature"), std::string::npos);
  EXPECT_NE(error_of([] { Sampler s(params(kInf, 0, 1)); }).find("temperature"), std::string::npos);
  EXPECT_NE(error_of([] { Sampler s(params(1, -1, 1)); }).find("top_k"), std::string::npos);
  EXPECT_NE(error_of([] { Sampler s(params(1, 0, 0)); }).find("top_p"), std::string::npos);
  EXPECT_NE(error_of([] { Sampler s(params(1, 0, 1.5f)); }).find("top_p"), std::string::npos);
  EXPECT_NE(error_of([] { Sampler s(params(1, 0, kNaN)); }).find("top_p"), std::string::npos);
  EXPECT_NO_THROW(Sampler s(params(0, 0, 1e-9f)));
}

TEST(Sampler, BadLogitsAreErrors) {
  for (float T : {0.0f, 1.0f}) {
    Sampler s(params(T, 0, 0.9f));
    std::vector<float> probs;
    const std::vector<float> nan(4, kNaN), ninf(4, -kInf);
    const std::vector<float> mixed = {kNaN, -kInf, kNaN};
    const std::vector<float> pinf = {0.f, kInf, 1.f};
    const float one = 0;
    EXPECT_THROW(s.sample(&one, 0), Error);
    EXPECT_THROW(s.sample(nullptr, 3), Error);
    EXPECT_THROW(s.sample(nan.data(), 4), Error);
    EXPECT_THROW(s.sample(ninf.data(), 4), Error);
    EXPECT_THROW(s.sample(mixed.data(), 3), Error);
    EXPECT_THROW(s.sample(pinf.data(), 3), Error);
    EXPECT_THROW(s.distribution(nan.data(), 4, &probs), Error);
    EXPECT_THROW(s.distribution(&one, -1, &probs), Error);
  }
}

TEST(Sampler, GreedyIsArgmaxLowerIndexOnTiesNeverNaN) {
  Sampler s(params(0, 3, 0.5f, 7));
  const std::vector<float> l = {kNaN, 1.f, 3.f, -kInf, 3.f, kNaN, 2.f};
  EXPECT_EQ(s.sample(l.data(), 7), 2);
  std::vector<float> probs;
  s.distribution(l.data(), 7, &probs);
  EXPECT_EQ(probs, std::vector<float>({0, 0, 1, 0, 0, 0, 0}));
  const std::vector<float> one_finite = {kNaN, -kInf, -5.f};
  EXPECT_EQ(s.sample(one_finite.data(), 3), 2);
  // Vocabulary-sized row: the same as a plain scan; greedy consumes no randomness, so a
  // sampler that drew nothing is still at its first uniform.
  const auto big = random_logits(129280, 3, 10);
  const int64_t expect = std::max_element(big.begin(), big.end()) - big.begin();
  for (int rep = 0; rep < 3; ++rep) EXPECT_EQ(s.sample(big.data(), int64_t(big.size())), expect);
  EXPECT_EQ(s.uniform(), Rng(7).uniform());
}

TEST(Sampler, RngIsReproducibleAndUniform) {
  Rng a(42), b(42), c(43);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.next();
    EXPECT_EQ(x, b.next());
    differs |= x != c.next();
  }
  EXPECT_TRUE(differs);
  // 16 equal bins of uniform() and uniform_double(): chi-square with 15 dof.
  const int64_t n = 160000;
  std::vector<int64_t> cf(16, 0), cd(16, 0);
  for (int64_t i = 0; i < n; ++i) {
    const float u = a.uniform();
    const double ud = a.uniform_double();
    ASSERT_TRUE(u >= 0 && u < 1 && ud >= 0 && ud < 1);
    ++cf[size_t(u * 16)];
    ++cd[size_t(ud * 16)];
  }
  expect_matches(cf, std::vector<double>(16, 1.0 / 16), n, "uniform()");
  expect_matches(cd, std::vector<double>(16, 1.0 / 16), n, "uniform_double()");
}

TEST(Sampler, SameSeedSameTokensOnEveryIsa) {
  const auto l = random_logits(129280, 5, 8);
  const auto sp = params(0.8f, 0, 0.95f, 1234);
  std::vector<int32_t> first;
  for (Isa isa : testing::kIsas) {  // top-k dispatches on the ISA; tokens must not
    testing::IsaScope scope(isa);
    for (int64_t k : {int64_t(0), int64_t(40)}) {
      SamplingParams p = sp;
      p.top_k = k;
      Sampler a(p);
      std::vector<int32_t> tokens;
      for (int i = 0; i < 50; ++i) tokens.push_back(a.sample(l.data(), int64_t(l.size())));
      first.insert(first.end(), tokens.begin(), tokens.end());
    }
  }
  ASSERT_EQ(first.size(), 300u);
  for (size_t i = 100; i < 300; ++i) EXPECT_EQ(first[i], first[i % 100]) << i;
  Sampler other(params(0.8f, 0, 0.95f, 1235));
  int same = 0;
  for (int i = 0; i < 50; ++i) same += other.sample(l.data(), int64_t(l.size())) == first[size_t(i)];
  EXPECT_LT(same, 50);
}

// Kept set and probabilities against the double reference. The sampler computes
// w = exp((l − m)/T) in float: |z| ≤ 2·spread/T ≤ 64 here, so z carries ≤ 1 ulp relative
// error (≤ 64·6e-8 absolute) and exp ≤ 1 ulp more: w is within ~5e-6 relative; sums in
// double add nothing visible. Tolerance 2e-5 relative (plus 1e-12 absolute for underflowing
// tails). Logits are multiples of 1/64, so equal logits tie exactly (testing the
// lower-index-first rule) and distinct ones differ in w by ≥ 0.2% — far beyond rounding —
// so the float and double orders agree and kept sets can be compared exactly.
TEST(Sampler, DistributionMatchesReference) {
  struct Case {
    size_t V;
    float spread, T;
    int64_t k;
    float p;
  };
  const Case cases[] = {
      {1, 1, 1, 0, 1},        {7, 2, 1, 0, 1},       {7, 2, 0.5f, 3, 1},    {7, 2, 2, 0, 0.6f},
      {8, 3, 1, 5, 0.7f},     {8, 3, 1, 8, 0.99f},   {8, 3, 1, 11, 0.5f},   {1000, 4, 1, 0, 0.9f},
      {1000, 4, 0.25f, 50, 1}, {129280, 8, 1, 0, 0.9f}, {129280, 8, 4, 0, 0.8f},
      {129280, 8, 1, 100, 0.95f}, {129280, 1, 8, 0, 0.999f}, {129280, 8, 0.5f, 0, 1e-7f},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "V=" << c.V << " T=" << c.T << " k=" << c.k << " p=" << c.p);
    auto l = random_logits(c.V, c.V + 11, c.spread);
    for (float& x : l) x = std::round(x * 64) / 64;
    const auto sp = params(c.T, c.k, c.p);
    const auto ref = reference_probs(l, sp);
    Sampler s(sp);
    std::vector<float> probs;
    s.distribution(l.data(), int64_t(c.V), &probs);
    ASSERT_EQ(probs.size(), c.V);
    double sum = 0;
    for (size_t i = 0; i < c.V; ++i) {
      ASSERT_EQ(probs[i] == 0, ref[i] == 0) << "kept set differs at token " << i;
      ASSERT_NEAR(probs[i], ref[i], 2e-5 * ref[i] + 1e-12) << "token " << i;
      sum += probs[i];
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

TEST(Sampler, TopPEdgeCases) {
  const std::vector<float> l = {0.5f, 2.f, -1.f, 2.f, kNaN, -kInf, 1.f};
  std::vector<float> probs;
  // p = 1 keeps every token of nonzero probability (NaN and −inf have none).
  Sampler all(params(1, 0, 1));
  all.distribution(l.data(), 7, &probs);
  for (size_t i = 0; i < 7; ++i) EXPECT_EQ(probs[i] > 0, i != 4 && i != 5) << i;
  // Tiny p keeps exactly one token: the most probable, the lower index on a tie.
  Sampler one(params(1, 0, 1e-9f, 3));
  one.distribution(l.data(), 7, &probs);
  EXPECT_EQ(probs, std::vector<float>({0, 1, 0, 0, 0, 0, 0}));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(one.sample(l.data(), 7), 1);
  // Equal logits: top_p = 0.5 of 4 needs exactly 2 tokens, the lower indices.
  const std::vector<float> flat(4, 3.f);
  Sampler half(params(1, 0, 0.5f));
  half.distribution(flat.data(), 4, &probs);
  EXPECT_EQ(probs, std::vector<float>({0.5f, 0.5f, 0, 0}));
  // top_k = 1 is greedy whatever the temperature.
  Sampler k1(params(5, 1, 1, 9));
  for (int i = 0; i < 100; ++i) EXPECT_EQ(k1.sample(l.data(), 7), 1);
}

// Draws from sample() against the reference distribution, 200k draws per case.
TEST(Sampler, DrawsFollowTheDistribution) {
  struct Case {
    float T;
    int64_t k;
    float p;
  };
  const Case cases[] = {{1, 0, 1}, {0.7f, 5, 1}, {1.3f, 0, 0.8f}, {1, 6, 0.9f}, {2, 0, 1}};
  const int64_t n = 200000;
  uint64_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.T << " k=" << c.k << " p=" << c.p);
    const auto l = random_logits(8, seed, 1.5f);
    const auto sp = params(c.T, c.k, c.p, seed++);
    Sampler s(sp);
    std::vector<int64_t> counts(8, 0);
    for (int64_t i = 0; i < n; ++i) ++counts[size_t(s.sample(l.data(), 8))];
    expect_matches(counts, reference_probs(l, sp), n, "sample");
  }
}

// A distribution on V tokens: weights in [0.05, 1), zeros at the listed tokens, normalised.
std::vector<float> make_dist(size_t V, Rng* rng, std::initializer_list<size_t> zeros) {
  std::vector<float> p(V);
  for (float& x : p) x = 0.05f + 0.95f * rng->uniform();
  for (size_t z : zeros) p[z] = 0;
  double total = 0;
  for (float x : p) total += x;
  for (float& x : p) x = float(x / total);
  return p;
}

TEST(Sampler, SampleFromFollowsProbsAndChecksThem) {
  Rng r(77);
  const auto p = make_dist(6, &r, {2});
  Sampler s(params(1, 0, 1, 78));
  const int64_t n = 200000;
  std::vector<int64_t> counts(6, 0);
  for (int64_t i = 0; i < n; ++i) ++counts[size_t(sample_from(p.data(), 6, s))];
  expect_matches(counts, std::vector<double>(p.begin(), p.end()), n, "sample_from");
  const std::vector<float> zero(3, 0.f), neg = {0.5f, -0.1f, 0.6f}, nan = {0.5f, kNaN};
  EXPECT_THROW(sample_from(zero.data(), 3, s), Error);
  EXPECT_THROW(sample_from(neg.data(), 3, s), Error);
  EXPECT_THROW(sample_from(nan.data(), 2, s), Error);
  EXPECT_THROW(sample_from(p.data(), 0, s), Error);
}

// The accept rule's guarantee: x ~ q, then accept-or-resample, gives tokens distributed as
// p. Also the acceptance count against its binomial law: P(accept) = Σ min(p, q)
// (Leviathan et al. 2023, §3.5), z² compared with the 1-dof chi-square threshold.
TEST(Sampler, SpeculativeAcceptOutputIsDistributedAsTarget) {
  Rng r(2023);
  struct Case {
    std::vector<float> p, q;
    const char* what;
  };
  std::vector<Case> cases;
  {
    auto p = make_dist(6, &r, {}), q = make_dist(6, &r, {});
    cases.push_back({p, q, "random p, q"});
  }
  {
    auto p = make_dist(7, &r, {}), q = make_dist(7, &r, {0, 4});
    cases.push_back({p, q, "q misses tokens p has"});
  }
  {
    auto p = make_dist(5, &r, {1, 3}), q = make_dist(5, &r, {});
    cases.push_back({p, q, "p misses tokens q has"});
  }
  {
    auto p = make_dist(8, &r, {});
    cases.push_back({p, p, "p = q"});
  }
  {
    std::vector<float> p(5, 0.f);
    p[3] = 1;
    cases.push_back({p, make_dist(5, &r, {}), "greedy target"});
  }
  const int64_t n = 200000;
  uint64_t seed = 500;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const int64_t V = int64_t(c.p.size());
    Sampler s(params(1, 0, 1, seed++));
    std::vector<int64_t> counts(size_t(V), 0);
    int64_t accepted = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t x = sample_from(c.q.data(), V, s);
      const SpecDecision d = speculative_accept(x, c.p.data(), c.q.data(), V, s);
      if (d.accepted) {
        ASSERT_EQ(d.token, x);
        ++accepted;
      } else {
        ASSERT_NE(d.token, x) << "a rejected token was redrawn (its residual is zero)";
      }
      ++counts[size_t(d.token)];
    }
    expect_matches(counts, std::vector<double>(c.p.begin(), c.p.end()), n, "speculative output");
    double alpha = 0;
    for (int64_t i = 0; i < V; ++i) alpha += std::min(double(c.p[size_t(i)]), double(c.q[size_t(i)]));
    if (alpha > 1 - 1e-6) {
      EXPECT_GE(accepted, n - 1) << "p = q must accept (up to float rounding of p/q)";
    } else {
      const double z = (double(accepted) - double(n) * alpha) / std::sqrt(double(n) * alpha * (1 - alpha));
      EXPECT_LT(z * z, chi2_threshold(1)) << "acceptance " << accepted << " of " << n
                                          << ", expected rate " << alpha;
    }
  }
}

TEST(Sampler, SpeculativeAcceptChecksInputs) {
  Sampler s(params(1, 0, 1));
  const std::vector<float> p = {0.5f, 0.5f}, q = {0.25f, 0.75f}, bad = {kNaN, 1.f};
  EXPECT_THROW(speculative_accept(2, p.data(), q.data(), 2, s), Error);
  EXPECT_THROW(speculative_accept(-1, p.data(), q.data(), 2, s), Error);
  EXPECT_THROW(speculative_accept(0, bad.data(), q.data(), 2, s), Error);
  EXPECT_THROW(speculative_accept(0, p.data(), q.data(), 0, s), Error);
  // p[x] ≥ q[x]: always accepted.
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(speculative_accept(0, p.data(), q.data(), 2, s).accepted);
}

}  // namespace
}  // namespace dsv3
