// AdamW's elementwise update (train/optim.cpp drives it over each trainable range):
//   m ← b1·m + (1 − b1)·g
//   v ← b2·v + ((1 − b2)·g)·g
//   p ← p − ( (step_size·m) / (sqrt(v·inv_bc2) + eps) + wd·p )
// step_size = lr / (1 − b1^t), inv_bc2 = 1 / (1 − b2^t), wd = lr·weight_decay (0 for ranges
// without decay): decoupled decay on the pre-update p. Every operation is one F32 rounding in
// exactly this order, with no fused multiply-add, so the AVX-512 path gives the scalar twin's
// bits. The moments are F32, or BF16: widened before the update, rounded to nearest even
// after it (the update of p uses the unrounded m and v).
#pragma once
#include <cstdint>

namespace dsv3 {

struct AdamWCoef {
  float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, step_size = 0, inv_bc2 = 1, wd = 0;
};

// n elements of p, g, m, v (no aliasing); AVX-512 when active_isa() is Avx512, else the twin.
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& c);
void adamw_update(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWCoef& c);
// The scalar twins.
void adamw_update_ref(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& c);
void adamw_update_ref(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWCoef& c);

namespace avx512 {
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& c);
void adamw_update(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWCoef& c);
}  // namespace avx512

}  // namespace dsv3
