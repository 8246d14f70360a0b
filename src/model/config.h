// ModelConfig: the Hugging Face config.json of DeepSeek-V3 (model_type deepseek_v3) and
// DeepSeek-V2 (deepseek_v2), field for field (../shared/SPEC.md §1, §6). Missing keys take
// the defaults of the models' own configuration classes (configuration_deepseek.py),
// except the sizes that define the architecture (vocab_size, hidden_size,
// intermediate_size, num_hidden_layers, num_attention_heads and, for MoE models,
// moe_intermediate_size): a default there would silently build a different model, so
// they are required. Validation names the key and what was expected.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace dsv3 {

struct RopeScaling {           // "rope_scaling": {"type": "yarn", ...} or null
  std::string type;            // "" when rope_scaling is null; "yarn" otherwise
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

struct QuantizationConfig {    // "quantization_config" (present = FP8 checkpoint)
  std::string quant_method = "fp8";
  std::string fmt = "e4m3";
  int64_t weight_block_size[2] = {128, 128};
  std::string activation_scheme = "dynamic";
};

struct ModelConfig {
  std::vector<std::string> architectures;  // ["DeepseekV3ForCausalLM"]
  std::string model_type = "deepseek_v3";  // deepseek_v3 | deepseek_v2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;           // dense FFN layers
  int64_t moe_intermediate_size = 0;       // each routed / shared expert
  int64_t num_hidden_layers = 0;
  int64_t num_nextn_predict_layers = 0;    // MTP modules (V3 default 1; V2 has none)
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;         // = num_attention_heads (MLA; kept for HF)
  int64_t n_shared_experts = 0;            // null -> 0
  int64_t n_routed_experts = 0;            // null / 0 -> every layer dense
  int64_t ep_size = 1;
  double routed_scaling_factor = 1.0;
  int64_t kv_lora_rank = 512;
  int64_t q_lora_rank = 1536;              // null -> 0: no query compression (q_proj)
  int64_t qk_rope_head_dim = 64;
  int64_t v_head_dim = 128;
  int64_t qk_nope_head_dim = 128;
  std::string topk_method = "noaux_tc";    // noaux_tc | greedy | group_limited_greedy
  int64_t n_group = 1;                     // null -> 1
  int64_t topk_group = 1;                  // null -> 1
  int64_t num_experts_per_tok = 0;         // null -> 0 (dense)
  int64_t moe_layer_freq = 1;
  int64_t first_k_dense_replace = 0;
  bool norm_topk_prob = false;
  std::string scoring_func = "sigmoid";    // sigmoid | softmax
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 4096;
  double initializer_range = 0.02;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 0;                // -1 when null
  int64_t eos_token_id = 1;                // -1 when null
  bool attention_bias = false;
  double attention_dropout = 0.0;
  std::string torch_dtype = "bfloat16";
  bool has_quantization = false;
  QuantizationConfig quantization_config;
  // Keys this struct does not model (use_cache, auto_map, ...), as a JSON object text, so
  // that writing a config back loses nothing.
  std::string extra_json = "{}";

  // ---- derived -------------------------------------------------------------------------
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool has_q_lora() const { return q_lora_rank > 0; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // The aux-loss-free bias `mlp.gate.e_score_correction_bias` exists (report §2.1.2).
  bool has_router_bias() const { return topk_method == "noaux_tc"; }
};

// Parses config.json text; `where` names the file in messages. Validates (below).
ModelConfig parse_model_config(const std::string& json_text, const std::string& where);
ModelConfig load_model_config(const std::string& path);
// Throws dsv3::Error naming the first bad key: non-positive sizes, n_routed_experts %
// n_group, topk_group > n_group, num_experts_per_tok > n_routed_experts, unknown
// scoring_func / topk_method / hidden_act / rope type, weight_block_size != [128,128]...
void validate_model_config(const ModelConfig& c, const std::string& where);
// config.json text (2-space indented), keys in the order of the released files.
std::string model_config_to_json(const ModelConfig& c);

// Parameter counts (elements). MTP modules hold their own copies of embed_tokens and
// shared_head.head in the HF checkpoint, so they count here as the checkpoint stores them.
struct ParamCounts {
  int64_t embedding = 0;      // model.embed_tokens
  int64_t attention = 0;      // all main layers: MLA projections + q/kv norms
  int64_t dense_mlp = 0;      // dense FFN layers
  int64_t routed_experts = 0; // all routed experts of all main layers
  int64_t shared_experts = 0;
  int64_t router = 0;         // gate weight + correction bias
  int64_t norms = 0;          // layer norms + final norm
  int64_t lm_head = 0;        // 0 when tied
  int64_t mtp = 0;            // all MTP modules, including their embed/head copies
  int64_t main_total() const {
    return embedding + attention + dense_mlp + routed_experts + shared_experts + router +
           norms + lm_head;
  }
  int64_t total() const { return main_total() + mtp; }
  // Per token, main model: everything except the embedding (a lookup) and the routed
  // experts, plus top-k routed experts per MoE layer.
  int64_t activated = 0;
};
ParamCounts count_parameters(const ModelConfig& c);

// KV cache per token, all main layers, in elements: MLA caches the latent c_KV and the
// shared rope key (kv_lora_rank + qk_rope_head_dim per layer); an MHA of the same heads
// would cache K and V per head: heads * (qk_head_dim + v_head_dim).
int64_t kv_cache_elems_mla(const ModelConfig& c);
int64_t kv_cache_elems_mha(const ModelConfig& c);

}  // namespace dsv3
