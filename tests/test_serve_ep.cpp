// Expert-parallel serving (serve/ep_step.h, model/moe.h MoeLayer::ep) computes the bits of
// one process.
// - under mpiexec (ctest mpi_serve_ep_np2): EpForward — Model::forward_batch with each rank
//   holding half of every MoE layer's routed experts gives, on every rank, logits
//   bit-identical to the same batch through the whole model in one process: prefill chunks
//   larger than kLinearGemvMaxM (the grouped GEMM form of moe_forward) beside decode-sized
//   rows (ffn_tasks_decode), then decode steps, in both batch modes, FP8 and BF16 weights.
// - alone (ctest test_serve_ep, which launches mpirun itself): EpServeCli — `mpirun -np 2
//   dsv3 serve --ep 2` answers concurrent greedy /v1/completions of different lengths (so
//   steps batch prefill chunks with decodes) with exactly the tokens and log-probs of
//   one-process `dsv3 serve` on the same checkpoint; every rank logs its share of the
//   weights; SIGTERM to rank 0 drains and ends every rank with exit 0; bad layouts are
//   refused before any work.
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <random>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "io/checkpoint.h"
#include "io/random_checkpoint.h"
#include "io/safetensors.h"
#include "model/linear.h"
#include "model/mla.h"
#include "model/model.h"
#include "model_test_util.h"
#include "parallel/comm.h"
#include "parallel/eplb.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int64_t kRows = 16;  // positions per pool block

// ---- EpForward: under mpiexec ------------------------------------------------------------

struct Step {
  int64_t p0, T;
};

// The batches of a short serving run: a first step of prompt chunks (two of them larger than
// kLinearGemvMaxM, so moe_forward's GEMM form runs beside the decode form), then decode
// steps with one verify-sized row.
std::vector<std::vector<Step>> steps() {
  return {{{0, 1}, {0, 3}, {0, 4}, {0, 9}, {0, 23}},
          {{1, 1}, {3, 1}, {4, 2}, {9, 1}, {23, 1}},
          {{2, 1}, {4, 1}, {6, 1}, {10, 3}, {24, 7}}};
}

fs::path shared_dir(const std::string& name) {
  const dist::Comm& w = dist::Comm::world();
  int64_t pid = ::getpid();
  w.bcast(&pid, 1, 0);  // rank 0's pid names the directory on every rank
  return fs::temp_directory_path() / ("dsv3_serve_ep_" + name + "_" + std::to_string(pid));
}

class EpForward : public ::testing::TestWithParam<std::tuple<CheckpointFormat, bool>> {
 protected:
  // Both models over one random checkpoint of the format (every rank), the EP one over the
  // world.
  void SetUp() override {
    const dist::Comm& world = dist::Comm::world();
    if (world.size() < 2) GTEST_SKIP() << "needs mpiexec -np 2 (ctest: mpi_serve_ep_np2)";
    dir_ = shared_dir(checkpoint_format_name(std::get<0>(GetParam())));
    ModelConfig cfg = tiny_v3_config();  // 8 routed experts, top-2, 1 shared
    cfg.num_hidden_layers = 3;
    if (world.rank() == 0) {
      fs::remove_all(dir_);
      fs::create_directories(dir_);
      RandomCheckpointOptions ro;
      ro.format = std::get<0>(GetParam());
      ro.seed = 23;
      ro.with_mtp = false;
      write_random_checkpoint(cfg, dir_.string(), ro);
    }
    world.barrier();
    ModelOptions mo;
    mo.with_mtp = false;
    one_ = std::make_unique<Model>(dir_.string(), mo);
    mo.ep = &world;
    ep_ = std::make_unique<Model>(dir_.string(), mo);
    one_->reserve_positions(64);
    ep_->reserve_positions(64);
  }
  void TearDown() override {
    if (dir_.empty()) return;
    one_.reset();
    ep_.reset();
    dist::Comm::world().barrier();
    if (dist::Comm::world().rank() == 0) fs::remove_all(dir_);
  }

