// The optimizer's elementwise kernels: AdamW's update and the gradient norm's sum of squares.
//
// AdamW's update (train/optim.cpp drives it over each trainable range), on the clipped
// gradient g = g_in·gscale (gradient clipping's factor, 1 when none is due; g·1 = g exactly):
//   m ← b1·m + (1 − b1)·g
//   v ← b2·v + ((1 − b2)·g)·g
//   p ← p − ( (step_size·m) / (sqrt(v·inv_bc2) + eps) + wd·p )
// step_size = lr / (1 − b1^t), inv_bc2 = 1 / (1 − b2^t), wd = lr·weight_decay (0 for ranges
// without decay): decoupled decay on the pre-update p. Every operation is one F32 rounding in
// exactly this order, with no fused multiply-add, so the AVX-512 path gives the scalar twin's
// bits. The moments are F32, or BF16: widened before the update, rounded to nearest even
// after it (the update of p uses the unrounded m and v). p16, when given, receives the new p
// rounded to BF16 (nearest even): the weight copy BF16 training's GEMMs read
// (train/train_weights.h), written in the same pass.
#pragma once
#include <cstdint>

namespace dsv3 {

struct AdamWCoef {
  float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, step_size = 0, inv_bc2 = 1, wd = 0, gscale = 1;
};

// n elements of p, g, m, v (no aliasing); AVX-512 when active_isa() is Avx512, else the twin.
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16 = nullptr);
void adamw_update(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16 = nullptr);
// The scalar twins.
void adamw_update_ref(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16 = nullptr);
void adamw_update_ref(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16 = nullptr);

// Σ x_i² in double (the global gradient norm, per block of the arena). The order is fixed:
// 32 lanes, lane j adding x_i² for i ≡ j (mod 32) in increasing i, then the lanes added
// pairwise (j + 16, then + 8, + 4, + 2, + 1). A float's square is exact in double, so a fused
// multiply-add and a multiply then add round alike, and the AVX-512 path gives the twin's bits.
double sum_squares(const float* x, int64_t n);
double sum_squares_ref(const float* x, int64_t n);

namespace avx512 {
double sum_squares(const float* x, int64_t n);
void adamw_update(float* p, const float* g, float* m, float* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16 = nullptr);
void adamw_update(float* p, const float* g, uint16_t* m, uint16_t* v, int64_t n, const AdamWCoef& c,
                  uint16_t* p16 = nullptr);
}  // namespace avx512

}  // namespace dsv3
