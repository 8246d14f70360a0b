// The weight map (weights.h).
#include "model/weights.h"

#include <set>

#include "core/check.h"
#include "io/checkpoint.h"
#include "kernels/quant.h"

namespace dsv3 {

namespace {

using Fn = std::function<void(const WeightSpec&, Weight*)>;

struct Visitor {
  const ModelConfig& c;
  const Fn& fn;

  void one(const std::string& name, std::initializer_list<int64_t> shape, WeightKind kind, Weight* w) {
    WeightSpec s;
    s.name = name;
    s.ndim = int(shape.size());
    int d = 0;
    for (int64_t x : shape) s.shape[d++] = x;
    s.kind = kind;
    fn(s, w);
  }
  static Weight* at(Weight* base, Weight& field) { return base ? &field : nullptr; }

  void mlp(const std::string& p, int64_t inter, MlpWeights* m) {
    const int64_t H = c.hidden_size;
    one(p + "gate_proj.weight", {inter, H}, WeightKind::Linear, m ? &m->gate_proj : nullptr);
    one(p + "up_proj.weight", {inter, H}, WeightKind::Linear, m ? &m->up_proj : nullptr);
    one(p + "down_proj.weight", {H, inter}, WeightKind::Linear, m ? &m->down_proj : nullptr);
  }

  void layer(int64_t l, LayerWeights* lw) {
    const int64_t H = c.hidden_size, nh = c.num_attention_heads;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    AttentionWeights* a = lw ? &lw->self_attn : nullptr;
    one(p + "input_layernorm.weight", {H}, WeightKind::Norm, lw ? &lw->input_layernorm : nullptr);
    const std::string sa = p + "self_attn.";
    if (c.has_q_lora()) {
      one(sa + "q_a_proj.weight", {c.q_lora_rank, H}, WeightKind::Linear, a ? &a->q_a_proj : nullptr);
      one(sa + "q_a_layernorm.weight", {c.q_lora_rank}, WeightKind::Norm, a ? &a->q_a_layernorm : nullptr);
      one(sa + "q_b_proj.weight", {nh * c.qk_head_dim(), c.q_lora_rank}, WeightKind::Linear,
          a ? &a->q_b_proj : nullptr);
    } else {
      one(sa + "q_proj.weight", {nh * c.qk_head_dim(), H}, WeightKind::Linear, a ? &a->q_proj : nullptr);
    }
    one(sa + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, H},
        WeightKind::Linear, a ? &a->kv_a_proj_with_mqa : nullptr);
    one(sa + "kv_a_layernorm.weight", {c.kv_lora_rank}, WeightKind::Norm, a ? &a->kv_a_layernorm : nullptr);
    one(sa + "kv_b_proj.weight", {nh * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
        WeightKind::Linear, a ? &a->kv_b_proj : nullptr);
    one(sa + "o_proj.weight", {H, nh * c.v_head_dim}, WeightKind::Linear, a ? &a->o_proj : nullptr);
    one(p + "post_attention_layernorm.weight", {H}, WeightKind::Norm,
        lw ? &lw->post_attention_layernorm : nullptr);
    const bool moe = c.is_moe_layer(l);
    if (lw) lw->is_moe = moe;
    if (!moe) {
      mlp(p + "mlp.", c.intermediate_size, lw ? &lw->mlp : nullptr);
      return;
    }
    MoeWeights* m = lw ? &lw->moe : nullptr;
    if (m) m->experts.resize(size_t(c.n_routed_experts));
    one(p + "mlp.gate.weight", {c.n_routed_experts, H}, WeightKind::Router, m ? &m->gate : nullptr);
    if (c.has_router_bias())
      one(p + "mlp.gate.e_score_correction_bias", {c.n_routed_experts}, WeightKind::RouterBias,
          m ? &m->e_score_correction_bias : nullptr);
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      mlp(p + "mlp.experts." + std::to_string(e) + ".", c.moe_intermediate_size,
          m ? &m->experts[size_t(e)] : nullptr);
    if (c.n_shared_experts > 0)
      mlp(p + "mlp.shared_experts.", c.n_shared_experts * c.moe_intermediate_size,
          m ? &m->shared_experts : nullptr);
  }
};

}  // namespace

const char* weight_kind_name(WeightKind k) {
  switch (k) {
    case WeightKind::Embedding: return "embedding";
    case WeightKind::Linear: return "linear";
    case WeightKind::Head: return "head";
    case WeightKind::Norm: return "norm";
    case WeightKind::Router: return "router";
    case WeightKind::RouterBias: return "router_bias";
  }
  return "?";
}

std::string WeightSpec::shape_str() const {
  std::string s = "[";
  for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + "]";
}

std::string scale_name(const std::string& weight_name) {
  return weight_name + "_scale_inv";
}

void visit_weights(const ModelConfig& c, bool with_mtp, ModelWeights* mw, const Fn& fn) {
  const int64_t H = c.hidden_size, V = c.vocab_size;
  Visitor v{c, fn};
  if (mw) {
    mw->layers.assign(size_t(c.num_hidden_layers), {});
    mw->mtp.assign(with_mtp ? size_t(c.num_nextn_predict_layers) : 0, {});
  }
  v.one("model.embed_tokens.weight", {V, H}, WeightKind::Embedding, mw ? &mw->embed_tokens : nullptr);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    v.layer(l, mw ? &mw->layers[size_t(l)] : nullptr);
  v.one("model.norm.weight", {H}, WeightKind::Norm, mw ? &mw->norm : nullptr);
  if (!c.tie_word_embeddings)
    v.one("lm_head.weight", {V, H}, WeightKind::Head, mw ? &mw->lm_head : nullptr);
  if (!with_mtp) return;
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const int64_t l = c.num_hidden_layers + k;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    MtpWeights* m = mw ? &mw->mtp[size_t(k)] : nullptr;
    v.one(p + "embed_tokens.weight", {V, H}, WeightKind::Embedding, m ? &m->embed_tokens : nullptr);
    v.one(p + "enorm.weight", {H}, WeightKind::Norm, m ? &m->enorm : nullptr);
    v.one(p + "hnorm.weight", {H}, WeightKind::Norm, m ? &m->hnorm : nullptr);
    v.one(p + "eh_proj.weight", {H, 2 * H}, WeightKind::Linear, m ? &m->eh_proj : nullptr);
    v.layer(l, m ? &m->block : nullptr);
    v.one(p + "shared_head.norm.weight", {H}, WeightKind::Norm, m ? &m->shared_head_norm : nullptr);
    v.one(p + "shared_head.head.weight", {V, H}, WeightKind::Head, m ? &m->shared_head_head : nullptr);
  }
}

