// Checkpoint directories in the real Hugging Face DeepSeek layout, generated here: FP8
// (128x128 block scales) and BF16 variants, sharded and single-file; the weight map; bit-
// identical round trips; convert FP8 <-> BF16; and every broken-directory case, each error
// asserted to name the file and the tensor.
#include <gtest/gtest.h>

#include <fstream>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/checkpoint.h"
#include "io/convert.h"
#include "io/model_writer.h"
#include "io/random_checkpoint.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsv3 {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("dsv3_ck_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  return p.string();
}

std::string make(const std::string& name, const ModelConfig& c, CheckpointFormat f, int shards) {
  const std::string dir = temp_dir(name);
  RandomCheckpointOptions o;
  o.format = f;
  o.shards = shards;
  o.seed = 42;
  write_random_checkpoint(c, dir, o);
  return dir;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line: " << e.what();
    return e.what();
  }
  return "";
}

void expect_has(const std::string& msg, std::initializer_list<std::string> parts) {
  ASSERT_FALSE(msg.empty()) << "no error";
  for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

// Opens dir and binds every expected tensor.
void open_and_load(const std::string& dir) {
  const ModelConfig c = load_model_config(dir + "/config.json");
  const Checkpoint ck(dir);
  (void)load_weights(c, ck);
}

// Rewrites one shard through `edit`, which may drop, replace or add tensors.
using Edit = std::function<void(const SafetensorsFile& in, SafetensorsWriter& out)>;
void rewrite_shard(const std::string& path, const Edit& edit) {
  const SafetensorsFile in(path);
  SafetensorsWriter out(path);
  edit(in, out);
  out.finish();
}
void copy_all_but(const SafetensorsFile& in, SafetensorsWriter& out, const std::string& skip) {
  for (const SafetensorsEntry& e : in.header().tensors)
    if (e.name != skip) out.add(e.name, in.view(e));
}
void edit_index(const std::string& dir, const std::function<void(nlohmann::json&)>& fn) {
  const std::string p = dir + "/" + kIndexFile;
  nlohmann::json j = nlohmann::json::parse(read_text_file(p));
  fn(j);
  write_file_atomic(p, j.dump());
}
std::string shard_of(const std::string& dir, const std::string& tensor) {
  return Checkpoint(dir).get(tensor).shard->c_str();
}

TEST(Checkpoint, Fp8ShardedRealLayout) {
  const ModelConfig c = tiny_v3_config();
  const std::string dir = make("fp8", c, CheckpointFormat::FP8, 3);
  EXPECT_TRUE(fs::exists(dir + "/" + kIndexFile));
  EXPECT_TRUE(fs::exists(dir + "/model-00001-of-00003.safetensors"));
  const ModelConfig rc = load_model_config(dir + "/config.json");
  EXPECT_TRUE(rc.has_quantization);
  const Checkpoint ck(dir);
  EXPECT_TRUE(ck.sharded());
  EXPECT_EQ(ck.shard_names().size(), 3u);
  const ModelWeights mw = load_weights(rc, ck);
  ASSERT_EQ(mw.layers.size(), 3u);
  ASSERT_EQ(mw.mtp.size(), 1u);
  EXPECT_FALSE(mw.layers[0].is_moe);
  EXPECT_TRUE(mw.layers[1].is_moe);
  EXPECT_EQ(mw.layers[1].moe.experts.size(), 8u);
  EXPECT_EQ(mw.embed_tokens.w.dtype, DType::BF16);
  EXPECT_EQ(mw.layers[1].moe.gate.w.dtype, DType::BF16) << "router stays high precision";
  EXPECT_EQ(mw.layers[1].moe.e_score_correction_bias.w.dtype, DType::F32);
  EXPECT_EQ(mw.mtp[0].eh_proj.w.shape[1], 2 * c.hidden_size);
  // q_b_proj [2*64, 96] -> scale [1, 1]; kv_b_proj [2*64, 48]; o_proj [160, 64] -> [2, 1].
  const Weight& o = mw.layers[2].self_attn.o_proj;
  ASSERT_TRUE(o.fp8());
  EXPECT_EQ(o.scale.shape[0], 2);
  EXPECT_EQ(o.scale.shape[1], 1);

  // Every FP8 tensor is exactly the reference 128x128 quantisation of the generator's
  // deterministic values (bit for bit, weights and scales).
  for (const WeightSpec& s : expected_weights(rc)) {
    const CheckpointTensor& t = ck.get(s.name);
    const int64_t n = s.numel();
    if (s.kind != WeightKind::Linear) {
      ASSERT_NE(t.view.dtype, DType::F8_E4M3) << s.name;
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(load_as_f32(t.view.data, t.view.dtype, size_t(i)),
                  t.view.dtype == DType::F32 ? random_weight_value(42, s.name, int(s.kind), i)
                                             : bf16_to_f32(f32_to_bf16(random_weight_value(42, s.name, int(s.kind), i))))
            << s.name << " [" << i << "]";
      continue;
    }
    ASSERT_EQ(t.view.dtype, DType::F8_E4M3) << s.name;
    const int64_t N = s.shape[0], K = s.shape[1];
    std::vector<float> x(size_t(N * K));
    for (int64_t i = 0; i < N * K; ++i) x[size_t(i)] = random_weight_value(42, s.name, int(s.kind), i);
    std::vector<uint8_t> q(size_t(N * K));
    std::vector<float> sc(size_t(fp8_blocks(N) * fp8_blocks(K)));
    quantize_fp8_128x128_ref(x.data(), DType::F32, N, K, K, q.data(), K, sc.data());
    ASSERT_EQ(std::memcmp(t.view.data, q.data(), q.size()), 0) << s.name;
    ASSERT_EQ(std::memcmp(ck.get(scale_name(s.name)).view.data, sc.data(), sc.size() * 4), 0) << s.name;
  }
  EXPECT_TRUE(unexpected_tensors(rc, ck).empty());
}

TEST(Checkpoint, Bf16SingleFileV2Layout) {
  const ModelConfig c = tiny_v2_config();
  const std::string dir = make("bf16", c, CheckpointFormat::BF16, 1);
  EXPECT_TRUE(fs::exists(dir + "/" + kSingleFile));
  EXPECT_FALSE(fs::exists(dir + "/" + kIndexFile));
  const ModelConfig rc = load_model_config(dir + "/config.json");
  EXPECT_FALSE(rc.has_quantization);
  const Checkpoint ck(dir);
  EXPECT_FALSE(ck.sharded());
  const ModelWeights mw = load_weights(rc, ck);
  EXPECT_TRUE(mw.layers[1].self_attn.q_proj.present());
  EXPECT_FALSE(mw.layers[1].self_attn.q_a_proj.present());
  EXPECT_FALSE(mw.layers[1].moe.e_score_correction_bias.present()) << "greedy: no bias";
  EXPECT_EQ(mw.layers[1].moe.shared_experts.gate_proj.w.shape[0], 2 * c.moe_intermediate_size);
  EXPECT_TRUE(mw.mtp.empty());
  // Names and count: per layer 2 norms + q_proj + kv_a, kv_a_norm, kv_b, o = 7; dense MLP
  // 3; MoE gate + 8 experts x 3 + shared 3 = 28; plus embed, norm, lm_head.
  EXPECT_EQ(ck.num_tensors(), size_t(3 + 3 * 7 + 3 + 2 * 28));
}

TEST(Checkpoint, RoundTripBitIdentical) {
  const std::string src = make("rt_src", tiny_v3_config(), CheckpointFormat::FP8, 2);
  const std::string dst = temp_dir("rt_dst");
  {
    const Checkpoint a(src);
    CheckpointWriter w(dst);
    w.set_num_shards(4);
    for (const std::string& n : a.names()) {
      const TensorView v = a.get(n).view;
      w.add({n, v.dtype, std::vector<int64_t>(v.shape, v.shape + v.ndim),
             [v](void* d, size_t nb) { std::memcpy(d, v.data, nb); }});
    }
    w.finish();
  }
  fs::copy_file(src + "/config.json", dst + "/config.json");
  const Checkpoint a(src), b(dst);
  EXPECT_EQ(b.shard_names().size(), 4u);
  ASSERT_EQ(a.names(), b.names());
  for (const std::string& n : a.names()) {
    const TensorView x = a.get(n).view, y = b.get(n).view;
    ASSERT_EQ(x.dtype, y.dtype) << n;
    ASSERT_EQ(x.shape_str(), y.shape_str()) << n;
    ASSERT_EQ(std::memcmp(x.data, y.data, x.nbytes()), 0) << n;
  }
  open_and_load(dst);
}

TEST(Checkpoint, BadDirectoriesNameFileAndTensor) {
  const ModelConfig c = tiny_v3_config();
  const std::string gate = "model.layers.1.mlp.gate.weight";
  const std::string qb = "model.layers.2.self_attn.q_b_proj.weight";

  {  // A shard named in the index is missing.
    const std::string dir = make("bad_missing_shard", c, CheckpointFormat::FP8, 3);
    fs::remove(dir + "/model-00002-of-00003.safetensors");
    expect_has(error_of([&] { open_and_load(dir); }), {kIndexFile, "model-00002-of-00003.safetensors", "missing"});
  }
  {  // A truncated shard.
    const std::string dir = make("bad_trunc", c, CheckpointFormat::FP8, 3);
    const std::string p = dir + "/model-00003-of-00003.safetensors";
    fs::resize_file(p, fs::file_size(p) - 3);
    expect_has(error_of([&] { open_and_load(dir); }), {"model-00003-of-00003.safetensors", "truncated"});
  }
  {  // The index maps a tensor to a shard that does not hold it.
    const std::string dir = make("bad_index_map", c, CheckpointFormat::FP8, 3);
    const std::string sh = shard_of(dir, gate);
    rewrite_shard(dir + "/" + sh, [&](const SafetensorsFile& in, SafetensorsWriter& out) { copy_all_but(in, out, gate); });
    expect_has(error_of([&] { open_and_load(dir); }), {kIndexFile, gate, sh, "does not hold it"});
  }
  {  // A shard holds a tensor the index does not list.
    const std::string dir = make("bad_unlisted", c, CheckpointFormat::FP8, 3);
    edit_index(dir, [&](nlohmann::json& j) { j["weight_map"].erase(gate); });
    expect_has(error_of([&] { open_and_load(dir); }), {gate, "does not list"});
  }
  {  // A tensor the config needs is absent (shard and index agree).
    const std::string dir = make("bad_missing_tensor", c, CheckpointFormat::FP8, 3);
    const std::string sh = shard_of(dir, gate);
    rewrite_shard(dir + "/" + sh, [&](const SafetensorsFile& in, SafetensorsWriter& out) { copy_all_but(in, out, gate); });
    edit_index(dir, [&](nlohmann::json& j) { j["weight_map"].erase(gate); });
    expect_has(error_of([&] { open_and_load(dir); }), {dir, "missing tensor '" + gate + "'", "[8, 160]"});
  }
  {  // Wrong shape.
    const std::string dir = make("bad_shape", c, CheckpointFormat::BF16, 1);
    std::vector<uint16_t> zeros(8 * 161);
    rewrite_shard(dir + "/" + kSingleFile, [&](const SafetensorsFile& in, SafetensorsWriter& out) {
      copy_all_but(in, out, gate);
      out.add(gate, TensorView(zeros.data(), DType::BF16, {8, 161}));
    });
    expect_has(error_of([&] { open_and_load(dir); }), {kSingleFile, gate, "[8, 161]", "expected [8, 160]"});
  }
  {  // An FP8 weight without its scale.
    const std::string dir = make("bad_noscale", c, CheckpointFormat::FP8, 1);
    rewrite_shard(dir + "/" + kSingleFile, [&](const SafetensorsFile& in, SafetensorsWriter& out) {
      copy_all_but(in, out, scale_name(qb));
    });
    expect_has(error_of([&] { open_and_load(dir); }), {qb, "_scale_inv"});
  }
  {  // A scale of the wrong block shape.
    const std::string dir = make("bad_scale_shape", c, CheckpointFormat::FP8, 1);
    std::vector<float> s(4, 1.0f);
    rewrite_shard(dir + "/" + kSingleFile, [&](const SafetensorsFile& in, SafetensorsWriter& out) {
      copy_all_but(in, out, scale_name(qb));
      out.add(scale_name(qb), TensorView(s.data(), DType::F32, {2, 2}));
    });
    expect_has(error_of([&] { open_and_load(dir); }), {scale_name(qb), "[2, 2]", "expected [1, 1]"});
  }
  {  // A norm stored as FP8.
    const std::string dir = make("bad_norm_fp8", c, CheckpointFormat::BF16, 1);
    const std::string norm = "model.norm.weight";
    std::vector<uint8_t> q(160);
    rewrite_shard(dir + "/" + kSingleFile, [&](const SafetensorsFile& in, SafetensorsWriter& out) {
      copy_all_but(in, out, norm);
      out.add(norm, TensorView(q.data(), DType::F8_E4M3, {160}));
    });
    expect_has(error_of([&] { open_and_load(dir); }), {norm, "F8_E4M3", "norm"});
  }
  {  // Integer dtype for a weight.
    const std::string dir = make("bad_dtype", c, CheckpointFormat::BF16, 1);
    std::vector<int32_t> v(160);
    rewrite_shard(dir + "/" + kSingleFile, [&](const SafetensorsFile& in, SafetensorsWriter& out) {
      copy_all_but(in, out, "model.norm.weight");
      out.add("model.norm.weight", TensorView(v.data(), DType::I32, {160}));
    });
    expect_has(error_of([&] { open_and_load(dir); }), {"model.norm.weight", "I32", "expected F32, BF16 or F16"});
  }
  {  // Index that is not JSON / a path outside the directory / weight_map missing.
    const std::string dir = make("bad_index", c, CheckpointFormat::BF16, 2);
    const std::string p = dir + "/" + kIndexFile;
    write_file_atomic(p, "{\"weight_map\": ");
    expect_has(error_of([&] { Checkpoint ck(dir); }), {kIndexFile, "not valid JSON"});
    write_file_atomic(p, R"({"weight_map": {"model.norm.weight": "../evil.safetensors"}})");
    expect_has(error_of([&] { Checkpoint ck(dir); }), {"model.norm.weight", "../evil.safetensors", "not a file name"});
    write_file_atomic(p, R"({"metadata": {}})");
    expect_has(error_of([&] { Checkpoint ck(dir); }), {kIndexFile, "weight_map"});
  }
  {  // config.json contradicting the weights: more experts than the checkpoint holds.
    const std::string dir = make("bad_cfg", c, CheckpointFormat::BF16, 1);
    ModelConfig c2 = c;
    c2.n_routed_experts = 16;
    write_file_atomic(dir + "/config.json", model_config_to_json(c2));
    expect_has(error_of([&] { open_and_load(dir); }), {"model.layers.1.mlp.gate.weight", "[8, 160]", "[16, 160]"});
  }
  {  // An empty directory.
    const std::string dir = temp_dir("bad_empty");
    fs::create_directories(dir);
    expect_has(error_of([&] { Checkpoint ck(dir); }), {dir, "no model.safetensors.index.json"});
  }
}

TEST(Checkpoint, ConvertFp8ToBf16AndBack) {
  const ModelConfig c = tiny_v3_config();
  const std::string src = make("cv_src", c, CheckpointFormat::FP8, 2);
  { std::FILE* f = std::fopen((src + "/tokenizer.json").c_str(), "w"); std::fputs("{}", f); std::fclose(f); }
  const std::string bf = temp_dir("cv_bf16"), fp = temp_dir("cv_fp8");
  ConvertOptions o;
  o.to = "bf16";
  o.max_shard_bytes = 200 * 1024;
  const ConvertStats s1 = convert_checkpoint(src, bf, o);
  EXPECT_GT(s1.dequantised, 0);
  EXPECT_GT(s1.shards, 1u);
  EXPECT_TRUE(fs::exists(bf + "/tokenizer.json"));
  EXPECT_FALSE(load_model_config(bf + "/config.json").has_quantization);
  o.to = "fp8";
  const ConvertStats s2 = convert_checkpoint(bf, fp, o);
  EXPECT_EQ(s2.quantised, s1.dequantised);
  EXPECT_TRUE(load_model_config(fp + "/config.json").has_quantization);
  open_and_load(bf);
  open_and_load(fp);

  const Checkpoint a(src), b(bf), q(fp);
  for (const WeightSpec& s : expected_weights(c)) {
    const TensorView x = a.get(s.name).view, y = b.get(s.name).view, z = q.get(s.name).view;
    if (s.kind != WeightKind::Linear) {  // copied bit for bit both ways
      ASSERT_EQ(y.dtype, x.dtype);
      ASSERT_EQ(std::memcmp(x.data, y.data, x.nbytes()), 0) << s.name;
      ASSERT_EQ(std::memcmp(x.data, z.data, x.nbytes()), 0) << s.name;
      continue;
    }
    const int64_t N = s.shape[0], K = s.shape[1];
    // BF16 = the reference dequantisation of the FP8 source.
    ASSERT_EQ(y.dtype, DType::BF16);
    std::vector<uint16_t> deq(size_t(N * K));
    dequantize_fp8_128x128_ref(x.ptr<uint8_t>(), N, K, K, a.get(scale_name(s.name)).view.ptr<float>(),
                               deq.data(), DType::BF16, K);
    ASSERT_EQ(std::memcmp(y.data, deq.data(), deq.size() * 2), 0) << s.name;
    // FP8 again = the reference quantisation of that BF16 data.
    ASSERT_EQ(z.dtype, DType::F8_E4M3);
    std::vector<uint8_t> qq(size_t(N * K));
    std::vector<float> sc(size_t(fp8_blocks(N) * fp8_blocks(K)));
    quantize_fp8_128x128_ref(deq.data(), DType::BF16, N, K, K, qq.data(), K, sc.data());
    ASSERT_EQ(std::memcmp(z.data, qq.data(), qq.size()), 0) << s.name;
    ASSERT_EQ(std::memcmp(q.get(scale_name(s.name)).view.data, sc.data(), sc.size() * 4), 0) << s.name;
  }
  // Refuses to overwrite a checkpoint.
  expect_has(error_of([&] { convert_checkpoint(src, bf, o); }), {bf, "already holds a checkpoint"});
}

// The trainer's path: F32 parameters -> a checkpoint in each format, read back exactly.
TEST(Checkpoint, ModelWriterFromF32Parameters) {
  const ModelConfig c = tiny_v3_config();
  std::map<std::string, std::vector<float>> params;
  for (const WeightSpec& s : expected_weights(c)) {
    auto& p = params[s.name];
    p.resize(size_t(s.numel()));
    for (size_t i = 0; i < p.size(); ++i) p[i] = random_weight_value(5, s.name, int(s.kind), int64_t(i));
  }
  auto get = [&](const WeightSpec& s) {
    return TensorView(params.at(s.name).data(), DType::F32, s.ndim, s.shape);
  };
  for (CheckpointFormat f : {CheckpointFormat::F32, CheckpointFormat::BF16, CheckpointFormat::FP8}) {
    const std::string dir = temp_dir(std::string("mw_") + checkpoint_format_name(f));
    ModelWriteOptions o;
    o.format = f;
    o.max_shard_bytes = 300 * 1024;
    write_model_checkpoint(c, dir, get, o);
    const ModelConfig rc = load_model_config(dir + "/config.json");
    EXPECT_EQ(rc.has_quantization, f == CheckpointFormat::FP8);
    const Checkpoint ck(dir);
    EXPECT_GT(ck.shard_names().size(), 1u);
    (void)load_weights(rc, ck);
    for (const WeightSpec& s : expected_weights(c)) {
      const std::vector<float>& x = params.at(s.name);
      const TensorView v = ck.get(s.name).view;
      if (f == CheckpointFormat::FP8 && s.kind == WeightKind::Linear) {
        const int64_t N = s.shape[0], K = s.shape[1];
        std::vector<uint8_t> q(size_t(N * K));
        std::vector<float> sc(size_t(fp8_blocks(N) * fp8_blocks(K)));
        quantize_fp8_128x128_ref(x.data(), DType::F32, N, K, K, q.data(), K, sc.data());
        ASSERT_EQ(std::memcmp(v.data, q.data(), q.size()), 0) << s.name;
        ASSERT_EQ(std::memcmp(ck.get(scale_name(s.name)).view.data, sc.data(), sc.size() * 4), 0) << s.name;
        continue;
      }
      const bool f32 = f == CheckpointFormat::F32 || s.kind == WeightKind::RouterBias;
      ASSERT_EQ(v.dtype, f32 ? DType::F32 : DType::BF16) << s.name;
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_EQ(f32_bits(load_as_f32(v.data, v.dtype, i)), f32_bits(f32 ? x[i] : bf16_to_f32(f32_to_bf16(x[i]))))
            << s.name << " [" << i << "]";
    }
  }
  // A parameter of the wrong shape is named.
  expect_has(error_of([&] {
               write_model_checkpoint(c, temp_dir("mw_bad"), [&](const WeightSpec& s) {
                 TensorView v = get(s);
                 if (s.name == "model.norm.weight") v.shape[0] = 7;
                 return v;
               }, {});
             }),
             {"model.norm.weight", "[7]", "[160]"});
}

TEST(Checkpoint, ConvertF32NarrowsToBf16) {
  const ModelConfig c = tiny_v3_config();
  const std::string src = make("cv32", c, CheckpointFormat::F32, 1), dst = temp_dir("cv32_out");
  ConvertOptions o;
  o.to = "bf16";
  const ConvertStats st = convert_checkpoint(src, dst, o);
  EXPECT_EQ(st.dequantised, 0);
  EXPECT_GT(st.narrowed, 0);
  const Checkpoint a(src), b(dst);
  EXPECT_EQ(load_model_config(dst + "/config.json").torch_dtype, "bfloat16");
  for (const WeightSpec& s : expected_weights(c)) {
    const TensorView x = a.get(s.name).view, y = b.get(s.name).view;
    const bool keep = s.kind == WeightKind::RouterBias;
    ASSERT_EQ(y.dtype, keep ? DType::F32 : DType::BF16) << s.name;
    for (int64_t i = 0; i < s.numel(); ++i) {
      const float v = x.ptr<float>()[i];
      ASSERT_EQ(f32_bits(load_as_f32(y.data, y.dtype, size_t(i))), f32_bits(keep ? v : bf16_to_f32(f32_to_bf16(v))))
          << s.name;
    }
  }
}

// Runs `bin args` with stderr folded into stdout; *rc gets pclose's status.
std::string run_cli(const char* bin, const std::string& args, int* rc) {
  std::string out;
  std::FILE* p = ::popen((std::string(bin) + " " + args + " 2>&1").c_str(), "r");
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  *rc = ::pclose(p);
  return out;
}

// The CLI on generated directories: inspect succeeds, reports absent weights for a
// config-only directory, and a broken directory exits non-zero with a one-line error.
TEST(Checkpoint, CliInspectAndErrors) {
  const char* bin = std::getenv("DSV3_BIN");
  if (!bin) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  auto run = [&](const std::string& args, int* rc) { return run_cli(bin, args, rc); };
  int rc = 0;
  const std::string dir = make("cli", tiny_v3_config(), CheckpointFormat::FP8, 2);
  std::string out = run("inspect " + dir, &rc);
  EXPECT_EQ(rc, 0) << out;
  expect_has(out, {"deepseek_v3", "check", "ok", "F8_E4M3"});
  out = run("inspect --json " + dir, &rc);
  EXPECT_EQ(rc, 0) << out;
  const nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["weights"]["check"], "ok");
  EXPECT_EQ(j["parameters"]["total"].get<int64_t>(), count_parameters(tiny_v3_config()).total());

  const std::string cfg_only = temp_dir("cli_cfg");
  fs::create_directories(cfg_only);
  fs::copy_file("configs/deepseek-v3-671b.json", cfg_only + "/config.json");
  out = run("inspect " + cfg_only, &rc);
  EXPECT_EQ(rc, 0) << out;
  expect_has(out, {"absent", "671.03B", "MLA latent"});

  fs::resize_file(dir + "/model-00002-of-00002.safetensors", 100);
  out = run("inspect " + dir, &rc);
  EXPECT_NE(rc, 0);
  expect_has(out, {"dsv3: error:", "model-00002-of-00002.safetensors"});
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  out = run("convert --in " + dir + " --out " + temp_dir("cli_out") + " --to bf16", &rc);
  EXPECT_NE(rc, 0);
  expect_has(out, {"dsv3: error:", "model-00002-of-00002.safetensors"});
}

