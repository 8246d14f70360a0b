// ModelConfig: the three released configs parse, derived numbers match a hand derivation
// and the published figures, JSON round trips, and each bad key is named in its error.
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/checkpoint.h"
#include "model/config.h"

namespace dsv3 {
namespace {

using json = nlohmann::json;

std::string cfg_text(const char* file) { return read_text_file(std::string("configs/") + file); }

// Parses `j` and returns the error message ("" when accepted).
std::string error_of(const json& j) {
  try {
    parse_model_config(j.dump(), "config.json");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    return e.what();
  }
  return "";
}

json v3() { return json::parse(cfg_text("deepseek-v3-671b.json")); }

void expect_error(const json& j, std::initializer_list<const char*> parts) {
  const std::string m = error_of(j);
  ASSERT_FALSE(m.empty()) << "accepted: " << j.dump();
  for (const char* p : parts) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' not in: " << m;
}

TEST(Config, DeepSeekV3FieldsAndDerivedNumbers) {
  const ModelConfig c = parse_model_config(cfg_text("deepseek-v3-671b.json"), "v3");
  EXPECT_EQ(c.model_type, "deepseek_v3");
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_hidden_layers, 61);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 40);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_TRUE(c.has_quantization);
  EXPECT_EQ(c.quantization_config.weight_block_size[0], 128);
  EXPECT_TRUE(c.has_router_bias());
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));

  // Hand derivation (H 7168, V 129280, 128 heads, q_lora 1536, kv_lora 512, nope 128,
  // rope 64, v 128, 256 routed + 1 shared experts of 2048, dense 18432, 3 dense layers):
  //   attention/layer = H*1536 + 1536 + 1536*128*(128+64)       (q_a, q_a_norm, q_b)
  //                   + H*(512+64) + 512 + 512*128*(128+128)     (kv_a, kv_a_norm, kv_b)
  //                   + 128*128*H                                (o_proj)
  //   expert = 3*H*2048; MoE layer = 257 experts + router 256*H + bias 256
  //   main = 2*V*H (embed, head) + H + 61*(attn + 2H) + 3*3*H*18432 + 58*MoE
  //   MTP  = 2H + 2H*H + attn + 2H + MoE + H + 2*V*H   (own embed and head copies)
  const int64_t H = 7168, V = 129280;
  const int64_t attn = H * 1536 + 1536 + 1536 * 128 * 192 + H * 576 + 512 + 512 * 128 * 256 + 128 * 128 * H;
  const int64_t expert = 3 * H * 2048;
  const int64_t moe = 257 * expert + 256 * H + 256;
  const int64_t main = 2 * V * H + H + 61 * (attn + 2 * H) + 3 * 3 * H * 18432 + 58 * moe;
  const int64_t mtp = 2 * H + 2 * H * H + attn + 2 * H + moe + H + 2 * V * H;
  // Activated per token: all but the embedding lookup and the routed experts, plus 8
  // routed experts in each of the 58 MoE layers.
  const int64_t activated = main - V * H - 58 * 256 * expert + 58 * 8 * expert;
  const ParamCounts p = count_parameters(c);
  EXPECT_EQ(p.main_total(), main);
  EXPECT_EQ(p.mtp, mtp);
  EXPECT_EQ(p.activated, activated);
  // Published (report abstract, HF model card): 671B total, 37B activated; the HF repo
  // holds 685B = 671B main + 14B MTP. Figures are rounded to 1B: tolerance 0.5 B, i.e.
  // the rounding error of the published number.
  EXPECT_NEAR(double(p.main_total()) / 1e9, 671.0, 0.5);
  EXPECT_NEAR(double(p.total()) / 1e9, 685.0, 0.6);  // 684.49 rounds to 684 or 685 ("685B")
  EXPECT_NEAR(double(p.mtp) / 1e9, 14.0, 0.6);
  EXPECT_NEAR(double(p.activated) / 1e9, 37.0, 0.5);

  // KV cache per token: MLA caches 512 + 64 per layer; MHA would cache K (192) and V
  // (128) for each of 128 heads.
  EXPECT_EQ(kv_cache_elems_mla(c), 61 * (512 + 64));
  EXPECT_EQ(kv_cache_elems_mha(c), 61 * 128 * (192 + 128));
}

