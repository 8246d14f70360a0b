// Top-k entry point: argument checks, ISA dispatch, threads over rows.
#include "kernels/topk.h"

#include "core/check.h"
#include "core/cpu.h"
#include "kernels/row_parallel.h"

namespace dsv3 {

void topk_forward(float* values, int32_t* indices, const float* x, int64_t ld, int64_t T, int64_t C,
                  int64_t k, int threads) {
  DSV3_CHECK(T >= 0 && C > 0 && C < (int64_t(1) << 31), "topk_forward: row length ", C,
             " outside [1, 2^31) or negative T=", T);
  DSV3_CHECK(k >= 1 && k <= C, "topk_forward: k=", k, " must be in [1, C=", C, "]");
  DSV3_CHECK(ld >= C, "topk_forward: row stride ", ld, " < C=", C);
  DSV3_CHECK(T == 0 || (values && indices && x), "topk_forward: null pointer");
  auto* f = pick(topk_rows_avx512, topk_rows_avx2, topk_rows_ref);
  parallel_rows(T, T * C, threads, [&](int64_t b, int64_t e) {
    f(values + b * k, indices + b * k, x + b * ld, ld, e - b, C, k);
  });
}

}  // namespace dsv3
