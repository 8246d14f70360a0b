// AVX2 top-k (kernels/topk.h), as topk_avx512.cpp with 8 lanes: compare 8 entries at a
// time with the current k-th value and run the scalar insertion (topk_insert.h) only on
// those strictly greater, in index order, re-checking each against the k-th value as it
// moves. Identical to topk_ref.cpp: a lane is skipped only when v > kth is false, and
// then topk_beats(v, kth) is false too (kth is not NaN there).
#include <immintrin.h>

#include <cstdint>

#include "kernels/simd_avx2.h"
#include "kernels/topk.h"
#include "kernels/topk_insert.h"

namespace dsv3 {

void topk_rows_avx2(float* values, int32_t* indices, const float* x, int64_t ld, int64_t T,
                    int64_t C, int64_t k) {
  for (int64_t t = 0; t < T; ++t) {
    const float* row = x + t * ld;
    float* vals = values + t * k;
    int32_t* idx = indices + t * k;
    for (int64_t c = 0; c < k; ++c) insert(vals, idx, c, k, row[c], int32_t(c));
    for (int64_t c = k; c < C; c += 8) {
      const int64_t n = C - c < 8 ? C - c : 8;
      const unsigned lanes = (1u << n) - 1u;
      const float kth = vals[k - 1];
      unsigned cand;
      if (kth != kth) {
        cand = lanes;  // a NaN k-th value: every lane is a candidate, the scalar test decides
      } else {
        // Masked-off lanes load 0 and are dropped by `lanes`; NaN entries compare false.
        const __m256 v = load8(row + c, n);
        cand = unsigned(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(kth), _CMP_GT_OQ))) & lanes;
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
