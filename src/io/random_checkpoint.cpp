// Random checkpoints in the real layout (random_checkpoint.h).
#include "io/random_checkpoint.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/check.h"
#include "core/parallel.h"
#include "io/checkpoint.h"
#include "kernels/quant.h"
#include "model/weights.h"

namespace dsv3 {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// Uniform in [-1, 1) from the 24 high bits.
inline float unit(uint64_t key, int64_t i) {
  return float(splitmix64(key + uint64_t(i)) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

// Values: norms ~ 1 +- 0.1, router bias +- 0.01, everything else uniform with the
// report's init std 0.006 (SPEC §3): U(-a, a) has std a/sqrt(3).
inline float value(uint64_t key, WeightKind kind, int64_t i) {
  const float u = unit(key, i);
  switch (kind) {
    case WeightKind::Norm: return 1.0f + 0.1f * u;
    case WeightKind::RouterBias: return 0.01f * u;
    default: return 0.006f * 1.7320508f * u;
  }
}

DType dtype_for(CheckpointFormat f, WeightKind k) {
  if (f == CheckpointFormat::F32 || k == WeightKind::RouterBias) return DType::F32;
  if (f == CheckpointFormat::FP8 && k == WeightKind::Linear) return DType::F8_E4M3;
  return DType::BF16;
}

std::vector<int64_t> dims(const WeightSpec& s) { return std::vector<int64_t>(s.shape, s.shape + s.ndim); }

}  // namespace

const char* checkpoint_format_name(CheckpointFormat f) {
  switch (f) {
    case CheckpointFormat::F32: return "f32";
    case CheckpointFormat::BF16: return "bf16";
    case CheckpointFormat::FP8: return "fp8";
  }
  return "?";
}

CheckpointFormat parse_checkpoint_format(const std::string& s) {
  if (s == "f32") return CheckpointFormat::F32;
  if (s == "bf16") return CheckpointFormat::BF16;
  if (s == "fp8") return CheckpointFormat::FP8;
  DSV3_FAIL("checkpoint format must be f32, bf16 or fp8, got '", s, "'");
}

float random_weight_value(uint64_t seed, const std::string& name, int kind, int64_t i) {
  return value(splitmix64(seed ^ hash_name(name)), WeightKind(kind), i);
}

uint64_t write_random_checkpoint(const ModelConfig& c0, const std::string& dir,
                                 const RandomCheckpointOptions& o) {
  ModelConfig c = c0;
  c.has_quantization = o.format == CheckpointFormat::FP8;
  if (c.has_quantization) c.quantization_config = QuantizationConfig{};
  c.torch_dtype = o.format == CheckpointFormat::F32 ? "float32" : "bfloat16";
  if (!o.with_mtp) c.num_nextn_predict_layers = 0;
  validate_model_config(c, "write_random_checkpoint");
  std::filesystem::create_directories(dir);

  CheckpointWriter w(dir);
  w.set_num_shards(o.shards);
  const uint64_t seed = o.seed;
  for (const WeightSpec& s : expected_weights(c, o.with_mtp)) {
    const uint64_t key = splitmix64(seed ^ hash_name(s.name));
    const DType dt = dtype_for(o.format, s.kind);
    const WeightKind kind = s.kind;
    const int64_t n = s.numel();
    if (dt != DType::F8_E4M3) {
      w.add({s.name, dt, dims(s), [key, kind, dt, n](void* dst, size_t) {
               parallel_for(n, n > (1 << 18) ? 0 : 1,
                            [&](int64_t i) { store_from_f32(dst, dt, size_t(i), value(key, kind, i)); });
             }});
      continue;
    }
    const int64_t N = s.shape[0], K = s.shape[1];
    w.add_group(fp8_weight_group(s.name, N, K, [key, kind, N, K](Buffer& scratch) {
      scratch = Buffer(size_t(N * K) * sizeof(float));  // [N, K]
      float* x = scratch.as<float>();
      parallel_for(N * K, N * K > (1 << 18) ? 0 : 1, [&](int64_t i) { x[i] = value(key, kind, i); });
      return TensorView(x, DType::F32, {N, K});
    }));
  }
  write_file_atomic((std::filesystem::path(dir) / "config.json").string(), model_config_to_json(c));
  w.finish();
  uint64_t total = 0;
  for (const WeightSpec& s : expected_weights(c, o.with_mtp)) {
    const DType dt = dtype_for(o.format, s.kind);
    total += uint64_t(s.numel()) * dtype_size(dt);
    if (dt == DType::F8_E4M3) total += uint64_t(fp8_blocks(s.shape[0]) * fp8_blocks(s.shape[1])) * 4;
  }
  return total;
}

ModelConfig tiny_v3_config() {
  ModelConfig c;
  c.architectures = {"DeepseekV3ForCausalLM"};
  c.model_type = "deepseek_v3";
  c.vocab_size = 300;
  c.hidden_size = 160;          // > 128 and not a multiple: partial FP8 blocks
  c.intermediate_size = 200;
  c.moe_intermediate_size = 72;
  c.num_hidden_layers = 3;
  c.num_nextn_predict_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.n_shared_experts = 1;
  c.n_routed_experts = 8;
  c.routed_scaling_factor = 2.5;
  c.kv_lora_rank = 48;
  c.q_lora_rank = 96;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 32;
  c.qk_nope_head_dim = 32;
  c.topk_method = "noaux_tc";
  c.n_group = 4;
  c.topk_group = 2;
  c.num_experts_per_tok = 2;
  c.moe_layer_freq = 1;
  c.first_k_dense_replace = 1;
  c.norm_topk_prob = true;
  c.scoring_func = "sigmoid";
  c.max_position_embeddings = 1024;
  c.rope_scaling = RopeScaling{"yarn", 4.0, 256, 32.0, 1.0, 1.0, 1.0};
  return c;
}

ModelConfig tiny_v2_config() {
  ModelConfig c = tiny_v3_config();
  c.architectures = {"DeepseekV2ForCausalLM"};
  c.model_type = "deepseek_v2";
  c.num_nextn_predict_layers = 0;
  c.q_lora_rank = 0;
  c.n_shared_experts = 2;
  c.topk_method = "greedy";
  c.scoring_func = "softmax";
  c.norm_topk_prob = false;
  c.n_group = 1;
  c.topk_group = 1;
  c.routed_scaling_factor = 1.0;
  c.bos_token_id = 100000 % 300;
  c.eos_token_id = 1;
  return c;
}

}  // namespace dsv3
