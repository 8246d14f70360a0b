// Cross-entropy entry points: argument checks, ISA dispatch, threads over rows.
#include "kernels/loss.h"

#include "core/check.h"
#include "core/cpu.h"
#include "kernels/row_parallel.h"
#include "kernels/softmax.h"

namespace dsv3 {

namespace {

void check_args(const char* what, const int32_t* targets, int64_t T, int64_t V, int64_t ld,
                int32_t ignore_index) {
  DSV3_CHECK(T >= 0 && V > 0, what, ": need T >= 0 and V > 0, got T=", T, " V=", V);
  DSV3_CHECK(ld >= V, what, ": row stride ", ld, " < V=", V);
  DSV3_CHECK(T == 0 || targets, what, ": null targets");
  for (int64_t t = 0; t < T; ++t)
    DSV3_CHECK(targets[t] == ignore_index || (targets[t] >= 0 && targets[t] < V), what, ": target ",
               targets[t], " of row ", t, " outside [0, ", V, ") and not ignore_index ",
               ignore_index);
}

}  // namespace

void cross_entropy_forward(float* losses, float* lse, const float* logits, int64_t ld,
                           const int32_t* targets, int64_t T, int64_t V, int32_t ignore_index,
                           int threads) {
  check_args("cross_entropy_forward", targets, T, V, ld, ignore_index);
  DSV3_CHECK(T == 0 || logits, "cross_entropy_forward: null logits");
  auto* lse_row = pick(row_logsumexp_avx512, row_logsumexp_avx2, row_logsumexp_ref);
  parallel_rows(T, T * V, threads, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* row = logits + t * ld;
      const float l = lse_row(row, V);
      if (lse) lse[t] = l;
      if (losses) losses[t] = targets[t] == ignore_index ? 0.0f : l - row[targets[t]];
    }
  });
}

void cross_entropy_backward(float* logits, int64_t ld, const float* lse, const int32_t* targets,
                            const float* dloss, float dloss_scale, int64_t T, int64_t V,
                            int32_t ignore_index, int threads) {
  check_args("cross_entropy_backward", targets, T, V, ld, ignore_index);
  DSV3_CHECK(T == 0 || (logits && lse), "cross_entropy_backward: null logits or lse");
  auto* f =
      pick(cross_entropy_backward_avx512, cross_entropy_backward_avx2, cross_entropy_backward_ref);
  parallel_rows(T, T * V, threads, [&](int64_t b, int64_t e) {
    f(logits + b * ld, ld, lse + b, targets + b, dloss ? dloss + b : nullptr, dloss_scale, e - b, V,
      ignore_index);
  });
}

void cross_entropy_forward_backward(float* losses, float* logits, int64_t ld,
                                    const int32_t* targets, float dloss_scale, int64_t T, int64_t V,
                                    int32_t ignore_index, int threads) {
  check_args("cross_entropy_forward_backward", targets, T, V, ld, ignore_index);
  DSV3_CHECK(T == 0 || logits, "cross_entropy_forward_backward: null logits");
  auto* lse_row = pick(row_logsumexp_avx512, row_logsumexp_avx2, row_logsumexp_ref);
  auto* f =
      pick(cross_entropy_backward_avx512, cross_entropy_backward_avx2, cross_entropy_backward_ref);
  // Row by row inside each thread's range: the row is still in L2 for the backward.
  parallel_rows(T, T * V, threads, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* row = logits + t * ld;
      const float l = lse_row(row, V);
      if (losses) losses[t] = targets[t] == ignore_index ? 0.0f : l - row[targets[t]];
      f(row, ld, &l, targets + t, nullptr, dloss_scale, 1, V, ignore_index);
    }
  });
}

int64_t count_valid_targets(const int32_t* targets, int64_t T, int32_t ignore_index) {
  DSV3_CHECK(T >= 0 && (T == 0 || targets), "count_valid_targets: negative T=", T, " or null targets");
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) n += targets[t] != ignore_index;
  return n;
}

double mean_loss(const float* losses, const int32_t* targets, int64_t T, int32_t ignore_index) {
  DSV3_CHECK(T >= 0 && (T == 0 || (losses && targets)), "mean_loss: negative T=", T,
             " or null pointer");
  double s = 0;
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t)
    if (targets[t] != ignore_index) {
      s += losses[t];
      ++n;
    }
  return n ? s / double(n) : 0.0;
}

}  // namespace dsv3
