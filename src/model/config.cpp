// config.json <-> ModelConfig, validation and derived numbers (config.h).
#include "model/config.h"

#include <cmath>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/file_util.h"
#include "io/json_strict.h"

namespace dsv3 {

namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// Typed readers: a present key of the wrong type is an error naming the key; an absent
// key keeps the default already in the struct.
class Reader {
 public:
  Reader(const json& j, const std::string& where) : j_(j), where_(where) {}

  const json* find(const char* key) {
    seen_.insert(key);
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  void require(const char* key) {
    DSV3_CHECK(j_.contains(key), where_, ": missing required key '", key, "'");
  }
  // null_value: what null means (for keys the released configs set to null), or fail.
  void get(const char* key, int64_t* out, bool nullable = false, int64_t null_value = 0) {
    const json* v = find(key);
    if (!v) return;
    if (v->is_null() && nullable) { *out = null_value; return; }
    if (v->is_number_integer()) { *out = v->get<int64_t>(); return; }
    if (v->is_number_float()) {
      const double d = v->get<double>();
      DSV3_CHECK(std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15, where_, ": '",
                 key, "' must be an integer, got ", v->dump());
      *out = int64_t(d);
      return;
    }
    DSV3_FAIL(where_, ": '", key, "' must be an integer", nullable ? " or null" : "", ", got ",
              v->type_name(), " ", v->dump());
  }
  void get(const char* key, double* out) {
    const json* v = find(key);
    if (!v) return;
    DSV3_CHECK(v->is_number(), where_, ": '", key, "' must be a number, got ", v->type_name(),
               " ", v->dump());
    *out = v->get<double>();
  }
  void get(const char* key, bool* out) {
    const json* v = find(key);
    if (!v) return;
    DSV3_CHECK(v->is_boolean(), where_, ": '", key, "' must be true or false, got ",
               v->type_name(), " ", v->dump());
    *out = v->get<bool>();
  }
  void get(const char* key, std::string* out) {
    const json* v = find(key);
    if (!v) return;
    DSV3_CHECK(v->is_string(), where_, ": '", key, "' must be a string, got ", v->type_name(),
               " ", v->dump());
    *out = v->get<std::string>();
  }
  // The keys not read, as a JSON object.
  json rest() const {
    json r = json::object();
    for (const auto& [k, v] : j_.items())
      if (!seen_.count(k)) r[k] = v;
    return r;
  }

 private:
  const json& j_;
  std::string where_;  // a copy: callers pass temporaries ("<file> quantization_config")
  std::set<std::string> seen_;
};

void parse_rope_scaling(const json& v, RopeScaling* r, const std::string& where) {
  DSV3_CHECK(v.is_object(), where, ": 'rope_scaling' must be an object or null, got ",
             v.type_name());
  const std::string ctx = where + " rope_scaling";
  Reader rd(v, ctx);
  r->type = "";
  rd.get("type", &r->type);
  std::string rope_type;
  rd.get("rope_type", &rope_type);  // newer transformers spell it rope_type
  if (r->type.empty()) r->type = rope_type;
  DSV3_CHECK(r->type == "yarn", where, ": 'rope_scaling.type' must be \"yarn\", got \"",
             r->type, "\"");
  rd.get("factor", &r->factor);
  rd.get("original_max_position_embeddings", &r->original_max_position_embeddings);
  rd.get("beta_fast", &r->beta_fast);
  rd.get("beta_slow", &r->beta_slow);
  rd.get("mscale", &r->mscale);
  rd.get("mscale_all_dim", &r->mscale_all_dim);
}

void parse_quantization(const json& v, QuantizationConfig* q, const std::string& where) {
  DSV3_CHECK(v.is_object(), where, ": 'quantization_config' must be an object, got ",
             v.type_name());
  Reader rd(v, where + " quantization_config");
  rd.get("quant_method", &q->quant_method);
  rd.get("fmt", &q->fmt);
  rd.get("activation_scheme", &q->activation_scheme);
  if (auto it = v.find("weight_block_size"); it != v.end()) {
    DSV3_CHECK(it->is_array() && it->size() == 2 && (*it)[0].is_number_integer() &&
                   (*it)[1].is_number_integer(),
               where, ": 'quantization_config.weight_block_size' must be [128, 128], got ",
               it->dump());
    q->weight_block_size[0] = (*it)[0].get<int64_t>();
    q->weight_block_size[1] = (*it)[1].get<int64_t>();
  }
}

}  // namespace

ModelConfig parse_model_config(const std::string& text, const std::string& where) {
  const json j = parse_json_strict(text, where, "config");
  DSV3_CHECK(j.is_object(), where, ": expected a JSON object, got ", j.type_name());
  ModelConfig c;
  Reader rd(j, where);
  rd.require("model_type");
  rd.get("model_type", &c.model_type);
  DSV3_CHECK(c.model_type == "deepseek_v3" || c.model_type == "deepseek_v2", where,
             ": 'model_type' must be \"deepseek_v3\" or \"deepseek_v2\", got \"", c.model_type,
             "\"");
  // Defaults of the two configuration classes where they differ (V3's are the struct's).
  if (c.model_type == "deepseek_v3") {
    c.num_nextn_predict_layers = 1;
    c.n_shared_experts = 1;
    c.n_routed_experts = 256;
    c.moe_intermediate_size = 2048;
    c.routed_scaling_factor = 2.5;
    c.n_group = 8;
    c.topk_group = 4;
    c.num_experts_per_tok = 8;
    c.first_k_dense_replace = 3;
    c.norm_topk_prob = true;
    c.scoring_func = "sigmoid";
    c.topk_method = "noaux_tc";
  } else {
    c.num_nextn_predict_layers = 0;
    c.n_shared_experts = 0;
    c.n_routed_experts = 0;
    c.moe_intermediate_size = 1407;
    c.routed_scaling_factor = 1.0;
    c.topk_method = "greedy";
    c.scoring_func = "softmax";
    c.norm_topk_prob = false;
    c.first_k_dense_replace = 0;
    c.num_experts_per_tok = 0;
    c.bos_token_id = 100000;
    c.eos_token_id = 100001;
  }
  if (const json* a = rd.find("architectures")) {
    DSV3_CHECK(a->is_array(), where, ": 'architectures' must be a list of strings");
    for (const json& s : *a) {
      DSV3_CHECK(s.is_string(), where, ": 'architectures' must be a list of strings");
      c.architectures.push_back(s.get<std::string>());
    }
  }
  for (const char* k : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads"})
    rd.require(k);
  rd.get("vocab_size", &c.vocab_size);
  rd.get("hidden_size", &c.hidden_size);
  rd.get("intermediate_size", &c.intermediate_size);
  rd.get("moe_intermediate_size", &c.moe_intermediate_size);
  rd.get("num_hidden_layers", &c.num_hidden_layers);
  rd.get("num_nextn_predict_layers", &c.num_nextn_predict_layers, true, 0);
  rd.get("num_attention_heads", &c.num_attention_heads);
  c.num_key_value_heads = c.num_attention_heads;
  rd.get("num_key_value_heads", &c.num_key_value_heads);
  rd.get("n_shared_experts", &c.n_shared_experts, true, 0);
  rd.get("n_routed_experts", &c.n_routed_experts, true, 0);
  rd.get("ep_size", &c.ep_size);
  rd.get("routed_scaling_factor", &c.routed_scaling_factor);
  rd.get("kv_lora_rank", &c.kv_lora_rank);
  rd.get("q_lora_rank", &c.q_lora_rank, true, 0);
  rd.get("qk_rope_head_dim", &c.qk_rope_head_dim);
  rd.get("v_head_dim", &c.v_head_dim);
  rd.get("qk_nope_head_dim", &c.qk_nope_head_dim);
  rd.get("topk_method", &c.topk_method);
  if (c.topk_method == "gready") c.topk_method = "greedy";  // V2's default is spelled so
  rd.get("n_group", &c.n_group, true, 1);
  rd.get("topk_group", &c.topk_group, true, 1);
  rd.get("num_experts_per_tok", &c.num_experts_per_tok, true, 0);
  rd.get("moe_layer_freq", &c.moe_layer_freq);
  rd.get("first_k_dense_replace", &c.first_k_dense_replace);
  rd.get("norm_topk_prob", &c.norm_topk_prob);
  rd.get("scoring_func", &c.scoring_func);
  rd.get("hidden_act", &c.hidden_act);
  rd.get("max_position_embeddings", &c.max_position_embeddings);
  rd.get("initializer_range", &c.initializer_range);
  rd.get("rms_norm_eps", &c.rms_norm_eps);
  rd.get("rope_theta", &c.rope_theta);
  if (const json* r = rd.find("rope_scaling"); r && !r->is_null())
    parse_rope_scaling(*r, &c.rope_scaling, where);
  rd.get("tie_word_embeddings", &c.tie_word_embeddings);
  rd.get("bos_token_id", &c.bos_token_id, true, -1);
  rd.get("eos_token_id", &c.eos_token_id, true, -1);
  rd.get("attention_bias", &c.attention_bias);
  rd.get("attention_dropout", &c.attention_dropout);
  rd.get("torch_dtype", &c.torch_dtype);
  if (const json* q = rd.find("quantization_config"); q && !q->is_null()) {
    c.has_quantization = true;
    parse_quantization(*q, &c.quantization_config, where);
  }
  c.extra_json = rd.rest().dump();
  validate_model_config(c, where);
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  return parse_model_config(read_text_file(path), path);
}

namespace {
bool counts_fit(const ModelConfig& c);
}  // namespace

void validate_model_config(const ModelConfig& c, const std::string& where) {
  auto positive = [&](const char* key, int64_t v) {
    DSV3_CHECK(v > 0, where, ": '", key, "' must be positive, got ", v);
  };
  auto non_negative = [&](const char* key, int64_t v) {
    DSV3_CHECK(v >= 0, where, ": '", key, "' must be >= 0, got ", v);
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  positive("num_key_value_heads", c.num_key_value_heads);
  positive("kv_lora_rank", c.kv_lora_rank);
  positive("qk_rope_head_dim", c.qk_rope_head_dim);
  positive("qk_nope_head_dim", c.qk_nope_head_dim);
  positive("v_head_dim", c.v_head_dim);
  positive("max_position_embeddings", c.max_position_embeddings);
  // Bounds that keep every loop short and every size inside int32 (kernels index with
  // int64 but shapes this large are certainly a corrupt file).
  auto at_most = [&](const char* key, int64_t v, int64_t hi) {
    DSV3_CHECK(v <= hi, where, ": '", key, "' = ", v, " exceeds the supported maximum ", hi);
  };
  constexpr int64_t kMaxDim = (int64_t(1) << 31) - 1;
  for (auto [key, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                        {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                        {"moe_intermediate_size", c.moe_intermediate_size},
                        {"num_attention_heads", c.num_attention_heads},
                        {"kv_lora_rank", c.kv_lora_rank}, {"q_lora_rank", c.q_lora_rank},
                        {"qk_rope_head_dim", c.qk_rope_head_dim}, {"qk_nope_head_dim", c.qk_nope_head_dim},
                        {"v_head_dim", c.v_head_dim}})
    at_most(key, v, kMaxDim);
  at_most("num_hidden_layers", c.num_hidden_layers, 1 << 16);
  at_most("num_nextn_predict_layers", c.num_nextn_predict_layers, 1 << 10);
  at_most("n_routed_experts", c.n_routed_experts, 1 << 20);
  at_most("n_shared_experts", c.n_shared_experts, 1 << 20);
  non_negative("q_lora_rank", c.q_lora_rank);
  non_negative("num_nextn_predict_layers", c.num_nextn_predict_layers);
  non_negative("n_shared_experts", c.n_shared_experts);
  non_negative("n_routed_experts", c.n_routed_experts);
  // Interleaved-pair RoPE rotates pairs of channels (SPEC §1).
  DSV3_CHECK(c.qk_rope_head_dim % 2 == 0, where, ": 'qk_rope_head_dim' must be even, got ",
             c.qk_rope_head_dim);
  DSV3_CHECK(c.hidden_act == "silu", where, ": 'hidden_act' must be \"silu\" (SwiGLU experts), got \"",
             c.hidden_act, "\"");
  DSV3_CHECK(!c.attention_bias, where, ": 'attention_bias' must be false: MLA's projections have "
             "no bias tensors (SPEC §6)");
  DSV3_CHECK(c.scoring_func == "sigmoid" || c.scoring_func == "softmax", where,
             ": 'scoring_func' must be \"sigmoid\" or \"softmax\", got \"", c.scoring_func, "\"");
  DSV3_CHECK(c.topk_method == "noaux_tc" || c.topk_method == "greedy" ||
                 c.topk_method == "group_limited_greedy",
             where, ": 'topk_method' must be \"noaux_tc\", \"greedy\" or \"group_limited_greedy\", got \"",
             c.topk_method, "\"");
  if (c.n_routed_experts > 0) {
    positive("moe_intermediate_size", c.moe_intermediate_size);
    positive("moe_layer_freq", c.moe_layer_freq);
    positive("n_group", c.n_group);
    DSV3_CHECK(c.num_experts_per_tok >= 1 && c.num_experts_per_tok <= c.n_routed_experts, where,
               ": 'num_experts_per_tok' must be in [1, n_routed_experts = ", c.n_routed_experts,
               "], got ", c.num_experts_per_tok);
    DSV3_CHECK(c.n_routed_experts % c.n_group == 0, where, ": 'n_routed_experts' (",
               c.n_routed_experts, ") must be divisible by 'n_group' (", c.n_group, ")");
    DSV3_CHECK(c.topk_group >= 1 && c.topk_group <= c.n_group, where,
               ": 'topk_group' must be in [1, n_group = ", c.n_group, "], got ", c.topk_group);
    const int64_t per_group = c.n_routed_experts / c.n_group;
    DSV3_CHECK(c.num_experts_per_tok <= c.topk_group * per_group, where,
               ": 'num_experts_per_tok' (", c.num_experts_per_tok, ") exceeds the ",
               c.topk_group * per_group, " experts in the topk_group = ", c.topk_group,
               " selected groups");
    // noaux_tc scores a group by the sum of its top-2 biased scores (SPEC §1).
    DSV3_CHECK(c.topk_method != "noaux_tc" || c.n_group == 1 || per_group >= 2, where,
               ": 'n_group' (", c.n_group, ") leaves fewer than 2 experts per group, but "
               "noaux_tc scores groups by their top-2 experts");
    DSV3_CHECK(c.first_k_dense_replace >= 0 && c.first_k_dense_replace <= c.num_hidden_layers,
               where, ": 'first_k_dense_replace' must be in [0, num_hidden_layers = ",
               c.num_hidden_layers, "], got ", c.first_k_dense_replace);
  }
  DSV3_CHECK(c.rms_norm_eps > 0, where, ": 'rms_norm_eps' must be positive, got ", c.rms_norm_eps);
  DSV3_CHECK(c.rope_theta > 0, where, ": 'rope_theta' must be positive, got ", c.rope_theta);
  DSV3_CHECK(c.routed_scaling_factor > 0, where, ": 'routed_scaling_factor' must be positive, got ",
             c.routed_scaling_factor);
  if (!c.rope_scaling.type.empty()) {
    const RopeScaling& r = c.rope_scaling;
    DSV3_CHECK(r.type == "yarn", where, ": 'rope_scaling.type' must be \"yarn\", got \"", r.type, "\"");
    DSV3_CHECK(r.factor >= 1, where, ": 'rope_scaling.factor' must be >= 1, got ", r.factor);
    DSV3_CHECK(r.original_max_position_embeddings > 0, where,
               ": 'rope_scaling.original_max_position_embeddings' must be positive, got ",
               r.original_max_position_embeddings);
    DSV3_CHECK(r.beta_fast > r.beta_slow, where, ": 'rope_scaling.beta_fast' (", r.beta_fast,
               ") must exceed 'rope_scaling.beta_slow' (", r.beta_slow, ")");
  }
  DSV3_CHECK(c.torch_dtype == "bfloat16" || c.torch_dtype == "float16" || c.torch_dtype == "float32",
             where, ": 'torch_dtype' must be bfloat16, float16 or float32, got \"", c.torch_dtype, "\"");
  if (c.has_quantization) {
    const QuantizationConfig& q = c.quantization_config;
    DSV3_CHECK(q.quant_method == "fp8", where, ": 'quantization_config.quant_method' must be \"fp8\", got \"",
               q.quant_method, "\"");
    DSV3_CHECK(q.fmt == "e4m3", where, ": 'quantization_config.fmt' must be \"e4m3\", got \"", q.fmt, "\"");
    DSV3_CHECK(q.weight_block_size[0] == 128 && q.weight_block_size[1] == 128, where,
               ": 'quantization_config.weight_block_size' must be [128, 128], got [",
               q.weight_block_size[0], ", ", q.weight_block_size[1], "]");
    DSV3_CHECK(q.activation_scheme == "dynamic", where,
               ": 'quantization_config.activation_scheme' must be \"dynamic\", got \"",
               q.activation_scheme, "\"");
  }
  DSV3_CHECK(counts_fit(c), where, ": the sizes give more than 2^62 parameters or KV-cache "
             "elements (hidden_size, vocab_size, layers, experts...): not a real model");
}

std::string model_config_to_json(const ModelConfig& c) {
  ojson j;
  auto nullable = [](int64_t v, int64_t null_value) {
    return v == null_value ? ojson(nullptr) : ojson(v);
  };
  j["architectures"] = c.architectures;
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["n_shared_experts"] = nullable(c.n_shared_experts, 0);
  j["n_routed_experts"] = nullable(c.n_routed_experts, 0);
  j["ep_size"] = c.ep_size;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["q_lora_rank"] = nullable(c.q_lora_rank, 0);
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["topk_method"] = c.topk_method;
  j["n_group"] = c.n_group;
  j["topk_group"] = c.topk_group;
  j["num_experts_per_tok"] = nullable(c.num_experts_per_tok, 0);
  j["moe_layer_freq"] = c.moe_layer_freq;
  j["first_k_dense_replace"] = c.first_k_dense_replace;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["scoring_func"] = c.scoring_func;
  j["hidden_act"] = c.hidden_act;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["initializer_range"] = c.initializer_range;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["bos_token_id"] = nullable(c.bos_token_id, -1);
  j["eos_token_id"] = nullable(c.eos_token_id, -1);
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    const RopeScaling& r = c.rope_scaling;
    j["rope_scaling"] = {{"type", r.type},
                         {"factor", r.factor},
                         {"original_max_position_embeddings", r.original_max_position_embeddings},
                         {"beta_fast", r.beta_fast},
                         {"beta_slow", r.beta_slow},
                         {"mscale", r.mscale},
                         {"mscale_all_dim", r.mscale_all_dim}};
  }
  j["attention_bias"] = c.attention_bias;
  j["attention_dropout"] = c.attention_dropout;
  j["torch_dtype"] = c.torch_dtype;
  if (c.has_quantization) {
    const QuantizationConfig& q = c.quantization_config;
    j["quantization_config"] = {
        {"activation_scheme", q.activation_scheme},
        {"fmt", q.fmt},
        {"quant_method", q.quant_method},
        {"weight_block_size", {q.weight_block_size[0], q.weight_block_size[1]}}};
  }
  const json extra = json::parse(c.extra_json);
  for (const auto& [k, v] : extra.items())
    if (!j.contains(k)) j[k] = ojson::parse(v.dump());
  return j.dump(1) + "\n";
}

namespace {

// The counts as T: double to bound them (no overflow possible), int64_t for the exact
// numbers once the bound holds. Every term is a product of positive sizes, so when the
// totals fit, so does every intermediate.
template <class T>
struct CountsT {
  T embedding = 0, attention = 0, dense_mlp = 0, routed_experts = 0, shared_experts = 0,
    router = 0, norms = 0, lm_head = 0, mtp = 0, activated = 0, kv_mla = 0, kv_mha = 0;
};

template <class T>
CountsT<T> count_impl(const ModelConfig& c) {
  const T H = T(c.hidden_size), V = T(c.vocab_size), nh = T(c.num_attention_heads);
  const T q_lora = T(c.q_lora_rank), kv_lora = T(c.kv_lora_rank), rope = T(c.qk_rope_head_dim);
  const T nope = T(c.qk_nope_head_dim), vd = T(c.v_head_dim);
  // MLA (SPEC §1): W_DQ [q_lora,H] + q_a_layernorm + W_UQ [nh*qk_head, q_lora], or one
  // q_proj [nh*qk_head, H]; W_DKV;W_KR [kv_lora+rope, H] + kv_a_layernorm;
  // W_UK;W_UV [nh*(nope+v), kv_lora]; o_proj [H, nh*v].
  const T q = c.has_q_lora() ? H * q_lora + q_lora + q_lora * nh * (nope + rope) : H * nh * (nope + rope);
  const T attn = q + H * (kv_lora + rope) + kv_lora + kv_lora * nh * (nope + vd) + nh * vd * H;
  const T expert = T(3) * H * T(c.moe_intermediate_size);  // gate, up, down
  const T E = T(c.n_routed_experts), S = T(c.n_shared_experts);
  const T router = E * H + (c.has_router_bias() ? E : T(0));
  const T dense = T(3) * H * T(c.intermediate_size);
  CountsT<T> p;
  p.embedding = V * H;
  p.lm_head = c.tie_word_embeddings ? T(0) : V * H;
  T moe_layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l) ? T(1) : T(0);
  const T L = T(c.num_hidden_layers), dense_layers = L - moe_layers;
  p.attention = L * attn;
  p.norms = H + T(2) * H * L;  // model.norm + two per layer
  p.routed_experts = moe_layers * E * expert;
  p.shared_experts = moe_layers * S * expert;
  p.router = moe_layers * router;
  p.dense_mlp = dense_layers * dense;
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const T ffn = c.is_moe_layer(c.num_hidden_layers + k) ? (E + S) * expert + router : dense;
    // enorm, hnorm, eh_proj [H, 2H], the block, shared_head.norm, shared_head.head and the
    // module's own embed_tokens copy.
    p.mtp += T(2) * H + T(2) * H * H + attn + T(2) * H + ffn + H + V * H + V * H;
  }
  // The embedding is a row lookup, not a matmul: it is not "activated" compute. This is
  // the convention behind the published figures (V3 37B, V2-Lite 2.4B; see test_config).
  p.activated = p.attention + p.dense_mlp + p.shared_experts + p.router + p.norms + p.lm_head +
                moe_layers * T(c.num_experts_per_tok) * expert;
  p.kv_mla = L * (kv_lora + rope);
  p.kv_mha = L * nh * (nope + rope + vd);
  return p;
}

// Largest count accepted: 2^62, half of int64, so sums of the parts cannot overflow.
constexpr double kMaxCount = 4.611686018427387904e18;

bool counts_fit(const ModelConfig& c) {
  const CountsT<double> d = count_impl<double>(c);
  const double total = d.embedding + d.attention + d.dense_mlp + d.routed_experts +
                       d.shared_experts + d.router + d.norms + d.lm_head + d.mtp;
  return total < kMaxCount && d.kv_mha < kMaxCount && d.kv_mla < kMaxCount;
}

}  // namespace

ParamCounts count_parameters(const ModelConfig& c) {
  DSV3_CHECK(counts_fit(c), "config: the parameter count overflows 64 bits (sizes too large)");
  const CountsT<int64_t> i = count_impl<int64_t>(c);
  ParamCounts p;
  p.embedding = i.embedding;
  p.attention = i.attention;
  p.dense_mlp = i.dense_mlp;
  p.routed_experts = i.routed_experts;
  p.shared_experts = i.shared_experts;
  p.router = i.router;
  p.norms = i.norms;
  p.lm_head = i.lm_head;
  p.mtp = i.mtp;
  p.activated = i.activated;
  return p;
}

int64_t kv_cache_elems_mla(const ModelConfig& c) {
  DSV3_CHECK(counts_fit(c), "config: the KV-cache size overflows 64 bits (sizes too large)");
  return count_impl<int64_t>(c).kv_mla;
}

int64_t kv_cache_elems_mha(const ModelConfig& c) {
  DSV3_CHECK(counts_fit(c), "config: the KV-cache size overflows 64 bits (sizes too large)");
  return count_impl<int64_t>(c).kv_mha;
}

}  // namespace dsv3
