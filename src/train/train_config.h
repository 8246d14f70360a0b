// The training configuration: one JSON file holding the model (a config.json object, or a
// path to one), the tokenizer, the batch, the optimizer and its schedule, the MTP and
// load-balancing settings (docs/training.md). Every key is checked: unknown keys, wrong
// types and contradictions are errors that name the key.
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"
#include "parallel/layout.h"
#include "train/optim.h"
#include "train/tlinear.h"

namespace dsv3 {

struct TrainConfig {
  ModelConfig model;
  std::string model_json;       // the model config as written into checkpoints
  std::string tokenizer;        // tokenizer.json (or its directory), copied into checkpoints
  Precision precision = Precision::BF16;
  int64_t batch = 8, seq_len = 256, steps = 1000;
  uint64_t seed = 1;
  AdamWConfig adam;
  LrSchedule lr;
  double grad_clip = 1.0;
  // MTP objective (report §2.2): λ until mtp_lambda_switch_step, then mtp_lambda_late.
  bool mtp = true;
  double mtp_lambda = 0.3, mtp_lambda_late = 0.1;
  int64_t mtp_lambda_switch_step = -1;  // -1: never switch
  // Aux-loss-free balancing (γ; 0 off) and the sequence-wise balance loss (α; 0 off).
  double bias_update_speed = 0.001;
  int64_t bias_update_stop_step = -1;   // γ = 0 from this step on (-1: never)
  double balance_alpha = 1e-4;
  double fim_rate = 0.1;
  int64_t log_every = 1, checkpoint_every = 0, keep_checkpoints = 2;
  // Validation loss (main head, and MTP) on a fixed set of eval_windows windows of the data's
  // held-out split DATA/val/ (`dsv3 data prepare --val-fraction`), every eval_every steps and
  // at the end. -1: every steps/20 when DATA/val/ exists, else off; 0: off; > 0 without a
  // val/ split is an error.
  int64_t eval_every = -1, eval_windows = 32;
  std::string checkpoint_format = "bf16";
  ParallelConfig parallel;
  std::string text;             // the file's text (compared on resume)

  double mtp_lambda_at(int64_t step) const {
    return mtp_lambda_switch_step >= 0 && step >= mtp_lambda_switch_step ? mtp_lambda_late : mtp_lambda;
  }
  double gamma_at(int64_t step) const {
    return bias_update_stop_step >= 0 && step >= bias_update_stop_step ? 0.0 : bias_update_speed;
  }
};

// `where` names the file in messages; relative paths in the file resolve against base_dir.
TrainConfig parse_train_config(const std::string& text, const std::string& where,
                               const std::string& base_dir);
TrainConfig load_train_config(const std::string& path);

}  // namespace dsv3
