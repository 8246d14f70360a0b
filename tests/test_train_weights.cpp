// The training weights (train/train_weights.h): the BF16 copy is the rounding the BF16 GEMMs
// make, and a sharded master keeps exactly its shard and the non-GEMM tensors, returns the
// other pages to the kernel and faults on a read of them.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>

#include "core/dtype.h"
#include "train/train_config.h"
#include "train/train_weights.h"
#include "train_test_util.h"

namespace dsv3 {
namespace {

using namespace train_test;

ModelConfig model() {
  json j = train_json("bf16");
  j.erase("tokenizer");
  j["model"] = model_json(96);
  return parse_train_config(j.dump(), "tiny config", "").model;
}

TEST(TrainWeights, TheCopyIsTheRoundingOfTheMaster) {
  const ParamSet ps(model(), true);
  TrainWeights w(ps, true);
  ps.init(w.mutable_data(), 7);
  EXPECT_FALSE(w.copy_current());
  w.sync_copy();
  w.set_copy_current();
  for (int64_t i = 0; i < w.size(); ++i) ASSERT_EQ(w.bf16()[i], f32_to_bf16(w.data()[i])) << i;
  // A write through mutable_data() marks the copy stale; a range sync converts that range
  // and nothing else.
  const uint16_t old6 = w.bf16()[6];
  w.mutable_data()[5] = 3.0f;
  w.mutable_data()[6] = -5.0f;
  EXPECT_FALSE(w.copy_current());
  w.sync_copy(5, 6);
  EXPECT_EQ(w.bf16()[5], f32_to_bf16(3.0f));
  EXPECT_EQ(w.bf16()[6], old6);
  ASSERT_NE(old6, f32_to_bf16(-5.0f));
  TrainWeights none(ps, false);
  EXPECT_EQ(none.bf16(), nullptr);
}

TEST(TrainWeights, AShardKeepsItsRangeAndTheNonGemmTensors) {
  const ParamSet ps(model(), true);
  TrainWeights w(ps, true);
  ps.init(w.mutable_data(), 7);
  w.sync_copy();
  const std::vector<float> before(w.data(), w.data() + w.size());
  const int64_t n = w.size(), lo = n / 3, hi = 2 * n / 3;
  const int64_t whole = w.master_resident_bytes();
  EXPECT_GE(whole, n * 4);  // init touched every page
  w.shard({{lo, hi}});
  ASSERT_TRUE(w.sharded());
  const int64_t page = int64_t(sysconf(_SC_PAGESIZE)), fpp = page / 4;
  int64_t gone = 0;  // whole pages of GEMM weights outside [lo, hi)
  const float* released = nullptr;
  for (const auto& [b, e] : w.gemm_ranges())
    for (const auto& [x0, x1] : {std::pair{b, std::min(e, lo)}, std::pair{std::max(b, hi), e}}) {
      const int64_t p0 = (x0 + fpp - 1) / fpp, p1 = x1 / fpp;
      if (p1 > p0) {
        gone += p1 - p0;
        released = w.data() + p0 * fpp;
      }
    }
  ASSERT_GT(gone, 0);
  EXPECT_EQ(w.master_resident_bytes(), whole - gone * page);
  // Every value the shard keeps is unchanged, and so is the copy.
  for (const ParamInfo& p : ps.infos()) {
    if (p.alias) continue;
    const int64_t b = p.gemm ? std::max(p.offset, lo) : p.offset;
    const int64_t e = p.gemm ? std::min(p.offset + p.spec.numel(), hi) : p.offset + p.spec.numel();
    if (b < e) {
      EXPECT_EQ(0, std::memcmp(w.data() + b, before.data() + b, size_t(e - b) * 4)) << p.spec.name;
    }
  }
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(w.bf16()[i], f32_to_bf16(before[size_t(i)])) << i;
  // A read of a weight the shard does not hold faults rather than computing with zeros.
  EXPECT_DEATH({ volatile float x = *released; (void)x; }, "");
  // Unsharded: readable and writable again (the released pages read as zero until written).
  w.unshard();
  EXPECT_FALSE(w.sharded());
  EXPECT_EQ(*released, 0.0f);
  std::memcpy(w.mutable_data(), before.data(), size_t(n) * 4);
  EXPECT_EQ(0, std::memcmp(w.data(), before.data(), size_t(n) * 4));
}

}  // namespace
}  // namespace dsv3
