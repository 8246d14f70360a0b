// A checkpoint of random weights in the real Hugging Face layout, for tests and the load
// benchmark: config.json + shards (+ index when sharded), every tensor visit_weights
// expects, with the dtypes of the released checkpoints.
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"

namespace dsv3 {

enum class CheckpointFormat {
  F32,   // every tensor F32
  BF16,  // every tensor BF16 except e_score_correction_bias (F32), as the released files
  FP8,   // linear weights F8_E4M3 + weight_scale_inv (128x128, F32); the rest as BF16
};
const char* checkpoint_format_name(CheckpointFormat f);
// "f32" | "bf16" | "fp8"; throws otherwise.
CheckpointFormat parse_checkpoint_format(const std::string& s);

struct RandomCheckpointOptions {
  CheckpointFormat format = CheckpointFormat::BF16;
  int shards = 1;            // 1: model.safetensors without an index
  uint64_t seed = 1;
  bool with_mtp = true;
};
// Writes config.json (with quantization_config for FP8) and the weights into dir.
// Returns the tensor data bytes written.
uint64_t write_random_checkpoint(const ModelConfig& c, const std::string& dir,
                                 const RandomCheckpointOptions& o);

// The value write_random_checkpoint stores (before rounding to the tensor's dtype) for
// element i of the tensor `name`: deterministic, so tests can recompute it.
float random_weight_value(uint64_t seed, const std::string& name, int kind, int64_t i);

// A small DeepSeek-V3-shaped config (MLA with q compression, 3 layers with the first
// dense, 8 routed experts in 4 groups + 1 shared, top-2, noaux_tc, 1 MTP module), with
// dimensions that are not multiples of 128 so FP8 edge blocks are exercised.
ModelConfig tiny_v3_config();
// A small DeepSeek-V2-Lite-shaped config (no q compression, softmax/greedy, 2 shared).
ModelConfig tiny_v2_config();

}  // namespace dsv3
