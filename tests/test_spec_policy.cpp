// The `--speculative auto` policy (infer/spec_policy.h) under cost models of the test's own,
// so every decision is deterministic: it drafts where the drafts pay for the verify step and
// decodes plainly where they do not, follows a change of acceptance both ways, does not flap
// inside its hysteresis band, keeps batch sizes apart, and ignores the cost of cold steps.
// The engines that use it (generate, serve) are checked in test_speculative and
// test_serve_engine; here only the decisions.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "core/check.h"
#include "infer/spec_policy.h"

namespace dsv3 {
namespace {

// Plain step: 1 ms per sequence; a verify step: `ratio` ms per sequence (drafting included);
// a cold one `cold_ms` (the MTP catch-up over a plain stretch).
struct RatioCost : SpecCostModel {
  double ratio = 1;
  double cold_ms = 0;
  double step_cost(const SpecStep& s, double) const override {
    if (s.drafted == 0) return 1e-3 * double(s.seqs);
    return 1e-3 * double(s.seqs) * (s.cold ? cold_ms : ratio);
  }
};

// One draft per step for one sequence; acceptance from a fixed pattern (`rate` of the steps,
// spread evenly), so runs are reproducible.
struct Driver {
  SpecPolicy& p;
  int64_t n = 0, drafting_steps = 0;
  bool last_plain = true;
  void run(int64_t steps, double rate) {
    for (int64_t i = 0; i < steps; ++i, ++n) {
      SpecStep s;
      if (p.draft(1)) {
        s.drafted = 1;
        // Accept when the fractional part of n·rate wraps: exactly `rate` on average.
        s.accepted = int64_t(double(n + 1) * rate) > int64_t(double(n) * rate);
        s.cold = last_plain;
        ++drafting_steps;
        last_plain = false;
      } else {
        last_plain = true;
      }
      p.record(s, 0.0);
    }
  }
};

TEST(SpecPolicy, ParsesModesAndNamesTheAcceptedValues) {
  EXPECT_EQ(parse_spec_mode("auto"), SpecMode::Auto);
  EXPECT_EQ(parse_spec_mode("mtp"), SpecMode::Mtp);
  EXPECT_EQ(parse_spec_mode("off"), SpecMode::Off);
  EXPECT_EQ(parse_spec_mode("none"), SpecMode::Off);  // the old spelling
  try {
    parse_spec_mode("foo");
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const char* want : {"--speculative", "'foo'", "'auto'", "'mtp'", "'off'"})
      EXPECT_NE(m.find(want), std::string::npos) << want << " not in: " << m;
  }
  EXPECT_STREQ(spec_mode_name(SpecMode::Auto), "auto");
  EXPECT_THROW(SpecPolicy(SpecMode::Auto, SpecPolicyOptions{.enter = 0.9, .leave = 1.0}), Error);
}

TEST(SpecPolicy, ForcedModesIgnoreCosts) {
  RatioCost c;
  c.ratio = 5;
  SpecPolicy mtp(SpecMode::Mtp, {.costs = &c}), off(SpecMode::Off, {.costs = &c});
  Driver d{mtp};
  d.run(100, 0.0);
  EXPECT_EQ(d.drafting_steps, 100);
  EXPECT_TRUE(mtp.report().drafting);
  EXPECT_FALSE(off.draft(1));
  EXPECT_FALSE(off.report().drafting);
}

// Verify 1.9x a plain step, 40% of the drafts accepted: 1.4 tokens per verify, S = 0.74.
TEST(SpecPolicy, PlainWhenTheVerifyStepCostsMoreThanTheDraftsSave) {
  RatioCost c;
  c.ratio = 1.9;
  c.cold_ms = 50;
  SpecPolicy p(SpecMode::Auto, {.costs = &c});
  Driver d{p};
  d.run(2000, 0.4);
  const SpecReport r = p.report();
  EXPECT_FALSE(r.drafting);
  EXPECT_EQ(r.switches, 0);
  EXPECT_NEAR(r.verify_step_s / r.plain_step_s, 1.9, 1e-9);  // cold steps left out
  // The last probe's 4 steps accepted 1 or 2 drafts (the estimate is the probe's own).
  EXPECT_NEAR(r.tokens_per_verify, 1.4, 0.3);
  EXPECT_NEAR(r.speedup, 1.4 / 1.9, 0.15);
  EXPECT_NE(r.reason.find("verify step 1.90x a plain step"), std::string::npos) << r.reason;
  // Calibration (3 + 1 cold + 3) and probes whose interval doubles up to 1024: ~1.5%.
  EXPECT_LT(d.drafting_steps, 40) << d.drafting_steps;
}

// Verify 1.15x a plain step, 80% accepted: S = 1.8 / 1.15 = 1.57.
TEST(SpecPolicy, DraftsWhereItPays) {
  RatioCost c;
  c.ratio = 1.15;
  SpecPolicy p(SpecMode::Auto, {.costs = &c});
  Driver d{p};
  d.run(2000, 0.8);
  const SpecReport r = p.report();
  EXPECT_TRUE(r.drafting);
  EXPECT_EQ(r.switches, 0);
  EXPECT_GT(r.speedup, 1.4);
  EXPECT_GT(d.drafting_steps, 1950);  // calibration's 3 plain steps and the plain probes
}

// The text changes: drafts stop being accepted, then are accepted again. The policy leaves
// drafting within a few steps (the acceptance EMA falls through S = leave) and comes back
// at the next probe after acceptance recovers.
TEST(SpecPolicy, FollowsAcceptanceBothWays) {
  RatioCost c;
  c.ratio = 1.3;
  SpecPolicy p(SpecMode::Auto, {.probe_every = 16, .probe_max = 64, .costs = &c});
  Driver d{p};
  d.run(300, 0.9);
  ASSERT_TRUE(p.report().drafting);
  int64_t left = -1;
  for (int64_t i = 0; i < 300 && left < 0; ++i) {
    d.run(1, 0.0);
    if (!p.report().drafting) left = i;
  }
  ASSERT_GE(left, 0) << "still drafting after 300 steps with nothing accepted";
  EXPECT_LT(left, 30);
  d.run(300 - left, 0.0);
  EXPECT_FALSE(p.report().drafting);
  int64_t back = -1;
  for (int64_t i = 0; i < 300 && back < 0; ++i) {
    d.run(1, 0.9);
    if (p.report().drafting) back = i;
  }
  ASSERT_GE(back, 0) << "never drafted again";
  EXPECT_LE(back, 64 + 4);  // the probe interval at most, then one probe
  EXPECT_EQ(p.report().switches, 2);
}

// S inside the band (leave, enter] keeps whichever choice holds, even with cost jitter that
// makes S cross the band's middle every few steps (S between 1.02 and 1.08); without a band
// the same run flaps.
TEST(SpecPolicy, HysteresisKeepsTheChoiceInsideTheBand) {
  // 20 sequences with one draft each: a accepted of them give 1 + a/20 tokens per verify
  // exactly, without the noise of a pattern. Then S = 1.1 / (1.02 .. 1.08).
  struct Jitter : SpecCostModel {
    int64_t* n;
    double step_cost(const SpecStep& s, double) const override {
      // Verify 1.02x to 1.08x a plain step, spread evenly (golden-ratio steps).
      const double u = double(*n) * 0.6180339887;
      const double j = 1.02 + 0.06 * (u - double(int64_t(u)));
      return 1e-3 * double(s.seqs) * (s.drafted == 0 ? 1.0 : j);
    }
  };
  auto run = [](SpecPolicy& p, int64_t& n, int64_t steps, int64_t accepted) {
    for (int64_t i = 0; i < steps; ++i, ++n) {
      SpecStep s;
      s.seqs = 20;
      if (p.draft(20)) {
        s.drafted = 20;
        s.accepted = accepted;
      }
      p.record(s, 0.0);
    }
  };
  for (bool band : {true, false}) {
    SpecPolicyOptions o;
    if (!band) o.enter = o.leave = 1.05;
    o.probe_every = 8;
    o.probe_max = 8;
    int64_t n = 0;
    Jitter j;
    j.n = &n;
    o.costs = &j;
    SpecPolicy p(SpecMode::Auto, o);
    run(p, n, 100, 10);  // 1.5 tokens per verify: drafting
    ASSERT_TRUE(p.report(20).drafting);
    run(p, n, 1000, 2);  // 1.1 tokens per verify
    if (band) {
      EXPECT_EQ(p.report(20).switches, 0);
      EXPECT_TRUE(p.report(20).drafting);
    } else {
      std::printf("without a band: %lld switches in 1000 steps\n", (long long)p.report(20).switches);
      EXPECT_GT(p.report(20).switches, 10);
    }
  }
}

// A shared machine stalls a step now and then (another process takes the core): one plain
// step in 7 taking 20x its time must not make drafting look cheap (a mean would: S = 1.9),
// nor one verify step in 7 make it look dear where it pays.
TEST(SpecPolicy, StalledStepsDoNotFlipTheChoice) {
  struct Stalls : SpecCostModel {
    int64_t* n;
    double ratio;
    double step_cost(const SpecStep& s, double) const override {
      const double stall = *n % 7 == 3 ? 20.0 : 1.0;
      return 1e-3 * double(s.seqs) * stall * (s.drafted == 0 ? 1.0 : ratio);
    }
  };
  for (double ratio : {1.4, 1.1}) {  // 1.3 tokens per verify: S = 0.93, then 1.18
    int64_t n = 0;
    Stalls c;
    c.n = &n;
    c.ratio = ratio;
    SpecPolicy p(SpecMode::Auto, {.probe_every = 8, .probe_max = 8, .costs = &c});
    for (; n < 1000; ++n) {
      SpecStep s;
      s.seqs = 10;
      if (p.draft(10)) {
        s.drafted = 10;
        s.accepted = 3;  // 1.3 tokens per verify, exactly
      }
      p.record(s, 0.0);
    }
    EXPECT_EQ(p.report(10).drafting, ratio < 1.2) << ratio << ": " << p.report(10).reason;
    EXPECT_EQ(p.report(10).switches, 0) << ratio;
  }
}

// A verify step does a plain step's work and more: timings that say it is cheaper are noise,
// and with no draft accepted drafting cannot pay, whatever they say.
TEST(SpecPolicy, NothingAcceptedNeverDraftsOnNoisyTimings) {
  RatioCost c;
  c.ratio = 0.5;  // verify measured at half a plain step
  SpecPolicy p(SpecMode::Auto, {.costs = &c});
  Driver d{p};
  d.run(1000, 0.0);
  EXPECT_FALSE(p.report().drafting);
  EXPECT_DOUBLE_EQ(p.report().speedup, 1.0);
  EXPECT_EQ(p.report().switches, 0);
}

// A verify step's extra rows are nearly free at batch 1 (memory-bound) and cost their share
// at batch 16 (compute-bound): each batch-size range decides from its own costs.
TEST(SpecPolicy, BatchSizesDecideApart) {
  struct ByBatch : SpecCostModel {
    double step_cost(const SpecStep& s, double) const override {
      const double ratio = s.seqs >= 16 ? 1.9 : 1.1;
      return 1e-3 * double(s.seqs) * (s.drafted == 0 ? 1.0 : ratio);
    }
  } cost;
  SpecPolicy p(SpecMode::Auto, {.costs = &cost});
  for (int64_t i = 0; i < 400; ++i) {
    for (int64_t seqs : {1, 16}) {
      SpecStep s;
      s.seqs = seqs;
      if (p.draft(seqs)) {
        s.drafted = seqs;
        s.accepted = seqs / 2 + (i % 2);  // 50% (a little more at batch 1)
      }
      p.record(s, 0.0);
    }
  }
  EXPECT_TRUE(p.draft(1));
  EXPECT_FALSE(p.draft(16));
  EXPECT_FALSE(p.draft(3)) << "2-3 has not been measured: plain steps come first";
  const auto all = p.reports();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].batch_label(), "1");
  EXPECT_EQ(all[1].batch_label(), "16-31");
  EXPECT_TRUE(all[0].drafting);
  EXPECT_FALSE(all[1].drafting);
}

}  // namespace
}  // namespace dsv3
