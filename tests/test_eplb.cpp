// Redundant experts (src/parallel/eplb.h) against deepseek-ai/EPLB: its README example's
// printed phy2log exactly (and the logcnt vLLM's test of the same example asserts); the two
// building blocks on small cases worked by hand from eplb.py's description, ties included;
// replicate_experts' max load per copy against a brute-force optimum; the hierarchical
// policy's promise (a group and its copies stay on one node); the global policy's rule
// (groups % nodes != 0 runs as one group on one node); every plan's three maps consistent;
// bad counts and loads refused with messages naming them. Then `dsv3 eplb` through the CLI
// ($DSV3_BIN, set by ctest). Last, the server's use of a plan (model/expert_placement.h):
// slots to ranks, the assignment of work to copies against a scalar twin of its rule, and
// the balance a plan buys on a skewed load.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "model/expert_placement.h"
#include "parallel/eplb.h"
#include "serve/rebalance.h"

namespace dsv3::eplb {
namespace {

using Loads = std::vector<std::vector<double>>;

// deepseek-ai/EPLB README: 2 MoE layers of 12 experts, 16 slots, 4 groups, 2 nodes, 8 GPUs.
const Loads kReadmeWeight = {{90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86},
                             {20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27}};
const Params kReadmeParams{16, 4, 2, 8};

// The three maps describe one placement: logcnt counts each expert's slots, log2phy lists
// them (copy r at [r], -1 past the count, width the largest count), every expert has a slot.
void expect_consistent(const Plan& plan, const Loads& w, const Params& p) {
  const size_t L = w.size(), E = w[0].size(), R = size_t(p.num_replicas);
  ASSERT_EQ(plan.phy2log.size(), L);
  ASSERT_EQ(plan.logcnt.size(), L);
  ASSERT_EQ(plan.log2phy.size(), L);
  int widest = 0;
  for (size_t l = 0; l < L; ++l) {
    ASSERT_EQ(plan.phy2log[l].size(), R);
    ASSERT_EQ(plan.logcnt[l].size(), E);
    ASSERT_EQ(plan.log2phy[l].size(), E);
    std::vector<std::vector<int>> slots(E);
    for (size_t s = 0; s < R; ++s) {
      const int e = plan.phy2log[l][s];
      ASSERT_TRUE(e >= 0 && size_t(e) < E) << "layer " << l << " slot " << s;
      slots[size_t(e)].push_back(int(s));
    }
    for (size_t e = 0; e < E; ++e) {
      EXPECT_GE(plan.logcnt[l][e], 1) << "layer " << l << " expert " << e;
      EXPECT_EQ(size_t(plan.logcnt[l][e]), slots[e].size()) << "layer " << l << " expert " << e;
      widest = std::max(widest, plan.logcnt[l][e]);
      ASSERT_EQ(plan.log2phy[l][e].size(), size_t(plan.max_copies));
      std::vector<int> listed;
      for (int r = 0; r < plan.max_copies; ++r) {
        const int s = plan.log2phy[l][e][size_t(r)];
        if (r < plan.logcnt[l][e]) {
          ASSERT_TRUE(s >= 0 && size_t(s) < R) << "layer " << l << " expert " << e << " copy " << r;
          EXPECT_EQ(plan.phy2log[l][size_t(s)], int(e));
          listed.push_back(s);
        } else {
          EXPECT_EQ(s, -1) << "layer " << l << " expert " << e << " copy " << r;
        }
      }
      std::sort(listed.begin(), listed.end());
      EXPECT_EQ(listed, slots[e]) << "layer " << l << " expert " << e;
    }
  }
  EXPECT_EQ(plan.max_copies, widest);
}

// Load per GPU: each slot carries its expert's load over the expert's copies.
std::vector<double> gpu_loads(const Plan& plan, const Loads& w, const Params& p, size_t l) {
  const size_t R = size_t(p.num_replicas), per_gpu = R / size_t(p.num_gpus);
  std::vector<double> gpu(size_t(p.num_gpus), 0.0);
  for (size_t s = 0; s < R; ++s) {
    const int e = plan.phy2log[l][s];
    gpu[s / per_gpu] += w[l][size_t(e)] / plan.logcnt[l][size_t(e)];
  }
  return gpu;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(Eplb, ReadmeExample) {
  const Plan plan = rebalance_experts(kReadmeWeight, kReadmeParams);
  EXPECT_TRUE(plan.hierarchical);
  // The README's printed output.
  const std::vector<std::vector<int>> phy2log = {{5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1},
                                                 {7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1}};
  EXPECT_EQ(plan.phy2log, phy2log);
  // vLLM's tests/distributed/test_eplb_algo.py asserts this logcnt for the same call.
  const std::vector<std::vector<int>> logcnt = {{1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1},
                                                {1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1}};
  EXPECT_EQ(plan.logcnt, logcnt);
  EXPECT_EQ(plan.max_copies, 2);
  expect_consistent(plan, kReadmeWeight, kReadmeParams);

  // The float entry point is the same computation (the public code's weight.float()).
  std::vector<std::vector<float>> wf;
  for (const auto& row : kReadmeWeight) wf.emplace_back(row.begin(), row.end());
  const Plan pf = rebalance_experts(wf, kReadmeParams);
  EXPECT_EQ(pf.phy2log, plan.phy2log);
  EXPECT_EQ(pf.log2phy, plan.log2phy);
  EXPECT_EQ(pf.logcnt, plan.logcnt);
}

// eplb.py's balanced_packing by hand. Weights {5, 9, 1, 7, 3, 8} into 2 packs of 3, heaviest
// first: 9 -> pack 0 (both empty: the first), 8 -> 1, 7 -> 1 (8 < 9), 5 -> 0 (9 < 15),
// 3 -> 0 (14 < 15; pack 0 is now full), 1 -> 1 (the only pack with room).
TEST(Eplb, BalancedPackingByHand) {
  const Packing a = balanced_packing({5, 9, 1, 7, 3, 8}, 2);
  EXPECT_EQ(a.pack, (std::vector<int>{0, 0, 1, 1, 0, 1}));
  EXPECT_EQ(a.rank, (std::vector<int>{1, 0, 2, 1, 2, 0}));
  // Ties: equal weights in index order, equal packs the first: 0 -> 0, 1 -> 1, 2 -> 0, 3 -> 1.
  const Packing t = balanced_packing({4, 4, 4, 4}, 2);
  EXPECT_EQ(t.pack, (std::vector<int>{0, 1, 0, 1}));
  EXPECT_EQ(t.rank, (std::vector<int>{0, 0, 1, 1}));
  // One item per pack: eplb.py's shortcut keeps index order (the greedy would put the
  // heaviest, item 1, into pack 0).
  const Packing one = balanced_packing({1, 5, 3}, 3);
  EXPECT_EQ(one.pack, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(one.rank, (std::vector<int>{0, 0, 0}));
  // One pack: everything, heaviest first.
  const Packing all = balanced_packing({1, 5, 3}, 1);
  EXPECT_EQ(all.pack, (std::vector<int>{0, 0, 0}));
  EXPECT_EQ(all.rank, (std::vector<int>{2, 0, 1}));
}

// replicate_experts by hand: each extra slot to the highest weight / copies, the first of equals.
TEST(Eplb, ReplicateExpertsByHand) {
  // {9, 4, 4}: 9 -> 4.5 (copy 1 of item 0), 4.5 -> 3 (copy 2), then 4 = 4: item 1.
  const Replication a = replicate_experts({9, 4, 4}, 6);
  EXPECT_EQ(a.phy2log, (std::vector<int>{0, 1, 2, 0, 0, 1}));
  EXPECT_EQ(a.rank, (std::vector<int>{0, 0, 0, 1, 2, 1}));
  EXPECT_EQ(a.logcnt, (std::vector<int>{3, 2, 1}));
  // {6, 6, 3}: 6 = 6: item 0, then item 1.
  const Replication b = replicate_experts({6, 6, 3}, 5);
  EXPECT_EQ(b.phy2log, (std::vector<int>{0, 1, 2, 0, 1}));
  EXPECT_EQ(b.logcnt, (std::vector<int>{2, 2, 1}));
  // No extra slots: the identity.
  const Replication c = replicate_experts({1, 2, 3}, 3);
  EXPECT_EQ(c.phy2log, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(c.logcnt, (std::vector<int>{1, 1, 1}));
}

// Giving each slot to the current highest load per copy minimises the highest load per copy
// over all ways to hand out the slots; check it against every way, for small cases.
TEST(Eplb, ReplicationIsOptimalByBruteForce) {
  std::mt19937 rng(17);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + int(rng() % 4), extra = int(rng() % 5);
    std::vector<float> w(static_cast<size_t>(n));
    for (float& v : w) v = float(rng() % 100);
    const Replication r = replicate_experts(w, n + extra);
    double greedy = 0;
    for (int i = 0; i < n; ++i) greedy = std::max(greedy, double(w[size_t(i)]) / r.logcnt[size_t(i)]);
    double best = std::numeric_limits<double>::infinity();
    std::vector<int> cnt(size_t(n), 1);
    std::function<void(int, int)> walk = [&](int i, int left) {  // every split of `extra`
      if (i == n - 1) {
        cnt[size_t(i)] = 1 + left;
        double worst = 0;
        for (int k = 0; k < n; ++k) worst = std::max(worst, double(w[size_t(k)]) / cnt[size_t(k)]);
        best = std::min(best, worst);
        return;
      }
      for (int c = 0; c <= left; ++c) {
        cnt[size_t(i)] = 1 + c;
        walk(i + 1, left - c);
      }
    };
    walk(0, extra);
    EXPECT_NEAR(greedy, best, 1e-9 * best) << "trial " << trial;
  }
}

TEST(Eplb, NoCopiesWhenSlotsEqualExperts) {
  for (const Params p : {Params{12, 4, 2, 4}, Params{12, 4, 3, 6}, Params{12, 1, 1, 3}}) {
    const Plan plan = rebalance_experts(kReadmeWeight, p);
    expect_consistent(plan, kReadmeWeight, p);
    EXPECT_EQ(plan.max_copies, 1);
    for (size_t l = 0; l < kReadmeWeight.size(); ++l) {
      for (int c : plan.logcnt[l]) EXPECT_EQ(c, 1);
      std::vector<int> sorted = plan.phy2log[l];
      std::sort(sorted.begin(), sorted.end());
      std::vector<int> iota(12);
      std::iota(iota.begin(), iota.end(), 0);
      EXPECT_EQ(sorted, iota) << "a permutation";
    }
  }
}

// The hierarchical policy keeps each expert group, with its copies, on one node, and every
// node holds the same number of groups.
TEST(Eplb, HierarchicalKeepsGroupsOnOneNode) {
  std::mt19937 rng(3);
  const Params p{48, 8, 4, 16};  // 32 experts in 8 groups of 4; 12 slots per node, 3 per GPU
  Loads w(3, std::vector<double>(32));
  for (auto& row : w)
    for (double& v : row) v = double(rng() % 1000);
  const Plan plan = rebalance_experts(w, p);
  ASSERT_TRUE(plan.hierarchical);
  expect_consistent(plan, w, p);
  for (size_t l = 0; l < w.size(); ++l) {
    std::vector<std::set<int>> nodes_of_group(8);
    std::vector<std::set<int>> groups_of_node(4);
    for (int s = 0; s < 48; ++s) {
      const int g = plan.phy2log[l][size_t(s)] / 4, node = s / 12;
      nodes_of_group[size_t(g)].insert(node);
      groups_of_node[size_t(node)].insert(g);
    }
    for (int g = 0; g < 8; ++g) EXPECT_EQ(nodes_of_group[size_t(g)].size(), 1u) << "layer " << l << " group " << g;
    for (int n = 0; n < 4; ++n) EXPECT_EQ(groups_of_node[size_t(n)].size(), 2u) << "layer " << l << " node " << n;
  }
}

// One hot expert: it gets the most copies, and the busiest GPU carries less than with every
// expert once, in order (E / gpus consecutive experts per GPU).
TEST(Eplb, SkewedLoadCopiesTheHotExpert) {
  std::mt19937 rng(11);
  for (const Params p : {Params{24, 4, 2, 8}, Params{24, 4, 4, 8}, Params{24, 2, 4, 8}, Params{32, 1, 1, 4}}) {
    Loads w(4, std::vector<double>(16));
    for (size_t l = 0; l < w.size(); ++l) {
      for (double& v : w[l]) v = double(10 + rng() % 40);
      w[l][(5 * l + 3) % 16] = 2000;  // the hot one, a different expert per layer
    }
    const Plan plan = rebalance_experts(w, p);
    expect_consistent(plan, w, p);
    for (size_t l = 0; l < w.size(); ++l) {
      const size_t hot = (5 * l + 3) % 16;
      for (size_t e = 0; e < 16; ++e) {
        if (e == hot) continue;
        EXPECT_GT(plan.logcnt[l][hot], plan.logcnt[l][e]) << "layer " << l << " expert " << e;
      }
      std::vector<double> before(size_t(p.num_gpus), 0.0);
      for (size_t e = 0; e < 16; ++e) before[e / (16 / size_t(p.num_gpus))] += w[l][e];
      const std::vector<double> after = gpu_loads(plan, w, p, l);
      EXPECT_LT(*std::max_element(after.begin(), after.end()), *std::max_element(before.begin(), before.end()))
          << "layer " << l;
      EXPECT_NEAR(std::accumulate(after.begin(), after.end(), 0.0),
                  std::accumulate(w[l].begin(), w[l].end(), 0.0), 1e-6) << "the load is only moved";
    }
  }
}

// groups % nodes != 0: the global policy, which eplb.py runs as the hierarchical one with one
// group on one node; the copies go to the experts with the highest load over all of them.
TEST(Eplb, GlobalPolicy) {
  const Params p{16, 2, 4, 8};  // 2 groups over 4 nodes: not divisible
  const Plan plan = rebalance_experts(kReadmeWeight, p);
  EXPECT_FALSE(plan.hierarchical);
  expect_consistent(plan, kReadmeWeight, p);
  const Plan one = rebalance_experts(kReadmeWeight, Params{16, 1, 1, 8});
  EXPECT_TRUE(one.hierarchical);
  EXPECT_EQ(plan.phy2log, one.phy2log);
  EXPECT_EQ(plan.log2phy, one.log2phy);
  EXPECT_EQ(plan.logcnt, one.logcnt);
  // By hand: layer 0's four extra slots go to 183 (expert 10), 165 (5), 132 (1), then 104 (4)
  // beats 183/2; layer 1's to 197 (5), 187 (6), 172 (8), 157 (7).
  EXPECT_EQ(plan.logcnt[0], (std::vector<int>{1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1}));
  EXPECT_EQ(plan.logcnt[1], (std::vector<int>{1, 1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 1}));
  // Layer 0's slots to GPUs by hand. Slots 0-11 hold experts 0-11, slots 12-15 the copies of
  // 10, 5, 1, 4; each slot carries load / copies: 91.5 (slots 10, 12), 90 (0), 86 (11), 82.5
  // (5, 13), 73 (8), 66 (1, 14), 61 (3), 56 (9), 52 (4, 15), 40 (2), 39 (6), 4 (7). The first
  // eight fill GPUs 0-7 in that order; then each goes to the least-loaded GPU with room, the
  // first of equals: 66 -> GPU 7 (66), 61 -> 6 (73), 56 -> 4 (82.5, before 5), 52 -> 5 (82.5),
  // 52 -> 3 (86), 40 -> 2 (90), 39 -> 0 (91.5, before 1), 4 -> 1. Both copies of expert 1 end
  // on GPU 7: the public algorithm does not keep an expert's copies apart.
  EXPECT_EQ(plan.phy2log[0], (std::vector<int>{10, 6, 10, 7, 0, 2, 11, 4, 5, 9, 5, 4, 8, 3, 1, 1}));
}

TEST(Eplb, RefusesBadInput) {
  const Loads w = kReadmeWeight;
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(w, Params{18, 4, 2, 8}); }),
                  "18 replicas do not divide evenly over 8 GPUs"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(w, Params{16, 4, 3, 8}); }),
                  "8 GPUs do not divide evenly over 3 nodes"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(w, Params{16, 5, 1, 8}); }),
                  "12 experts do not divide into 5 groups"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(w, Params{8, 4, 2, 8}); }),
                  "8 replicas cannot hold 12 experts"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(w, Params{16, 4, 2, 0}); }), "--gpus must be at least 1"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(w, Params{16, 0, 2, 8}); }), "--groups must be at least 1"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(w, Params{16, 4, -1, 8}); }), "--nodes must be at least 1"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(w, Params{1 << 30, 4, 2, 8}); }), "is more than"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(Loads(512, std::vector<double>(16, 1.0)), Params{1 << 20, 1, 1, 1}); }),
                  "phy2log would have 512 layers x 1048576 slots"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(Loads{}, kReadmeParams); }), "no layers"));
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(Loads{{}, {}}, kReadmeParams); }), "no experts"));
  Loads ragged = w;
  ragged[1].pop_back();
  EXPECT_TRUE(has(error_of([&] { rebalance_experts(ragged, kReadmeParams); }),
                  "layer 1 has 11 expert loads, layer 0 has 12"));
  for (const double bad : {-1.0, std::nan(""), std::numeric_limits<double>::infinity(), 1e39}) {
    Loads b = w;
    b[1][7] = bad;
    const std::string msg = error_of([&] { rebalance_experts(b, kReadmeParams); });
    EXPECT_TRUE(has(msg, "weight[1][7]")) << msg;
  }
}

