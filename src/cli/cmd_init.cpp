// dsv3 init --config FILE|tiny-v3|tiny-v2 --out DIR [--format fp8|bf16|f32] [--shards N]
//           [--seed S] [--no-mtp]
// Writes a model directory of random weights in the real Hugging Face layout: for
// benchmarks at real shapes (../shared/SPEC.md §7) and for trying the tools without a
// download. The weights are deterministic in the seed.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "core/check.h"
#include "io/checkpoint.h"
#include "io/random_checkpoint.h"
#include "model/config.h"

namespace dsv3::cli {

namespace {

struct InitOpts {
  std::string config;
  std::string out;
  std::string format = "bf16";
  int shards = 1;
  uint64_t seed = 1;
  bool no_mtp = false;
};

void run_init(const InitOpts& o) {
  ModelConfig c;
  if (o.config == "tiny-v3") c = tiny_v3_config();
  else if (o.config == "tiny-v2") c = tiny_v2_config();
  else c = load_model_config(o.config);
  DSV3_CHECK(o.shards >= 1, "--shards must be at least 1, got ", o.shards);
  namespace fs = std::filesystem;
  // Shards left in the directory would mix with ours (convert makes the same check).
  DSV3_CHECK(!fs::exists(fs::path(o.out) / "config.json") && !Checkpoint::has_weights(o.out),
             o.out, ": already holds a model (config.json or safetensors); choose an empty directory");
  RandomCheckpointOptions opt;
  opt.format = parse_checkpoint_format(o.format);
  opt.shards = o.shards;
  opt.seed = o.seed;
  opt.with_mtp = !o.no_mtp;
  std::fprintf(stderr, "dsv3 init: writing random %s weights of %s to %s ...\n",
               o.format.c_str(), o.config.c_str(), o.out.c_str());
  const uint64_t bytes = write_random_checkpoint(c, o.out, opt);
  std::printf("wrote %s: %.1f MB of tensors in %d shard(s)\n", o.out.c_str(), double(bytes) / 1e6,
              o.shards);
}

}  // namespace

void register_init(CLI::App& app) {
  auto o = std::make_shared<InitOpts>();
  CLI::App* s = app.add_subcommand("init", "Write a model directory of random weights (HF layout)");
  s->add_option("--config", o->config, "config.json path, or tiny-v3 | tiny-v2")->required();
  s->add_option("--out", o->out, "output directory")->required();
  s->add_option("--format", o->format, "fp8 | bf16 | f32")->capture_default_str();
  s->add_option("--shards", o->shards, "number of safetensors shards")->capture_default_str();
  s->add_option("--seed", o->seed, "random seed")->capture_default_str();
  s->add_flag("--no-mtp", o->no_mtp, "leave out the MTP layer(s)");
  s->callback([o] { run_init(*o); });
}

}  // namespace dsv3::cli
