// `dsv3 train`: the loop around TrainModel — data, AdamW with the LR schedule and gradient
// clipping, the aux-loss-free bias update, metrics (JSONL), a progress line, checkpoints in
// the Hugging Face layout that `dsv3 score/generate/chat` load directly, exact resume, and
// a safe stop on SIGINT/SIGTERM or a non-finite loss.
//
// OUT/ after a run:
//   metrics.jsonl            one line per logged step
//   step-000200/             a checkpoint: config.json, model.safetensors (BF16 by default),
//                            tokenizer.json (+ tokenizer_config.json), trainer/ (F32 master
//                            weights and AdamW moments, trainer_state.json: step, data
//                            position, the config text)
//   latest                   the name of the newest complete checkpoint
//   .lock                    flock'ed while a trainer runs on OUT: a second one is refused
// A fresh run (no --resume) refuses an OUT whose `latest` names a checkpoint. --init DIR starts a
// fresh run from DIR's weights (context extension; docs/long-context.md).
//
// Under mpirun (docs/distributed.md) every rank runs this loop on its share of each batch
// (parallel/layout.h); rank 0 alone writes OUT. Each rank receives the sum of its ZeRO-1
// shard of the gradient, updates the shard, and the parameters are all-gathered: the run
// computes the bits one process computes with as many micro-batches (train/train_step.h).
// Checkpoints are written into a temporary directory and renamed: a crash mid-write leaves the
// previous checkpoint and `latest` intact.
#pragma once
#include <cstdint>
#include <string>

#include "train/train_config.h"

namespace dsv3 {

struct TrainRunOptions {
  std::string config_path, data_dir, out_dir;
  // Layout flags (override the config's "parallel"; -1 / "": keep the config's).
  int64_t dp = -1, ep = -1, pp = -1, micro_batches = -1, max_nodes = -1, ranks_per_node = -1;
  double zero_bucket_mb = -1;  // < 0: the config's
  int overlap_micro_batches = -1;  // 0 / 1; < 0: the config's
  std::string schedule;
  int64_t steps = -1;     // overrides the config's steps (the schedule keeps the config's)
  bool resume = false;
  // A trainer checkpoint to start from (context extension, report §4.3): its master weights
  // (MTP modules included) under this config's seq_len, rope_scaling and
  // max_position_embeddings; the optimizer, step and data position start fresh. The model
  // must otherwise be the checkpoint's. Excludes resume.
  std::string init_dir;
  // Overrides the config's "tokenizer"; without either, DATA/tokenizer/ (what `dsv3 data
  // prepare` keeps) is used. It must be the tokenizer the data was prepared with.
  std::string tokenizer;
  int threads = 0;
  bool quiet = false;     // no progress line
};

// Returns the process exit code: 0 done, 128 + the signal when stopped by SIGINT (130), SIGTERM
// (143) or SIGUSR1 (138; what mpirun forwards unchanged) with a checkpoint saved,
// 3 stopped on a non-finite loss (last good checkpoint kept).
int run_training(const TrainRunOptions& o);

}  // namespace dsv3