TEST(Config, DeepSeekV2LiteAndMoonlight) {
  const ModelConfig v2 = parse_model_config(cfg_text("deepseek-v2-lite-16b.json"), "v2");
  EXPECT_EQ(v2.model_type, "deepseek_v2");
  EXPECT_EQ(v2.q_lora_rank, 0) << "null q_lora_rank means no query compression";
  EXPECT_FALSE(v2.has_q_lora());
  EXPECT_EQ(v2.scoring_func, "softmax");
  EXPECT_EQ(v2.topk_method, "greedy");
  EXPECT_FALSE(v2.has_router_bias());
  EXPECT_EQ(v2.num_nextn_predict_layers, 0) << "V2 has no MTP (class default)";
  EXPECT_DOUBLE_EQ(v2.rope_scaling.mscale, 0.707);
  // Hand derivation, H 2048, V 102400, 16 heads, q_proj (no q_lora), kv_lora 512,
  // 64 routed + 2 shared experts of 1408, 1 dense layer of 10944, 27 layers:
  const int64_t H = 2048, V = 102400;
  const int64_t attn = H * 16 * 192 + H * 576 + 512 + 512 * 16 * 256 + 16 * 128 * H;
  const int64_t expert = 3 * H * 1408;
  const int64_t moe = 66 * expert + 64 * H;  // greedy: no correction bias
  const int64_t main = 2 * V * H + H + 27 * (attn + 2 * H) + 3 * H * 10944 + 26 * moe;
  const ParamCounts p = count_parameters(v2);
  EXPECT_EQ(p.total(), main);
  EXPECT_EQ(p.activated, main - V * H - 26 * 64 * expert + 26 * 6 * expert);
  // Published (DeepSeek-V2 paper, V2-Lite): 15.7B total, 2.4B activated (0.05 B rounding).
  EXPECT_NEAR(double(p.total()) / 1e9, 15.7, 0.05);
  EXPECT_NEAR(double(p.activated) / 1e9, 2.4, 0.06);

  const ModelConfig m = parse_model_config(cfg_text("moonlight-16b-a3b.json"), "moonlight");
  EXPECT_EQ(m.model_type, "deepseek_v3");
  EXPECT_EQ(m.num_nextn_predict_layers, 0);
  EXPECT_TRUE(m.rope_scaling.type.empty()) << "rope_scaling null";
  EXPECT_EQ(m.n_group, 1);
  const ParamCounts pm = count_parameters(m);
  // Moonlight-16B-A3B: "16B" total and "3B" activated, rounded to one significant figure.
  EXPECT_GE(pm.total(), 15.5e9);
  EXPECT_LT(pm.total(), 16.5e9);
  EXPECT_GE(pm.activated, 2.5e9);
  EXPECT_LT(pm.activated, 3.5e9);
}

TEST(Config, JsonRoundTripKeepsEverything) {
  for (const char* f : {"deepseek-v3-671b.json", "deepseek-v2-lite-16b.json", "moonlight-16b-a3b.json"}) {
    const ModelConfig a = parse_model_config(cfg_text(f), f);
    const std::string out = model_config_to_json(a);
    const ModelConfig b = parse_model_config(out, f);
    EXPECT_EQ(model_config_to_json(b), out) << f;
    // Every key of the released file survives with its value (numbers compared as numbers).
    const json orig = json::parse(cfg_text(f)), back = json::parse(out);
    for (const auto& [k, v] : orig.items()) {
      ASSERT_TRUE(back.contains(k)) << f << ": lost '" << k << "'";
      if (v.is_number()) {
        EXPECT_DOUBLE_EQ(back[k].get<double>(), v.get<double>()) << f << " " << k;
      } else if (!v.is_object()) {
        EXPECT_EQ(back[k], v) << f << " " << k;
      }
    }
  }
}

TEST(Config, DefaultsFromTheConfigurationClasses) {
  json j = {{"model_type", "deepseek_v3"}, {"vocab_size", 1000}, {"hidden_size", 256},
            {"intermediate_size", 512}, {"num_hidden_layers", 4}, {"num_attention_heads", 4}};
  const ModelConfig c = parse_model_config(j.dump(), "min");
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_FALSE(c.has_quantization);
  j["model_type"] = "deepseek_v2";
  const ModelConfig d = parse_model_config(j.dump(), "min");
  EXPECT_EQ(d.n_routed_experts, 0) << "V2's n_routed_experts defaults to None: dense";
  EXPECT_FALSE(d.is_moe_layer(1));
  EXPECT_EQ(d.scoring_func, "softmax");
}

