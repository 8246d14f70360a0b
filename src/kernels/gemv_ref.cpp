// Scalar reference GEMV (kernels/gemv.h): the definition the vector paths are tested
// against and the portable fallback. F32 accumulation in k order; for FP8 the block scale
// is applied once per 128-column block, like the checkpoint's definition W = fp8 · s.
// Each output is computed on its own, so rows of y do not depend on M (gemv.h).
#include "core/dtype.h"
#include "kernels/gemv.h"
#include "kernels/quant.h"

namespace dsv3 {

void gemv_bf16_ref(const GemvBF16& p) {
  for (int64_t m = 0; m < p.M; ++m) {
    const float* x = p.x + m * p.ldx;
    for (int64_t n = 0; n < p.N; ++n) {
      const uint16_t* w = p.w + n * p.ldw;
      float acc = 0.f;
      for (int64_t k = 0; k < p.K; ++k) acc += bf16_to_f32(w[k]) * x[k];
      float& y = p.y[m * p.ldy + n];
      y = p.accumulate ? y + acc : acc;
    }
  }
}

void gemv_fp8_ref(const GemvFP8& p) {
  const int64_t kb = fp8_blocks(p.K);
  for (int64_t m = 0; m < p.M; ++m) {
    const float* x = p.x + m * p.ldx;
    for (int64_t n = 0; n < p.N; ++n) {
      const uint8_t* w = p.w + n * p.ldw;
      const float* s = p.w_scale + (n / kFp8Block) * kb;
      float acc = 0.f;
      for (int64_t b = 0; b < kb; ++b) {
        const int64_t k1 = (b + 1) * kFp8Block < p.K ? (b + 1) * kFp8Block : p.K;
        float blk = 0.f;
        for (int64_t k = b * kFp8Block; k < k1; ++k) blk += e4m3_to_f32(w[k]) * x[k];
        acc += blk * s[b];
      }
      float& y = p.y[m * p.ldy + n];
      y = p.accumulate ? y + acc : acc;
    }
  }
}

}  // namespace dsv3
