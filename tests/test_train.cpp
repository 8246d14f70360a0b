// `dsv3 train`'s promises (src/train/trainer.h, docs/training.md), run through the CLI
// ($DSV3_BIN, set by ctest) on a very small model: exact resume (metrics and master weights
// bit-identical to an uninterrupted run, F32 and BF16), a safe stop on SIGINT/SIGTERM with a
// complete checkpoint that resumes, leftover partial checkpoints ignored, a stop on a real
// divergence (exit 3, `latest` still the last good checkpoint), clear errors with nothing
// written for bad input, and checkpoints that `dsv3 score/generate` load.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "data/dataset.h"
#include "data/prepare.h"
#include "model/model.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"
#include "train_test_util.h"

namespace dsv3 {
namespace {

using namespace train_test;


// ---- 1. Exact resume --------------------------------------------------------------------

class ExactResume : public ::testing::TestWithParam<const char*> {};

TEST_P(ExactResume, MetricsAndWeightsMatchAnUninterruptedRun) {
  NEED_BIN();
  const std::string prec = GetParam();
  const std::string cfg = write_config("resume_" + prec, train_json(prec.c_str()));
  const fs::path a = fresh("resume_a_" + prec), b = fresh("resume_b_" + prec);

  const CliRun ra = cli(train_args(cfg, a));
  ASSERT_EQ(ra.rc, 0) << ra.err;
  const std::vector<json> ma = metrics(a);
  ASSERT_EQ(ma.size(), 12u);
  EXPECT_EQ(latest(a), "step-000012");
  // keep_checkpoints 2: step-000008 and the final one.
  EXPECT_FALSE(fs::exists(a / "step-000004"));
  EXPECT_TRUE(fs::exists(a / "step-000008"));

  // Stop at 6 (between checkpoints), then pretend a crash: a step logged after the checkpoint
  // and a half-written next checkpoint.
  const CliRun rb = cli(train_args(cfg, b) + " --steps 6");
  ASSERT_EQ(rb.rc, 0) << rb.err;
  EXPECT_EQ(latest(b), "step-000006");
  {
    std::ofstream(b / "metrics.jsonl", std::ios::app) << json({{"step", 7}, {"loss", 99.0}}).dump() << "\n";
    write(b / ".tmp-step-000008" / "config.json", "{\"trunc");
  }
  const CliRun rr = cli(train_args(cfg, b) + " --resume");
  ASSERT_EQ(rr.rc, 0) << rr.err;
  EXPECT_NE(rr.err.find("at step 6"), std::string::npos) << rr.err;
  EXPECT_FALSE(fs::exists(b / ".tmp-step-000008"));
  EXPECT_EQ(latest(b), "step-000012");

  const std::vector<json> mb = metrics(b);
  ASSERT_EQ(mb.size(), ma.size());
  for (size_t i = 0; i < ma.size(); ++i) expect_same_metrics(ma[i], mb[i]);
  // F32 master weights, AdamW moments, the HF checkpoint: byte for byte.
  for (const char* f : {"trainer/state.safetensors", "model.safetensors", "config.json"})
    EXPECT_TRUE(read(a / "step-000012" / f) == read(b / "step-000012" / f)) << f;
  const json sa = json::parse(read(a / "step-000012/trainer/trainer_state.json"));
  const json sb = json::parse(read(b / "step-000012/trainer/trainer_state.json"));
  for (const char* k : {"step", "adam_t", "tokens", "loader"}) EXPECT_EQ(sa.at(k), sb.at(k)) << k;
}

INSTANTIATE_TEST_SUITE_P(Precisions, ExactResume, ::testing::Values("f32", "bf16"));

// ---- 2. Signals --------------------------------------------------------------------------

struct Child {
  pid_t pid = -1;
  fs::path err;
};

Child spawn_train(const std::string& config, const fs::path& out) {
  Child c;
  c.err = out.string() + ".stderr";
  const std::string bin = std::getenv("DSV3_BIN"), data = env().data, o = out.string(), e = c.err.string();
  c.pid = ::fork();
  if (c.pid == 0) {
    const int fd = ::open(e.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::execl(bin.c_str(), bin.c_str(), "train", "--config", config.c_str(), "--data", data.c_str(), "--out",
            o.c_str(), "--threads", "1", "--quiet", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return c;
}

// Waits until metrics.jsonl has n lines (or the child exits, or 120 s pass).
bool wait_for_steps(const Child& c, const fs::path& out, size_t n) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(out / "metrics.jsonl")) {
      const std::string t = read(out / "metrics.jsonl");
      if (size_t(std::count(t.begin(), t.end(), '\n')) >= n) return true;
    }
    int st = 0;
    if (::waitpid(c.pid, &st, WNOHANG) == c.pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

struct SignalCase {
  int sig;
  const char* name;
  int code;
};

class StopOnSignal : public ::testing::TestWithParam<SignalCase> {};

TEST_P(StopOnSignal, SavesACompleteCheckpointThatResumes) {
  NEED_BIN();
  const SignalCase sc = GetParam();
  json j = train_json("bf16");
  j["steps"] = 100000;
  j["checkpoint_every"] = 3;
  const std::string cfg = write_config(std::string("signal_") + sc.name, j);
  const fs::path out = fresh(std::string("signal_") + sc.name);

  const Child c = spawn_train(cfg, out);
  ASSERT_GT(c.pid, 0);
  const bool started = wait_for_steps(c, out, 4);
  ASSERT_EQ(::kill(c.pid, sc.sig), 0);
  int st = 0;
  ASSERT_EQ(::waitpid(c.pid, &st, 0), c.pid);
  ASSERT_TRUE(started) << read(c.err);
  ASSERT_TRUE(WIFEXITED(st)) << "killed by signal " << (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  EXPECT_EQ(WEXITSTATUS(st), sc.code) << read(c.err);
  const std::string err = read(c.err);
  EXPECT_NE(err.find(std::string(sc.name) + " received"), std::string::npos) << err;

  // The checkpoint holds every step that was logged, and is complete.
  const std::vector<json> m = metrics(out);
  ASSERT_FALSE(m.empty());
  const int64_t n = m.back().at("step").get<int64_t>();
  EXPECT_EQ(latest(out), step_name(n));
  const fs::path ck = out / step_name(n);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "trainer/state.safetensors",
                        "trainer/trainer_state.json"})
    EXPECT_TRUE(fs::is_regular_file(ck / f)) << f;
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_NE(e.path().filename().string().rfind(".tmp-", 0), 0u) << e.path();
  const CliRun score = cli("score --model " + ck.string() + " --prompt 'int f3(int x)' --threads 1");
  EXPECT_EQ(score.rc, 0) << score.err;

  const CliRun r = cli(train_args(cfg, out) + " --resume --steps " + std::to_string(n + 3));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("at step " + std::to_string(n)), std::string::npos) << r.err;
  const std::vector<json> m2 = metrics(out);
  ASSERT_EQ(m2.size(), size_t(n + 3));
  for (size_t i = 0; i < m2.size(); ++i) EXPECT_EQ(m2[i].at("step").get<int64_t>(), int64_t(i + 1));
  EXPECT_EQ(latest(out), step_name(n + 3));
}

INSTANTIATE_TEST_SUITE_P(Signals, StopOnSignal,
                         ::testing::Values(SignalCase{SIGINT, "SIGINT", 130}, SignalCase{SIGTERM, "SIGTERM", 143}),
                         [](const auto& i) { return std::string(i.param.name); });

// ---- 3. Divergence -----------------------------------------------------------------------

// A real divergence: lr 10 with weight decay 10 multiplies every decayed weight by
// (1 − lr·wd) = −99 per step, so activations overflow F32 within a few steps.
TEST(TrainNonFinite, StopsWithExit3AndKeepsTheLastGoodCheckpoint) {
  NEED_BIN();
  json j = train_json("f32");
  j["steps"] = 200;
  j["grad_clip"] = 0.0;
  j["optimizer"] = {{"lr", 10.0}, {"lr_min", 10.0}, {"warmup_steps", 0}, {"weight_decay", 10.0}};
  j["checkpoint_every"] = 1;
  const std::string cfg = write_config("nan", j);
  int64_t first_bad = -1;
  std::string first_line;
  for (int run = 0; run < 2; ++run) {  // twice: the step it stops at is deterministic
    const fs::path out = fresh("nan" + std::to_string(run));
    const CliRun r = cli(train_args(cfg, out));
    ASSERT_EQ(r.rc, 3) << r.err;
    std::smatch mt;
    ASSERT_TRUE(std::regex_search(r.err, mt, std::regex("dsv3 train: the (loss|weights) .* step ([0-9]+)")))
        << r.err;
    const int64_t bad = std::stoll(mt[2]);
    ASSERT_GE(bad, 2) << r.err;
    ASSERT_LT(bad, 200) << r.err;
    if (run == 0) {
      first_bad = bad;
      first_line = mt[0];
    } else {
      EXPECT_EQ(bad, first_bad);
      EXPECT_EQ(std::string(mt[0]), first_line);
    }
    // Named: the step whose loss (or whose update of the weights) was not finite; every
    // step before it completed and was saved (checkpoint_every 1).
    const int64_t good = bad - 1;
    EXPECT_EQ(latest(out), step_name(good)) << r.err;
    EXPECT_NE(r.err.find(step_name(good)), std::string::npos) << r.err;
    const std::vector<json> m = metrics(out);
    ASSERT_FALSE(m.empty());
    EXPECT_LE(m.back().at("step").get<int64_t>(), bad);
    for (float v : master_params(out / step_name(good))) ASSERT_TRUE(std::isfinite(v));
    EXPECT_TRUE(std::isfinite(m[size_t(good - 1)].at("loss").get<double>()));
  }
}

// ---- 4. Bad input ------------------------------------------------------------------------

void expect_refused(const std::string& args, const fs::path& out, const std::string& part) {
  const CliRun r = cli(args);
  EXPECT_NE(r.rc, 0) << args;
  EXPECT_NE(r.err.find(part), std::string::npos) << "expected '" << part << "' in: " << r.err;
  EXPECT_FALSE(fs::exists(out)) << "wrote " << out;
}

TEST(TrainBadInput, ContradictoryConfigs) {
  NEED_BIN();
  struct Case {
    const char* name;
    std::function<void(json&)> edit;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"topk_group", [](json& j) { j["model"]["topk_group"] = 5; }, "topk_group"},
      {"experts_per_tok", [](json& j) { j["model"]["num_experts_per_tok"] = 9; }, "num_experts_per_tok"},
      {"seq_len", [](json& j) { j["seq_len"] = 128; }, "max_position_embeddings"},
      {"warmup", [](json& j) { j["optimizer"]["warmup_steps"] = 20; }, "'optimizer.warmup_steps' (20) exceeds 'steps' (12)"},
      {"lr_min", [](json& j) { j["optimizer"]["lr_min"] = 0.1; }, "'optimizer.lr_min' (0.1) exceeds 'optimizer.lr'"},
      {"unknown", [](json& j) { j["bacth"] = 2; }, "unknown key 'bacth'"},
      {"unknown_nested", [](json& j) { j["optimizer"]["beta_1"] = 0.9; }, "unknown key 'optimizer.beta_1'"},
      {"type", [](json& j) { j["batch"] = "2"; }, "'batch' must be an integer"},
      {"vocab", [](json& j) { j["model"]["vocab_size"] = env().vocab - 10; }, "larger than the model's vocab_size"},
      {"overlap", [](json& j) { j["parallel"] = {{"overlap_micro_batches", "yes"}}; },
       "'parallel.overlap_micro_batches' must be true or false"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    json j = train_json();
    c.edit(j);
    const fs::path out = root() / (std::string("bad_") + c.name);
    expect_refused(train_args(write_config(std::string("bad_") + c.name, j), out), out, c.message);
  }
}

TEST(TrainBadInput, DataProblems) {
  NEED_BIN();
  const std::string cfg = write_config("bad_data", train_json());
  const fs::path out = root() / "bad_data_out";
  const std::string missing = (root() / "no_such_data").string();
  expect_refused(train_args(cfg, out, missing), out, missing + ": not a directory");

  // An empty corpus: data prepare refuses it and leaves nothing.
  write(root() / "empty.jsonl", "\n{\"text\": \"\"}\n");
  const fs::path empty_data = root() / "empty_data";
  expect_refused("data prepare --tokenizer " + env().tokenizer + " --input " + (root() / "empty.jsonl").string() +
                     " --out " + empty_data.string() + " --threads 1",
                 empty_data, "no documents in the inputs");

  // The config's tokenizer is not the one the data was prepared with.
  json j = train_json();
  j["tokenizer"] = make_tokenizer("tok_other", 300);
  expect_refused(train_args(write_config("bad_tok", j), out), out, "prepared with another tokenizer");
}

TEST(TrainBadInput, ResumeFromAMismatchedCheckpoint) {
  NEED_BIN();
  json j = train_json();
  j["steps"] = 2;
  j["optimizer"]["warmup_steps"] = 1;
  j["optimizer"]["decay_start"] = 1;
  const std::string cfg = write_config("mismatch", j);
  const fs::path out = fresh("mismatch");
  const CliRun r0 = cli(train_args(cfg, out));
  ASSERT_EQ(r0.rc, 0) << r0.err;
  const std::string metrics_before = read(out / "metrics.jsonl");
  const auto refused = [&](json k, const std::string& part) {
    k["steps"] = 4;
    const CliRun r = cli(train_args(write_config("mismatch2", k), out) + " --resume");
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.err.find(part), std::string::npos) << r.err;
    EXPECT_EQ(latest(out), "step-000002");
    EXPECT_EQ(read(out / "metrics.jsonl"), metrics_before);
    EXPECT_FALSE(fs::exists(out / "step-000004"));
  };
  json k = j;
  k["batch"] = 3;
  refused(k, "in batch (2 there, 3 here)");
  k = j;
  k["model"]["hidden_size"] = 48;
  refused(k, "does not match " + root().string() + "/configs/mismatch2.json in the model config");
  // No checkpoint at all.
  const fs::path none = fresh("mismatch_none");
  fs::create_directories(none);
  const CliRun r = cli(train_args(cfg, none) + " --resume");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("has no checkpoint"), std::string::npos) << r.err;
}

// One run per --out: a fresh run refuses an OUT that holds a run (it would overwrite
// metrics.jsonl and the checkpoints), and a second trainer refuses an OUT another one holds
// (flock on OUT/.lock; here this test process holds it).
TEST(TrainBadInput, OutputDirectoryInUseOrHoldingARun) {
  NEED_BIN();
  json j = train_json("f32");
  j["steps"] = 2;
  j["optimizer"]["warmup_steps"] = 1;
  j["optimizer"]["decay_start"] = 1;
  const std::string cfg = write_config("outdir", j);
  const fs::path out = fresh("outdir");
  ASSERT_EQ(cli(train_args(cfg, out)).rc, 0);
  const std::string metrics_before = read(out / "metrics.jsonl");
  const CliRun again = cli(train_args(cfg, out));
  EXPECT_NE(again.rc, 0);
  EXPECT_NE(again.err.find("already holds a training run (latest: step-000002)"), std::string::npos) << again.err;
  EXPECT_EQ(read(out / "metrics.jsonl"), metrics_before);
  EXPECT_EQ(latest(out), "step-000002");

  const int fd = ::open((out / ".lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  const CliRun busy = cli(train_args(cfg, out) + " --resume --steps 4");
  EXPECT_NE(busy.rc, 0);
  EXPECT_NE(busy.err.find("is in use by another dsv3 train"), std::string::npos) << busy.err;
  EXPECT_EQ(latest(out), "step-000002");
  ::close(fd);  // released: the same command now runs
  const CliRun ok = cli(train_args(cfg, out) + " --resume --steps 4");
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_EQ(latest(out), "step-000004");
}

// ---- 5. A trained checkpoint is a model ----------------------------------------------------

TEST(TrainCheckpoint, LoadsInScoreAndGenerate) {
  NEED_BIN();
  json j = train_json("bf16");
  j["steps"] = 4;
  j["optimizer"]["warmup_steps"] = 1;
  j["optimizer"]["decay_start"] = 1;
  const fs::path out = fresh("model");
  const CliRun r = cli(train_args(write_config("model", j), out));
  ASSERT_EQ(r.rc, 0) << r.err;
  const fs::path ck = out / latest(out);
  EXPECT_TRUE(fs::is_regular_file(ck / "tokenizer.json"));
  const CliRun s = cli("score --model " + ck.string() + " --prompt 'The quick brown fox' --json --threads 1");
  ASSERT_EQ(s.rc, 0) << s.err;
  const json lp = json::parse(s.out).at("logprobs");
  ASSERT_FALSE(lp.empty());
  for (const auto& v : lp) EXPECT_TRUE(std::isfinite(v.get<double>()) && v.get<double>() <= 0);
  const CliRun g = cli("generate --model " + ck.string() + " --prompt 'int f' --max-new-tokens 4 --json --threads 1");
  ASSERT_EQ(g.rc, 0) << g.err;
  const json gj = json::parse(g.out);
  EXPECT_TRUE(gj.contains("text") && gj.contains("stop_reason")) << g.out;
  EXPECT_FALSE(gj.at("ids").empty()) << g.out;
}

// The tokenizer travels with the data (issue 18): `data prepare` keeps a copy in
// DATA/tokenizer/, `train` uses it when the config names none (the checkpoint gets it), and
// a tokenizer other than the data's (--tokenizer or the config's) is refused naming both.
TEST(TrainTokenizer, FromTheDataUnlessGivenAndMustMatchIt) {
  NEED_BIN();
  const fs::path kept = fs::path(env().data) / "tokenizer" / "tokenizer.json";
  ASSERT_TRUE(fs::is_regular_file(kept));
  EXPECT_EQ(read(kept), read(env().tokenizer));

  json j = train_json("f32");
  j["steps"] = 1;
  j["optimizer"]["warmup_steps"] = 1;
  j["optimizer"]["decay_start"] = 1;
  j.erase("tokenizer");
  const fs::path out = fresh("tok_from_data");
  const CliRun r = cli(train_args(write_config("tok_from_data", j), out));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(read(out / latest(out) / "tokenizer.json"), read(env().tokenizer));

  const std::string other = make_tokenizer("tok_other", 300);
  ASSERT_NE(read(other), read(env().tokenizer));
  const fs::path out2 = fresh("tok_other_run");
  const CliRun bad = cli(train_args(write_config("tok_other_run", j), out2) + " --tokenizer " + other);
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find(other), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find(kept.string()), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("--tokenizer"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(out2 / "latest"));
  // The config's own tokenizer, when it is another: the same refusal, naming the config.
  j["tokenizer"] = other;
  const CliRun bad2 = cli(train_args(write_config("tok_other_cfg", j), fresh("tok_other_cfg")));
  EXPECT_NE(bad2.rc, 0);
  EXPECT_NE(bad2.err.find("the config's"), std::string::npos) << bad2.err;
  // --tokenizer naming the data's own (its directory) is fine.
  const fs::path out3 = fresh("tok_given");
  j.erase("tokenizer");
  const CliRun ok = cli(train_args(write_config("tok_given", j), out3) + " --tokenizer " +
                        fs::path(env().tokenizer).parent_path().string());
  EXPECT_EQ(ok.rc, 0) << ok.err;
}

// Issue 7's greedy identity on a trained model: random checkpoints (test_speculative) reject
// almost every draft, so it is a model trained with the MTP objective that exercises long
// accepted runs, the bonus token and the catch-up over several accepted positions. The
// corpus is 48 short, near-identical lines, which 300 steps learn well enough that the MTP
// module's drafts are mostly right (a random model on this 320-token vocabulary would
// accept ~1/320 of them).
TEST(TrainCheckpoint, TrainedMtpSpeculatesIdenticallyAndIsAccepted) {
  NEED_BIN();
  json j = train_json("bf16");
  j["steps"] = 300;
  j["optimizer"]["warmup_steps"] = 10;
  j["optimizer"]["decay_start"] = 150;
  j["mtp"]["lambda_switch_step"] = 300;
  j["fim_rate"] = 0.0;
  j["checkpoint_every"] = 300;
  const fs::path out = fresh("mtp_trained");
  const CliRun r = cli(train_args(write_config("mtp_trained", j), out));
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::string ck = (out / latest(out)).string();
  {
    // The trained MTP head is the main head (tied in training, written twice): the model
    // reads the main tensor for both.
    const Model m(ck);
    ASSERT_EQ(m.n_mtp(), 1);
    EXPECT_EQ(m.weights().mtp[0].shared_head_head.w.data, m.weights().lm_head.w.data);
  }
  double drafted = 0, accepted = 0;
  for (const char* prompt : {"The quick brown fox 7", "int f1", "Small steps"}) {
    for (const char* draft : {"1", "2", "3", "3 --draft-min-p 0.3"}) {
      const CliRun g = cli("generate --model " + ck + " --prompt '" + prompt +
                           "' --max-new-tokens 40 --speculative mtp --draft " + draft +
                           " --compare --json --threads 1");
      ASSERT_EQ(g.rc, 0) << g.err;
      const json gj = json::parse(g.out);
      const json& st = gj.at("stats");
      EXPECT_TRUE(st.at("compare").at("same_ids").get<bool>()) << prompt << " draft " << draft << ": " << g.out;
      drafted += st.at("speculative").at("drafted").get<double>();
      accepted += st.at("speculative").at("accepted").get<double>();
    }
  }
  ASSERT_GT(drafted, 0);
  EXPECT_GT(accepted / drafted, 0.5) << accepted << " of " << drafted << " drafts accepted";
  // The same in chat: per turn the speculative statistics and, with --compare, the plain
  // decode of the same turn beside them, with identical ids.
  write(root() / "chat_in.txt", "int f1\n/reset\nSmall steps\n");
  // --ignore-eos: a briefly trained model may end a reply at once, which leaves nothing to draft.
  const CliRun c = cli("chat --model " + ck + " --max-new-tokens 24 --ignore-eos --speculative mtp --compare --threads 1 < " +
                       (root() / "chat_in.txt").string());
  ASSERT_EQ(c.rc, 0) << c.err;
  size_t turns = 0;
  for (size_t at = 0; (at = c.err.find("[compare: plain ", at)) != std::string::npos; ++at) ++turns;
  EXPECT_EQ(turns, 2u) << c.err;
  EXPECT_EQ(c.err.find("ids differ"), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("[speculative: "), std::string::npos) << c.err;
}

}  // namespace
}  // namespace dsv3
