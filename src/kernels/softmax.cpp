// Softmax entry points: argument checks, ISA dispatch, threads over rows.
#include "kernels/softmax.h"

#include "core/check.h"
#include "core/cpu.h"
#include "kernels/row_parallel.h"

namespace dsv3 {

void softmax_forward(float* y, const float* x, int64_t T, int64_t C, float scale,
                     const int32_t* valid_len, int threads) {
  DSV3_CHECK(T >= 0 && C >= 0, "softmax_forward: negative shape T=", T, " C=", C);
  DSV3_CHECK(scale > 0, "softmax_forward: scale must be > 0, got ", scale);
  if (valid_len)
    for (int64_t t = 0; t < T; ++t)
      DSV3_CHECK(valid_len[t] >= 0 && valid_len[t] <= C, "softmax_forward: valid_len[", t,
                 "] = ", valid_len[t], " outside [0, ", C, "]");
  const bool fast = active_isa() == Isa::Avx512;
  parallel_rows(T, T * C, threads, [&](int64_t b, int64_t e) {
    const int32_t* len = valid_len ? valid_len + b : nullptr;
    if (fast) softmax_forward_avx512(y + b * C, x + b * C, e - b, C, scale, len);
    else softmax_forward_ref(y + b * C, x + b * C, e - b, C, scale, len);
  });
}

void softmax_backward(float* dx, const float* dy, const float* y, int64_t T, int64_t C,
                      float scale, int threads) {
  DSV3_CHECK(T >= 0 && C >= 0, "softmax_backward: negative shape T=", T, " C=", C);
  const bool fast = active_isa() == Isa::Avx512;
  parallel_rows(T, T * C, threads, [&](int64_t b, int64_t e) {
    if (fast) softmax_backward_avx512(dx + b * C, dy + b * C, y + b * C, e - b, C, scale);
    else softmax_backward_ref(dx + b * C, dy + b * C, y + b * C, e - b, C, scale);
  });
}

float log_softmax_row(float* out, const float* x, int64_t C) {
  DSV3_CHECK(C > 0, "log_softmax_row: empty row");
  return active_isa() == Isa::Avx512 ? log_softmax_row_avx512(out, x, C)
                                     : log_softmax_row_ref(out, x, C);
}

int64_t argmax_row(const float* x, int64_t C) {
  DSV3_CHECK(C > 0 && C < (int64_t(1) << 31), "argmax_row: row length ", C,
             " outside [1, 2^31)");
  return active_isa() == Isa::Avx512 ? argmax_row_avx512(x, C) : argmax_row_ref(x, C);
}

}  // namespace dsv3