  // Runs steps() through both models — before step k, place(k) may change the EP model's
  // placement — and expects every rank's logits and caches bit-identical to one process's.
  // Returns the EP model's routed rows per layer and rank [L, P] and the one process's
  // routed rows per layer and expert [L, E], summed over the steps.
  struct Loads {
    std::vector<int64_t> rank;
    std::vector<uint64_t> expert;
  };
  Loads run_steps(const std::function<void(int)>& place) {
    const dist::Comm& world = dist::Comm::world();
    const bool invariant = std::get<1>(GetParam());
    const ModelConfig& c = one_->config();
    const auto plan = steps();
    const int n = int(plan[0].size());
    const int64_t V = one_->vocab(), row = mla_cache_row(c), L = c.num_hidden_layers;
    const int64_t per_seq = 64 / kRows, n_blocks = per_seq * n;
    const int64_t rb = cache_row_bytes(one_->kv_cache_dtype(), row);
    std::vector<uint8_t> pool_one(size_t(L * n_blocks * kRows * rb)), pool_ep(pool_one.size());
    const KvPoolView v1{pool_one.data(), n_blocks, kRows, row, one_->kv_cache_dtype()};
    const KvPoolView v2{pool_ep.data(), n_blocks, kRows, row, ep_->kv_cache_dtype()};
    std::vector<std::vector<int32_t>> tables(static_cast<size_t>(n)), ids(static_cast<size_t>(n));
    for (int j = 0; j < n; ++j) {
      for (int64_t i = 0; i < per_seq; ++i) tables[size_t(j)].push_back(int32_t(j + i * n));
      ids[size_t(j)] = testing::ids_for(64, V, 70 + uint32_t(j));
    }
    ForwardScratch s1, s2;
    std::vector<int64_t> rank_load(size_t(L * world.size()), 0);
    std::vector<uint64_t> expert_load(size_t(L * c.n_routed_experts), 0);
    s2.rank_load = rank_load.data();
    s1.expert_load = expert_load.data();
    for (size_t k = 0; k < plan.size(); ++k) {
      if (place) place(int(k));
      std::vector<BatchSeq> b1(static_cast<size_t>(n)), b2(static_cast<size_t>(n));
      std::vector<std::vector<float>> l1(static_cast<size_t>(n)), l2(static_cast<size_t>(n));
      for (int j = 0; j < n; ++j) {
        const Step st = plan[k][size_t(j)];
        l1[size_t(j)].assign(size_t(st.T * V), 0.0f);
        l2[size_t(j)].assign(size_t(st.T * V), 1.0f);
        BatchSeq q;
        q.ids = ids[size_t(j)].data() + st.p0;
        q.T = st.T;
        q.p0 = st.p0;
        q.table = tables[size_t(j)].data();
        q.logits_from = 0;  // every row's logits
        b1[size_t(j)] = b2[size_t(j)] = q;
        b1[size_t(j)].logits = l1[size_t(j)].data();
        b2[size_t(j)].logits = l2[size_t(j)].data();
      }
      // Small sequences first, as forward_batch requires.
      std::stable_partition(b1.begin(), b1.end(), [](const BatchSeq& q) { return q.T <= kLinearGemvMaxM; });
      std::stable_partition(b2.begin(), b2.end(), [](const BatchSeq& q) { return q.T <= kLinearGemvMaxM; });
      one_->forward_batch(v1, b1.data(), n, invariant, s1);
      ep_->forward_batch(v2, b2.data(), n, invariant, s2);
      for (int j = 0; j < n; ++j)
        EXPECT_EQ(std::memcmp(l1[size_t(j)].data(), l2[size_t(j)].data(), l1[size_t(j)].size() * sizeof(float)), 0)
            << "rank " << world.rank() << " step " << k << " sequence " << j << ": the EP logits differ";
    }
    EXPECT_EQ(std::memcmp(pool_one.data(), pool_ep.data(), pool_one.size()), 0) << "the caches differ";
    // Every routed (token, expert) row ran on exactly one rank: per MoE layer the rows add up
    // to the steps' tokens times top-k.
    int64_t tokens = 0;
    for (const auto& stp : plan)
      for (const Step& st : stp) tokens += st.T;
    for (int64_t l = 0; l < L; ++l) {
      int64_t sum = 0;
      for (int r = 0; r < world.size(); ++r) sum += rank_load[size_t(l * world.size() + r)];
      EXPECT_EQ(sum, l < c.first_k_dense_replace ? 0 : tokens * c.num_experts_per_tok) << "layer " << l;
    }
    return {rank_load, expert_load};
  }

  fs::path dir_;
  std::unique_ptr<Model> one_, ep_;
};

