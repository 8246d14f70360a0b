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

#include <chrono>
#include <cstring>
#include <filesystem>
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

class EpForward : public ::testing::TestWithParam<std::tuple<CheckpointFormat, bool>> {};

TEST_P(EpForward, LogitsEqualOneProcessBitwise) {
  const dist::Comm& world = dist::Comm::world();
  if (world.size() < 2) GTEST_SKIP() << "needs mpiexec -np 2 (ctest: mpi_serve_ep_np2)";
  const auto [format, invariant] = GetParam();
  const fs::path dir = shared_dir(checkpoint_format_name(format));
  ModelConfig cfg = tiny_v3_config();  // 8 routed experts, top-2, 1 shared
  cfg.num_hidden_layers = 3;
  if (world.rank() == 0) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    RandomCheckpointOptions ro;
    ro.format = format;
    ro.seed = 23;
    ro.with_mtp = false;
    write_random_checkpoint(cfg, dir.string(), ro);
  }
  world.barrier();
  ModelOptions mo;
  mo.with_mtp = false;
  Model one(dir.string(), mo);
  mo.ep = &world;
  Model ep(dir.string(), mo);
  const ModelConfig& c = one.config();
  ASSERT_EQ(c.n_routed_experts % world.size(), 0);
  EXPECT_EQ(ep.first_expert(), world.rank() * c.n_routed_experts / world.size());
  EXPECT_EQ(ep.last_expert(), (world.rank() + 1) * c.n_routed_experts / world.size());
  // One process holds every tensor of the file; a rank all but the others' experts.
  int64_t file_bytes = 0;
  for (const auto& sh : one.checkpoint().shards())
    file_bytes += int64_t(sh->file_size()) - int64_t(sh->header().data_start());
  EXPECT_EQ(one.held_weight_bytes(), file_bytes);
  EXPECT_LT(ep.held_weight_bytes(), one.held_weight_bytes());
  EXPECT_EQ(ep.held_weight_bytes() + ep.unbound_expert_bytes(), one.held_weight_bytes());
  one.reserve_positions(64);
  ep.reserve_positions(64);

  const auto plan = steps();
  const int n = int(plan[0].size());
  const int64_t V = one.vocab(), row = mla_cache_row(c), L = c.num_hidden_layers;
  const int64_t per_seq = 64 / kRows, n_blocks = per_seq * n;
  const int64_t rb = cache_row_bytes(one.kv_cache_dtype(), row);
  std::vector<uint8_t> pool_one(size_t(L * n_blocks * kRows * rb)), pool_ep(pool_one.size());
  const KvPoolView v1{pool_one.data(), n_blocks, kRows, row, one.kv_cache_dtype()};
  const KvPoolView v2{pool_ep.data(), n_blocks, kRows, row, ep.kv_cache_dtype()};
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(n)), ids(static_cast<size_t>(n));
  for (int j = 0; j < n; ++j) {
    for (int64_t i = 0; i < per_seq; ++i) tables[size_t(j)].push_back(int32_t(j + i * n));
    ids[size_t(j)] = testing::ids_for(64, V, 70 + uint32_t(j));
  }
  ForwardScratch s1, s2;
  for (size_t k = 0; k < plan.size(); ++k) {
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
    one.forward_batch(v1, b1.data(), n, invariant, s1);
    ep.forward_batch(v2, b2.data(), n, invariant, s2);
    for (int j = 0; j < n; ++j)
      EXPECT_EQ(std::memcmp(l1[size_t(j)].data(), l2[size_t(j)].data(), l1[size_t(j)].size() * sizeof(float)), 0)
          << "rank " << world.rank() << " step " << k << " sequence " << j << ": the EP logits differ";
  }
  EXPECT_EQ(std::memcmp(pool_one.data(), pool_ep.data(), pool_one.size()), 0) << "the caches differ";
  world.barrier();
  if (world.rank() == 0) fs::remove_all(dir);
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

TEST(EpServeCli, CompletionsEqualOneProcess) {
  if (under_mpi()) GTEST_SKIP() << "the CLI test runs from the one-process binary";
  if (!have_mpirun()) GTEST_SKIP() << "mpirun or an MPI build not available";
  // One thread per process in both runs (the ranks share this machine's cores).
  const std::string args = "--max-running 8 --prefill-chunk 32 --speculative off --threads 1";
  const Server one = start("one", "", args);
  ASSERT_GT(one.pid, 0);
  const std::vector<std::string> want = completions(one.port);
  EXPECT_EQ(stop(one), 0) << read(one.err);

  const Server ep = start("ep2", mpirun(2), args + " --ep 2");
  ASSERT_GT(ep.pid, 0);
  ASSERT_NE(ep.rank0, ep.pid) << "rank 0's pid not in the ready line:\n" << read(ep.err);
  const std::vector<std::string> got = completions(ep.port);
  EXPECT_EQ(stop(ep), 0) << read(ep.err);
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(want[i].rfind("request failed", 0), std::string::npos) << want[i];
    EXPECT_NE(want[i].find("\"token_logprobs\""), std::string::npos) << want[i];
    EXPECT_EQ(got[i], want[i]) << "request " << i;
  }
  const std::string e = read(ep.err);
  EXPECT_NE(e.find("rank 0/2: routed experts [0, 8)"), std::string::npos) << e;
  EXPECT_NE(e.find("rank 1/2: routed experts [8, 16)"), std::string::npos) << e;
  EXPECT_NE(e.find("rank 1/2: stopped after"), std::string::npos) << e;
  EXPECT_NE(e.find("dsv3 serve: stopped"), std::string::npos) << e;
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
