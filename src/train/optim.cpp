#include "train/optim.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/adamw.h"
#include "kernels/row_parallel.h"

namespace dsv3 {

double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return lr * double(step + 1) / double(warmup_steps);
  const int64_t start = std::max(decay_start, warmup_steps);
  if (step < start || total_steps <= start) return lr;
  const double p = std::min(1.0, double(step - start) / double(total_steps - start));
  return lr_min + 0.5 * (lr - lr_min) * (1.0 + std::cos(3.141592653589793 * p));
}

AdamW::AdamW(const ParamSet& ps, const AdamWConfig& c, int64_t lo, int64_t hi) : c_(c) {
  total_ = ps.numel();
  if (hi < 0) hi = total_;
  DSV3_ASSERT(0 <= lo && lo <= hi && hi <= total_);
  lo_ = lo;
  n_ = hi - lo;
  ranges_ = ps.trainable_ranges(lo, hi);
  if (c.bf16_moments) {
    m16_.assign(size_t(n_), 0);
    v16_.assign(size_t(n_), 0);
  } else {
    m_.assign(size_t(n_), 0.0f);
    v_.assign(size_t(n_), 0.0f);
  }
}

TensorView AdamW::moment(int which) {
  if (c_.bf16_moments)
    return TensorView(which == 0 ? m16_.data() : v16_.data(), DType::BF16, {n_});
  return TensorView(which == 0 ? m_.data() : v_.data(), DType::F32, {n_});
}

void AdamW::load_moment(int which, const TensorView& v, const std::string& where) {
  DSV3_CHECK(v.numel() == total_ && (v.dtype == DType::F32 || v.dtype == DType::BF16), where,
             ": optimizer moment of ", v.numel(), " ", dtype_name(v.dtype), " values does not match this "
             "model (", total_, " F32 or BF16 values expected)");
  for (int64_t i = 0; i < n_; ++i) {
    const int64_t s = lo_ + i;
    const float x = v.dtype == DType::F32 ? v.ptr<float>()[s] : bf16_to_f32(v.ptr<uint16_t>()[s]);
    if (c_.bf16_moments)
      (which == 0 ? m16_ : v16_)[size_t(i)] = f32_to_bf16(x);
    else
      (which == 0 ? m_ : v_)[size_t(i)] = x;
  }
}

void AdamW::step(float* params, const float* g, double lr, float clip, uint16_t* p16) {
  ++t_;
  const double bc1 = 1.0 - std::pow(c_.beta1, double(t_)), bc2 = 1.0 - std::pow(c_.beta2, double(t_));
  AdamWCoef k;
  k.b1 = float(c_.beta1);
  k.b2 = float(c_.beta2);
  k.eps = float(c_.eps);
  k.step_size = float(lr / bc1);
  k.inv_bc2 = float(1.0 / bc2);
  k.gscale = clip;
  for (const TrainableRange& r : ranges_) {
    k.wd = r.decay ? float(lr * c_.weight_decay) : 0.0f;
    // kernels/adamw.h's update over the threads (a small range stays on this one).
    const int64_t n = r.end - r.begin;
    parallel_rows(n, n, 0, [&](int64_t b, int64_t e) {
      const int64_t i = r.begin + b;
      const size_t k0 = size_t(i - lo_);
      uint16_t* q = p16 ? p16 + i : nullptr;
      if (c_.bf16_moments)
        adamw_update(params + i, g + i, m16_.data() + k0, v16_.data() + k0, e - b, k, q);
      else
        adamw_update(params + i, g + i, m_.data() + k0, v_.data() + k0, e - b, k, q);
    });
  }
}

double grad_norm(const ParamSet& ps, const float* g) {
  double s = 0;
  for (const TrainableRange& r : ps.trainable_ranges()) {
    const float* d = g + r.begin;
    const int64_t n = r.end - r.begin;
    // Blocks of a fixed size summed in order: the same bits whatever the thread count.
    constexpr int64_t kBlock = 1 << 16;
    const int64_t nb = (n + kBlock - 1) / kBlock;
    std::vector<double> part(static_cast<size_t>(nb));
    parallel_for(nb, n > kBlock ? 0 : 1, [&](int64_t b) {
      part[size_t(b)] = sum_squares(d + b * kBlock, std::min(n, (b + 1) * kBlock) - b * kBlock);
    });
    for (const double t : part) s += t;
  }
  return std::sqrt(s);
}

void scale_grads(const ParamSet& ps, float* g, float f, int64_t lo, int64_t hi) {
  for (const TrainableRange& r : ps.trainable_ranges(lo, hi))
    for (int64_t i = r.begin; i < r.end; ++i) g[i] *= f;
}

float clip_factor(double norm, double max_norm) {
  return max_norm > 0 && norm > max_norm && std::isfinite(norm) ? float(max_norm / (norm + 1e-6)) : 1.0f;
}

double clip_grad_norm(const ParamSet& ps, float* g, double max_norm) {
  const double n = grad_norm(ps, g);
  const float f = clip_factor(n, max_norm);
  if (f != 1.0f) scale_grads(ps, g, f, 0, ps.numel());
  return n;
}

}  // namespace dsv3
