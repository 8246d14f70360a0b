// Elementwise activations of the DeepSeekMoE expert, expert(x) = down(silu(gate(x)) ⊙ up(x))
// (SPEC §1), and the vectorised exp the row kernels share.
//
//   silu(g)   = g · σ(g),          σ(g) = 1 / (1 + exp(−g))
//   silu'(g)  = σ(g) · (1 + g·(1 − σ(g)))
//   swiglu:  h = silu(gate) ⊙ up;  dgate = dh ⊙ up ⊙ silu'(gate),  dup = dh ⊙ silu(gate)
//
// Backward passes WRITE the input gradients (each gate/up element feeds exactly one h).
// Row strides (elements) let gate and up be the two halves of one fused [T, 2I] GEMM
// output. Accuracy: the AVX-512 exp is ≤ 2 ulp from the true exp (glibc's expf, used by
// the scalar twins, ≤ 1 ulp), and the rest of the arithmetic is the same operation
// sequence, so fast and scalar differ by a few ulp (tests/test_activation.cpp states it).
// Dispatch: active_isa() == Avx512 runs the *_avx512 kernels, Avx2 the *_avx2 ones,
// Scalar the scalar twins (*_ref), which are also what the tests compare against.
#pragma once
#include <cstdint>

namespace dsv3 {

// y[i] = exp(x[i]), n elements (y may alias x).
void exp_f32(float* y, const float* x, int64_t n, int threads = 0);
void exp_f32_ref(float* y, const float* x, int64_t n);
void exp_f32_avx512(float* y, const float* x, int64_t n);
void exp_f32_avx2(float* y, const float* x, int64_t n);

// out[i] = silu(x[i]); dx[i] = dout[i] · silu'(x[i]). Pointers may alias (in place).
void silu_forward(float* out, const float* x, int64_t n, int threads = 0);
void silu_backward(float* dx, const float* dout, const float* x, int64_t n, int threads = 0);

// gate, up [T, I] (strides ld_gate, ld_up) -> h [T, I] (ld_h).
void swiglu_forward(float* h, int64_t ld_h, const float* gate, int64_t ld_gate, const float* up,
                    int64_t ld_up, int64_t T, int64_t I, int threads = 0);
// dh [T, I] (ld_dh) -> dgate (ld_dgate), dup (ld_dup), both written. dgate/dup may alias
// gate/up (in place, same strides): each element is read before it is written.
void swiglu_backward(float* dgate, int64_t ld_dgate, float* dup, int64_t ld_dup, const float* dh,
                     int64_t ld_dh, const float* gate, int64_t ld_gate, const float* up,
                     int64_t ld_up, int64_t T, int64_t I, int threads = 0);

// Scalar twins (single-threaded) and the AVX-512 row kernels behind the dispatchers.
void silu_forward_ref(float* out, const float* x, int64_t n);
void silu_backward_ref(float* dx, const float* dout, const float* x, int64_t n);
void swiglu_forward_ref(float* h, int64_t ld_h, const float* gate, int64_t ld_gate, const float* up,
                        int64_t ld_up, int64_t T, int64_t I);
void swiglu_backward_ref(float* dgate, int64_t ld_dgate, float* dup, int64_t ld_dup,
                         const float* dh, int64_t ld_dh, const float* gate, int64_t ld_gate,
                         const float* up, int64_t ld_up, int64_t T, int64_t I);
void silu_forward_avx512(float* out, const float* x, int64_t n);
void silu_backward_avx512(float* dx, const float* dout, const float* x, int64_t n);
void swiglu_forward_avx512(float* h, int64_t ld_h, const float* gate, int64_t ld_gate,
                           const float* up, int64_t ld_up, int64_t T, int64_t I);
void swiglu_backward_avx512(float* dgate, int64_t ld_dgate, float* dup, int64_t ld_dup,
                            const float* dh, int64_t ld_dh, const float* gate, int64_t ld_gate,
                            const float* up, int64_t ld_up, int64_t T, int64_t I);

void silu_forward_avx2(float* out, const float* x, int64_t n);
void silu_backward_avx2(float* dx, const float* dout, const float* x, int64_t n);
void swiglu_forward_avx2(float* h, int64_t ld_h, const float* gate, int64_t ld_gate,
                         const float* up, int64_t ld_up, int64_t T, int64_t I);
void swiglu_backward_avx2(float* dgate, int64_t ld_dgate, float* dup, int64_t ld_dup,
                          const float* dh, int64_t ld_dh, const float* gate, int64_t ld_gate,
                          const float* up, int64_t ld_up, int64_t T, int64_t I);

}  // namespace dsv3