// ---- dsv3 eplb ------------------------------------------------------------------------

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

// A scratch directory for the CLI's files, removed at exit.
std::filesystem::path tmp_dir() {
  struct Dir {
    std::filesystem::path p =
        std::filesystem::temp_directory_path() / ("dsv3_eplb_test_" + std::to_string(getpid()));
    Dir() { std::filesystem::create_directories(p); }
    ~Dir() { std::filesystem::remove_all(p); }
  };
  static const Dir d;
  return d.p;
}

std::string write_tmp(const std::string& name, const std::string& text) {
  const std::filesystem::path p = tmp_dir() / name;
  std::ofstream(p, std::ios::binary) << text;
  return p.string();
}

CliRun cli(const std::string& args) {
  const std::string out = (tmp_dir() / "out").string(), err = (tmp_dir() / "err").string();
  const int st = std::system((std::string(std::getenv("DSV3_BIN")) + " eplb " + args + " >" + out + " 2>" + err).c_str());
  CliRun r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// ---- ExpertPlacement ---------------------------------------------------------------------

TEST(ExpertPlacement, SlotsRanksAndCopies) {
  // The README example's first layer on 8 ranks (2 slots each).
  const Plan plan = rebalance_experts(kReadmeWeight, {16, 4, 2, 8});
  const ExpertPlacement p = ExpertPlacement::from_phy2log(plan.phy2log[0], 12, 8);
  EXPECT_EQ(p.slots(), 16);
  EXPECT_EQ(p.n_experts(), 12);
  EXPECT_FALSE(p.single_copy());
  for (int64_t e = 0; e < 12; ++e) {
    EXPECT_EQ(p.copies(e), plan.logcnt[0][size_t(e)]) << "expert " << e;
    for (int j = 0; j < p.copies(e); ++j) {
      const int32_t s = p.copy_slot(e, j);
      EXPECT_EQ(plan.phy2log[0][size_t(s)], e);
      EXPECT_TRUE(p.holds(int(s / 2), e));
      if (j > 0) {
        EXPECT_GT(s, p.copy_slot(e, j - 1));
      }
    }
    int ranks_holding = 0;
    for (int r = 0; r < 8; ++r) ranks_holding += p.holds(r, e);
    EXPECT_LE(ranks_holding, p.copies(e));
    EXPECT_GE(ranks_holding, 1);
  }
  const ExpertPlacement c = ExpertPlacement::contiguous(12, 4);
  EXPECT_TRUE(c.single_copy());
  for (int64_t e = 0; e < 12; ++e) EXPECT_EQ(c.rank_of_slot(c.copy_slot(e, 0)), e / 3);
}

TEST(ExpertPlacement, RefusesBadMaps) {
  auto msg = [](const std::vector<int>& p2l, int64_t E, int P) {
    return error_of([&] { ExpertPlacement::from_phy2log(p2l, E, P); });
  };
  EXPECT_TRUE(has(msg({0, 1, 2}, 3, 2), "3 slots for 3 experts on 2 ranks"));
  EXPECT_TRUE(has(msg({0, 1}, 3, 1), "2 slots for 3 experts"));
  EXPECT_TRUE(has(msg({0, 1, 3, 0}, 3, 2), "slot 2 holds expert 3, outside [0, 3)"));
  EXPECT_TRUE(has(msg({0, 0, 1, 1}, 3, 2), "expert 2 has no slot"));
  EXPECT_TRUE(has(msg({-1, 0, 1, 2}, 3, 2), "holds expert -1"));
}

// The rule, written plainly: units by rows descending (stable), each to the copy whose rank
// has the fewest rows so far (from `load`, updated), the first such copy on ties.
std::vector<int32_t> assign_twin(const ExpertPlacement& p, const std::vector<int32_t>& expert,
                                 const std::vector<int32_t>& rows, std::vector<int64_t>& load) {
  const size_t n = expert.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rows[a] > rows[b]; });
  std::vector<int32_t> out(n, -1);
  for (const size_t u : order) {
    int best = -1;
    for (int64_t s = 0; s < p.slots(); ++s) {  // slots ascending: the first copy wins ties
      if (p.phy2log()[size_t(s)] != expert[u]) continue;
      const int r = p.rank_of_slot(s);
      if (best < 0 || load[size_t(r)] < load[size_t(best)]) best = r;
    }
    out[u] = best;
    load[size_t(best)] += rows[u];
  }
  return out;
}

