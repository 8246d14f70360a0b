// The trainer's parameters: every tensor of the checkpoint layout (visit_weights), F32, in one
// allocation (llm.c style), with `ModelWeights` views so the layer code addresses them by
// their paper/checkpoint names. Gradients and optimizer moments use the same layout.
//
// MTP modules share the main model's embedding and output head (report §2.2: "shared
// embedding and output head"); their checkpoint copies (`layers.N.embed_tokens`,
// `layers.N.shared_head.head`) alias the main tensors here and are written from them.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace dsv3 {

class Checkpoint;

struct ParamInfo {
  WeightSpec spec;
  int64_t offset = 0;     // into the F32 arena
  bool alias = false;     // storage belongs to another tensor (MTP embedding / head copies)
  bool trainable = true;  // false: e_score_correction_bias (updated by the balancing rule)
  bool decay = true;      // AdamW weight decay (not for 1-D tensors or the embedding)
  // Read only by the training GEMMs (the linear projections and the head; not an alias): in
  // BF16 training read from the BF16 copy, and its master sharded (train/train_weights.h).
  bool gemm = false;
};

// Elements [begin, end) of the parameter storage: one trainable tensor, or its part inside a
// window (ParamSet::trainable_ranges).
struct TrainableRange {
  int64_t begin = 0, end = 0;
  bool decay = true;  // the tensor's weight decay flag (ParamInfo::decay)
};

class ParamSet {
 public:
  ParamSet(const ModelConfig& c, bool with_mtp);
  const ModelConfig& config() const { return cfg_; }
  bool with_mtp() const { return with_mtp_; }
  int64_t numel() const { return numel_; }  // unique F32 elements
  const std::vector<ParamInfo>& infos() const { return infos_; }
  const ParamInfo* find(const std::string& name) const;
  // The trainable storage (not the MTP aliases, not the router bias) inside [lo, hi), one
  // range per tensor: what AdamW updates, clipping scales and the gradient
  // norm sums, in infos() order. hi < 0: numel().
  std::vector<TrainableRange> trainable_ranges(int64_t lo = 0, int64_t hi = -1) const;
  // The storage of the GEMM tensors (ParamInfo::gemm), sorted, adjacent ones joined.
  std::vector<std::pair<int64_t, int64_t>> gemm_ranges() const;

  // Views of every tensor into base [numel()] (F32).
  ModelWeights bind(float* base) const;
  TensorView view(const float* base, const ParamInfo& p) const;

  // Deterministic initialisation: linear/embedding/head/router N(0, initializer_range),
  // norm gains 1, router bias 0.
  void init(float* base, uint64_t seed) const;
  // Every tensor from a checkpoint of this config (F32, BF16, F16 or FP8 + scales) -> F32.
  void load(float* base, const Checkpoint& ck) const;

 private:
  ModelConfig cfg_;
  bool with_mtp_;
  int64_t numel_ = 0;
  std::vector<ParamInfo> infos_;
};

}  // namespace dsv3