std::vector<WeightSpec> expected_weights(const ModelConfig& c, bool with_mtp) {
  std::vector<WeightSpec> out;
  visit_weights(c, with_mtp, nullptr, [&](const WeightSpec& s, Weight*) { out.push_back(s); });
  return out;
}

namespace {

bool same_shape(const TensorView& v, int ndim, const int64_t* shape) {
  if (v.ndim != ndim) return false;
  for (int d = 0; d < ndim; ++d)
    if (v.shape[d] != shape[d]) return false;
  return true;
}

bool high_precision(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

}  // namespace

ModelWeights load_weights(const ModelConfig& c, const Checkpoint& ckpt, const LoadOptions& o) {
  ModelWeights mw;
  visit_weights(c, o.with_mtp, &mw, [&](const WeightSpec& s, Weight* w) {
    const CheckpointTensor* t = ckpt.find(s.name);
    DSV3_CHECK(t != nullptr, ckpt.dir(), ": missing tensor '", s.name, "' (expected ",
               weight_kind_name(s.kind), " ", s.shape_str(), ")");
    const TensorView& v = t->view;
    DSV3_CHECK(same_shape(v, s.ndim, s.shape), *t->shard, ": tensor '", s.name,
               "' has shape ", v.shape_str(), ", expected ", s.shape_str(), " from config.json");
    if (v.dtype == DType::F8_E4M3) {
      DSV3_CHECK(s.kind == WeightKind::Linear, *t->shard, ": tensor '", s.name, "' is F8_E4M3, but a ",
                 weight_kind_name(s.kind), " weight must be F32, BF16 or F16");
      const std::string sn = scale_name(s.name);
      const CheckpointTensor* sc = ckpt.find(sn);
      DSV3_CHECK(sc != nullptr, ckpt.dir(), ": FP8 tensor '", s.name, "' has no '", sn, "'");
      const int64_t want[2] = {fp8_blocks(s.shape[0]), fp8_blocks(s.shape[1])};
      DSV3_CHECK(sc->view.dtype == DType::F32, *sc->shard, ": tensor '", sn, "' is ",
                 dtype_name(sc->view.dtype), ", expected F32");
      DSV3_CHECK(same_shape(sc->view, 2, want), *sc->shard, ": tensor '", sn, "' has shape ",
                 sc->view.shape_str(), ", expected [", want[0], ", ", want[1],
                 "] (128x128 blocks of ", s.shape_str(), ")");
      w->scale = sc->view;
    } else {
      DSV3_CHECK(high_precision(v.dtype), *t->shard, ": tensor '", s.name, "' is ",
                 dtype_name(v.dtype), ", expected F32, BF16 or F16",
                 s.kind == WeightKind::Linear ? " (or F8_E4M3 with weight_scale_inv)" : "");
      DSV3_CHECK(!ckpt.contains(scale_name(s.name)), *t->shard, ": tensor '", s.name, "' is ",
                 dtype_name(v.dtype), " but the checkpoint also has '", scale_name(s.name),
                 "' (expected F8_E4M3 with a scale, or no scale)");
    }
    w->w = v;
    w->shard = t->shard;
    w->x_bf16 = o.bf16_activations && (s.kind == WeightKind::Linear || s.kind == WeightKind::Head);
  });
  if (c.tie_word_embeddings) {
    mw.lm_head = mw.embed_tokens;
    mw.lm_head.x_bf16 = o.bf16_activations;
  }
  return mw;
}

std::vector<std::string> unexpected_tensors(const ModelConfig& c, const Checkpoint& ckpt) {
  std::set<std::string> known;
  visit_weights(c, true, nullptr, [&](const WeightSpec& s, Weight*) {
    known.insert(s.name);
    known.insert(scale_name(s.name));
  });
  std::vector<std::string> out;
  for (const std::string& n : ckpt.names())
    if (!known.count(n)) out.push_back(n);
  return out;
}

}  // namespace dsv3
