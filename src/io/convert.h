// `dsv3 convert`: rewrite a Hugging Face DeepSeek checkpoint directory with its linear
// weights in BF16 (dequantising F8_E4M3 128x128 blocks: W = fp8 * weight_scale_inv) or in
// FP8 (quantising BF16/F32/F16 linear weights per 128x128 block, scale = amax/448, report
// §3.3). Other F32/F16 tensors of the model are rounded to BF16 (except
// e_score_correction_bias, F32 as released); everything else is copied bit for bit.
// config.json gains or loses quantization_config; tokenizer and generation files are copied.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace dsv3 {

struct ConvertOptions {
  std::string to = "bf16";                 // bf16 | fp8
  uint64_t max_shard_bytes = 4ull << 30;   // per output shard
  // Called as each output shard starts: (index, count, file name).
  std::function<void(size_t, size_t, const std::string&)> progress;
};

struct ConvertStats {
  int64_t tensors = 0, quantised = 0, dequantised = 0, narrowed = 0, copied = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  size_t shards = 0;
};

ConvertStats convert_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                const ConvertOptions& o);

}  // namespace dsv3
