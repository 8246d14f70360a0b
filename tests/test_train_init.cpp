// `dsv3 train --init DIR` (context extension, report §4.3; docs/long-context.md), through the
// CLI ($DSV3_BIN, set by ctest) on the tiny model of train_test_util.h: a run at seq_len 16
// without rope_scaling is extended to seq_len 32 with YaRN (factor 4 over the original 16).
//   - the extension run starts from the init checkpoint's master weights exactly (lr 0, γ 0: the
//     weights it writes are the init's, bit for bit, MTP module included), with a fresh
//     optimizer, step counter and data position;
//   - its first step's main loss is the inference engine's loss (dsv3 score) of those weights
//     under the extension config: the training path applies YaRN and the mscale'd softmax
//     scale as inference does;
//   - the checkpoint it writes carries the new rope_scaling, loads as a Model, and load → save
//     gives the same bytes;
//   - bad cases: another architecture, --init with --resume, a missing or non-trainer
//     directory, a different MTP setting: a message naming the problem, a non-zero exit,
//     nothing written.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "io/checkpoint.h"
#include "io/model_writer.h"
#include "model/model.h"
#include "train/params.h"
#include "train_test_util.h"

namespace dsv3 {
namespace {

using namespace train_test;

constexpr double kInitStd = 0.2;

// The pre-training run: 2 steps at seq_len 16, no rope_scaling, F32 checkpoints.
const fs::path& base_checkpoint() {
  static const fs::path ck = [] {
    json j = train_json("f32");
    // Larger weights than train_json's make attention far from uniform, so that YaRN's
    // frequencies and softmax scale move the loss measurably (the first test tells them apart).
    j["model"]["initializer_range"] = kInitStd;
    j["steps"] = 2;
    j["optimizer"]["warmup_steps"] = 1;
    j["optimizer"]["decay_start"] = 1;
    j["checkpoint_format"] = "f32";
    const fs::path out = fresh("init_base");
    const CliRun r = cli(train_args(write_config("init_base", j), out));
    EXPECT_EQ(r.rc, 0) << r.err;
    return out / latest(out);
  }();
  return ck;
}

// The extension: seq_len 32, YaRN factor 4 over the original 16, room for 64 positions; the
// report's extension schedule (constant lr, γ 0, λ of the late phase).
json ext_json(double lr) {
  json j = train_json("f32");
  j["model"]["initializer_range"] = kInitStd;
  j["seq_len"] = 32;
  j["steps"] = 1;
  j["model"]["max_position_embeddings"] = 64;
  j["model"]["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 16},
                                {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
  j["optimizer"] = {{"lr", lr}, {"lr_min", lr}, {"warmup_steps", 0}, {"decay_start", 1}, {"weight_decay", 0.1}};
  j["mtp"] = {{"lambda", 0.1}};
  j["balance"] = {{"gamma", 0.0}, {"alpha", 1e-3}};
  j["checkpoint_format"] = "f32";
  j["checkpoint_every"] = 0;
  return j;
}

std::string init_args(const std::string& cfg, const fs::path& out, const fs::path& init) {
  return train_args(cfg, out) + " --init " + init.string();
}

TEST(TrainInit, StartsFromTheCheckpointWithFreshOptimizerAndData) {
  NEED_BIN();
  const fs::path base = base_checkpoint();
  ASSERT_TRUE(fs::is_directory(base));
  const json ej = ext_json(0.0);
  const std::string cfg = write_config("init_ext", ej);
  const fs::path out = fresh("init_ext");
  const CliRun r = cli(init_args(cfg, out, base));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("initialised from " + base.string()), std::string::npos) << r.err;
  const fs::path ck = out / latest(out);
  EXPECT_EQ(ck.filename(), "step-000001");  // the step counter starts again at 0

  // lr 0 and γ 0: the step changes nothing, so the written master weights are the init's
  // (every tensor, MTP module and router biases included).
  const std::vector<float> before = master_params(base), after = master_params(ck);
  ASSERT_EQ(before.size(), after.size());
  ASSERT_FALSE(before.empty());
  EXPECT_EQ(std::memcmp(before.data(), after.data(), before.size() * sizeof(float)), 0);

  // A fresh optimizer (one AdamW step, not the base's 2 + 1) and a fresh data position: the
  // same as a run of the extension config from random weights.
  const json st = json::parse(read(ck / "trainer" / "trainer_state.json"));
  EXPECT_EQ(st.at("step").get<int64_t>(), 1);
  EXPECT_EQ(st.at("adam_t").get<int64_t>(), 1);
  EXPECT_EQ(st.at("init").get<std::string>(), base.string());
  const fs::path scratch = fresh("init_ext_scratch");
  ASSERT_EQ(cli(train_args(cfg, scratch)).rc, 0);
  const json st0 = json::parse(read(scratch / "step-000001" / "trainer" / "trainer_state.json"));
  EXPECT_EQ(st.at("loader"), st0.at("loader"));
  EXPECT_EQ(st.at("tokens"), st0.at("tokens"));

  // Step 1's main loss = the inference engine's loss of the init weights under the extension
  // config (YaRN tables, mscale'd softmax scale) on the same batch, the loader's first.
  const std::vector<json> m = metrics(out);
  ASSERT_EQ(m.size(), 1u);
  const data::DataSet ds = data::DataSet::open(env().data);
  data::LoaderOptions lo;
  lo.seq_len = 32;
  lo.batch = ej.at("batch").get<int64_t>();
  lo.seed = ej.at("seed").get<uint64_t>();
  lo.fim_rate = ej.at("fim_rate").get<double>();
  data::Loader loader(ds, lo);
  const std::vector<int32_t> batch = loader.next();
  ASSERT_EQ(batch.size(), size_t(lo.batch * (lo.seq_len + 1)));
  // The same weights without rope_scaling: a model the loss must not match (YaRN matters here).
  const fs::path plain = fresh("init_ext_plain");
  fs::create_directories(plain);
  for (const char* f : {"model.safetensors", "tokenizer.json"}) fs::copy_file(ck / f, plain / f);
  json pc = json::parse(read(ck / "config.json"));
  pc["rope_scaling"] = nullptr;
  write(plain / "config.json", pc.dump(1));
  const auto score_loss = [&](const fs::path& model) {
    double nll = 0;
    int64_t n = 0;
    for (int64_t b = 0; b < lo.batch; ++b) {
      std::string ids;
      for (int64_t t = 0; t <= lo.seq_len; ++t)
        ids += (t ? "," : "") + std::to_string(batch[size_t(b * (lo.seq_len + 1) + t)]);
      const CliRun s = cli("score --model " + model.string() + " --ids " + ids + " --json --threads 1 --kv-cache f32");
      EXPECT_EQ(s.rc, 0) << s.err;
      const json sj = json::parse(s.out);  // (a range-for over a temporary's member would dangle)
      for (const json& v : sj.at("logprobs")) {
        nll -= v.get<double>();
        ++n;
      }
    }
    EXPECT_EQ(n, lo.batch * lo.seq_len);
    return nll / double(std::max<int64_t>(n, 1));
  };
  const double main_loss = m[0].at("main_loss").get<double>();
  const double with_yarn = score_loss(ck), without = score_loss(plain);
  // Both F32 with different summation orders (batched GEMMs vs decode kernels): ~1e-9 seen.
  EXPECT_NEAR(main_loss, with_yarn, 1e-6 * main_loss);
  EXPECT_GT(std::fabs(main_loss - without), 1e-3 * main_loss) << "YaRN changes nothing at this length?";
  std::printf("step 1 main loss %.9f, dsv3 score with YaRN %.9f, without rope_scaling %.9f\n", main_loss,
              with_yarn, without);
}

TEST(TrainInit, CheckpointCarriesTheNewRopeScalingAndRoundTrips) {
  NEED_BIN();
  const fs::path base = base_checkpoint();
  const fs::path out = fresh("init_rt");
  const CliRun r = cli(init_args(write_config("init_rt", ext_json(1e-3)), out, base));
  ASSERT_EQ(r.rc, 0) << r.err;
  const fs::path ck = out / latest(out);
  // config.json: the extension's rope_scaling and max_position_embeddings.
  const json cj = json::parse(read(ck / "config.json"));
  EXPECT_EQ(cj.at("rope_scaling").at("type"), "yarn");
  EXPECT_EQ(cj.at("rope_scaling").at("factor").get<double>(), 4.0);
  EXPECT_EQ(cj.at("rope_scaling").at("original_max_position_embeddings").get<int64_t>(), 16);
  EXPECT_EQ(cj.at("max_position_embeddings").get<int64_t>(), 64);
  EXPECT_TRUE(json::parse(read(base / "config.json")).at("rope_scaling").is_null());
  // A Model: the yarn config, the MTP module, 64 positions.
  const Model model(ck.string());
  EXPECT_EQ(model.config().rope_scaling.type, "yarn");
  EXPECT_EQ(model.config().rope_scaling.factor, 4.0);
  EXPECT_EQ(model.config().max_position_embeddings, 64);
  EXPECT_EQ(model.n_mtp(), 1);
  // Load → save: the F32 tensors are the trainer's master weights, and written again they
  // give the same files, byte for byte.
  const ParamSet ps(model.config(), true);
  std::vector<float> w(size_t(ps.numel()));
  ps.load(w.data(), Checkpoint(ck.string()));
  const std::vector<float> master = master_params(ck);
  ASSERT_EQ(master.size(), w.size());
  EXPECT_EQ(std::memcmp(master.data(), w.data(), w.size() * sizeof(float)), 0);
  const fs::path again = fresh("init_rt_again");
  ModelWriteOptions wo;
  wo.format = CheckpointFormat::F32;
  wo.with_mtp = true;
  write_model_checkpoint(model.config(), again.string(),
                         [&](const WeightSpec& s) { return ps.view(w.data(), *ps.find(s.name)); }, wo);
  EXPECT_EQ(read(again / "model.safetensors"), read(ck / "model.safetensors"));
  EXPECT_EQ(read(again / "config.json"), read(ck / "config.json"));
  // Scored as a model: finite log-probs over the 32-token extension length.
  std::string ids = "0";
  for (int i = 1; i < 40; ++i) ids += "," + std::to_string(i * 7 % env().vocab);
  const CliRun s = cli("score --model " + ck.string() + " --ids " + ids + " --json --threads 1 --kv-cache f32");
  ASSERT_EQ(s.rc, 0) << s.err;
  const json sj = json::parse(s.out);
  ASSERT_EQ(sj.at("logprobs").size(), 39u);
  for (const json& v : sj.at("logprobs")) EXPECT_TRUE(std::isfinite(v.get<double>()));
}

// A refused --init writes nothing: no checkpoint, no `latest`.
void expect_refused(const std::string& args, const fs::path& out, const std::string& message) {
  const CliRun r = cli(args);
  EXPECT_NE(r.rc, 0) << args;
  EXPECT_NE(r.err.find(message), std::string::npos) << "expected '" << message << "' in: " << r.err;
  EXPECT_FALSE(fs::exists(out / "latest")) << args;
}

TEST(TrainInit, RefusesBadCheckpointsAndFlags) {
  NEED_BIN();
  const fs::path base = base_checkpoint();
  const fs::path out = fresh("init_bad");
  // Another architecture: the key is named, with both values.
  json j = ext_json(1e-3);
  j["model"]["hidden_size"] = 48;
  expect_refused(init_args(write_config("init_bad_hidden", j), out, base), out,
                 "differs from " + (root() / "configs" / "init_bad_hidden.json").string() +
                     "'s in 'hidden_size' (32 there, 48 here); context extension may change only "
                     "rope_scaling and max_position_embeddings");
  j = ext_json(1e-3);
  j["model"]["rope_theta"] = 50000;
  expect_refused(init_args(write_config("init_bad_theta", j), out, base), out, "in 'rope_theta' (10000");
  j = ext_json(1e-3);
  j["model"]["num_nextn_predict_layers"] = 0;
  expect_refused(init_args(write_config("init_bad_mtp_layers", j), out, base), out,
                 "in 'num_nextn_predict_layers' (1 there, 0 here)");
  // The MTP objective switched off: the arena would not hold the checkpoint's MTP module.
  j = ext_json(1e-3);
  j["mtp"] = {{"enabled", false}};
  expect_refused(init_args(write_config("init_bad_mtp", j), out, base), out,
                 "was trained with the MTP modules and " + (root() / "configs" / "init_bad_mtp.json").string() +
                     " has 'mtp.enabled' false");
  const std::string cfg = write_config("init_bad_ok", ext_json(1e-3));
  // --init with --resume.
  expect_refused(init_args(cfg, out, base) + " --resume", out, "--init and --resume exclude each other");
  // A missing directory, and a model directory without the trainer's state.
  expect_refused(init_args(cfg, out, root() / "no_such_checkpoint"), out,
                 "--init: " + (root() / "no_such_checkpoint").string() + " is not a directory");
  const fs::path bare = fresh("init_bare");
  fs::create_directories(bare);
  fs::copy_file(base / "config.json", bare / "config.json");
  fs::copy_file(base / "model.safetensors", bare / "model.safetensors");
  expect_refused(init_args(cfg, out, bare), out, "is not a trainer checkpoint (no trainer/trainer_state.json");
  // The good config runs.
  const CliRun ok = cli(init_args(cfg, out, base));
  EXPECT_EQ(ok.rc, 0) << ok.err;
  EXPECT_EQ(latest(out), "step-000001");
}

}  // namespace
}  // namespace dsv3
