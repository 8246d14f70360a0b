// AVX-512 cross-entropy backward (kernels/loss.h); the forward's logsumexp is
// row_logsumexp_avx512 (softmax_avx512.cpp). Same operations as loss_ref.cpp with exp512.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as
// "may be used uninitialized" (a false positive); silence it for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>

#include "kernels/loss.h"
#include "kernels/simd_avx512.h"

namespace dsv3 {

void cross_entropy_backward_avx512(float* logits, int64_t ld, const float* lse,
                                   const int32_t* targets, const float* dloss, float dloss_scale,
                                   int64_t T, int64_t V, int32_t ignore_index) {
  for (int64_t t = 0; t < T; ++t) {
    float* row = logits + t * ld;
    if (targets[t] == ignore_index) {
      for (int64_t v = 0; v < V; v += 16) store16(row + v, lanes_mask(V - v), _mm512_setzero_ps());
      continue;
    }
    const float g = dloss_scale * (dloss ? dloss[t] : 1.0f);
    const __m512 vg = _mm512_set1_ps(g), vl = _mm512_set1_ps(lse[t]);
    int64_t v = 0;
    for (; v + 16 <= V; v += 16)
      _mm512_storeu_ps(row + v,
                       _mm512_mul_ps(exp512(_mm512_sub_ps(_mm512_loadu_ps(row + v), vl)), vg));
    if (v < V) {
      const __mmask16 m = lanes_mask(V - v);
      store16(row + v, m, _mm512_mul_ps(exp512(_mm512_sub_ps(load16_m(m, row + v), vl)), vg));
    }
    row[targets[t]] -= g;
  }
}

}  // namespace dsv3
