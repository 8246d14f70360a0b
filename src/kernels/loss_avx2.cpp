// AVX2 cross-entropy backward (kernels/loss.h): loss_avx512.cpp on 8 lanes with exp256.
#include <immintrin.h>

#include <cstdint>

#include "kernels/loss.h"
#include "kernels/simd_avx2.h"

namespace dsv3 {

void cross_entropy_backward_avx2(float* logits, int64_t ld, const float* lse,
                                 const int32_t* targets, const float* dloss, float dloss_scale,
                                 int64_t T, int64_t V, int32_t ignore_index) {
  for (int64_t t = 0; t < T; ++t) {
    float* row = logits + t * ld;
    if (targets[t] == ignore_index) {
      for (int64_t v = 0; v < V; v += 8) store8(row + v, V - v, _mm256_setzero_ps());
      continue;
    }
    const float g = dloss_scale * (dloss ? dloss[t] : 1.0f);
    const __m256 vg = _mm256_set1_ps(g), vl = _mm256_set1_ps(lse[t]);
    for (int64_t v = 0; v < V; v += 8)
      store8(row + v, V - v, _mm256_mul_ps(exp256(_mm256_sub_ps(load8(row + v, V - v), vl)), vg));
    row[targets[t]] -= g;
  }
}

}  // namespace dsv3
