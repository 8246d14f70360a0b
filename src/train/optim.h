// AdamW with decoupled weight decay over the trainer's F32 parameter arena (docs/training.md),
// global-norm gradient clipping, and the learning-rate schedule of DeepSeek-V3 (report §4.2:
// linear warmup, a constant phase, cosine decay).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

#include "train/params.h"

namespace dsv3 {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  // Moments stored in BF16 (report §3.3: "the first and second moments ... in BF16"): half the
  // optimizer memory; each update reads them as F32 and rounds them back (RNE).
  bool bf16_moments = false;
};

struct LrSchedule {
  double lr = 3e-3, lr_min = 3e-4;
  int64_t warmup_steps = 50;
  int64_t decay_start = 0;  // step where the cosine starts (0: right after warmup)
  int64_t total_steps = 1000;
  double at(int64_t step) const;  // step counts from 0
};

// ZeRO-1 (report §3.2; Rajbhandari et al. 2020, stage 1): a data-parallel rank keeps the
// moments of, and updates, only its shard [lo, hi) of the arena; the shards of a group's
// ranks tile it. One process: the whole arena.
class AdamW {
 public:
  AdamW(const ParamSet& ps, const AdamWConfig& c, int64_t lo = 0, int64_t hi = -1);
  int64_t lo() const { return lo_; }
  int64_t hi() const { return lo_ + n_; }
  // One update with learning rate lr of params[lo, hi); params and g are whole arenas
  // [numel] of which only the shard is read. The update uses g·clip (clip_factor's; the
  // bits of scaling g first, which is left as it is). step_count increments first (bias
  // correction uses t = 1 on the first call).
  // p16, when given (an arena like params), receives the updated params rounded to BF16.
  void step(float* params, const float* g, double lr, float clip = 1.0f, uint16_t* p16 = nullptr);
  int64_t step_count() const { return t_; }
  void set_step_count(int64_t t) { t_ = t; }
  // Moment 0 (m) or 1 (v) of the shard as stored: F32 or BF16 [hi − lo] (for checkpoints).
  TensorView moment(int which);
  // Restores the shard's part of a whole-arena moment [numel] from a checkpoint tensor of
  // F32 or BF16 (converted as needed); throws when its size does not match.
  void load_moment(int which, const TensorView& v, const std::string& where);

 private:
  AdamWConfig c_;
  std::vector<TrainableRange> ranges_;  // trainable storage in [lo, hi)
  std::vector<float> m_, v_;          // F32 moments
  std::vector<uint16_t> m16_, v16_;   // BF16 moments
  int64_t lo_ = 0, n_ = 0, total_ = 0;  // the shard [lo_, lo_ + n_) of an arena of total_
  int64_t t_ = 0;
};

// ‖g‖₂ over the trainable ranges of ps (double accumulation).
double grad_norm(const ParamSet& ps, const float* g);
// g *= f over the trainable elements within [lo, hi).
void scale_grads(const ParamSet& ps, float* g, float f, int64_t lo, int64_t hi);
// The factor clip_grad_norm applies for a norm (1 when no clipping is due).
float clip_factor(double norm, double max_norm);
// Scales g so that its norm is at most max_norm (no-op when max_norm ≤ 0 or norm ≤ max).
// Returns the norm before clipping.
double clip_grad_norm(const ParamSet& ps, float* g, double max_norm);

}  // namespace dsv3