TEST(ExpertPlacement, AssignMatchesItsTwin) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const int P = 1 + int(rng() % 6);
    const int64_t E = 1 + int64_t(rng() % 20);
    const int64_t per = (E + P - 1) / P + int64_t(rng() % 3);  // slots per rank
    std::vector<int> p2l(size_t(per * P));
    for (size_t s = 0; s < p2l.size(); ++s) p2l[s] = s < size_t(E) ? int(s) : int(rng() % E);
    std::shuffle(p2l.begin(), p2l.end(), rng);
    const ExpertPlacement p = ExpertPlacement::from_phy2log(p2l, E, P);
    const size_t n = rng() % 40;
    std::vector<int32_t> expert(n), rows(n), got(n);
    for (size_t u = 0; u < n; ++u) {
      expert[u] = int32_t(rng() % E);
      rows[u] = 1 + int32_t(rng() % (trial % 2 ? 16 : 300));
    }
    std::vector<int64_t> rank_rows(static_cast<size_t>(P), 5);  // added to, not overwritten
    // Earlier calls' rows (every third trial none: nullptr).
    std::vector<int64_t> balance(static_cast<size_t>(P), 0);
    if (trial % 3 == 0)
      for (int64_t& b : balance) b = int64_t(rng() % 500);
    std::vector<int64_t> twin_load = balance;
    ExpertPlacement::Scratch scratch;
    p.assign(expert.data(), rows.data(), int64_t(n), got.data(), trial % 3 == 1 ? nullptr : balance.data(),
             rank_rows.data(), scratch);
    EXPECT_EQ(got, assign_twin(p, expert, rows, twin_load)) << "trial " << trial;
    if (trial % 3 != 1) {
      EXPECT_EQ(balance, twin_load) << "trial " << trial << ": balance not updated";
    }
    std::vector<int64_t> want(static_cast<size_t>(P), 5);
    for (size_t u = 0; u < n; ++u) {
      EXPECT_TRUE(p.holds(got[u], expert[u])) << "trial " << trial << ": a rank without the expert";
      want[size_t(got[u])] += rows[u];
    }
    EXPECT_EQ(rank_rows, want) << "trial " << trial;
  }
}

