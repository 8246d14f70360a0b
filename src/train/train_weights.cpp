#include "train/train_weights.h"

#include <algorithm>

#include "core/check.h"
#include "kernels/convert.h"

namespace dsv3 {

TrainWeights::TrainWeights(const ParamSet& ps, bool bf16_copy)
    : n_(ps.numel()), f32_(size_t(ps.numel()) * sizeof(float), "master weights"), gemm_(ps.gemm_ranges()) {
  if (bf16_copy) bf16_ = MappedBytes(size_t(n_) * sizeof(uint16_t), "BF16 weight copy");
}

float* TrainWeights::mutable_data() {
  DSV3_ASSERT(!sharded_);  // gather the master first (TrainStep::gather_params)
  copy_current_ = false;
  return master();
}

void TrainWeights::sync_copy(int64_t lo, int64_t hi) {
  if (bf16() == nullptr) return;
  if (hi < 0) hi = n_;
  if (hi > lo) convert_f32_to_bf16(data() + lo, bf16_mut() + lo, hi - lo);
}

void TrainWeights::shard(const Ranges& keep) {
  if (sharded_) return;
  sharded_ = true;
  // The GEMM ranges less the kept ones, each piece's whole pages released.
  for (const auto& [b, e] : gemm_) {
    int64_t at = b;
    for (const auto& [kb, ke] : keep) {
      if (ke <= at || kb >= e) continue;
      if (kb > at) released_.push_back(f32_.release(size_t(at) * 4, size_t(kb) * 4, true));
      at = std::max(at, ke);
      if (at >= e) break;
    }
    if (at < e) released_.push_back(f32_.release(size_t(at) * 4, size_t(e) * 4, true));
  }
}

void TrainWeights::unshard() {
  for (const auto& [pb, pe] : released_) f32_.unprotect(pb, pe);
  released_.clear();
  sharded_ = false;
}

}  // namespace dsv3
