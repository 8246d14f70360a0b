// `dsv3 train`: train a DeepSeek-V3-architecture model (src/train/trainer.h, docs/training.md).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>

#include "commands.h"
#include "train/trainer.h"

namespace dsv3::cli {

void register_train(CLI::App& app) {
  auto o = std::make_shared<TrainRunOptions>();
  CLI::App* c = app.add_subcommand("train", "Train a model (config JSON + prepared data) into an output directory");
  c->add_option("--config", o->config_path, "Training config JSON (model, optimizer, batch, MTP, balancing)")->required();
  c->add_option("--data", o->data_dir, "Prepared data directory (dsv3 data prepare)")->required();
  c->add_option("--out", o->out_dir, "Output directory: checkpoints, metrics.jsonl")->required();
  c->add_option("--steps", o->steps, "Stop after this many steps (default: the config's)");
  c->add_flag("--resume", o->resume, "Continue from OUT's latest checkpoint (exactly: optimizer, data position)");
  c->add_option("--threads", o->threads, "Threads (default: all cores)");
  c->add_flag("--quiet", o->quiet, "No progress line");
  c->callback([o] {
    const int rc = run_training(*o);
    if (rc != 0) {
      std::fflush(stdout);
      std::exit(rc);
    }
  });
}

}  // namespace dsv3::cli