// On a skewed load the plan eplb makes for it lowers the busiest rank's share, as the
// expected loads (each expert's load split over its copies) and as the greedy assignment of
// that load's units actually gives it.
TEST(ExpertPlacement, EplbPlanBalancesASkewedLoad) {
  const int64_t E = 16;
  const int P = 4;
  std::vector<double> load(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) load[size_t(e)] = e < 2 ? 400 : 20 + 10 * (e % 3);  // two hot experts on rank 0
  const ExpertPlacement plain = ExpertPlacement::contiguous(E, P);
  const Plan plan = rebalance_experts(Loads{load}, {int(E + P), 4, 1, P});
  const ExpertPlacement balanced = ExpertPlacement::from_phy2log(plan.phy2log[0], E, P);
  std::vector<double> before(static_cast<size_t>(P)), after(static_cast<size_t>(P));
  expected_rank_load(plain, load.data(), before.data());
  expected_rank_load(balanced, load.data(), after.data());
  EXPECT_DOUBLE_EQ(std::accumulate(before.begin(), before.end(), 0.0),
                   std::accumulate(load.begin(), load.end(), 0.0));
  EXPECT_NEAR(std::accumulate(after.begin(), after.end(), 0.0), std::accumulate(load.begin(), load.end(), 0.0), 1e-9);
  const double mean = std::accumulate(load.begin(), load.end(), 0.0) / P;
  const double imb_before = *std::max_element(before.begin(), before.end()) / mean;
  const double imb_after = *std::max_element(after.begin(), after.end()) / mean;
  EXPECT_GT(imb_before, 2.0);
  EXPECT_LT(imb_after, 1.25);
  // The same load as units of work, one per (expert, 10 rows): the greedy assignment.
  std::vector<int32_t> expert, rows;
  for (int64_t e = 0; e < E; ++e)
    for (int k = 0; k < int(load[size_t(e)]) / 10; ++k) {
      expert.push_back(int32_t(e));
      rows.push_back(10);
    }
  std::vector<int32_t> rank(expert.size());
  ExpertPlacement::Scratch scratch;
  std::vector<int64_t> r0(static_cast<size_t>(P), 0), r1(static_cast<size_t>(P), 0);
  plain.assign(expert.data(), rows.data(), int64_t(expert.size()), rank.data(), nullptr, r0.data(), scratch);
  balanced.assign(expert.data(), rows.data(), int64_t(expert.size()), rank.data(), nullptr, r1.data(), scratch);
  EXPECT_DOUBLE_EQ(rank_imbalance(r0.data(), P), imb_before);  // one copy each: no choice
  EXPECT_LT(rank_imbalance(r1.data(), P), 1.25);
  // The same load one unit per call (as a server's calls: one prefill sequence each, whose
  // heaviest unit is a hot expert): with the balance carried between calls the copies share
  // the work as well as in one call; counted from zero each call, the first copy takes it all.
  std::vector<int64_t> carried(static_cast<size_t>(P), 0), c_rows(static_cast<size_t>(P), 0),
      fresh_rows(static_cast<size_t>(P), 0);
  for (size_t u = 0; u < expert.size(); ++u) {
    int32_t rk = 0;
    balanced.assign(&expert[u], &rows[u], 1, &rk, carried.data(), c_rows.data(), scratch);
    balanced.assign(&expert[u], &rows[u], 1, &rk, nullptr, fresh_rows.data(), scratch);
  }
  EXPECT_LT(rank_imbalance(c_rows.data(), P), 1.25);
  EXPECT_GT(rank_imbalance(fresh_rows.data(), P), 1.5);
  const std::vector<int64_t> none(static_cast<size_t>(P), 0);
  EXPECT_EQ(rank_imbalance(none.data(), P), 1.0);
}