TEST(Config, ErrorsNameTheKey) {
  json j = v3();
  j.erase("hidden_size");
  expect_error(j, {"missing required key 'hidden_size'"});
  j = v3(); j.erase("model_type");
  expect_error(j, {"'model_type'"});
  j = v3(); j["model_type"] = "llama";
  expect_error(j, {"'model_type'", "deepseek_v3", "llama"});
  j = v3(); j["hidden_size"] = "7168";
  expect_error(j, {"'hidden_size' must be an integer", "string"});
  j = v3(); j["hidden_size"] = 7168.5;
  expect_error(j, {"'hidden_size' must be an integer"});
  j = v3(); j["num_hidden_layers"] = 0;
  expect_error(j, {"'num_hidden_layers' must be positive"});
  j = v3(); j["norm_topk_prob"] = 1;
  expect_error(j, {"'norm_topk_prob' must be true or false"});
  j = v3(); j["n_group"] = 7;
  expect_error(j, {"'n_routed_experts' (256)", "'n_group' (7)"});
  j = v3(); j["topk_group"] = 9;
  expect_error(j, {"'topk_group'", "n_group = 8", "got 9"});
  j = v3(); j["num_experts_per_tok"] = 300;
  expect_error(j, {"'num_experts_per_tok'", "300"});
  j = v3(); j["n_group"] = 8; j["topk_group"] = 1; j["num_experts_per_tok"] = 64;
  expect_error(j, {"'num_experts_per_tok' (64)", "topk_group = 1"});
  j = v3(); j["scoring_func"] = "relu";
  expect_error(j, {"'scoring_func'", "relu"});
  j = v3(); j["topk_method"] = "random";
  expect_error(j, {"'topk_method'", "random"});
  j = v3(); j["hidden_act"] = "gelu";
  expect_error(j, {"'hidden_act'", "gelu"});
  j = v3(); j["quantization_config"]["weight_block_size"] = {64, 64};
  expect_error(j, {"weight_block_size", "[128, 128]", "[64, 64]"});
  j = v3(); j["quantization_config"]["fmt"] = "e5m2";
  expect_error(j, {"quantization_config.fmt", "e5m2"});
  // Wrong types inside the nested objects (the fuzzer found these messages read a
  // dangling string).
  j = v3(); j["quantization_config"]["fmt"] = 5;
  expect_error(j, {"quantization_config", "'fmt' must be a string"});
  j = v3(); j["rope_scaling"]["factor"] = "40";
  expect_error(j, {"rope_scaling", "'factor' must be a number"});
  j = v3(); j["rope_scaling"]["type"] = "linear";
  expect_error(j, {"rope_scaling.type", "linear"});
  j = v3(); j["rope_scaling"]["beta_fast"] = 0.5;
  expect_error(j, {"beta_fast", "beta_slow"});
  // Sizes that would overflow the derived numbers (found by fuzz/fuzz_config.cpp) or make
  // loops endless.
  j = v3(); j["hidden_size"] = 4444444444444447168LL;
  expect_error(j, {"'hidden_size'", "exceeds the supported maximum"});
  j = v3(); j["hidden_size"] = 1 << 30; j["vocab_size"] = 1 << 30; j["intermediate_size"] = 1 << 30;
  expect_error(j, {"more than 2^62 parameters"});
  j = v3(); j["num_hidden_layers"] = int64_t(1) << 40;
  expect_error(j, {"'num_hidden_layers'", "exceeds"});
  j = v3(); j["attention_bias"] = true;
  expect_error(j, {"'attention_bias' must be false"});
  j = v3(); j["qk_rope_head_dim"] = 63;
  expect_error(j, {"'qk_rope_head_dim' must be even"});
  j = v3(); j["q_lora_rank"] = nullptr;
  EXPECT_EQ(error_of(j), "") << "null q_lora_rank is valid";
  j = v3(); j["kv_lora_rank"] = nullptr;
  expect_error(j, {"'kv_lora_rank' must be an integer, got null"});
  expect_error(json::array({1}), {"expected a JSON object"});
  const std::string m = [] {
    try { parse_model_config(R"({"model_type":"deepseek_v3","hidden_size":1,"hidden_size":2})", "config.json"); }
    catch (const Error& e) { return std::string(e.what()); }
    return std::string();
  }();
  EXPECT_NE(m.find("'hidden_size' twice"), std::string::npos) << m;
  EXPECT_THROW(parse_model_config("{\"model_type\": ", "config.json"), Error);
}

}  // namespace
}  // namespace dsv3