TEST_P(EpForward, LogitsEqualOneProcessBitwise) {
  const dist::Comm& world = dist::Comm::world();
  const ModelConfig& c = one_->config();
  ASSERT_EQ(c.n_routed_experts % world.size(), 0);
  EXPECT_EQ(ep_->first_expert(), world.rank() * c.n_routed_experts / world.size());
  EXPECT_EQ(ep_->last_expert(), (world.rank() + 1) * c.n_routed_experts / world.size());
  // One process holds every tensor of the file; a rank all but the others' experts.
  int64_t file_bytes = 0;
  for (const auto& sh : one_->checkpoint().shards())
    file_bytes += int64_t(sh->file_size()) - int64_t(sh->header().data_start());
  EXPECT_EQ(one_->held_weight_bytes(), file_bytes);
  EXPECT_LT(ep_->held_weight_bytes(), one_->held_weight_bytes());
  EXPECT_EQ(ep_->held_weight_bytes() + ep_->unbound_expert_bytes(), one_->held_weight_bytes());
  const int64_t moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
  EXPECT_EQ(ep_->held_experts(), moe_layers * c.n_routed_experts / world.size());
  const Loads load = run_steps(nullptr);
  // The contiguous layout: rank r's rows are those of its block of experts.
  const int P = world.size();
  const int64_t E = c.n_routed_experts;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (int r = 0; r < P; ++r) {
      int64_t want = 0;
      for (int64_t e = r * E / P; e < (r + 1) * E / P; ++e) want += int64_t(load.expert[size_t(l * E + e)]);
      EXPECT_EQ(load.rank[size_t(l * P + r)], want) << "layer " << l << " rank " << r;
    }
}

// Redundant experts (model/expert_placement.h): the same bits whatever the placement — one
// from eplb on a skewed load (the hot experts copied onto other ranks) for two steps, so the
// balance carried between calls steers the second, then one drawn at random (copies
// anywhere, a rank possibly holding two copies of one expert) — changed between steps as the
// server does. Each rank holds exactly the experts of its slots, and back in the contiguous
// blocks its share again. A placement that does not fit is refused and changes nothing.
TEST_P(EpForward, RedundantExpertsKeepTheBits) {
  const dist::Comm& world = dist::Comm::world();
  const ModelConfig& c = one_->config();
  const int P = world.size();
  const int64_t E = c.n_routed_experts, L = c.num_hidden_layers, S = E + P;
  std::vector<std::vector<double>> skew(static_cast<size_t>(L), std::vector<double>(static_cast<size_t>(E)));
  for (int64_t l = 0; l < L; ++l)
    for (int64_t e = 0; e < E; ++e) skew[size_t(l)][size_t(e)] = e == (l % E) ? 100.0 : double(1 + e);
  eplb::Params ep;
  ep.num_replicas = int(S);
  ep.num_groups = int(c.n_group);
  ep.num_gpus = P;
  const eplb::Plan plan = eplb::rebalance_experts(skew, ep);
  const size_t nl = static_cast<size_t>(L);
  std::vector<ExpertPlacement> balanced(nl), random(nl), plain(nl);
  std::mt19937 rng(7);  // the same draws on every rank
  for (int64_t l = c.first_k_dense_replace; l < L; ++l) {
    balanced[size_t(l)] = ExpertPlacement::from_phy2log(plan.phy2log[size_t(l)], E, P);
    std::vector<int> p2l(static_cast<size_t>(S));
    for (int64_t s = 0; s < S; ++s) p2l[size_t(s)] = s < E ? int(s) : int(rng() % E);
    std::shuffle(p2l.begin(), p2l.end(), rng);
    random[size_t(l)] = ExpertPlacement::from_phy2log(p2l, E, P);
    plain[size_t(l)] = ExpertPlacement::contiguous(E, P);
    EXPECT_GT(balanced[size_t(l)].copies(l % E), 1) << "eplb copies the hot expert";
  }
  auto held = [&](const std::vector<ExpertPlacement>& pl) {
    int64_t n = 0;
    for (int64_t l = c.first_k_dense_replace; l < L; ++l)
      for (int64_t e = 0; e < E; ++e) n += pl[size_t(l)].holds(world.rank(), e);
    return n;
  };
  const std::vector<const std::vector<ExpertPlacement>*> order = {&balanced, nullptr, &random};
  run_steps([&](int k) {
    if (!order[size_t(k)]) return;  // the same placement as the step before
    const auto& pl = *order[size_t(k)];
    ep_->set_expert_placement(pl);
    EXPECT_EQ(ep_->held_experts(), held(pl)) << "step " << k;
    EXPECT_EQ(ep_->held_weight_bytes() + ep_->unbound_expert_bytes(), one_->held_weight_bytes());
  });
  ep_->set_expert_placement(plain);
  const int64_t moe_layers = L - c.first_k_dense_replace;
  EXPECT_EQ(ep_->held_experts(), moe_layers * E / P);
  const int64_t bytes = ep_->held_weight_bytes();
  std::vector<ExpertPlacement> wrong(nl);
  for (int64_t l = c.first_k_dense_replace; l < L; ++l) wrong[size_t(l)] = ExpertPlacement::contiguous(E, P == 2 ? 4 : 2);
  EXPECT_THROW(ep_->set_expert_placement(wrong), Error);
  EXPECT_EQ(ep_->held_experts(), moe_layers * E / P) << "a refused placement changed the experts held";
  EXPECT_EQ(ep_->held_weight_bytes(), bytes);
  for (int64_t l = c.first_k_dense_replace; l < L; ++l) EXPECT_EQ(ep_->expert_placement()[size_t(l)], plain[size_t(l)]);
}

