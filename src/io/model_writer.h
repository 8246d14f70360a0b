// Writes a model's parameters as a Hugging Face DeepSeek checkpoint directory — the layout
// the released models use — from whatever holds them (the trainer's F32 master weights, a
// loaded checkpoint, ...): config.json, shards, index.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "core/tensor.h"
#include "io/random_checkpoint.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsv3 {

struct ModelWriteOptions {
  CheckpointFormat format = CheckpointFormat::BF16;  // of the files written
  uint64_t max_shard_bytes = 4ull << 30;
  bool with_mtp = true;
  std::function<void(size_t, size_t, const std::string&)> progress;  // per shard
};

// `get(spec)` returns the parameter as a contiguous F32, BF16 or F16 view of spec's shape;
// the memory must stay valid until the call returns (tensors are converted one at a time,
// as each shard is written). Formats as checkpoint_format: FP8 quantises linear weights
// per 128x128 block (kernels/quant.h) with a weight_scale_inv; BF16 rounds to nearest even;
// e_score_correction_bias stays F32 except in F32 checkpoints, where everything is F32.
// config.json gets quantization_config exactly when the format is FP8.
void write_model_checkpoint(const ModelConfig& c, const std::string& dir,
                            const std::function<TensorView(const WeightSpec&)>& get,
                            const ModelWriteOptions& o);

}  // namespace dsv3
