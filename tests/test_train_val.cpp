// Validation loss during `dsv3 train` (eval_every, eval_windows; issue 18), through the CLI
// ($DSV3_BIN) on the tiny model of train_test_util.h and data prepared with a held-out split:
//   - val_loss (and val_mtp_loss) appear in metrics.jsonl exactly at the eval steps and the last;
//   - the last one is the inference engine's loss (dsv3 score, F32 cache) of the final
//     checkpoint on the same fixed windows: the first eval_windows windows of seq_len + 1
//     tokens of DATA/val's packed stream;
//   - training is unchanged by it (the same weights as a run without validation);
//   - eval_every > 0 on data without a val/ split is refused with a message; the default
//     (auto) then runs without validation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "eval/held_out.h"
#include "train_test_util.h"

namespace dsv3 {
namespace {

using namespace train_test;

// DATA with a val/ split of the same corpus and tokenizer as env().
const std::string& split_data() {
  static const std::string dir = prepare_split_data("data_val", 0.3, 3);
  return dir;
}

json val_json() {
  json j = train_json("f32");
  j["steps"] = 4;
  j["eval_every"] = 2;
  j["eval_windows"] = 3;
  j["checkpoint_every"] = 0;
  j["checkpoint_format"] = "f32";
  return j;
}

TEST(TrainValidation, LogsTheEngineLossOfFixedHeldOutWindows) {
  NEED_BIN();
  const json j = val_json();
  const fs::path out = fresh("val_run");
  const CliRun r = cli(train_args(write_config("val_run", j), out, split_data()));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("validation every 2 steps"), std::string::npos) << r.err;
  const std::vector<json> m = metrics(out);
  ASSERT_EQ(m.size(), 4u);
  for (const json& l : m) {
    const int64_t step = l.at("step").get<int64_t>();
    ASSERT_EQ(l.contains("val_loss"), step % 2 == 0) << l.dump();
    if (!l.contains("val_loss")) continue;
    EXPECT_TRUE(std::isfinite(l.at("val_loss").get<double>()));
    EXPECT_EQ(l.at("val_mtp_loss").size(), 1u);
  }

  // The windows: ceil(3 / batch) batches of batch windows from the val split's stream.
  const int64_t B = j.at("batch").get<int64_t>(), T = j.at("seq_len").get<int64_t>();
  const int64_t n_win = (3 + B - 1) / B * B;
  const eval::HeldOut val = eval::open_held_out(split_data());
  ASSERT_TRUE(val.is_val_split);
  const std::vector<int32_t> stream = eval::packed_stream(val.set, n_win * (T + 1));
  ASSERT_EQ(int64_t(stream.size()), n_win * (T + 1)) << "the test corpus' val split is too small";
  const fs::path ck = out / latest(out);
  double nll = 0;
  int64_t n = 0;
  for (int64_t w = 0; w < n_win; ++w) {
    std::string ids;
    for (int64_t t = 0; t <= T; ++t) ids += (t ? "," : "") + std::to_string(stream[size_t(w * (T + 1) + t)]);
    const CliRun s = cli("score --model " + ck.string() + " --ids " + ids + " --json --threads 1 --kv-cache f32");
    ASSERT_EQ(s.rc, 0) << s.err;
    const json sj = json::parse(s.out);
    for (const json& v : sj.at("logprobs")) {
      nll -= v.get<double>();
      ++n;
    }
  }
  ASSERT_EQ(n, n_win * T);
  const double engine = nll / double(n), logged = m.back().at("val_loss").get<double>();
  // Both F32 (the train forward's GEMMs vs the engine's decode kernels): ~1e-9 relative seen
  // for the training loss (test_train_init).
  EXPECT_NEAR(logged, engine, 1e-6 * engine);
  // The held-out loss is not the training batch's (another text).
  EXPECT_NE(logged, m.back().at("main_loss").get<double>());

  // Validation changes nothing of the training: the same weights without it.
  json j0 = j;
  j0["eval_every"] = 0;
  const fs::path out0 = fresh("val_run_off");
  ASSERT_EQ(cli(train_args(write_config("val_run_off", j0), out0, split_data())).rc, 0);
  const std::vector<float> a = master_params(ck), b = master_params(out0 / latest(out0));
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  for (const json& l : metrics(out0)) EXPECT_FALSE(l.contains("val_loss"));
}

TEST(TrainValidation, NeedsAValSplitWhenAskedFor) {
  NEED_BIN();
  const fs::path out = fresh("val_none");
  const CliRun r = cli(train_args(write_config("val_none", val_json()), out));  // env(): no val/
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("has no val/ split"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--val-fraction"), std::string::npos) << r.err;
  // The default (auto) trains without validation there.
  json j = val_json();
  j.erase("eval_every");
  const fs::path out2 = fresh("val_auto");
  const CliRun r2 = cli(train_args(write_config("val_auto", j), out2));
  ASSERT_EQ(r2.rc, 0) << r2.err;
  for (const json& l : metrics(out2)) EXPECT_FALSE(l.contains("val_loss"));
}

}  // namespace
}  // namespace dsv3
