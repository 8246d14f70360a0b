// Checkpoint conversion between BF16 and FP8 (convert.h).
#include "io/convert.h"

#include <cstring>
#include <filesystem>
#include <map>

#include "core/check.h"
#include "io/checkpoint.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsv3 {

namespace fs = std::filesystem;

namespace {

// Files of a model directory that travel with the weights.
constexpr const char* kSideFiles[] = {
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "generation_config.json", "chat_template.jinja",
};

std::vector<int64_t> dims(const TensorView& v) { return std::vector<int64_t>(v.shape, v.shape + v.ndim); }

void copy_fill(const TensorView& v, void* dst, size_t n) {
  DSV3_ASSERT(n == v.nbytes());
  std::memcpy(dst, v.data, n);
}

}  // namespace

ConvertStats convert_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                const ConvertOptions& o) {
  DSV3_CHECK(o.to == "bf16" || o.to == "fp8", "--to must be bf16 or fp8, got '", o.to, "'");
  std::error_code ec;
  DSV3_CHECK(!fs::equivalent(in_dir, out_dir, ec), "--out must differ from --in (", in_dir, ")");
  DSV3_CHECK(!Checkpoint::has_weights(out_dir), out_dir,
             ": already holds a checkpoint; choose an empty or new directory");
  const bool to_fp8 = o.to == "fp8";
  ModelConfig cfg = load_model_config((fs::path(in_dir) / "config.json").string());
  const Checkpoint ckpt(in_dir);
  (void)load_weights(cfg, ckpt);  // every expected tensor present, shaped and typed right

  std::map<std::string, WeightKind> kinds;
  for (const WeightSpec& s : expected_weights(cfg)) kinds[s.name] = s.kind;

  ConvertStats st;
  st.bytes_in = ckpt.total_bytes();
  CheckpointWriter w(out_dir);
  w.set_max_shard_bytes(o.max_shard_bytes);
  if (o.progress) w.set_progress(o.progress);
  for (const std::string& name : ckpt.names()) {
    const TensorView v = ckpt.get(name).view;
    // Scales travel with their weight.
    if (name.ends_with("_scale_inv") && ckpt.contains(name.substr(0, name.size() - 10))) continue;
    ++st.tensors;
    auto kind = kinds.find(name);
    const bool linear = kind != kinds.end() && kind->second == WeightKind::Linear;
    if (v.dtype == DType::F8_E4M3 && ckpt.contains(scale_name(name))) {
      const TensorView sc = ckpt.get(scale_name(name)).view;
      if (to_fp8) {
        ++st.copied;
        std::vector<CheckpointWriter::Tensor> g;
        g.push_back({name, v.dtype, dims(v), [v](void* d, size_t n) { copy_fill(v, d, n); }});
        g.push_back({scale_name(name), sc.dtype, dims(sc), [sc](void* d, size_t n) { copy_fill(sc, d, n); }});
        w.add_group(std::move(g));
      } else {
        ++st.dequantised;
        DSV3_CHECK(v.ndim == 2, name, ": an FP8 weight must be 2-D, got ", v.shape_str());
        w.add({name, DType::BF16, dims(v), [v, sc](void* d, size_t) {
                 dequantize_fp8_128x128(v.ptr<uint8_t>(), v.shape[0], v.shape[1], v.shape[1],
                                        sc.ptr<float>(), d, DType::BF16, v.shape[1]);
               }});
      }
      continue;
    }
    if (!(to_fp8 && linear)) {
      // The released layout: BF16 everywhere but the router bias (F32).
      const bool narrow = kind != kinds.end() && kind->second != WeightKind::RouterBias &&
                          (v.dtype == DType::F32 || v.dtype == DType::F16);
      if (narrow) {
        ++st.narrowed;
        w.add({name, DType::BF16, dims(v), [v](void* d, size_t) {
                 const int64_t n = v.numel();
                 for (int64_t i = 0; i < n; ++i)
                   store_from_f32(d, DType::BF16, size_t(i), load_as_f32(v.data, v.dtype, size_t(i)));
               }});
      } else {
        ++st.copied;
        w.add({name, v.dtype, dims(v), [v](void* d, size_t n) { copy_fill(v, d, n); }});
      }
      continue;
    }
    // Quantise a BF16/F32/F16 linear weight [N, K] per 128x128 block, once for both tensors.
    ++st.quantised;
    w.add_group(fp8_weight_group(name, v.shape[0], v.shape[1], [v](Buffer&) { return v; }));
  }
  const std::vector<std::string> shards = w.finish();
  st.shards = shards.size();
  for (const std::string& s : shards) {
    const uint64_t sz = fs::file_size(fs::path(out_dir) / s, ec);
    st.bytes_out += ec ? 0 : sz;
  }

  cfg.has_quantization = to_fp8;
  cfg.quantization_config = QuantizationConfig{};
  cfg.torch_dtype = "bfloat16";
  write_file_atomic((fs::path(out_dir) / "config.json").string(), model_config_to_json(cfg));
  for (const char* f : kSideFiles) {
    const fs::path src = fs::path(in_dir) / f;
    if (fs::is_regular_file(src, ec))
      fs::copy_file(src, fs::path(out_dir) / f, fs::copy_options::overwrite_existing);
  }
  return st;
}

}  // namespace dsv3