// ---- The server's placement (serve/rebalance.h) ---------------------------------------------

// 5 layers, the first dense; 16 experts in 4 groups.
ModelConfig server_config() {
  ModelConfig c;
  c.num_hidden_layers = 5;
  c.first_k_dense_replace = 1;
  c.moe_layer_freq = 1;
  c.n_routed_experts = 16;
  c.n_group = 4;
  c.topk_group = 2;
  c.num_experts_per_tok = 4;
  return c;
}

std::string write_load(const std::string& name, const std::string& text) {
  const std::string p = (std::filesystem::temp_directory_path() / ("dsv3_eplb_" + name + ".json")).string();
  std::ofstream(p) << text;
  return p;
}

std::string row(int hot, double hot_load) {
  std::string s = "[";
  for (int e = 0; e < 16; ++e) s += (e ? ", " : "") + std::to_string(e == hot ? hot_load : 10.0 + e);
  return s + "]";
}

// The three layouts of a load file map to the same per-layer load: the server's own ("layers"
// listed), one row per MoE layer, one row per layer (the dense row ignored).
TEST(ServerPlacement, LoadFileLayouts) {
  const ModelConfig c = server_config();
  const std::string moe_rows = row(0, 500) + ", " + row(5, 400) + ", " + row(9, 300) + ", " + row(15, 200);
  const auto listed = serve::model_load_from_file(
      c, write_load("listed", "{\"weight\": [" + row(5, 400) + ", " + row(15, 200) + "], \"layers\": [2, 4], "
                              "\"assignments\": [1, 2]}"));
  const auto per_moe = serve::model_load_from_file(c, write_load("per_moe", "{\"weight\": [" + moe_rows + "]}"));
  const auto per_layer = serve::model_load_from_file(
      c, write_load("per_layer", "{\"weight\": [" + row(3, 999) + ", " + moe_rows + "]}"));
  ASSERT_EQ(per_moe.size(), 5u);
  EXPECT_EQ(per_moe, per_layer);
  EXPECT_EQ(per_moe[0], std::vector<double>(16, 0.0)) << "the dense layer carries no load";
  EXPECT_EQ(per_moe[1][0], 500);
  EXPECT_EQ(listed[2], per_moe[2]);
  EXPECT_EQ(listed[4], per_moe[4]);
  EXPECT_EQ(listed[1], std::vector<double>(16, 0.0)) << "a layer the file does not list";
  auto refused = [&](const std::string& name, const std::string& text) {
    return error_of([&] { serve::model_load_from_file(c, write_load(name, text)); });
  };
  EXPECT_TRUE(has(refused("neg", "{\"weight\": [[1, 2, -3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]], \"layers\": [1]}"),
                  "weight[0][2] = -3 is not a load"));
  EXPECT_TRUE(has(refused("huge", "{\"weight\": [[1e39, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]], \"layers\": [1]}"),
                  "weight[0][0] = 1e+39 is not a load"));
  EXPECT_TRUE(has(refused("dense", "{\"weight\": [" + row(0, 1) + "], \"layers\": [0]}"),
                  "row 0 is layer 0, which is not a MoE layer"));
  EXPECT_TRUE(has(refused("rows", "{\"weight\": [" + row(0, 1) + ", " + row(0, 1) + "]}"),
                  "2 rows of loads and no \"layers\" list"));
  EXPECT_TRUE(has(refused("width", "{\"weight\": [[1, 2, 3]]}"), "3 loads per layer, the model has 16"));
}

