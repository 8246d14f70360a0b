// The weight map: checkpoint tensor names (../shared/SPEC.md §6) -> the model's parameter
// structs, with the shapes a ModelConfig implies. One visitor (visit_weights) is the single
// source of truth for the names, shapes and kinds; the enumerator, the loader, the
// checkpoint checker, the random-checkpoint generator and `dsv3 convert` all use it.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace dsv3 {

class Checkpoint;

enum class WeightKind : uint8_t {
  Embedding,   // [vocab, hidden], BF16/F32/F16 (kept high precision, report §3.3)
  Linear,      // a projection [out, in]: BF16/F32/F16, or F8_E4M3 + weight_scale_inv
  Head,        // lm_head / shared_head.head [vocab, hidden]: not FP8
  Norm,        // RMSNorm gain [dim]
  Router,      // mlp.gate.weight [n_routed_experts, hidden]: not FP8
  RouterBias,  // mlp.gate.e_score_correction_bias [n_routed_experts]
};
const char* weight_kind_name(WeightKind k);

struct WeightSpec {
  std::string name;
  int ndim = 0;
  int64_t shape[2] = {};
  WeightKind kind = WeightKind::Linear;
  std::string shape_str() const;
  int64_t numel() const { return ndim == 1 ? shape[0] : shape[0] * shape[1]; }
};

// A parameter as loaded: the tensor and, for FP8 linear weights, its 128x128 block scales
// (F32 [ceil(out/128), ceil(in/128)]; W = fp8 * scale).
struct Weight {
  TensorView w;
  TensorView scale;       // ndim == 0 when absent
  const std::string* shard = nullptr;
  // The decode GEMV rounds x to BF16 once for this weight instead of carrying it as a hi+lo
  // pair (ModelOptions::bf16_activations; kernels/gemv.h GemvBF16::x_bf16, Fp8Path::BF16LutX8).
  bool x_bf16 = false;
  bool fp8() const { return w.dtype == DType::F8_E4M3; }
  bool present() const { return w.data != nullptr || w.ndim > 0; }
};

struct MlpWeights {         // SwiGLU: down(silu(gate(x)) * up(x))
  Weight gate_proj;         // [inter, H]
  Weight up_proj;           // [inter, H]
  Weight down_proj;         // [H, inter]
};

struct AttentionWeights {   // MLA (SPEC §1)
  Weight q_a_proj;          // [q_lora_rank, H]             (q_lora_rank > 0)
  Weight q_a_layernorm;     // [q_lora_rank]
  Weight q_b_proj;          // [heads*qk_head_dim, q_lora_rank]
  Weight q_proj;            // [heads*qk_head_dim, H]       (q_lora_rank == 0)
  Weight kv_a_proj_with_mqa;// [kv_lora_rank + qk_rope_head_dim, H]
  Weight kv_a_layernorm;    // [kv_lora_rank]
  Weight kv_b_proj;         // [heads*(qk_nope_head_dim + v_head_dim), kv_lora_rank]
  Weight o_proj;            // [H, heads*v_head_dim]
};

struct MoeWeights {
  Weight gate;                      // [n_routed_experts, H]
  Weight e_score_correction_bias;   // [n_routed_experts]          (noaux_tc)
  std::vector<MlpWeights> experts;  // n_routed_experts x [moe_inter, H] ...
  MlpWeights shared_experts;        // [n_shared*moe_inter, H] ... (n_shared_experts > 0)
};

struct LayerWeights {
  Weight input_layernorm;           // [H]
  Weight post_attention_layernorm;  // [H]
  AttentionWeights self_attn;
  bool is_moe = false;
  MlpWeights mlp;                   // dense layers
  MoeWeights moe;                   // MoE layers
};

struct MtpWeights {                 // report §2.2; checkpoint layer num_hidden_layers + k
  Weight enorm, hnorm;              // [H]
  Weight eh_proj;                   // [H, 2H]
  LayerWeights block;
  Weight shared_head_norm;          // [H]
  Weight shared_head_head;          // [V, H]
  Weight embed_tokens;              // [V, H]
};

struct ModelWeights {
  Weight embed_tokens;              // [V, H]
  std::vector<LayerWeights> layers;
  Weight norm;                      // [H]
  Weight lm_head;                   // [V, H] (= embed_tokens when tied)
  std::vector<MtpWeights> mtp;      // empty unless loaded with MTP
};

// Calls fn(spec, slot) for every tensor the config implies, in checkpoint order; slot
// points into *mw (allocated to the config's sizes) or is nullptr when mw is nullptr.
void visit_weights(const ModelConfig& c, bool with_mtp, ModelWeights* mw,
                   const std::function<void(const WeightSpec&, Weight*)>& fn);
std::vector<WeightSpec> expected_weights(const ModelConfig& c, bool with_mtp = true);

// The sibling scale tensor of a weight: "x.weight" -> "x.weight_scale_inv".
std::string scale_name(const std::string& weight_name);

struct LoadOptions {
  bool with_mtp = true;  // false: skip the MTP modules (inference without drafting)
  bool bf16_activations = false;  // Weight::x_bf16 on every Linear and Head weight
};
// Binds every expected tensor to its view in the checkpoint, checking presence, shape,
// dtype (F32/BF16/F16, or F8_E4M3 + F32 weight_scale_inv of the block shape for Linear)
// and throwing on the first problem with the tensor name, the shard, expected vs got.
ModelWeights load_weights(const ModelConfig& c, const Checkpoint& ckpt, const LoadOptions& o = {});

// Names in the checkpoint that the config does not explain (reported by inspect).
std::vector<std::string> unexpected_tensors(const ModelConfig& c, const Checkpoint& ckpt);

}  // namespace dsv3
