// `dsv3 train`: train a DeepSeek-V3-architecture model (src/train/trainer.h, docs/training.md).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>

#include "commands.h"
#include "parallel/comm.h"
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
  c->add_option("--init", o->init_dir, "Start from this trainer checkpoint's weights (context extension: the "
                "config may change only rope_scaling, max_position_embeddings; optimizer, step, data fresh)");
  c->add_option("--tokenizer", o->tokenizer,
                "tokenizer.json or its directory (default: the config's \"tokenizer\", else the copy "
                "`dsv3 data prepare` kept in DATA/tokenizer/); must be the data's");
  c->add_option("--threads", o->threads, "Threads (default: all cores)");
  c->add_flag("--quiet", o->quiet, "No progress line");
  // The layout of a distributed run (mpirun -np N dsv3 train ...; docs/distributed.md).
  c->add_option("--dp", o->dp, "Data-parallel ranks (default: the config's parallel.dp; under mpirun "
                "without a layout, every rank)")->check(CLI::PositiveNumber);
  c->add_option("--ep", o->ep, "Expert-parallel group size (divides dp)")->check(CLI::PositiveNumber);
  c->add_option("--pp", o->pp, "Pipeline stages")->check(CLI::PositiveNumber);
  c->add_option("--schedule", o->schedule, "Pipeline schedule: 1f1b, zb1p, dualpipe, dualpipev");
  c->add_option("--micro-batches", o->micro_batches, "Micro-batches per rank and step")->check(CLI::PositiveNumber);
  c->add_option("--max-nodes", o->max_nodes, "Node-limited routing: experts of a token on at most this many nodes")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--ranks-per-node", o->ranks_per_node, "Ranks per node (for --max-nodes)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--zero-bucket-mb", o->zero_bucket_mb,
                "ZeRO-1: the gradient exchange's receive buffer in MiB (rounds of this size; default 64)");
  c->add_option("--overlap-micro-batches", o->overlap_micro_batches,
                "With --ep > 1: run two micro-batches at once (without --pp: two at a time; with it: "
                "the F and B of DualPipe's F&B pairs), each one's expert-parallel exchanges behind the "
                "other's compute (1, the default), or one after another (0)")
      ->check(CLI::Range(0, 1));
  c->callback([o] {
    const int rc = run_training(*o);
    dist::finalize();
    if (rc != 0) {
      std::fflush(stdout);
      std::exit(rc);
    }
  });
}

}  // namespace dsv3::cli