// The start placement: none without copies or a file; from a skewed file the hot expert of
// each layer gets a copy and the expected busiest rank drops against the contiguous layout;
// counts EPLB cannot place are refused naming the flag.
TEST(ServerPlacement, StartPlacement) {
  const ModelConfig c = server_config();
  serve::PlacementReport r;
  EXPECT_TRUE(serve::start_placement(c, 4, 0, "", &r).empty());
  const std::string f = write_load("skew", "{\"weight\": [" + row(0, 500) + ", " + row(5, 400) + ", " + row(9, 300) +
                                               ", " + row(15, 200) + "]}");
  const std::vector<ExpertPlacement> pl = serve::start_placement(c, 4, 4, f, &r);
  ASSERT_EQ(pl.size(), 5u);
  EXPECT_EQ(pl[0].slots(), 0) << "dense layer";
  EXPECT_EQ(r.source, "file");
  EXPECT_EQ(r.slots, 20);
  EXPECT_EQ(r.phy2log[0].size(), 0u);
  const int hot[] = {0, 5, 9, 15};
  for (int l = 1; l < 5; ++l) {
    EXPECT_EQ(pl[size_t(l)].slots(), 20);
    EXPECT_GE(pl[size_t(l)].copies(hot[l - 1]), 2) << "layer " << l;
    EXPECT_EQ(serve::placements_from(c, r.phy2log, 4)[size_t(l)], pl[size_t(l)]);
  }
  EXPECT_GT(r.before, 1.5);
  EXPECT_LT(r.after, 1.2);
  EXPECT_LT(r.after, r.before);
  const std::vector<ExpertPlacement> uni = serve::start_placement(c, 4, 4, "", &r);
  EXPECT_EQ(r.source, "uniform");
  EXPECT_EQ(uni[1].slots(), 20);
  EXPECT_THROW(serve::start_placement(c, 4, int64_t(1) << 20, "", &r), Error);
  EXPECT_THROW(serve::start_placement(c, 3, 4, "", &r), Error);  // 20 slots on 3 ranks
  std::vector<std::vector<int>> bad = r.phy2log;
  bad[2][0] = 16;
  EXPECT_THROW(serve::placements_from(c, bad, 4), Error);
}

