// Scalar top-k (kernels/topk.h): seed the buffer with the first k entries (insertion sort,
// so −inf/NaN rows still yield k valid indices), then insert every later entry strictly
// greater than the current k-th value. "Strictly" gives ties to the lower index, since
// entries arrive in index order.
#include "kernels/topk.h"
#include "kernels/topk_insert.h"

namespace dsv3 {

void topk_rows_ref(float* values, int32_t* indices, const float* x, int64_t ld, int64_t T,
                   int64_t C, int64_t k) {
  for (int64_t t = 0; t < T; ++t) {
    const float* row = x + t * ld;
    float* vals = values + t * k;
    int32_t* idx = indices + t * k;
    for (int64_t c = 0; c < k; ++c) insert(vals, idx, c, k, row[c], int32_t(c));
    for (int64_t c = k; c < C; ++c)
      if (topk_beats(row[c], vals[k - 1])) insert(vals, idx, k, k, row[c], int32_t(c));
  }
}

}  // namespace dsv3
