// One optimizer step of `dsv3 train`, in one process or many (docs/distributed.md): the
// forward and backward of this rank's micro-batches, the gradient reduced over the
// data-parallel group (ZeRO-1: each rank receives the sum of its shard), the global norm and
// clipping, AdamW on the shard, the parameters all-gathered, and the aux-loss-free bias
// update from the expert loads of the whole global batch. The same code runs one process
// (one-rank groups), so a distributed run computes what one process computes for the same
// global batch, up to the order of the cross-rank sums (tests/test_dist_train.cpp bounds it).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "parallel/comm.h"
#include "parallel/layout.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/train_config.h"
#include "train/train_model.h"

namespace dsv3 {

struct StepResult {
  StepLosses losses;   // means over the global batch; loads summed over it
  double grad_norm = 0;
  bool finite = true;  // the loss and the gradient norm are finite (the same on every rank)
};

class TrainStep {
 public:
  // dp / ep: this rank's groups (they must outlive the object); one process: Comm().
  TrainStep(const TrainConfig& cfg, const ParamSet& ps, const Layout& lay, const dist::Comm& dp,
            const dist::Comm& ep, int threads);
  ~TrainStep();

  // Forward and backward of this rank's rows of batch [global_batch, T + 1] (every rank
  // passes the whole batch), the gradient reduce-scattered and its global norm. After it,
  // grads()[lo(), hi()) holds the summed, unclipped gradient of this rank's shard.
  StepResult compute(const int32_t* batch, const float* params, int64_t step);
  // Clipping, AdamW on the shard, the all-gather of params, the router-bias update. Returns
  // MaxVio per MoE layer. Call only when compute() was finite.
  std::vector<double> apply(float* params, const StepResult& r, int64_t step);

  AdamW& adam() { return *adam_; }
  const std::vector<float>& grads() const { return grads_; }
  int64_t lo() const { return lo_; }
  int64_t hi() const { return hi_; }
  const std::vector<int64_t>& shard_sizes() const { return shard_; }  // [dp]

 private:
  const TrainConfig& cfg_;
  const ParamSet& ps_;
  Layout lay_;
  const dist::Comm& dp_;
  std::unique_ptr<AdamW> adam_;
  std::unique_ptr<TrainModel> model_;
  std::vector<float> grads_, gshard_;
  std::vector<int64_t> shard_;
  int64_t lo_ = 0, hi_ = 0;
};

}  // namespace dsv3
