// Row-wise softmax for attention and scoring.
//
//   z[c] = (x[c] − max_{j<len} x[j]) · scale,   y[c] = exp(z[c]) / Σ_{j<len} exp(z[j])  (c < len)
//   y[c] = 0                                                                        (c ≥ len)
//
// scale > 0 multiplies the logits (the attention softmax scale, rope.h's
// attention_softmax_scale); len = valid_len[t] gives causal masking without materialising
// −inf (nullptr: every row has length C; len = 0, or a row whose valid entries are all −inf,
// gives a row of zeros). Backward:
//
//   dx[c] = scale · y[c] · (dy[c] − Σ_j dy[j]·y[j])        (written; may alias dy)
//
// which is zero where y is zero, so masked entries get no gradient. The scalar twins sum in
// double; the AVX-512 / AVX2 paths sum in float (32 partial sums) with the ≤ 2 ulp vector
// exp of simd_avx512.h / simd_avx2.h.
// Rows are contiguous: x, y, dy, dx are [T, C] with row stride C.
// Dispatch: active_isa() == Avx512 runs the *_avx512 kernels, Avx2 the *_avx2 ones (argmax:
// the twin), Scalar the scalar twins (*_ref), which the tests compare against.
#pragma once
#include <cstdint>

namespace dsv3 {

// x [T, C] -> y [T, C]; y may alias x (in place).
void softmax_forward(float* y, const float* x, int64_t T, int64_t C, float scale = 1.0f,
                     const int32_t* valid_len = nullptr, int threads = 0);
// dy, y [T, C] -> dx [T, C] (written; may alias dy).
void softmax_backward(float* dx, const float* dy, const float* y, int64_t T, int64_t C,
                      float scale = 1.0f, int threads = 0);

// One row for scoring: out[c] = x[c] − logsumexp(x) (out may alias x); returns logsumexp.
float log_softmax_row(float* out, const float* x, int64_t C);
// Index of the largest element; ties go to the lower index; NaN never wins (a row of NaN
// or −inf gives 0). C must be > 0.
int64_t argmax_row(const float* x, int64_t C);

// Scalar twins and AVX-512 row kernels (internal).
void softmax_forward_ref(float* y, const float* x, int64_t T, int64_t C, float scale,
                         const int32_t* valid_len);
void softmax_backward_ref(float* dx, const float* dy, const float* y, int64_t T, int64_t C,
                          float scale);
float log_softmax_row_ref(float* out, const float* x, int64_t C);
int64_t argmax_row_ref(const float* x, int64_t C);
void softmax_forward_avx512(float* y, const float* x, int64_t T, int64_t C, float scale,
                            const int32_t* valid_len);
void softmax_backward_avx512(float* dx, const float* dy, const float* y, int64_t T, int64_t C,
                             float scale);
float log_softmax_row_avx512(float* out, const float* x, int64_t C);
int64_t argmax_row_avx512(const float* x, int64_t C);

// Row reductions shared with loss.h (row_logsumexp dispatches on the ISA): max over
// x[0..C) (−inf for C = 0; NaN ignored) and
// logsumexp = m + log Σ exp(x − m) with m that max.
float row_logsumexp(const float* x, int64_t C);
float row_max_ref(const float* x, int64_t C);
float row_logsumexp_ref(const float* x, int64_t C);
float row_max_avx512(const float* x, int64_t C);
float row_logsumexp_avx512(const float* x, int64_t C);

void softmax_forward_avx2(float* y, const float* x, int64_t T, int64_t C, float scale,
                          const int32_t* valid_len);
void softmax_backward_avx2(float* dx, const float* dy, const float* y, int64_t T, int64_t C,
                           float scale);
float log_softmax_row_avx2(float* out, const float* x, int64_t C);
float row_max_avx2(const float* x, int64_t C);
float row_logsumexp_avx2(const float* x, int64_t C);

}  // namespace dsv3