TEST(EplbCli, ReadmeExample) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string load = write_tmp("load.json", nlohmann::json{{"weight", kReadmeWeight}}.dump());
  const CliRun r = cli("--load " + load + " --replicas 16 --groups 4 --nodes 2 --gpus 8");
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);  // stdout is the JSON alone
  const Plan plan = rebalance_experts(kReadmeWeight, kReadmeParams);
  EXPECT_EQ(j.at("phy2log").get<std::vector<std::vector<int>>>(), plan.phy2log);
  EXPECT_EQ(j.at("log2phy").get<std::vector<std::vector<std::vector<int>>>>(), plan.log2phy);
  EXPECT_EQ(j.at("logcnt").get<std::vector<std::vector<int>>>(), plan.logcnt);
  EXPECT_EQ(j.size(), 3u);
  EXPECT_TRUE(has(r.out, "[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1]")) << r.out;
  EXPECT_TRUE(has(r.err, "hierarchical policy, 2 layers, 12 experts -> 16 slots on 8 GPUs")) << r.err;

  const std::string file = (tmp_dir() / "plan.json").string();
  const CliRun o = cli("--load " + load + " --replicas 16 --groups 4 --nodes 2 --gpus 8 --out " + file);
  ASSERT_EQ(o.rc, 0) << o.err;
  EXPECT_EQ(o.out, "");
  EXPECT_EQ(slurp(file), r.out);
}

