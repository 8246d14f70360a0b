#include "train/train_step.h"

#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/parallel.h"

namespace dsv3 {
namespace {

// The step's losses and expert loads over the whole global batch: the calls' means weighted
// by their sequences, summed over micro-batches and data-parallel ranks (one call: as is).
class LossSum {
 public:
  void add(const StepLosses& L, int64_t seqs) {
    ++calls_;
    if (calls_ == 1) {
      first_ = L;
      n_mtp_ = L.mtp.size();
      sums_.assign(2 + n_mtp_, 0.0);
      load_.clear();
      for (const auto& l : L.load) load_.insert(load_.end(), l.begin(), l.end());
    } else {
      size_t k = 0;
      for (const auto& l : L.load)
        for (int64_t v : l) load_[k++] += v;
    }
    const double w = double(seqs);
    sums_[0] += L.main * w;
    sums_[1] += L.balance * w;
    for (size_t i = 0; i < n_mtp_; ++i) sums_[2 + i] += L.mtp[i] * w;
  }
  // Completes the step (collective over dp): the global means, and loads summed over ranks.
  StepLosses finish(const dist::Comm& dp, int64_t global_batch, double lam_over_d) {
    if (calls_ == 1 && dp.size() == 1) return reset(first_);
    dp.allreduce_sum(sums_.data(), int64_t(sums_.size()));
    dp.allreduce_sum(load_.data(), int64_t(load_.size()));
    StepLosses L = first_;
    L.main = sums_[0] / double(global_batch);
    L.balance = sums_[1] / double(global_batch);
    L.total = L.main + L.balance;
    for (size_t i = 0; i < n_mtp_; ++i) {
      L.mtp[i] = sums_[2 + i] / double(global_batch);
      L.total += lam_over_d * L.mtp[i];
    }
    size_t k = 0;
    for (auto& l : L.load)
      for (int64_t& v : l) v = load_[k++];
    return reset(L);
  }

 private:
  StepLosses reset(const StepLosses& L) {
    calls_ = 0;
    return L;
  }
  int calls_ = 0;
  size_t n_mtp_ = 0;
  StepLosses first_;
  std::vector<double> sums_;   // main, balance, mtp...  (Σ mean · sequences)
  std::vector<int64_t> load_;  // all layers' loads, flattened
};

}  // namespace

TrainStep::TrainStep(const TrainConfig& cfg, const ParamSet& ps, const Layout& lay, const dist::Comm& dp,
                     const dist::Comm& ep, int threads)
    : cfg_(cfg), ps_(ps), lay_(lay), dp_(dp) {
  DSV3_ASSERT(dp.size() == lay.dp);
  shard_.resize(size_t(lay.dp));
  for (int q = 0; q < lay.dp; ++q) {
    int64_t b, e;
    split_range(ps.numel(), lay.dp, q, &b, &e);
    shard_[size_t(q)] = e - b;
  }
  split_range(ps.numel(), lay.dp, lay.dp_rank, &lo_, &hi_);
  adam_ = std::make_unique<AdamW>(ps, cfg.adam, lo_, hi_);
  TrainModelOptions mo;
  mo.batch = lay.micro_batch;
  mo.global_batch = lay.global_batch;
  mo.seq_len = cfg.seq_len;
  mo.precision = cfg.precision;
  mo.mtp = cfg.mtp;
  mo.balance_alpha = cfg.balance_alpha;
  mo.threads = threads;
  model_ = std::make_unique<TrainModel>(ps, mo);
  grads_.resize(size_t(ps.numel()));
  gshard_.resize(size_t(lay.dp > 1 ? hi_ - lo_ : 0));
}

TrainStep::~TrainStep() = default;

StepResult TrainStep::compute(const int32_t* batch, const float* params, int64_t step) {
  const int64_t row = cfg_.seq_len + 1;
  const int64_t D = cfg_.mtp ? cfg_.model.num_nextn_predict_layers : 0;
  std::fill(grads_.begin(), grads_.end(), 0.0f);
  model_->set_mtp_lambda(cfg_.mtp_lambda_at(step));
  LossSum sum;
  for (int mb = 0; mb < lay_.micro_batches; ++mb) {
    const int64_t r0 = lay_.first_row() + int64_t(mb) * lay_.micro_batch;
    sum.add(model_->step(batch + r0 * row, params, grads_.data()), lay_.micro_batch);
  }
  StepResult r;
  r.losses = sum.finish(dp_, lay_.global_batch, D > 0 ? cfg_.mtp_lambda_at(step) / double(D) : 0.0);
  // ZeRO-1: each rank receives the group's sum of its shard of the gradient.
  if (lay_.dp > 1) {
    dp_.reduce_scatter_sum(grads_.data(), gshard_.data(), shard_);
    std::memcpy(grads_.data() + lo_, gshard_.data(), gshard_.size() * sizeof(float));
  }
  double sumsq = grad_sumsq(ps_, grads_.data(), lo_, hi_);
  dp_.allreduce_sum(&sumsq, 1);
  r.grad_norm = std::sqrt(sumsq);
  r.finite = std::isfinite(r.losses.total) && std::isfinite(r.grad_norm);
  return r;
}

std::vector<double> TrainStep::apply(float* params, const StepResult& r, int64_t step) {
  const float clip = clip_factor(r.grad_norm, cfg_.grad_clip);
  if (clip != 1.0f) scale_grads(ps_, grads_.data(), clip, lo_, hi_);
  adam_->step(params, grads_.data(), cfg_.lr.at(step));
  if (lay_.dp > 1) dp_.allgather(params, shard_);
  // Aux-loss-free balancing (report §2.1.2): b_i += γ·sign(mean_load − load_i), from the
  // loads of the whole global batch (every rank applies the same update).
  return update_router_bias(ps_.bind(params), cfg_.model, r.losses, cfg_.gamma_at(step));
}

}  // namespace dsv3
