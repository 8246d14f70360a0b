// Scalar twins of kernels/loss.h.
#include <cmath>

#include "kernels/loss.h"
#include "kernels/softmax.h"

namespace dsv3 {

void cross_entropy_forward_ref(float* losses, float* lse, const float* logits, int64_t ld,
                               const int32_t* targets, int64_t T, int64_t V, int32_t ignore_index) {
  for (int64_t t = 0; t < T; ++t) {
    const float* row = logits + t * ld;
    const float l = row_logsumexp_ref(row, V);
    if (lse) lse[t] = l;
    if (losses) losses[t] = targets[t] == ignore_index ? 0.0f : l - row[targets[t]];
  }
}

void cross_entropy_backward_ref(float* logits, int64_t ld, const float* lse, const int32_t* targets,
                                const float* dloss, float dloss_scale, int64_t T, int64_t V,
                                int32_t ignore_index) {
  for (int64_t t = 0; t < T; ++t) {
    float* row = logits + t * ld;
    if (targets[t] == ignore_index) {
      for (int64_t v = 0; v < V; ++v) row[v] = 0.0f;
      continue;
    }
    const float g = dloss_scale * (dloss ? dloss[t] : 1.0f);
    const float l = lse[t];
    for (int64_t v = 0; v < V; ++v) row[v] = std::exp(row[v] - l) * g;
    // (p − 1)·g computed as p·g − g: the same value the fused loop would give to one
    // rounding, and the vector paths do exactly this.
    row[targets[t]] -= g;
  }
}

}  // namespace dsv3
