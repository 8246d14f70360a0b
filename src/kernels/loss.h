// Cross-entropy over the vocabulary, chunk-friendly: rows are independent, so the caller
// computes the logits of a chunk of tokens, runs forward+backward on it (the gradient
// overwrites the logits in place) and feeds the gradient to the head's GEMMs before the
// next chunk — T×V logits never exist at once.
//
//   lse[t]  = log Σ_v exp(logits[t,v])
//   loss[t] = lse[t] − logits[t, target[t]]            (0 when target[t] == ignore_index)
//   dlogits[t,v] = (exp(logits[t,v] − lse[t]) − [v == target[t]]) · g[t]
//   g[t] = dloss_scale · (dloss ? dloss[t] : 1)         (0 rows for ignored targets)
//
// For the mean loss over the n non-ignored targets of a batch (count_valid_targets), pass
// dloss_scale = 1/n. logits are [T, V] with row stride ld (elements).
// Dispatch: active_isa() == Avx512 runs the *_avx512 kernels, Avx2 the *_avx2 ones,
// Scalar the scalar twins (*_ref), which are also what the tests compare against.
#pragma once
#include <cstdint>

namespace dsv3 {

// losses [T] and lse [T] (either may be nullptr) from logits [T, V]. Targets must lie in
// [0, V) unless equal to ignore_index.
void cross_entropy_forward(float* losses, float* lse, const float* logits, int64_t ld,
                           const int32_t* targets, int64_t T, int64_t V, int32_t ignore_index,
                           int threads = 0);
// In place: logits [T, V] become dlogits, using lse [T] from the forward.
void cross_entropy_backward(float* logits, int64_t ld, const float* lse, const int32_t* targets,
                            const float* dloss, float dloss_scale, int64_t T, int64_t V,
                            int32_t ignore_index, int threads = 0);
// Both in one call (the usual training step on a chunk): losses [T] (nullable) and then the
// logits turned into dlogits in place.
void cross_entropy_forward_backward(float* losses, float* logits, int64_t ld,
                                    const int32_t* targets, float dloss_scale, int64_t T, int64_t V,
                                    int32_t ignore_index, int threads = 0);
// Number of targets != ignore_index.
int64_t count_valid_targets(const int32_t* targets, int64_t T, int32_t ignore_index);
// Mean of losses over non-ignored targets (double sum); 0 when there are none.
double mean_loss(const float* losses, const int32_t* targets, int64_t T, int32_t ignore_index);

// Scalar twins and AVX-512 row kernels (internal).
void cross_entropy_forward_ref(float* losses, float* lse, const float* logits, int64_t ld,
                               const int32_t* targets, int64_t T, int64_t V, int32_t ignore_index);
void cross_entropy_backward_ref(float* logits, int64_t ld, const float* lse, const int32_t* targets,
                                const float* dloss, float dloss_scale, int64_t T, int64_t V,
                                int32_t ignore_index);
void cross_entropy_backward_avx512(float* logits, int64_t ld, const float* lse,
                                   const int32_t* targets, const float* dloss, float dloss_scale,
                                   int64_t T, int64_t V, int32_t ignore_index);

void cross_entropy_backward_avx2(float* logits, int64_t ld, const float* lse,
                                 const int32_t* targets, const float* dloss, float dloss_scale,
                                 int64_t T, int64_t V, int32_t ignore_index);

}  // namespace dsv3