TEST(EplbCli, MalformedInputExitsOne) {
  if (!std::getenv("DSV3_BIN")) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  const std::string args = " --replicas 16 --groups 4 --nodes 2 --gpus 8";
  struct Case {
    std::string text, message;
  };
  const Case cases[] = {
      {"{\"weight\": [[1, 2, 3]", "not valid JSON"},
      {"[[1, 2, 3]]", "expected an object"},
      {"{\"weights\": [[1]]}", "unknown key \"weights\""},
      {"{}", "no \"weight\" key"},
      {"{\"weight\": []}", "non-empty array of layers"},
      {"{\"weight\": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [1, 2]]}", "weight[1] has 2 loads, weight[0] has 12"},
      {"{\"weight\": [[1, 2, 3, 4, 5, \"6\", 7, 8, 9, 10, 11, 12]]}", "weight[0][5] is \"6\", expected a number"},
      {"{\"weight\": [[1, 2, 3, 4, 5, -6, 7, 8, 9, 10, 11, 12]]}", "weight[0][5] = -6"},
      {"{\"weight\": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]}", "11 experts do not divide into 4 groups"},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string load = write_tmp("bad" + std::to_string(i++) + ".json", c.text);
    const CliRun r = cli("--load " + load + args);
    EXPECT_EQ(r.rc, 1) << c.text;
    EXPECT_TRUE(has(r.err, c.message)) << c.text << "\n" << r.err;
    EXPECT_EQ(r.out, "") << c.text;
  }
  const CliRun missing = cli("--load " + (tmp_dir() / "absent.json").string() + args);
  EXPECT_EQ(missing.rc, 1);
  EXPECT_TRUE(has(missing.err, "absent.json")) << missing.err;
}

}  // namespace
}  // namespace dsv3::eplb
