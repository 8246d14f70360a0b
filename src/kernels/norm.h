// RMSNorm (DeepSeek-V3: every block's input_layernorm / post_attention_layernorm,
// q_a_layernorm, kv_a_layernorm, model.norm, MTP enorm/hnorm; eps = rms_norm_eps):
//
//   out[t,c] = x[t,c] · rstd[t] · w[c],   rstd[t] = 1 / sqrt(mean_c(x[t,c]²) + eps)
//
// Layout: T rows of C elements with row strides (elements) so a norm can read a slice of
// a wider row (kv_a_layernorm normalises the first kv_lora_rank columns of
// kv_a_proj_with_mqa's [c_KV ; k_R] output). Forward saves rstd [T] for backward (pass
// nullptr at inference). Backward (llm.c style):
//
//   g[c]   = dout[t,c] · w[c]
//   dx[t,c] = rstd·g[c] − rstd³ · x[t,c] · (Σ_j g[j]·x[t,j]) / C     (written, or added)
//   dw[c] += Σ_t dout[t,c] · x[t,c] · rstd[t]                         (always added)
//
// dw is reduced over rows column-block by column-block, so results do not depend on the
// thread count. threads = 0 uses default_threads(). Each function dispatches on
// active_isa(): Avx512 runs the *_avx512 kernels, Avx2 the *_avx2 ones, Scalar the scalar
// twins *_ref (sums in double), which are also what the tests compare against.
#pragma once
#include <cstdint>

namespace dsv3 {

// x [T, C] (row stride ldx), w [C] -> out [T, C] (row stride ldo), rstd [T] (or nullptr).
void rmsnorm_forward(float* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                     const float* w, int64_t T, int64_t C, float eps, int threads = 0);
// The same with BF16 output (raw bit patterns, round to nearest even as f32_to_bf16):
// the input of a BF16 GEMM.
void rmsnorm_forward_bf16(uint16_t* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                          const float* w, int64_t T, int64_t C, float eps, int threads = 0);
// dout [T, C] (lddo), x [T, C] (ldx), w [C], rstd [T] from forward ->
// dx [T, C] (lddx; overwritten, or added to when accumulate_dx), dw [C] += (nullptr: skip).
// dx may alias dout when lddx == lddo (in place) and accumulate_dx is false.
void rmsnorm_backward(float* dx, int64_t lddx, float* dw, const float* dout, int64_t lddo,
                      const float* x, int64_t ldx, const float* w, const float* rstd, int64_t T,
                      int64_t C, bool accumulate_dx, int threads = 0);

// Scalar twins (single-threaded).
void rmsnorm_forward_ref(float* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                         const float* w, int64_t T, int64_t C, float eps);
void rmsnorm_forward_bf16_ref(uint16_t* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                              const float* w, int64_t T, int64_t C, float eps);
void rmsnorm_backward_ref(float* dx, int64_t lddx, float* dw, const float* dout, int64_t lddo,
                          const float* x, int64_t ldx, const float* w, const float* rstd, int64_t T,
                          int64_t C, bool accumulate_dx);

// Row-range kernels behind the dispatcher (internal). *_dx_* handle rows, *_dw_* a block
// of columns [c0, c1) over all T rows.
void rmsnorm_forward_avx512(float* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                            const float* w, int64_t T, int64_t C, float eps);
void rmsnorm_forward_bf16_avx512(uint16_t* out, int64_t ldo, float* rstd, const float* x,
                                 int64_t ldx, const float* w, int64_t T, int64_t C, float eps);
void rmsnorm_backward_dx_avx512(float* dx, int64_t lddx, const float* dout, int64_t lddo,
                                const float* x, int64_t ldx, const float* w, const float* rstd,
                                int64_t T, int64_t C, bool accumulate_dx);
void rmsnorm_backward_dx_ref(float* dx, int64_t lddx, const float* dout, int64_t lddo,
                             const float* x, int64_t ldx, const float* w, const float* rstd,
                             int64_t T, int64_t C, bool accumulate_dx);
void rmsnorm_backward_dw_avx512(float* dw, const float* dout, int64_t lddo, const float* x,
                                int64_t ldx, const float* rstd, int64_t T, int64_t c0, int64_t c1);
void rmsnorm_backward_dw_ref(float* dw, const float* dout, int64_t lddo, const float* x,
                             int64_t ldx, const float* rstd, int64_t T, int64_t c0, int64_t c1);

void rmsnorm_forward_avx2(float* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                          const float* w, int64_t T, int64_t C, float eps);
void rmsnorm_forward_bf16_avx2(uint16_t* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                               const float* w, int64_t T, int64_t C, float eps);
void rmsnorm_backward_dx_avx2(float* dx, int64_t lddx, const float* dout, int64_t lddo,
                              const float* x, int64_t ldx, const float* w, const float* rstd,
                              int64_t T, int64_t C, bool accumulate_dx);
void rmsnorm_backward_dw_avx2(float* dw, const float* dout, int64_t lddo, const float* x,
                              int64_t ldx, const float* rstd, int64_t T, int64_t c0, int64_t c1);

}  // namespace dsv3