// `dsv3 init` writes a directory that loads with a full weight-map check; `inspect` takes
// a bare config.json too; init refuses to overwrite a model and names a bad config.
TEST(Checkpoint, CliInitAndBareConfig) {
  const char* bin = std::getenv("DSV3_BIN");
  if (!bin) GTEST_SKIP() << "DSV3_BIN not set (run through ctest)";
  auto run = [&](const std::string& args, int* rc) { return run_cli(bin, args, rc); };
  int rc = 0;
  const std::string dir = temp_dir("cli_init");
  std::string out = run("init --config tiny-v3 --format fp8 --shards 2 --out " + dir, &rc);
  EXPECT_EQ(rc, 0) << out;
  out = run("inspect --json " + dir, &rc);
  ASSERT_EQ(rc, 0) << out;
  const nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["weights"]["check"], "ok");
  EXPECT_EQ(j["parameters"]["total"].get<int64_t>(), count_parameters(tiny_v3_config()).total());
  out = run("init --config tiny-v3 --out " + dir, &rc);
  EXPECT_NE(rc, 0);
  expect_has(out, {"dsv3: error:", "already holds a model"});

  out = run("inspect configs/deepseek-v3-671b.json", &rc);
  EXPECT_EQ(rc, 0) << out;
  expect_has(out, {"absent", "671.03B"});
  const std::string bad = temp_dir("cli_badcfg") + ".json";
  {
    // The real V3 config with one key of the wrong type.
    std::ifstream in("configs/deepseek-v3-671b.json");
    nlohmann::json cfg = nlohmann::json::parse(in);
    cfg["hidden_size"] = "big";
    std::ofstream(bad) << cfg.dump();
  }
  out = run("init --config " + bad + " --out " + temp_dir("cli_init2"), &rc);
  EXPECT_NE(rc, 0);
  expect_has(out, {"dsv3: error:", "hidden_size"});
  fs::remove(bad);
}

class Cleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    const std::string prefix = "dsv3_ck_" + std::to_string(::getpid()) + "_";
    for (const auto& e : fs::directory_iterator(fs::temp_directory_path()))
      if (e.path().filename().string().rfind(prefix, 0) == 0) fs::remove_all(e.path());
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);

}  // namespace
}  // namespace dsv3
