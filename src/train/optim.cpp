#include "train/optim.h"

#include <cmath>

#include "core/check.h"
#include "core/dtype.h"

namespace dsv3 {

double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return lr * double(step + 1) / double(warmup_steps);
  const int64_t start = std::max(decay_start, warmup_steps);
  if (step < start || total_steps <= start) return lr;
  const double p = std::min(1.0, double(step - start) / double(total_steps - start));
  return lr_min + 0.5 * (lr - lr_min) * (1.0 + std::cos(3.141592653589793 * p));
}

AdamW::AdamW(const ParamSet& ps, const AdamWConfig& c) : c_(c) {
  for (const ParamInfo& p : ps.infos())
    if (!p.alias && p.trainable) ranges_.push_back({p.offset, p.offset + p.spec.numel(), p.decay});
  n_ = ps.numel();
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
  DSV3_CHECK(v.numel() == n_ && (v.dtype == DType::F32 || v.dtype == DType::BF16), where,
             ": optimizer moment of ", v.numel(), " ", dtype_name(v.dtype), " values does not match this "
             "model (", n_, " F32 or BF16 values expected)");
  for (int64_t i = 0; i < n_; ++i) {
    const float x = v.dtype == DType::F32 ? v.ptr<float>()[i] : bf16_to_f32(v.ptr<uint16_t>()[i]);
    if (c_.bf16_moments)
      (which == 0 ? m16_ : v16_)[size_t(i)] = f32_to_bf16(x);
    else
      (which == 0 ? m_ : v_)[size_t(i)] = x;
  }
}

void AdamW::step(float* params, const float* g, double lr) {
  ++t_;
  const double bc1 = 1.0 - std::pow(c_.beta1, double(t_)), bc2 = 1.0 - std::pow(c_.beta2, double(t_));
  const float b1 = float(c_.beta1), b2 = float(c_.beta2), eps = float(c_.eps);
  const float step_size = float(lr / bc1), inv_bc2 = float(1.0 / bc2);
  for (const Range& r : ranges_) {
    const float wd = r.decay ? float(lr * c_.weight_decay) : 0.0f;
    const bool h = c_.bf16_moments;
#pragma omp parallel for schedule(static) if (r.end - r.begin > (1 << 16))
    for (int64_t i = r.begin; i < r.end; ++i) {
      const float gi = g[i];
      const float m0 = h ? bf16_to_f32(m16_[size_t(i)]) : m_[size_t(i)];
      const float v0 = h ? bf16_to_f32(v16_[size_t(i)]) : v_[size_t(i)];
      const float m = b1 * m0 + (1.0f - b1) * gi;
      const float v = b2 * v0 + (1.0f - b2) * gi * gi;
      if (h) {
        m16_[size_t(i)] = f32_to_bf16(m);
        v16_[size_t(i)] = f32_to_bf16(v);
      } else {
        m_[size_t(i)] = m;
        v_[size_t(i)] = v;
      }
      // p −= lr·(m̂/(sqrt(v̂)+ε) + wd·p), decoupled decay applied to the pre-update p
      params[i] -= step_size * m / (std::sqrt(v * inv_bc2) + eps) + wd * params[i];
    }
  }
}

double grad_norm(const ParamSet& ps, const float* g) {
  double s = 0;
  for (const ParamInfo& p : ps.infos()) {
    if (p.alias || !p.trainable) continue;
    const float* d = g + p.offset;
    double t = 0;
#pragma omp parallel for reduction(+ : t) schedule(static) if (p.spec.numel() > (1 << 16))
    for (int64_t i = 0; i < p.spec.numel(); ++i) t += double(d[i]) * double(d[i]);
    s += t;
  }
  return std::sqrt(s);
}

double clip_grad_norm(const ParamSet& ps, float* g, double max_norm) {
  const double n = grad_norm(ps, g);
  if (max_norm > 0 && n > max_norm && std::isfinite(n)) {
    const float f = float(max_norm / (n + 1e-6));
    for (const ParamInfo& p : ps.infos()) {
      if (p.alias || !p.trainable) continue;
      float* d = g + p.offset;
      for (int64_t i = 0; i < p.spec.numel(); ++i) d[i] *= f;
    }
  }
  return n;
}

}  // namespace dsv3
