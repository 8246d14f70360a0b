// dsv3 inspect <model-dir> [--json]: what a Hugging Face DeepSeek-V3/V2 directory holds —
// architecture, parameter counts, MoE and MLA layout, KV-cache size, MTP, RoPE/YaRN,
// quantisation, and (when the weights are there) bytes by dtype and a full check of the
// weight map. Works on a directory with only config.json.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/check.h"
#include "io/checkpoint.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsv3::cli {

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// 671026419200 -> "671.03B" (parameters, powers of 1000).
std::string human(double v) {
  const char* pre[] = {"", "K", "M", "B", "T"};
  int i = 0;
  while (v >= 1000 && i < 4) { v /= 1000; ++i; }
  char b[64];
  std::snprintf(b, sizeof b, "%.2f%s", v, pre[i]);
  return b;
}

std::string bytes_str(double b) {
  const char* pre[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (b >= 1024 && i < 4) { b /= 1024; ++i; }
  char s[64];
  std::snprintf(s, sizeof s, "%.2f %s", b, pre[i]);
  return s;
}

// Bytes a checkpoint of this config takes as released: linear weights F8_E4M3 + F32 block
// scales when quantization_config is set, else BF16; router bias F32; the rest BF16.
uint64_t expected_bytes(const ModelConfig& c) {
  uint64_t b = 0;
  for (const WeightSpec& s : expected_weights(c, true)) {
    if (s.kind == WeightKind::RouterBias) b += uint64_t(s.numel()) * 4;
    else if (s.kind == WeightKind::Linear && c.has_quantization)
      b += uint64_t(s.numel()) + uint64_t(fp8_blocks(s.shape[0]) * fp8_blocks(s.shape[1])) * 4;
    else b += uint64_t(s.numel()) * 2;
  }
  return b;
}

struct InspectOpts {
  std::string dir;
  bool json = false;
  bool no_check = false;
};

int run_inspect(const InspectOpts& o) {
  // A bare config.json (e.g. configs/deepseek-v3-671b.json) is inspected as a directory
  // holding only that file.
  const bool bare_config = fs::is_regular_file(o.dir);
  const fs::path cfg_path = bare_config ? fs::path(o.dir) : fs::path(o.dir) / "config.json";
  DSV3_CHECK(fs::is_regular_file(cfg_path), o.dir, ": no config.json");
  const ModelConfig c = load_model_config(cfg_path.string());
  const ParamCounts p = count_parameters(c);
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l);
  const int64_t mla = kv_cache_elems_mla(c), mha = kv_cache_elems_mha(c);

  ojson j;
  j["dir"] = o.dir;
  j["model_type"] = c.model_type;
  j["architectures"] = c.architectures;
  j["layers"] = {{"num_hidden_layers", c.num_hidden_layers}, {"dense", c.num_hidden_layers - moe_layers},
                 {"moe", moe_layers}, {"hidden_size", c.hidden_size}, {"vocab_size", c.vocab_size},
                 {"intermediate_size", c.intermediate_size}};
  j["parameters"] = {{"total", p.total()}, {"main", p.main_total()}, {"mtp", p.mtp},
                     {"activated_per_token", p.activated}, {"embedding", p.embedding},
                     {"attention", p.attention}, {"dense_mlp", p.dense_mlp},
                     {"routed_experts", p.routed_experts}, {"shared_experts", p.shared_experts},
                     {"router", p.router}, {"norms", p.norms}, {"lm_head", p.lm_head}};
  j["moe"] = {{"n_routed_experts", c.n_routed_experts}, {"n_shared_experts", c.n_shared_experts},
              {"moe_intermediate_size", c.moe_intermediate_size},
              {"num_experts_per_tok", c.num_experts_per_tok}, {"n_group", c.n_group},
              {"topk_group", c.topk_group}, {"topk_method", c.topk_method},
              {"scoring_func", c.scoring_func}, {"norm_topk_prob", c.norm_topk_prob},
              {"routed_scaling_factor", c.routed_scaling_factor},
              {"first_k_dense_replace", c.first_k_dense_replace}, {"moe_layer_freq", c.moe_layer_freq}};
  j["mla"] = {{"num_attention_heads", c.num_attention_heads}, {"q_lora_rank", c.q_lora_rank},
              {"kv_lora_rank", c.kv_lora_rank}, {"qk_nope_head_dim", c.qk_nope_head_dim},
              {"qk_rope_head_dim", c.qk_rope_head_dim}, {"v_head_dim", c.v_head_dim}};
  j["kv_cache_per_token"] = {{"mla_elems", mla}, {"mha_elems", mha}, {"mla_bytes_bf16", 2 * mla},
                             {"mha_bytes_bf16", 2 * mha}, {"ratio", double(mha) / double(mla)}};
  j["mtp"] = {{"num_nextn_predict_layers", c.num_nextn_predict_layers},
              {"first_layer_index", c.num_hidden_layers}};
  ojson rope = {{"rope_theta", c.rope_theta}, {"max_position_embeddings", c.max_position_embeddings}};
  if (!c.rope_scaling.type.empty()) {
    const RopeScaling& r = c.rope_scaling;
    rope["scaling"] = {{"type", r.type}, {"factor", r.factor},
                       {"original_max_position_embeddings", r.original_max_position_embeddings},
                       {"beta_fast", r.beta_fast}, {"beta_slow", r.beta_slow},
                       {"mscale", r.mscale}, {"mscale_all_dim", r.mscale_all_dim}};
  } else {
    rope["scaling"] = nullptr;
  }
  j["rope"] = rope;
  if (c.has_quantization)
    j["quantization"] = {{"quant_method", "fp8"}, {"fmt", "e4m3"},
                         {"weight_block_size", {128, 128}}, {"activation_scheme", "dynamic"}};
  else
    j["quantization"] = nullptr;
  j["expected_checkpoint_bytes"] = expected_bytes(c);

  std::string weights_error;
  ojson w;
  const bool present = !bare_config && Checkpoint::has_weights(o.dir);
  w["present"] = present;
  if (present) {
    const Checkpoint ck(o.dir);
    std::map<std::string, uint64_t> by_dtype;
    for (const auto& s : ck.shards())
      for (const SafetensorsEntry& e : s->header().tensors) by_dtype[dtype_name(e.dtype)] += e.end - e.begin;
    w["tensors"] = ck.num_tensors();
    w["shards"] = ck.shard_names().size();
    w["bytes"] = ck.total_bytes();
    w["bytes_by_dtype"] = by_dtype;
    if (!o.no_check) {
      try {
        (void)load_weights(c, ck);
        w["check"] = "ok";
      } catch (const Error& e) {
        weights_error = e.what();
        w["check"] = weights_error;
      }
      w["unexpected_tensors"] = unexpected_tensors(c, ck).size();
    }
  }
  j["weights"] = w;

  if (o.json) {
    std::printf("%s\n", j.dump(1).c_str());
  } else {
    auto line = [](const char* k, const std::string& v) { std::printf("%-12s %s\n", k, v.c_str()); };
    line("model", o.dir);
    line("model_type", c.model_type + (c.architectures.empty() ? "" : " (" + c.architectures[0] + ")"));
    line("layers", str_cat(c.num_hidden_layers, " (", c.num_hidden_layers - moe_layers, " dense + ",
                           moe_layers, " MoE), hidden ", c.hidden_size, ", vocab ", c.vocab_size,
                           ", dense FFN ", c.intermediate_size));
    line("parameters", str_cat(human(double(p.total())), " total = main ", human(double(p.main_total())),
                               " + MTP ", human(double(p.mtp)), "; activated per token ",
                               human(double(p.activated)), " (", p.total(), " / ", p.activated, ")"));
    if (c.n_routed_experts > 0)
      line("MoE", str_cat(c.n_routed_experts, " routed + ", c.n_shared_experts, " shared experts (hidden ",
                          c.moe_intermediate_size, "), top-", c.num_experts_per_tok, ", ", c.n_group,
                          " groups top-", c.topk_group, ", ", c.scoring_func, " scores, ", c.topk_method,
                          ", norm_topk_prob ", c.norm_topk_prob ? "true" : "false", ", x",
                          c.routed_scaling_factor));
    else
      line("MoE", "none (all layers dense)");
    line("MLA", str_cat(c.num_attention_heads, " heads; q_lora_rank ",
                        c.has_q_lora() ? std::to_string(c.q_lora_rank) : std::string("none (q_proj)"),
                        ", kv_lora_rank ", c.kv_lora_rank, "; head dims nope ", c.qk_nope_head_dim,
                        " + rope ", c.qk_rope_head_dim, ", v ", c.v_head_dim));
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.1fx", double(mha) / double(mla));
    line("KV cache", str_cat("per token (BF16): MLA latent ", bytes_str(2.0 * double(mla)), " = ",
                             c.num_hidden_layers, " x (", c.kv_lora_rank, " + ", c.qk_rope_head_dim,
                             ") x 2 B vs MHA ", bytes_str(2.0 * double(mha)), " = ", c.num_hidden_layers,
                             " x ", c.num_attention_heads, " x (", c.qk_head_dim(), " + ", c.v_head_dim,
                             ") x 2 B: ", ratio, " smaller"));
    line("MTP", c.num_nextn_predict_layers > 0
                    ? str_cat(c.num_nextn_predict_layers, " module(s), checkpoint layer ", c.num_hidden_layers,
                              c.num_nextn_predict_layers > 1 ? str_cat("..", c.num_hidden_layers + c.num_nextn_predict_layers - 1) : "")
                    : std::string("none"));
    if (c.rope_scaling.type.empty())
      line("RoPE", str_cat("theta ", c.rope_theta, ", no scaling, max positions ", c.max_position_embeddings));
    else
      line("RoPE", str_cat("theta ", c.rope_theta, ", YaRN factor ", c.rope_scaling.factor, " (original ",
                           c.rope_scaling.original_max_position_embeddings, ", beta_fast ",
                           c.rope_scaling.beta_fast, ", beta_slow ", c.rope_scaling.beta_slow, ", mscale ",
                           c.rope_scaling.mscale, ", mscale_all_dim ", c.rope_scaling.mscale_all_dim,
                           "), max positions ", c.max_position_embeddings));
    line("quant", c.has_quantization ? "fp8 e4m3, 128x128 weight blocks (weight_scale_inv), dynamic activations"
                                     : "none (" + c.torch_dtype + ")");
    if (!present) {
      line("weights", str_cat("absent (config.json only); a full checkpoint would take ",
                              bytes_str(double(expected_bytes(c)))));
    } else {
      line("weights", str_cat(w["tensors"].get<size_t>(), " tensors in ", w["shards"].get<size_t>(),
                              " shard(s), ", bytes_str(double(w["bytes"].get<uint64_t>()))));
      std::string by;
      for (const auto& [k, v] : w["bytes_by_dtype"].items())
        by += str_cat(by.empty() ? "" : ", ", k, " ", bytes_str(double(v.get<uint64_t>())));
      line("by dtype", by);
      if (!o.no_check)
        line("check", weights_error.empty()
                          ? str_cat("ok: every expected tensor present with its shape and dtype",
                                    w["unexpected_tensors"].get<size_t>()
                                        ? str_cat("; ", w["unexpected_tensors"].get<size_t>(), " unexpected tensor(s)")
                                        : std::string())
                          : "FAILED: " + weights_error);
    }
  }
  DSV3_CHECK(weights_error.empty(), weights_error);
  return 0;
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto o = std::make_shared<InspectOpts>();
  CLI::App* s = app.add_subcommand("inspect", "Describe a Hugging Face DeepSeek-V3/V2 model directory");
  s->add_option("dir", o->dir, "model directory (config.json [+ safetensors]), or a config.json file")->required();
  s->add_flag("--json", o->json, "print one JSON object");
  s->add_flag("--no-check", o->no_check, "skip the weight-map check");
  s->callback([o] { run_inspect(*o); });
}

}  // namespace dsv3::cli