INSTANTIATE_TEST_SUITE_P(Formats, EpForward,
                         ::testing::Combine(::testing::Values(CheckpointFormat::FP8, CheckpointFormat::BF16),
                                            ::testing::Bool()));

// ---- EpServeCli: one process, launching dsv3 and mpirun ----------------------------------

bool under_mpi() { return dist::Comm::world().size() > 1; }
bool have_mpirun() { return dist::mpi_built() && std::system("command -v mpirun >/dev/null 2>&1") == 0; }

std::string read(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string mpirun(int np) {
  return "mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "
         "--mca btl self,vader -np " + std::to_string(np) + " ";
}

fs::path work() {
  static const fs::path d = [] {
    const fs::path p = fs::temp_directory_path() / ("dsv3_serve_ep_cli_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
  }();
  return d;
}

// The tiny FP8 model the serve tests use (tests/serve/make_model.sh: 16 routed experts).
fs::path model_dir() {
  static const fs::path d = [] {
    const fs::path p = work() / "model";
    const std::string cmd = "tests/serve/make_model.sh " + p.string() + " >/dev/null 2>" +
                            (work() / "make_model.err").string();
    if (std::system(cmd.c_str()) != 0) ADD_FAILURE() << read(work() / "make_model.err");
    return p;
  }();
  return d;
}

struct Server {
  pid_t pid = -1;   // the shell exec'd into dsv3 or mpirun (own process group)
  fs::path err;
  int port = 0;
  pid_t rank0 = -1;  // the process that takes SIGTERM (rank 0 under mpirun)
};

// Starts `prefix dsv3 serve ARGS --port 0` and waits for "ready"; port and rank 0 from stderr.
Server start(const std::string& name, const std::string& prefix, const std::string& args) {
  Server s;
  s.err = work() / (name + ".err");
  const std::string cmd = "exec " + prefix + std::getenv("DSV3_BIN") + " serve --model " +
                          model_dir().string() + " --port 0 " + args + " 2>" + s.err.string();
  s.pid = ::fork();
  if (s.pid == 0) {
    ::setpgid(0, 0);
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::setpgid(s.pid, s.pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string e = read(s.err);
    const size_t r = e.find("dsv3 serve: ready on http://127.0.0.1:");
    if (r != std::string::npos) {
      s.port = std::stoi(e.substr(r + std::strlen("dsv3 serve: ready on http://127.0.0.1:")));
      const size_t p = e.find("rank 0 pid ", r);
      s.rank0 = p != std::string::npos ? pid_t(std::stol(e.substr(p + 11))) : s.pid;
      return s;
    }
    if (::waitpid(s.pid, nullptr, WNOHANG) == s.pid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(-s.pid, SIGKILL);
  ::waitpid(s.pid, nullptr, 0);
  ADD_FAILURE() << name << ": the server did not become ready:\n" << read(s.err);
  s.pid = -1;
  return s;
}

// SIGTERM to rank 0, then the job's exit status (killed after 60 s).
int stop(const Server& s) {
  ::kill(s.rank0, SIGTERM);
  int st = 0;
  const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < limit) {
    if (::waitpid(s.pid, &st, WNOHANG) == s.pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(-s.pid, SIGKILL);
  ::waitpid(s.pid, &st, 0);
  return -1;
}

// Greedy completions, all sent at once so the engine batches them: prompts of different
// lengths (some longer than a prefill step's decode rows) and completions of different
// lengths. Returns each choice (text, tokens, log-probs) as JSON text.
std::vector<std::string> completions(int port) {
  struct Ask {
    int64_t prompt, max_tokens;
  };
  const Ask asks[] = {{3, 24}, {17, 9}, {40, 30}, {1, 16}, {70, 12}, {9, 40}};
  std::vector<std::string> out(std::size(asks));
  std::vector<std::thread> th;
  for (size_t i = 0; i < std::size(asks); ++i)
    th.emplace_back([&, i] {
      httplib::Client cli("127.0.0.1", port);
      cli.set_read_timeout(120, 0);
      const std::vector<int32_t> ids = testing::ids_for(asks[i].prompt, 400, 90 + uint32_t(i));
      const json body = {{"prompt", ids}, {"max_tokens", asks[i].max_tokens}, {"temperature", 0},
                         {"ignore_eos", true}, {"logprobs", 2}};
      auto r = cli.Post("/v1/completions", body.dump(), "application/json");
      if (!r || r->status != 200) {
        out[i] = "request failed: " + (r ? std::to_string(r->status) + " " + r->body : std::string("no answer"));
        return;
      }
      const json j = json::parse(r->body);
      out[i] = j["choices"][0].dump();
    });
  for (auto& t : th) t.join();
  return out;
}

// One thread per process in every run (the ranks share this machine's cores). No prefix
// cache: a second round of the same prompts would start from cached blocks, and a prompt's
// rest computed after a cached prefix takes other kernels than the whole prompt at once.
const std::string kArgs = "--max-running 8 --prefill-chunk 32 --speculative off --threads 1 --no-prefix-cache";

// The one-process server's answers (started once), and its refusal to rebalance.
const std::vector<std::string>& one_process() {
  static const std::vector<std::string> want = [] {
    const Server one = start("one", "", kArgs);
    if (one.pid <= 0) return std::vector<std::string>{};
    std::vector<std::string> w = completions(one.port);
    httplib::Client cli("127.0.0.1", one.port);
    auto r = cli.Post("/admin/rebalance", "", "application/json");
    EXPECT_TRUE(r && r->status == 400 && r->body.find("not_expert_parallel") != std::string::npos)
        << (r ? r->body : "no answer");
    EXPECT_EQ(stop(one), 0) << read(one.err);
    for (const std::string& x : w) {
      EXPECT_EQ(x.rfind("request failed", 0), std::string::npos) << x;
      EXPECT_NE(x.find("\"token_logprobs\""), std::string::npos) << x;
    }
    return w;
  }();
  return want;
}

TEST(EpServeCli, CompletionsEqualOneProcess) {
  if (under_mpi()) GTEST_SKIP() << "the CLI test runs from the one-process binary";
  if (!have_mpirun()) GTEST_SKIP() << "mpirun or an MPI build not available";
  const std::vector<std::string>& want = one_process();
  ASSERT_FALSE(want.empty());
  const Server ep = start("ep2", mpirun(2), kArgs + " --ep 2");
  ASSERT_GT(ep.pid, 0);
  ASSERT_NE(ep.rank0, ep.pid) << "rank 0's pid not in the ready line:\n" << read(ep.err);
  const std::vector<std::string> got = completions(ep.port);
  EXPECT_EQ(stop(ep), 0) << read(ep.err);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "request " << i;
  const std::string e = read(ep.err);
  EXPECT_NE(e.find("rank 0/2: routed experts [0, 8)"), std::string::npos) << e;
  EXPECT_NE(e.find("rank 1/2: routed experts [8, 16)"), std::string::npos) << e;
  EXPECT_NE(e.find("rank 1/2: stopped after"), std::string::npos) << e;
  EXPECT_NE(e.find("dsv3 serve: stopped"), std::string::npos) << e;
  EXPECT_EQ(e.find("expert placement"), std::string::npos) << "the contiguous layout needs no placement\n" << e;
}

// The value of a Prometheus sample line "name{labels} value" (-1 when absent).
double metric(const std::string& text, const std::string& sample) {
  const size_t at = text.find("\n" + sample + " ");
  return at == std::string::npos ? -1 : std::stod(text.substr(at + sample.size() + 2));
}

// Redundant experts (serve/rebalance.h): 2 extra slots on 2 ranks, placed at start (uniform
// load), re-placed every 3 steps while the requests run and once more on POST
// /admin/rebalance between two rounds of them: every answer is still the one process's,
// every routed row ran on some rank, and the endpoints report the placement.
TEST(EpServeCli, RedundantExpertsAndRebalancingKeepTheAnswers) {
  if (under_mpi()) GTEST_SKIP() << "the CLI test runs from the one-process binary";
  if (!have_mpirun()) GTEST_SKIP() << "mpirun or an MPI build not available";
  const std::vector<std::string>& want = one_process();
  ASSERT_FALSE(want.empty());
  const Server ep = start("ep2r", mpirun(2), kArgs + " --ep 2 --redundant-experts 2 --rebalance-every 3");
  ASSERT_GT(ep.pid, 0);
  httplib::Client cli("127.0.0.1", ep.port);
  cli.set_read_timeout(120, 0);
  auto r = cli.Post("/admin/rebalance", "", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 409) << r->body;  // nothing routed yet
  EXPECT_NE(r->body.find("no_expert_load"), std::string::npos) << r->body;

  const std::vector<std::string> first = completions(ep.port);
  r = cli.Post("/admin/rebalance", "", "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json rb = json::parse(r->body);
  EXPECT_EQ(rb["slots"], 18);
  EXPECT_EQ(rb["ranks"], 2);
  EXPECT_GT(rb["assignments"].get<double>(), 0);
  for (const char* k : {"expected_imbalance_before", "expected_imbalance_after"})
    EXPECT_TRUE(rb[k].is_number() && std::isfinite(rb[k].get<double>())) << k << ": " << r->body;
  // The load since the last placement, or since start when an automatic rebalance has just
  // emptied that window.
  EXPECT_TRUE(rb["source"] == "window" || rb["source"] == "total") << r->body;
  ASSERT_EQ(rb["phy2log"].size(), rb["layers"].size());
  ASSERT_FALSE(rb["phy2log"].empty());
  for (const json& row : rb["phy2log"]) {
    ASSERT_EQ(row.size(), 18u);
    std::vector<int> seen(16, 0);
    for (const json& e : row) ++seen.at(e.get<size_t>());
    for (int e = 0; e < 16; ++e) EXPECT_GE(seen[size_t(e)], 1) << "expert " << e << " lost its slot";
  }
  const std::vector<std::string> second = completions(ep.port);

  auto m = cli.Get("/metrics");
  ASSERT_TRUE(m && m->status == 200);
  const double r0 = metric(m->body, "dsv3_ep_rank_rows_total{rank=\"0\"}"),
               r1 = metric(m->body, "dsv3_ep_rank_rows_total{rank=\"1\"}");
  EXPECT_GT(r0, 0) << m->body;
  EXPECT_GT(r1, 0) << m->body;
  double assigned = 0;
  for (int l = 0; l < 8; ++l) assigned += std::max(0.0, metric(m->body, "dsv3_expert_assignments_total{layer=\"" +
                                                                          std::to_string(l) + "\"}"));
  EXPECT_EQ(r0 + r1, assigned) << "every routed row runs on exactly one rank";
  EXPECT_GE(metric(m->body, "dsv3_expert_rebalances_total"), 2) << m->body;  // automatic + asked
  EXPECT_TRUE(std::isfinite(metric(m->body, "dsv3_ep_rank_imbalance"))) << m->body;
  auto l = cli.Get("/v1/expert_load");
  ASSERT_TRUE(l && l->status == 200);
  const json lj = json::parse(l->body);
  ASSERT_TRUE(lj.contains("placement")) << l->body;
  EXPECT_EQ(lj["placement"]["slots"], 18);
  ASSERT_EQ(lj["rank_load"].size(), lj["layers"].size());
  // Rows per rank since the last placement (an automatic one may have come after the last
  // step): a part of all the rows.
  int64_t since = 0;
  for (const json& rl : lj["rank_load"]) {
    EXPECT_EQ(rl.size(), 2u);
    for (const json& v : rl) since += v.get<int64_t>();
  }
  EXPECT_LE(double(since), r0 + r1);
  EXPECT_EQ(stop(ep), 0) << read(ep.err);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(first[i], want[i]) << "request " << i << " (placement at start, rebalanced every 3 steps)";
    EXPECT_EQ(second[i], want[i]) << "request " << i << " (after POST /admin/rebalance)";
  }
  const std::string e = read(ep.err);
  EXPECT_NE(e.find("expert placement at start: 18 slots per MoE layer on 2 ranks, from the uniform load"),
            std::string::npos) << e;
  EXPECT_NE(e.find("expert placement rebalanced: 18 slots"), std::string::npos) << e;
  EXPECT_NE(e.find("rank 1/2: stopped after"), std::string::npos) << e;

  // The load it served, as GET /v1/expert_load gave it, places the experts of the next start
  // (--expert-load, no copies): the same answers again.
  const fs::path load = work() / "served_load.json";
  std::ofstream(load) << l->body;
  const Server again = start("ep2load", mpirun(2), kArgs + " --ep 2 --expert-load " + load.string());
  ASSERT_GT(again.pid, 0);
  const std::vector<std::string> third = completions(again.port);
  EXPECT_EQ(stop(again), 0) << read(again.err);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(third[i], want[i]) << "request " << i << " (--expert-load)";
  const std::string e2 = read(again.err);
  EXPECT_NE(e2.find("expert placement at start: 16 slots per MoE layer on 2 ranks, from the file load"),
            std::string::npos) << e2;
  EXPECT_NE(e2.find("rank 1/2: 8 routed experts over the MoE layers (the start placement)"), std::string::npos) << e2;
}

// Refused before any work, with a message on every rank.
TEST(EpServeCli, BadLayoutsAreRefused) {
  if (under_mpi()) GTEST_SKIP() << "the CLI test runs from the one-process binary";
  const std::string bin = std::getenv("DSV3_BIN");
  const fs::path err = work() / "refuse.err";
  auto run = [&](const std::string& prefix, const std::string& args) {
    const std::string cmd = prefix + bin + " serve --model " + model_dir().string() + " --port 0 " +
                            args + " 2>" + err.string() + " >/dev/null";
    const int st = std::system(cmd.c_str());
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  };
  EXPECT_EQ(run("", "--ep 2"), 1);
  EXPECT_NE(read(err).find("launch with mpirun -np 2"), std::string::npos) << read(err);
  EXPECT_EQ(run("", "--ep 0"), 1);
  EXPECT_NE(read(err).find("--ep must be >= 1"), std::string::npos) << read(err);
  EXPECT_EQ(run("", "--redundant-experts 2"), 1);
  EXPECT_NE(read(err).find("place experts over the ranks of expert-parallel serving"), std::string::npos) << read(err);
  if (!have_mpirun()) return;
  EXPECT_NE(run(mpirun(2), "--ep 1"), 0);
  std::string e = read(err);
  EXPECT_NE(e.find("[rank 0] --ep 1 must equal the number of processes"), std::string::npos) << e;
  EXPECT_NE(e.find("[rank 1] --ep 1 must equal the number of processes"), std::string::npos) << e;
  EXPECT_NE(run(mpirun(2), "--ep 2 --speculative mtp"), 0);
  e = read(err);
  EXPECT_NE(e.find("--speculative mtp is not supported with --ep 2"), std::string::npos) << e;
  EXPECT_NE(run(mpirun(2), "--ep 2 --role prefill"), 0);
  e = read(err);
  EXPECT_NE(e.find("--role prefill is not supported with --ep 2"), std::string::npos) << e;
  EXPECT_NE(run(mpirun(2), "--ep 2 --redundant-experts 1"), 0);
  e = read(err);
  EXPECT_NE(e.find("[rank 1] --redundant-experts 1: the 16 routed experts plus 1 copies must divide evenly "
                   "over the 2 ranks"), std::string::npos) << e;
  const fs::path bad = work() / "bad_load.json";
  std::ofstream(bad) << "{\"weight\": [[1, 2, 3]]}";
  EXPECT_NE(run(mpirun(2), "--ep 2 --expert-load " + bad.string()), 0);
  e = read(err);
  EXPECT_NE(e.find("[rank 0] --expert-load: " + bad.string() + ": 3 loads per layer, the model has 16 routed experts"),
            std::string::npos) << e;
}

}  // namespace
}  // namespace dsv3

// Under mpiexec every rank runs the EpForward tests; MPI ends after them.
int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  dsv3::dist::Comm::world();  // MPI_Init when launched by mpiexec
  const int rc = RUN_ALL_TESTS();
  dsv3::dist::finalize();
  return rc;
}
