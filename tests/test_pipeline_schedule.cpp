// Pipeline schedules (src/parallel/schedule.h) and their simulator (pipeline_sim.h) against
// the published figures: the DualPipe README's table (deepseek-ai/DualPipe, "Pipeline Bubbles
// and Memory Usage Comparison"; DeepSeek-V3 report §3.2) and the Zero Bubble paper's ZB-H1
// (Qi et al. 2023). Every generated schedule validates; the simulated bubble equals the
// formula exactly under the formula's assumptions (stated per schedule below and in
// formula_conditions()); peak activations and parameter copies equal the table; bad counts
// are user errors naming the value; broken schedules are caught. Then `dsv3 pipeline-sim`
// through the CLI ($DSV3_BIN, set by ctest).
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "parallel/pipeline_sim.h"

namespace dsv3::pipe {
namespace {

constexpr ScheduleKind kAll[] = {ScheduleKind::OneF1B, ScheduleKind::ZB1P, ScheduleKind::DualPipe,
                                 ScheduleKind::DualPipeV};

bool valid(ScheduleKind k, int pp, int M) {
  if (k == ScheduleKind::DualPipe) return pp % 2 == 0 && M % 2 == 0 && M >= 2 * pp;
  if (k == ScheduleKind::DualPipeV) return M >= 2 * pp;
  return true;
}

// The micro-batch counts tried for pp ranks: the smallest the schedule allows, odd and even
// ones above it, and a long run.
std::vector<int> micro_batches(ScheduleKind k, int pp) {
  std::vector<int> out;
  for (int M : {1, pp, pp + 1, 2 * pp, 2 * pp + 1, 2 * pp + 2, 3 * pp + 3, 5 * pp})
    if (valid(k, pp, M)) out.push_back(M);
  return out;
}

SimCosts costs(double F, double B, double W, double FB = 0) {
  SimCosts c;
  c.F = F;
  c.B = B;
  c.W = W;
  c.FB = FB;
  return c;
}

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no Error thrown";
  } catch (const Error& e) {
    for (const std::string& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "'" << p << "' not in: " << e.what();
  }
}

TEST(PipelineSchedule, ParseAndNames) {
  for (ScheduleKind k : kAll) EXPECT_EQ(parse_schedule(schedule_name(k)), k);
  EXPECT_STREQ(schedule_name(ScheduleKind::DualPipeV), "dualpipev");
  expect_error([] { parse_schedule("gpipe"); }, {"'gpipe'", "1f1b", "zb1p", "dualpipe", "dualpipev"});
  expect_error([] { parse_schedule("DualPipe"); }, {"'DualPipe'"});
}

TEST(PipelineSchedule, ValidatesOverGrid) {
  for (ScheduleKind k : kAll) {
    for (int pp : {1, 2, 3, 4, 6, 8, 16}) {
      if (k == ScheduleKind::DualPipe && pp % 2 == 1) continue;
      for (int M : micro_batches(k, pp)) {
        SCOPED_TRACE(str_cat(schedule_name(k), " pp=", pp, " M=", M));
        const Schedule s = make_schedule(k, pp, M);
        ASSERT_NO_THROW(validate(s));
        EXPECT_EQ(s.n_stages, k == ScheduleKind::DualPipeV ? 2 * pp : pp);
        // where() and stage_of() are inverses on every micro-batch's path.
        for (int mb = 0; mb < M; ++mb) {
          for (int st = 0; st < s.n_stages; ++st) {
            const Loc l = s.where(st, mb);
            ASSERT_EQ(s.stage_of(l.rank, l.chunk, mb), st);
            ASSERT_EQ(s.chunk_stage(l.rank, l.chunk), st);
          }
        }
      }
    }
  }
}

TEST(PipelineSchedule, Layouts) {
  // DualPipe: rank r holds stage r (chunk 0) and PP-1-r (chunk 1); micro-batches < M/2 enter
  // at rank 0 on chunk 0, the rest at rank PP-1 on chunk 1, and the two directions meet
  // mirrored copies of the same stages.
  const Schedule d = make_schedule(ScheduleKind::DualPipe, 8, 20);
  EXPECT_EQ(d.where(0, 0).rank, 0);
  EXPECT_EQ(d.where(0, 0).chunk, 0);
  EXPECT_EQ(d.where(0, 10).rank, 7);
  EXPECT_EQ(d.where(0, 10).chunk, 1);
  EXPECT_EQ(d.where(7, 19).rank, 0);
  EXPECT_EQ(d.stage_of(2, 1, 15), 5);
  EXPECT_EQ(d.stage_of(2, 1, 3), -1);  // chunk 1 carries only direction 1
  EXPECT_EQ(d.stage_of(2, 0, 15), -1);
  EXPECT_EQ(d.chunk_stage(2, 1), 5);
  EXPECT_EQ(d.prev(7, 1, 10).rank, -1);  // direction 1 starts on rank 7
  EXPECT_EQ(d.next(0, 1, 10).rank, -1);  // and ends (the loss) on rank 0
  EXPECT_EQ(d.next(3, 1, 10).rank, 2);
  // DualPipeV: down ranks 0..N-1 on chunk 0, back up N-1..0 on chunk 1, the loss on rank 0.
  const Schedule v = make_schedule(ScheduleKind::DualPipeV, 4, 10);
  EXPECT_EQ(v.n_stages, 8);
  EXPECT_EQ(v.where(3, 5).rank, 3);
  EXPECT_EQ(v.where(4, 5).rank, 3);
  EXPECT_EQ(v.where(4, 5).chunk, 1);
  EXPECT_EQ(v.where(7, 5).rank, 0);
  EXPECT_EQ(v.next(3, 0, 5).rank, 3);  // the turn stays on the last rank
  EXPECT_EQ(v.next(0, 1, 5).rank, -1);
}

// The simulated bubble (idle time, max over ranks) equals the README formula to 1e-9 when its
// assumptions hold (formula_conditions(), docs/pipeline.md):
//   all: comm = 0.  1F1B: any costs and M.  ZB1P (ZB-H1): M >= PP, B >= 2W, W <= F.
//   DualPipe, DualPipeV: B - W = F (the input-gradient backward as long as the forward, the
//   Zero Bubble paper's T_F = T_B), W <= F, B <= F&B <= F+B; any M the schedule allows.
// PP is the number of stages (DualPipeV: 2*pp on pp ranks). The triples include the papers'
// F = B-W = W and non-integer ones.
TEST(PipelineSim, BubbleEqualsPublishedFormula) {
  const std::vector<SimCosts> any = {costs(1, 2, 1), costs(0.7, 1.9, 0.4), costs(1.25, 2.5, 0.6),
                                     costs(3, 1, 0.5), costs(0.3, 3.7, 3.1)};
  const std::vector<SimCosts> zb = {costs(1, 2, 1), costs(1.3, 2.9, 0.45), costs(0.9, 2.2, 0.35),
                                    costs(2.5, 1.1, 0.55), costs(0.8, 3.3, 0.8)};
  const std::vector<SimCosts> dual = {costs(1, 2, 1), costs(1, 2, 1, 2.5), costs(1.3, 1.75, 0.45, 2.4),
                                      costs(0.8, 1.1, 0.3, 1.1), costs(2, 2.6, 0.6, 3.3),
                                      costs(0.75, 1.5, 0.75, 1.8)};
  int checked = 0;
  for (ScheduleKind k : kAll) {
    const auto& cs = k == ScheduleKind::OneF1B ? any : k == ScheduleKind::ZB1P ? zb : dual;
    for (int pp : {1, 2, 3, 4, 6, 8, 16}) {
      if (k == ScheduleKind::DualPipe && pp % 2 == 1) continue;
      for (int M : micro_batches(k, pp)) {
        if (k == ScheduleKind::ZB1P && M < pp) continue;  // ZB-H1's formula needs M >= PP
        const Schedule s = make_schedule(k, pp, M);
        for (const SimCosts& c : cs) {
          SCOPED_TRACE(str_cat(schedule_name(k), " pp=", pp, " M=", M, " F=", c.F, " B=", c.B,
                               " W=", c.W, " F&B=", fb_cost(c)));
          ASSERT_EQ(formula_conditions(s, c), "");
          const SimResult r = simulate(s, c);
          const double f = formula_bubble(k, s.n_stages, c);
          EXPECT_NEAR(r.bubble_max, f, 1e-9);
          // 1F1B and ZB1P: every rank does M(F+B) of work and idles the same time.
          if (k == ScheduleKind::OneF1B || k == ScheduleKind::ZB1P) {
            for (double b : r.bubble) EXPECT_NEAR(b, f, 1e-9);
          }
          // DualPipe(V): the turning ranks (which overlap the most F&B pairs) idle the most.
          const int turn = k == ScheduleKind::DualPipe ? pp / 2 - 1 : pp - 1;
          if (k == ScheduleKind::DualPipe || k == ScheduleKind::DualPipeV) {
            EXPECT_NEAR(r.bubble[size_t(turn)], f, 1e-9);
          }
          // makespan = the turning rank's work + its bubble; nothing runs past it.
          EXPECT_NEAR(r.makespan, r.busy[size_t(k == ScheduleKind::OneF1B || k == ScheduleKind::ZB1P ? 0 : turn)] + f, 1e-9);
          ++checked;
        }
      }
    }
  }
  EXPECT_GT(checked, 300);
}

// Outside the assumptions the formulas are not exact, and formula_conditions() says why. The
// simulation follows the schedules' own critical paths there: ZB1P with B < 2W idles
// (PP-1)F (the deferred W's, not the input-gradient chain, end last); DualPipe with W <= F,
// 2W <= B <= F&B idles (PP/2-1)(F&B+F-2W) + max(0, (PP/2-1)(B-W-F) - F), which is the README's
// (PP/2-1)(F&B+B-3W) exactly when B - W = F.
TEST(PipelineSim, OutsideTheAssumptions) {
  {
    const Schedule s = make_schedule(ScheduleKind::ZB1P, 8, 16);
    const SimCosts c = costs(1, 1.5, 0.9);
    EXPECT_NE(formula_conditions(s, c).find("B = 1.5 < 2W"), std::string::npos) << formula_conditions(s, c);
    EXPECT_NEAR(simulate(s, c).bubble_max, 7 * 1.0, 1e-9);
  }
  for (int pp : {4, 8, 16}) {
    const Schedule s = make_schedule(ScheduleKind::DualPipe, pp, 4 * pp);
    for (const SimCosts& c : {costs(1.1, 2.3, 0.7, 2.9), costs(1.1, 2.0, 0.7, 2.9), costs(1, 3, 1, 3),
                              costs(0.6, 2.5, 0.2, 2.7)}) {
      SCOPED_TRACE(str_cat("pp=", pp, " F=", c.F, " B=", c.B, " W=", c.W, " F&B=", c.FB));
      EXPECT_NE(formula_conditions(s, c).find("B - W"), std::string::npos);
      const double h = pp / 2 - 1, fb = fb_cost(c);
      const double expect = h * (fb + c.F - 2 * c.W) + std::max(0.0, h * (c.B - c.W - c.F) - c.F);
      EXPECT_NEAR(simulate(s, c).bubble_max, expect, 1e-9);
    }
  }
  SimCosts c = costs(1, 2, 1);
  c.comm = 0.25;
  const Schedule s = make_schedule(ScheduleKind::OneF1B, 4, 8);
  EXPECT_NE(formula_conditions(s, c).find("comm = 0.25"), std::string::npos);
  EXPECT_GT(simulate(s, c).bubble_max, formula_bubble(ScheduleKind::OneF1B, 4, c));
}

// The README's memory columns: activations per device 1F1B PP, ZB1P PP, DualPipe PP+1,
// DualPipeV PP+1 (PP stages on PP/2 ranks; in units of one micro-batch through one stage),
// parameters per device 1x, 1x, 2x, 2x stages. Relative to 1F1B on the same ranks, DualPipeV's
// stages are half-size: PP/2 + 1/2 full-size units and one parameter copy.
TEST(PipelineSim, ActivationsAndParameters) {
  for (ScheduleKind k : kAll) {
    for (int pp : {1, 2, 3, 4, 6, 8, 16}) {
      if (k == ScheduleKind::DualPipe && pp % 2 == 1) continue;
      for (int M : micro_batches(k, pp)) {
        if (M < pp) continue;  // 1F1B holds min(M, PP)
        SCOPED_TRACE(str_cat(schedule_name(k), " pp=", pp, " M=", M));
        const Schedule s = make_schedule(k, pp, M);
        const SimResult r = simulate(s, costs(1, 2, 1));
        EXPECT_EQ(r.peak_chunks_max, formula_activations(k, s.n_stages));
        EXPECT_EQ(s.chunks, formula_param_stages(k));
        EXPECT_EQ(r.param_copies, k == ScheduleKind::DualPipe ? 2 : 1);
        EXPECT_EQ(s.param_copies(), r.param_copies);
        if (k == ScheduleKind::DualPipeV) {
          EXPECT_DOUBLE_EQ(r.peak_activations, pp + 0.5);
        }
        // ZB-H1 keeps every rank at 1F1B's first-rank peak.
        if (k == ScheduleKind::ZB1P) {
          for (int p : r.peak_chunks) EXPECT_EQ(p, pp);
        }
        // The count comes from the op order alone, not the costs.
        EXPECT_EQ(simulate(s, costs(0.3, 2.9, 0.2, 2.95)).peak_chunks, r.peak_chunks);
      }
    }
  }
  EXPECT_EQ(simulate(make_schedule(ScheduleKind::OneF1B, 8, 3), costs(1, 2, 1)).peak_chunks_max, 3);
}

TEST(PipelineSchedule, BadCountsNameTheValue) {
  expect_error([] { make_schedule(ScheduleKind::OneF1B, 0, 4); }, {"1f1b", "pp = 0"});
  expect_error([] { make_schedule(ScheduleKind::ZB1P, -2, 4); }, {"zb1p", "pp = -2"});
  expect_error([] { make_schedule(ScheduleKind::ZB1P, 4, 0); }, {"micro-batches = 0"});
  expect_error([] { make_schedule(ScheduleKind::DualPipe, 3, 12); }, {"dualpipe", "pp = 3", "odd"});
  expect_error([] { make_schedule(ScheduleKind::DualPipe, 0, 12); }, {"pp = 0"});
  expect_error([] { make_schedule(ScheduleKind::DualPipe, 4, 9); }, {"micro-batches = 9", "odd"});
  expect_error([] { make_schedule(ScheduleKind::DualPipe, 4, 6); }, {"micro-batches = 6", "2*pp = 8"});
  expect_error([] { make_schedule(ScheduleKind::DualPipeV, 4, 7); }, {"dualpipev", "micro-batches = 7", "2*pp = 8"});
  EXPECT_NO_THROW(make_schedule(ScheduleKind::DualPipeV, 3, 7));  // dualpipev.py: no parity rule
  const Schedule s = make_schedule(ScheduleKind::ZB1P, 4, 8);
  expect_error([&] { simulate(s, costs(1, 1, 2)); }, {"W = 2 > B = 1"});
  expect_error([&] { simulate(s, costs(-1, 2, 1)); }, {"F=-1"});
}

TEST(PipelineSim, DeadlockIsDetected) {
  // 1F1B, 3 ranks, 3 micro-batches; rank 0 runs F0 F1 F2 B0 B1 B2. Swapping its F1 and B0
  // makes a cycle: rank 0's B0 needs rank 1's B0, which comes after rank 1's F1, which needs
  // rank 0's F1, which now comes after rank 0's B0. Every count is still right.
  Schedule s = make_schedule(ScheduleKind::OneF1B, 3, 3);
  auto& r0 = s.ops[0];
  ASSERT_EQ(op_label(r0[1]), "F(1,c0)");
  ASSERT_EQ(op_label(r0[3]), "B(0,c0)");
  std::swap(r0[1], r0[3]);
  EXPECT_NO_THROW(validate(s));
  expect_error([&] { simulate(s, costs(1, 2, 1)); }, {"deadlock", "rank 0 op 1 B(0,c0) waits for B of micro-batch 0 stage 1"});
}

TEST(PipelineSchedule, ValidateCatchesBrokenSchedules) {
  auto with = [](const std::function<void(Schedule&)>& edit) {
    Schedule s = make_schedule(ScheduleKind::ZB1P, 4, 8);
    edit(s);
    return s;
  };
  auto find = [](const std::vector<Op>& ops, OpType t, int mb) {
    size_t i = 0;
    while (i < ops.size() && !(ops[i].type == t && ops[i].mb == mb)) ++i;
    return i;
  };
  // A missing W.
  expect_error([&] {
    validate(with([&](Schedule& s) { s.ops[2].erase(s.ops[2].begin() + long(find(s.ops[2], OpType::W, 5))); }));
  }, {"internal error", "micro-batch 5 stage 2", "0 weight-gradient ops after a split backward"});
  // A W before its B.
  expect_error([&] {
    validate(with([&](Schedule& s) {
      std::swap(s.ops[0][find(s.ops[0], OpType::W, 3)], s.ops[0][find(s.ops[0], OpType::B, 3)]);
    }));
  }, {"rank 0", "W(3,c0)", "no input-gradient backward before it"});
  // A forward on the wrong rank, and a duplicated one.
  expect_error([&] { validate(with([&](Schedule& s) { s.ops[1].push_back(Op{OpType::F, 0, 1}); })); },
               {"rank 1", "chunk 1 is not on this rank's path"});
  expect_error([&] { validate(with([&](Schedule& s) { s.ops[3].push_back(Op{OpType::F, 7, 0}); })); },
               {"micro-batch 7 stage 3", "2 forwards"});
  // DualPipe: a direction-0 micro-batch on chunk 1.
  Schedule d = make_schedule(ScheduleKind::DualPipe, 4, 8);
  d.ops[0][0].chunk = 1;
  expect_error([&] { validate(d); }, {"internal error", "rank 0 op 0"});
}

// ---- dsv3 pipeline-sim ------------------------------------------------------------------

struct CliRun {
  int rc = -1;
  std::string out, err;
};

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A scratch directory for the CLI's output, removed at exit.
std::filesystem::path tmp_dir() {
  struct Dir {
    std::filesystem::path p = std::filesystem::temp_directory_path() /
                              ("dsv3_pipeline_test_" + std::to_string(getpid()));
    Dir() { std::filesystem::create_directories(p); }
    ~Dir() { std::filesystem::remove_all(p); }
  };
  static const Dir d;
  return d.p;
}

CliRun cli(const std::string& args) {
  const std::string out = (tmp_dir() / "out").string(), err = (tmp_dir() / "err").string();
  const int st = std::system((std::string(std::getenv("DSV3_BIN")) + " pipeline-sim " + args + " >" +
                              out + " 2>" + err).c_str());
  CliRun r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(PipelineSimCli, TimelineAndSummary) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const CliRun r = cli("--schedule dualpipe --pp 4 --micro-batches 8 --f 1 --b 2 --w 1 --fb 2.5");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(has(r.out, "dualpipe: 4 ranks, 4 stages, 8 micro-batches")) << r.out;
  for (int rank = 0; rank < 4; ++rank) EXPECT_TRUE(has(r.out, str_cat("rank  ", rank, " |"))) << r.out;
  // Rank 0's first overlapped pair (step 4): forward of mb 3 on chunk 0, full backward of mb 5 on
  // chunk 1.
  EXPECT_TRUE(has(r.out, "rank  0 |F0-F1-F2-f4-i4-w4-f5-F3+b5")) << r.out;
  // (PP/2-1)(F&B+B-3W) = 1 * (2.5 + 2 - 3) = 1.5, exact with B - W = F.
  EXPECT_TRUE(has(r.out, "1.5 simulated, 1.5 by the README formula")) << r.out;
  EXPECT_TRUE(has(r.out, "agree exactly")) << r.out;
  EXPECT_TRUE(has(r.out, "peak 5 micro-batch stages per rank (README: 5)")) << r.out;
  const CliRun v = cli("--schedule dualpipev --pp 2 --micro-batches 5 --f 1 --b 2.5 --w 1");
  ASSERT_EQ(v.rc, 0) << v.err;
  EXPECT_TRUE(has(v.out, "not exact here: B - W = 1.5 != F = 1")) << v.out;
}

TEST(PipelineSimCli, Table) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const CliRun r = cli("--table --f 1 --b 2 --w 1 --fb 2.5");
  ASSERT_EQ(r.rc, 0) << r.err;
  int rows = 0;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    std::istringstream f(line);
    int PP = 0;
    std::string name, formula, sim, pub, exact;
    int ranks = 0;
    if (!(f >> PP >> name >> ranks >> formula >> sim >> pub >> exact)) continue;
    SCOPED_TRACE(line);
    ++rows;
    EXPECT_EQ(sim, pub);  // F = B - W = W: every formula's assumptions hold
    EXPECT_EQ(exact, "yes");
    EXPECT_EQ(ranks, name == "dualpipev" ? PP / 2 : PP);
  }
  EXPECT_EQ(rows, 12) << r.out;
  EXPECT_TRUE(has(r.out, "(PP/2-1)(F&B+B-3W)")) << r.out;
}

TEST(PipelineSimCli, BadValuesAreErrors) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  for (const auto& [args, part] : std::vector<std::pair<std::string, std::string>>{
           {"--schedule dualpipe --pp 3 --micro-batches 12", "pp = 3"},
           {"--schedule 1f1b --pp 0", "pp = 0"},
           {"--schedule dualpipe --pp 4 --micro-batches 6", "micro-batches = 6"},
           {"--schedule gpipe", "'gpipe'"},
           {"--schedule zb1p --pp 4 --micro-batches 8 --b 1 --w 2", "W = 2 > B = 1"}}) {
    const CliRun r = cli(args);
    EXPECT_EQ(r.rc, 1) << args;
    EXPECT_TRUE(has(r.err, "dsv3: error: ") && has(r.err, part)) << args << ": " << r.err;
  }
}

TEST(PipelineSimCli, Png) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string png = (tmp_dir() / "timeline.png").string();
  const CliRun r = cli("--schedule zb1p --pp 4 --micro-batches 8 --png " + png);
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    EXPECT_EQ(r.rc, 1);
    EXPECT_TRUE(has(r.err, "needs gnuplot")) << r.err;
    return;
  }
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(slurp(png).substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

}  // namespace
}  // namespace dsv3::pipe
