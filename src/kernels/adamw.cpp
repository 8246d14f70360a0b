// The optimizer's elementwise kernels: the scalar twins and the dispatch (kernels/adamw.h).
#include "kernels/adamw.h"

// No multiply-add contraction (GCC contracts a * b + c, intrinsics included, under its
// default -ffp-contract=fast when FMA is enabled): the twin and the vector path must round
// every operation separately to give the same bits.
#pragma GCC optimize("fp-contract=off")

#include <cmath>

#include "core/cpu.h"
#include "core/dtype.h"

namespace dsv3 {
namespace {

// One element; m and v in and out as F32. Written so that no two operations fuse: this file
// is built for the baseline ISA (no FMA), and every step is its own rounding.
inline float step_one(float& p, float g_in, float& m, float& v, const AdamWCoef& c) {
  const float g = g_in * c.gscale;
  m = c.b1 * m + (1.0f - c.b1) * g;
  v = c.b2 * v + (1.0f - c.b2) * g * g;
  p -= c.step_size * m / (std::sqrt(v * c.inv_bc2) + c.eps) + c.wd * p;
  return p;
}

}  // namespace

void adamw_update_ref(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16) {
  for (int64_t i = 0; i < n; ++i) step_one(p[i], g[i], m[i], v[i], c);
  if (p16)
    for (int64_t i = 0; i < n; ++i) p16[i] = f32_to_bf16(p[i]);
}

void adamw_update_ref(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16) {
  for (int64_t i = 0; i < n; ++i) {
    float mi = bf16_to_f32(m[i]), vi = bf16_to_f32(v[i]);
    step_one(p[i], g[i], mi, vi, c);
    m[i] = f32_to_bf16(mi);
    v[i] = f32_to_bf16(vi);
    if (p16) p16[i] = f32_to_bf16(p[i]);
  }
}

double sum_squares_ref(const float* x, int64_t n) {
  double lane[32] = {};
  for (int64_t i = 0; i < n; ++i) lane[i % 32] += double(x[i]) * double(x[i]);
  for (int w = 16; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) lane[j] += lane[j + w];
  return lane[0];
}

double sum_squares(const float* x, int64_t n) {
  if (active_isa() == Isa::Avx512) return avx512::sum_squares(x, n);
  return sum_squares_ref(x, n);
}

void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16) {
  if (active_isa() == Isa::Avx512) return avx512::adamw_update(p, g, m, v, n, c, p16);
  adamw_update_ref(p, g, m, v, n, c, p16);
}

void adamw_update(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16) {
  if (active_isa() == Isa::Avx512) return avx512::adamw_update(p, g, m, v, n, c, p16);
  adamw_update_ref(p, g, m, v, n, c, p16);
}

}  // namespace dsv3
