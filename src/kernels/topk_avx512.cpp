// AVX-512 top-k (kernels/topk.h): compare 16 entries at a time with the current k-th value
// and run the scalar insertion (topk_insert.h) only on those strictly greater, in index
// order, re-checking each against the k-th value as it moves. Identical to topk_ref.cpp.
// For a 129K-vocab row with k ≤ 64 almost every block is rejected by one compare.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as
// "may be used uninitialized" (a false positive); silence it for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>

#include "kernels/simd_avx512.h"
#include "kernels/topk.h"
#include "kernels/topk_insert.h"

namespace dsv3 {

void topk_rows_avx512(float* values, int32_t* indices, const float* x, int64_t ld, int64_t T,
                      int64_t C, int64_t k) {
  for (int64_t t = 0; t < T; ++t) {
    const float* row = x + t * ld;
    float* vals = values + t * k;
    int32_t* idx = indices + t * k;
    for (int64_t c = 0; c < k; ++c) insert(vals, idx, c, k, row[c], int32_t(c));
    for (int64_t c = k; c < C; c += 16) {
      const __mmask16 m = lanes_mask(C - c);
      const float kth = vals[k - 1];
      unsigned cand;
      if (kth != kth) {
        cand = m;  // a NaN k-th value: every lane is a candidate, the scalar test decides
      } else {
        const __m512 v = _mm512_maskz_loadu_ps(m, row + c);
        cand = _mm512_mask_cmp_ps_mask(m, v, _mm512_set1_ps(kth), _CMP_GT_OQ);
      }
      while (cand) {
        const int j = __builtin_ctz(cand);
        cand &= cand - 1;
        if (topk_beats(row[c + j], vals[k - 1]))
          insert(vals, idx, k, k, row[c + j], int32_t(c + j));
      }
    }
  }
}

}  // namespace dsv3
