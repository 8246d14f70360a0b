// Model parameters -> checkpoint directory (model_writer.h).
#include "io/model_writer.h"

#include <cstring>
#include <filesystem>

#include "core/check.h"
#include "io/checkpoint.h"
#include "kernels/quant.h"

namespace dsv3 {

void write_model_checkpoint(const ModelConfig& c0, const std::string& dir,
                            const std::function<TensorView(const WeightSpec&)>& get,
                            const ModelWriteOptions& o) {
  ModelConfig c = c0;
  c.has_quantization = o.format == CheckpointFormat::FP8;
  c.quantization_config = QuantizationConfig{};
  c.torch_dtype = o.format == CheckpointFormat::F32 ? "float32" : "bfloat16";
  if (!o.with_mtp) c.num_nextn_predict_layers = 0;
  validate_model_config(c, "write_model_checkpoint");
  DSV3_CHECK(!Checkpoint::has_weights(dir), dir, ": already holds a checkpoint; choose an empty or new directory");
  std::filesystem::create_directories(dir);

  CheckpointWriter w(dir);
  w.set_max_shard_bytes(o.max_shard_bytes);
  if (o.progress) w.set_progress(o.progress);
  for (const WeightSpec& s : expected_weights(c, o.with_mtp)) {
    const TensorView v = get(s);
    DSV3_CHECK(v.ndim == s.ndim && v.shape[0] == s.shape[0] && (s.ndim == 1 || v.shape[1] == s.shape[1]),
               "write_model_checkpoint: '", s.name, "' has shape ", v.shape_str(), ", expected ", s.shape_str());
    DSV3_CHECK(v.is_contiguous(), "write_model_checkpoint: '", s.name, "' must be contiguous");
    DSV3_CHECK(v.dtype == DType::F32 || v.dtype == DType::BF16 || v.dtype == DType::F16,
               "write_model_checkpoint: '", s.name, "' is ", dtype_name(v.dtype), ", expected F32, BF16 or F16");
    std::vector<int64_t> shape(s.shape, s.shape + s.ndim);
    const int64_t n = s.numel();
    const bool fp8 = o.format == CheckpointFormat::FP8 && s.kind == WeightKind::Linear;
    if (!fp8) {
      const DType out = o.format == CheckpointFormat::F32 || s.kind == WeightKind::RouterBias ? DType::F32 : DType::BF16;
      w.add({s.name, out, shape, [v, out, n](void* d, size_t nb) {
               if (v.dtype == out) { std::memcpy(d, v.data, nb); return; }
               for (int64_t i = 0; i < n; ++i) store_from_f32(d, out, size_t(i), load_as_f32(v.data, v.dtype, size_t(i)));
             }});
      continue;
    }
    w.add_group(fp8_weight_group(s.name, s.shape[0], s.shape[1], [v](Buffer&) { return v; }));
  }
  write_file_atomic((std::filesystem::path(dir) / "config.json").string(), model_config_to_json(c));
  w.finish();
}

}  // namespace dsv3
