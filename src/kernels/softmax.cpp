// Softmax entry points: argument checks, ISA dispatch, threads over rows.
#include "kernels/softmax.h"

#include "core/check.h"
#include "core/cpu.h"
#include "kernels/row_parallel.h"

namespace dsv3 {

float row_logsumexp(const float* x, int64_t C) {
  return pick(row_logsumexp_avx512, row_logsumexp_avx2, row_logsumexp_ref)(x, C);
}

void softmax_forward(float* y, const float* x, int64_t T, int64_t C, float scale,
                     const int32_t* valid_len, int threads) {
  DSV3_CHECK(T >= 0 && C >= 0, "softmax_forward: negative shape T=", T, " C=", C);
  DSV3_CHECK(scale > 0, "softmax_forward: scale must be > 0, got ", scale);
  DSV3_CHECK(T == 0 || C == 0 || (y && x), "softmax_forward: null pointer");
  if (valid_len)
    for (int64_t t = 0; t < T; ++t)
      DSV3_CHECK(valid_len[t] >= 0 && valid_len[t] <= C, "softmax_forward: valid_len[", t,
                 "] = ", valid_len[t], " outside [0, ", C, "]");
  auto* f = pick(softmax_forward_avx512, softmax_forward_avx2, softmax_forward_ref);
  parallel_rows(T, T * C, threads, [&](int64_t b, int64_t e) {
    f(y + b * C, x + b * C, e - b, C, scale, valid_len ? valid_len + b : nullptr);
  });
}

void softmax_backward(float* dx, const float* dy, const float* y, int64_t T, int64_t C, float scale,
                      int threads) {
  DSV3_CHECK(T >= 0 && C >= 0, "softmax_backward: negative shape T=", T, " C=", C);
  DSV3_CHECK(T == 0 || C == 0 || (dx && dy && y), "softmax_backward: null pointer");
  auto* f = pick(softmax_backward_avx512, softmax_backward_avx2, softmax_backward_ref);
  parallel_rows(T, T * C, threads, [&](int64_t b, int64_t e) {
    f(dx + b * C, dy + b * C, y + b * C, e - b, C, scale);
  });
}

float log_softmax_row(float* out, const float* x, int64_t C) {
  DSV3_CHECK(C > 0, "log_softmax_row: empty row");
  DSV3_CHECK(out && x, "log_softmax_row: null pointer");
  return pick(log_softmax_row_avx512, log_softmax_row_avx2, log_softmax_row_ref)(out, x, C);
}

int64_t argmax_row(const float* x, int64_t C) {
  DSV3_CHECK(C > 0 && C < (int64_t(1) << 31), "argmax_row: row length ", C, " outside [1, 2^31)");
  DSV3_CHECK(x, "argmax_row: null pointer");
  // AVX2 CPUs use the scalar twin: argmax is one pass of compares, not worth a third copy.
  return pick(argmax_row_avx512, argmax_row_ref, argmax_row_ref)(x, C);
}

}  // namespace dsv3
