// Shared by the `dsv3 train` tests (test_train.cpp, test_dist_train.cpp): a temporary root,
// a small BPE and prepared data from a tiny mixed corpus, the tiny MoE + MTP model and
// training configs, and running the CLI ($DSV3_BIN, set by ctest).
#pragma once
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/prepare.h"
#include "io/safetensors.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"

namespace dsv3::train_test {

namespace fs = std::filesystem;
using json = nlohmann::json;

inline const fs::path& root() {
  static const fs::path dir = [] {
    char tmpl[] = "/tmp/dsv3-test-train.XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    std::atexit([] {
      if (std::getenv("DSV3_TEST_KEEP")) return;  // to look at the runs' files
      std::error_code ec;
      fs::remove_all(root(), ec);
    });
    return fs::path(d ? d : "/tmp");
  }();
  return dir;
}

inline void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f << text;
  ASSERT_TRUE(f.good()) << p;
}

inline std::string read(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Text and code documents (code ones get FIM at the configs' fim_rate).
inline std::vector<std::string> corpus_texts() {
  std::vector<std::string> t;
  for (int i = 0; i < 24; ++i) {
    t.push_back("The quick brown fox " + std::to_string(i) + " jumps over the lazy dog. "
                "Small steps make long roads.\n");
    t.push_back("int f" + std::to_string(i) + "(int x) { return x * " + std::to_string(i) + " + 1; }\n");
  }
  return t;
}

// A small BPE with DeepSeek-V3's special tokens (BOS 0, EOS 1, FIM), and DATA/ prepared from
// the corpus with it. vocab_size: the tokenizer's size (the model's vocab_size).
struct Env {
  std::string tokenizer, data;
  int vocab = 0;
};

inline std::string make_tokenizer(const std::string& name, int vocab) {
  tok::TrainOptions opt;
  opt.vocab_size = vocab;
  opt.special_tokens = {data::kBosToken, data::kEosToken, data::kFimBeginToken, data::kFimHoleToken,
                        data::kFimEndToken};
  const auto t = tok::train_bpe(corpus_texts(), opt);
  const fs::path p = root() / name / "tokenizer.json";
  write(p, tok::to_tokenizer_json(*t));
  return p.string();
}

inline const Env& env() {
  static const Env e = [] {
    Env r;
    r.tokenizer = make_tokenizer("tok", 320);
    std::string jl;
    const auto texts = corpus_texts();
    for (size_t i = 0; i < texts.size(); ++i)
      jl += json({{"text", texts[i]}, {"kind", i % 2 ? "code" : "text"}}).dump() + "\n";
    write(root() / "corpus.jsonl", jl);
    data::PrepareOptions o;
    o.tokenizer = r.tokenizer;
    o.inputs = {(root() / "corpus.jsonl").string()};
    o.out = (root() / "data").string();
    o.threads = 1;
    r.vocab = data::prepare_data(o).meta.vocab_size;
    r.data = o.out;
    return r;
  }();
  return e;
}

// Hidden 32, 2 layers (1 dense + 1 MoE: 8 routed experts in 4 groups, top-2 of 2 groups, one
// shared expert), one MTP module.
inline json model_json(int vocab) {
  return {{"architectures", {"DeepseekV3ForCausalLM"}}, {"model_type", "deepseek_v3"},
          {"vocab_size", vocab}, {"hidden_size", 32}, {"intermediate_size", 64},
          {"moe_intermediate_size", 16}, {"num_hidden_layers", 2}, {"num_nextn_predict_layers", 1},
          {"num_attention_heads", 2}, {"num_key_value_heads", 2}, {"n_shared_experts", 1},
          {"n_routed_experts", 8}, {"routed_scaling_factor", 2.5}, {"kv_lora_rank", 16},
          {"q_lora_rank", 24}, {"qk_rope_head_dim", 8}, {"v_head_dim", 8}, {"qk_nope_head_dim", 8},
          {"topk_method", "noaux_tc"}, {"n_group", 4}, {"topk_group", 2}, {"num_experts_per_tok", 2},
          {"moe_layer_freq", 1}, {"first_k_dense_replace", 1}, {"norm_topk_prob", true},
          {"scoring_func", "sigmoid"}, {"hidden_act", "silu"}, {"max_position_embeddings", 64},
          {"initializer_range", 0.02}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000},
          {"rope_scaling", nullptr}, {"tie_word_embeddings", false}, {"bos_token_id", 0},
          {"eos_token_id", 1}, {"torch_dtype", "bfloat16"}};
}

// 12 steps crossing every schedule boundary: warmup (3), constant, cosine from 5, the MTP λ
// switch at 8, FIM on half the code documents, the router-bias update and the balance loss.
inline json train_json(const char* precision = "f32") {
  return {{"model", model_json(env().vocab)},
          {"tokenizer", env().tokenizer},
          {"precision", precision},
          {"batch", 2},
          {"seq_len", 16},
          {"steps", 12},
          {"seed", 3},
          {"grad_clip", 1.0},
          {"optimizer", {{"lr", 1e-2}, {"lr_min", 1e-3}, {"warmup_steps", 3}, {"decay_start", 5},
                         {"weight_decay", 0.1}}},
          {"mtp", {{"lambda", 0.3}, {"lambda_late", 0.1}, {"lambda_switch_step", 8}}},
          {"balance", {{"gamma", 0.01}, {"alpha", 1e-3}}},
          {"fim_rate", 0.5},
          {"log_every", 1},
          {"checkpoint_every", 4},
          {"keep_checkpoints", 2}};
}

// A path for a run's output, removed first (so --gtest_repeat starts from nothing).
inline fs::path fresh(const std::string& name) {
  const fs::path p = root() / name;
  fs::remove_all(p);
  return p;
}

inline std::string write_config(const std::string& name, const json& j) {
  const fs::path p = root() / "configs" / (name + ".json");
  write(p, j.dump(1));
  return p.string();
}

struct CliRun {
  int rc = -1;
  std::string out, err;
};

// Runs a shell command line, capturing its output.
inline CliRun run_shell(const std::string& cmd) {
  static int n = 0;
  const fs::path io = root() / "io";
  fs::create_directories(io);
  const std::string out = (io / ("out" + std::to_string(n))).string();
  const std::string err = (io / ("err" + std::to_string(n++))).string();
  const int st = std::system((cmd + " >" + out + " 2>" + err).c_str());
  CliRun r;
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = read(out);
  r.err = read(err);
  return r;
}

// Runs `dsv3 ARGS`.
inline CliRun cli(const std::string& args) { return run_shell(std::string(std::getenv("DSV3_BIN")) + " " + args); }

// DATA/ of env()'s corpus and tokenizer with a held-out split (data prepare --val-fraction) in
// ROOT/dir.
inline std::string prepare_split_data(const std::string& dir, double val_fraction, uint64_t seed) {
  data::PrepareOptions o;
  o.tokenizer = env().tokenizer;
  o.inputs = {(root() / "corpus.jsonl").string()};
  o.out = (root() / dir).string();
  o.threads = 1;
  o.val_fraction = val_fraction;
  o.seed = seed;
  data::prepare_data(o);
  return o.out;
}

inline std::string train_args(const std::string& config, const fs::path& out, const std::string& data = "") {
  return "train --config " + config + " --data " + (data.empty() ? env().data : data) + " --out " +
         out.string() + " --threads 1 --quiet";
}

inline std::vector<json> metrics(const fs::path& out) {
  std::vector<json> v;
  std::ifstream f(out / "metrics.jsonl");
  for (std::string line; std::getline(f, line);) v.push_back(json::parse(line));
  return v;
}

inline std::string latest(const fs::path& out) {
  std::string s = read(out / "latest");
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

inline std::string step_name(int64_t s) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%06lld", (long long)s);
  return b;
}

inline std::vector<float> master_params(const fs::path& ckpt) {
  SafetensorsFile f((ckpt / "trainer" / "state.safetensors").string());
  const SafetensorsEntry* e = f.find("params");
  EXPECT_NE(e, nullptr);
  if (!e) return {};
  const TensorView v = f.view(*e);
  EXPECT_EQ(v.dtype, DType::F32);
  const float* p = static_cast<const float*>(v.data);
  return std::vector<float>(p, p + v.numel());
}

// Everything a step logs that the data, weights and schedule determine (not the timings),
// compared as JSON text: nlohmann writes doubles in shortest round-trip form, so equal text
// is equal bits.
inline void expect_same_metrics(const json& a, const json& b) {
  for (const char* k : {"step", "loss", "main_loss", "mtp_loss", "balance_loss", "lr", "grad_norm", "tokens",
                        "maxvio", "load"})
    EXPECT_EQ(a.at(k).dump(), b.at(k).dump()) << k << " at step " << a.at("step");
}

inline bool skip_without_bin() { return std::getenv("DSV3_BIN") == nullptr; }
#define NEED_BIN() \
  if (skip_without_bin()) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)"

}  // namespace dsv3::train_test
