// Self-consistency of the model forward on random checkpoints in the real layout (V3-shaped
// FP8 with partial 128-blocks, V2-shaped BF16, F32): the naive and absorbed MLA forms agree,
// prefill + one-token decode steps agree with recomputing the whole sequence, chunked
// prefill agrees with one prefill, MTP runs over its own cache, bad input is refused.
// Exactness against PyTorch is tests/test_model_reference.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "core/check.h"
#include "io/random_checkpoint.h"
#include "model/model.h"
#include "model_test_util.h"

namespace fs = std::filesystem;
using namespace dsv3;

namespace {

std::string make_checkpoint(const std::string& name, const ModelConfig& c, CheckpointFormat f,
                            int shards) {
  const fs::path p = fs::temp_directory_path() / ("dsv3_model_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  RandomCheckpointOptions o;
  o.format = f;
  o.shards = shards;
  o.seed = 7;
  write_random_checkpoint(c, p.string(), o);
  return p.string();
}

using dsv3::testing::ids_for;

// Full-sequence logits [T, V].
std::vector<float> full_logits(Model& m, const std::vector<int32_t>& ids, AttnForm form,
                               std::vector<float>* hidden = nullptr) {
  const int64_t T = int64_t(ids.size()), V = m.vocab();
  KvCache cache = m.new_cache(T + 4);
  ForwardScratch s;
  std::vector<float> logits(size_t(T * V));
  ForwardArgs a;
  a.ids = ids.data();
  a.T = T;
  a.form = form;
  a.logits = logits.data();
  if (hidden) {
    hidden->resize(size_t(T * m.config().hidden_size));
    a.hidden = hidden->data();
  }
  m.forward(cache, a, s);
  EXPECT_EQ(cache.len, T);
  return logits;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}
double max_abs(const std::vector<float>& a) {
  double d = 0;
  for (float v : a) d = std::max(d, double(std::fabs(v)));
  return d;
}

struct Variant {
  const char* name;
  ModelConfig cfg;
  CheckpointFormat fmt;
  int shards;
};

class ModelForms : public ::testing::TestWithParam<int> {
 protected:
  static Variant variant(int i) {
    switch (i) {
      case 0: return {"v3_fp8", tiny_v3_config(), CheckpointFormat::FP8, 2};
      case 1: return {"v2_bf16", tiny_v2_config(), CheckpointFormat::BF16, 1};
      default: return {"v3_f32", tiny_v3_config(), CheckpointFormat::F32, 1};
    }
  }
};

// Tolerance: the two forms reassociate F32 sums of length ≤ kv_lora_rank + S (docs/numerics.md),
// ~1e-6 relative per layer; the BF16 kernels see activations to ~2^-16 (hi+lo), which the
// decode GEMV and the prefill GEMM split differently (gemv.h: ≤ 2^-15·Σ|w·x|): 1e-3 of the
// logit scale end to end.
TEST_P(ModelForms, NaiveAndAbsorbedAgree) {
  const Variant v = variant(GetParam());
  const std::string dir = make_checkpoint(std::string("forms_") + v.name, v.cfg, v.fmt, v.shards);
  Model m(dir);
  const auto ids = ids_for(37, m.vocab(), 11);
  std::vector<float> ha, hb;
  const auto a = full_logits(m, ids, AttnForm::Naive, &ha);
  const auto b = full_logits(m, ids, AttnForm::Absorbed, &hb);
  const double scale = std::max(1.0, max_abs(a));
  EXPECT_LT(max_abs_diff(a, b), 1e-3 * scale) << v.name;
  // The final hidden state (after model.norm: O(1) per element) before the head's BF16
  // rounding can hide a difference: the same bound.
  EXPECT_LT(max_abs_diff(ha, hb), 1e-3 * std::max(1.0, max_abs(ha))) << v.name;
  std::printf("%s: max |logit| %.3g, naive vs absorbed %.3g; max |h| %.3g, diff %.3g\n", v.name,
              max_abs(a), max_abs_diff(a, b), max_abs(ha), max_abs_diff(ha, hb));
  // Each layer's attention output on its own (in a random model it is small next to the
  // residual stream, so the end-to-end checks above see little of it): the same inputs and
  // F32 reassociation only, ~(S + kv_lora)·2^-24 relative; 1e-4 leaves a wide margin.
  std::vector<std::vector<float>> attn[2];
  for (int f = 0; f < 2; ++f) {
    ForwardTrace tr = [&](const std::string& name, const float* d, int64_t r, int64_t c) {
      if (name.size() > 5 && name.compare(name.size() - 5, 5, ".attn") == 0)
        attn[f].emplace_back(d, d + r * c);
    };
    KvCache cache = m.new_cache(64);
    ForwardScratch s;
    ForwardArgs fa;
    fa.ids = ids.data();
    fa.T = int64_t(ids.size());
    fa.form = f == 0 ? AttnForm::Naive : AttnForm::Absorbed;
    fa.trace = &tr;
    m.forward(cache, fa, s);
  }
  ASSERT_EQ(attn[0].size(), size_t(m.config().num_hidden_layers));
  for (size_t l = 0; l < attn[0].size(); ++l) {
    const double mag = max_abs(attn[0][l]), d = max_abs_diff(attn[0][l], attn[1][l]);
    EXPECT_GT(mag, 0.0);
    EXPECT_LT(d, 1e-4 * mag) << v.name << " layer " << l;
    std::printf("  layer %zu attn max %.3g diff %.3g\n", l, mag, d);
  }
  fs::remove_all(dir);
}

// Decoding one token at a time over the cache gives the logits of the full recomputation.
TEST_P(ModelForms, PrefillThenDecodeMatchesRecompute) {
  const Variant v = variant(GetParam());
  const std::string dir = make_checkpoint(std::string("decode_") + v.name, v.cfg, v.fmt, v.shards);
  Model m(dir);
  const int64_t V = m.vocab(), T = 29, P = 9;
  const auto ids = ids_for(T, V, 5);
  const auto full = full_logits(m, ids, AttnForm::Naive);
  const double scale = std::max(1.0, max_abs(full));
  KvCache cache = m.new_cache(64);
  ForwardScratch s;
  std::vector<float> logits(size_t(P * V));
  ForwardArgs a;
  a.ids = ids.data();
  a.T = P;
  a.logits = logits.data();
  m.forward(cache, a, s);  // prefill P tokens (naive)
  double worst = 0;
  for (int64_t t = 0; t < P; ++t)
    for (int64_t j = 0; j < V; ++j)
      worst = std::max(worst, double(std::fabs(logits[size_t(t * V + j)] - full[size_t(t * V + j)])));
  std::vector<float> one(static_cast<size_t>(V));
  for (int64_t t = P; t < T; ++t) {
    ForwardArgs d;
    d.ids = ids.data() + t;
    d.T = 1;
    d.logits = one.data();
    m.forward(cache, d, s);  // decode (absorbed)
    for (int64_t j = 0; j < V; ++j)
      worst = std::max(worst, double(std::fabs(one[size_t(j)] - full[size_t(t * V + j)])));
  }
  EXPECT_EQ(cache.len, T);
  EXPECT_LT(worst, 1e-3 * scale) << v.name;
  // A chunk of several tokens appended to a cache (speculative verification's shape).
  cache.truncate(P);
  std::vector<float> chunk(size_t((T - P) * V));
  ForwardArgs c;
  c.ids = ids.data() + P;
  c.T = T - P;
  c.logits = chunk.data();
  m.forward(cache, c, s);
  worst = 0;
  for (int64_t i = 0; i < (T - P) * V; ++i)
    worst = std::max(worst, double(std::fabs(chunk[size_t(i)] - full[size_t(P * V + i)])));
  EXPECT_LT(worst, 1e-3 * scale) << v.name;
  // Steps of 3 tokens (a few drafted tokens verified at once: the decode-sized fused paths
  // with M > 1).
  cache.truncate(P);
  worst = 0;
  for (int64_t t = P; t < T; t += 3) {
    const int64_t n = std::min<int64_t>(3, T - t);
    ForwardArgs d;
    d.ids = ids.data() + t;
    d.T = n;
    d.logits = chunk.data();
    m.forward(cache, d, s);
    for (int64_t i = 0; i < n * V; ++i)
      worst = std::max(worst, double(std::fabs(chunk[size_t(i)] - full[size_t(t * V + i)])));
  }
  EXPECT_EQ(cache.len, T);
  EXPECT_LT(worst, 1e-3 * scale) << v.name;
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Variants, ModelForms, ::testing::Values(0, 1, 2));

TEST(Model, MtpIncrementalMatchesFull) {
  const std::string dir = make_checkpoint("mtp", tiny_v3_config(), CheckpointFormat::FP8, 1);
  Model m(dir);
  ASSERT_EQ(m.n_mtp(), 1);
  const int64_t V = m.vocab(), H = m.config().hidden_size, T = 21;
  const auto ids = ids_for(T + 1, V, 3);
  std::vector<float> hidden;
  std::vector<int32_t> main_ids(ids.begin(), ids.begin() + T);
  full_logits(m, main_ids, AttnForm::Naive, &hidden);
  // Module 1 over all positions at once: position i takes h_i and t_{i+1}.
  KvCache c1 = m.new_cache(T + 4);
  ForwardScratch s;
  std::vector<float> all(size_t(T * V));
  MtpArgs a;
  a.ids = ids.data() + 1;
  a.h_prev = hidden.data();
  a.T = T;
  a.logits = all.data();
  m.mtp_forward(c1, a, s);
  EXPECT_EQ(c1.mtp_len[0], T);
  EXPECT_EQ(c1.len, 0);
  // The same one position at a time.
  KvCache c2 = m.new_cache(T + 4);
  std::vector<float> one(static_cast<size_t>(V));
  double worst = 0;
  for (int64_t i = 0; i < T; ++i) {
    MtpArgs b;
    b.ids = ids.data() + 1 + i;
    b.h_prev = hidden.data() + i * H;
    b.T = 1;
    b.logits = one.data();
    m.mtp_forward(c2, b, s);
    for (int64_t j = 0; j < V; ++j)
      worst = std::max(worst, double(std::fabs(one[size_t(j)] - all[size_t(i * V + j)])));
  }
  EXPECT_LT(worst, 1e-3 * std::max(1.0, max_abs(all)));
  fs::remove_all(dir);
}

// make_resident(HugePages) moves every weight into its own memory: the logits of a prefill, of
// decode steps and of the MTP module are bit-identical to the mapped checkpoint's (the same
// bytes, read from another address), on FP8 sharded and BF16 checkpoints.
TEST(Model, HugePageCopyGivesTheSameBits) {
  for (int v = 0; v < 2; ++v) {
    const bool fp8 = v == 0;
    const std::string dir = make_checkpoint(fp8 ? "huge_fp8" : "huge_bf16", fp8 ? tiny_v3_config() : tiny_v2_config(),
                                            fp8 ? CheckpointFormat::FP8 : CheckpointFormat::BF16, fp8 ? 2 : 1);
    Model mapped(dir), copied(dir);
    EXPECT_GE(mapped.make_resident(Model::Residency::Mapped), uint64_t(mapped.held_weight_bytes()))
        << "prefault reads the data sections";
    EXPECT_EQ(mapped.residency(), Model::Residency::Mapped);
    std::string why;
    const uint64_t bytes = copied.make_resident(Model::Residency::HugePages, &why);
    if (copied.residency() == Model::Residency::Mapped) {
      EXPECT_FALSE(why.empty()) << "a fallback says why";
    } else {
      EXPECT_TRUE(why.empty()) << why;
      EXPECT_GE(bytes, uint64_t(copied.held_weight_bytes()));
      EXPECT_LT(bytes, uint64_t(copied.held_weight_bytes()) + 64 * 4096) << "64-byte padding per tensor only";
      EXPECT_THROW(copied.make_resident(Model::Residency::HugePages), Error) << "twice";
      EXPECT_EQ(copied.mapped_weight_bytes(), 0) << "every view points at the copy";
      EXPECT_EQ(mapped.mapped_weight_bytes(), mapped.held_weight_bytes());
    }
    const int64_t V = mapped.vocab(), T = 13;
    const auto ids = ids_for(T, V, 11);
    std::vector<float> h1, h2;
    EXPECT_EQ(full_logits(mapped, ids, AttnForm::Absorbed, &h1), full_logits(copied, ids, AttnForm::Absorbed, &h2));
    EXPECT_EQ(h1, h2);
    // Decode steps on a prefilled cache.
    KvCache c1 = mapped.new_cache(T + 4), c2 = copied.new_cache(T + 4);
    ForwardScratch s1, s2;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<float> l1(static_cast<size_t>(V)), l2(static_cast<size_t>(V));
      ForwardArgs a;
      a.ids = ids.data() + t;
      a.T = 1;
      a.logits = l1.data();
      mapped.forward(c1, a, s1);
      a.logits = l2.data();
      copied.forward(c2, a, s2);
      ASSERT_EQ(l1, l2) << "decode step " << t;
    }
    if (fp8) {  // the MTP module's weights moved too
      ASSERT_EQ(mapped.n_mtp(), 1);
      KvCache m1 = mapped.new_cache(T + 4), m2 = copied.new_cache(T + 4);
      std::vector<float> o1(size_t((T - 1) * V)), o2(o1.size());
      MtpArgs a;
      a.ids = ids.data() + 1;
      a.h_prev = h1.data();
      a.T = T - 1;
      a.logits = o1.data();
      mapped.mtp_forward(m1, a, s1);
      a.logits = o2.data();
      copied.mtp_forward(m2, a, s2);
      EXPECT_EQ(o1, o2);
    }
    fs::remove_all(dir);
  }
}

TEST(Model, BadInputIsRefused) {
  const std::string dir = make_checkpoint("bad", tiny_v2_config(), CheckpointFormat::BF16, 1);
  Model m(dir);
  KvCache cache = m.new_cache(8);
  ForwardScratch s;
  const int32_t bad[2] = {3, int32_t(m.vocab())};
  ForwardArgs a;
  a.ids = bad;
  a.T = 2;
  EXPECT_THROW(m.forward(cache, a, s), Error);
  const int32_t neg[1] = {-1};
  a.ids = neg;
  a.T = 1;
  EXPECT_THROW(m.forward(cache, a, s), Error);
  std::vector<int32_t> long_ids(9, 1);
  a.ids = long_ids.data();
  a.T = 9;
  EXPECT_THROW(m.forward(cache, a, s), Error);  // longer than the context
  a.T = 0;
  EXPECT_THROW(m.forward(cache, a, s), Error);  // empty
  EXPECT_THROW(m.new_cache(m.config().max_position_embeddings + 1), Error);
  EXPECT_THROW(m.mtp_forward(cache, MtpArgs{}, s), Error);  // V2 has no MTP module
  EXPECT_THROW(Model(dir + "/nonexistent"), Error);
  const fs::path notmodel = fs::temp_directory_path() / ("dsv3_model_notmodel_" + std::to_string(::getpid()));
  fs::create_directories(notmodel);
  {
    FILE* f = std::fopen((notmodel / "config.json").c_str(), "w");
    std::fputs("{\"model_type\": \"llama\", \"hidden_size\": 8}", f);
    std::fclose(f);
  }
  EXPECT_THROW(Model(notmodel.string()), Error);
  fs::remove_all(notmodel);
  fs::remove_all(dir);
}

}  // namespace
