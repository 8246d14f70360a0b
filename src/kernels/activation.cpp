// Activation entry points: argument checks, ISA dispatch, threads over elements/rows.
#include "kernels/activation.h"

#include "core/check.h"
#include "core/cpu.h"
#include "kernels/row_parallel.h"

namespace dsv3 {

namespace {

// Elementwise work is split in chunks of 16 so no two threads share a vector.
template <class Body>
void parallel_elems(int64_t n, int threads, const Body& body) {
  const int64_t chunks = (n + 15) / 16;
  parallel_rows(chunks, n, threads, [&](int64_t b, int64_t e) {
    const int64_t i0 = b * 16, i1 = e * 16 < n ? e * 16 : n;
    body(i0, i1 - i0);
  });
}

void check_rows(const char* what, int64_t T, int64_t I, int64_t ld_a, int64_t ld_b, int64_t ld_c) {
  DSV3_CHECK(T >= 0 && I >= 0, what, ": negative shape T=", T, " I=", I);
  DSV3_CHECK(ld_a >= I && ld_b >= I && ld_c >= I, what, ": row strides must be >= I=", I);
}

}  // namespace

void exp_f32(float* y, const float* x, int64_t n, int threads) {
  DSV3_CHECK(n >= 0, "exp_f32: negative length ", n);
  DSV3_CHECK(n == 0 || (y && x), "exp_f32: null pointer");
  auto* f = pick(exp_f32_avx512, exp_f32_avx2, exp_f32_ref);
  parallel_elems(n, threads, [&](int64_t i, int64_t len) { f(y + i, x + i, len); });
}

void silu_forward(float* out, const float* x, int64_t n, int threads) {
  DSV3_CHECK(n >= 0, "silu_forward: negative length ", n);
  DSV3_CHECK(n == 0 || (out && x), "silu_forward: null pointer");
  auto* f = pick(silu_forward_avx512, silu_forward_avx2, silu_forward_ref);
  parallel_elems(n, threads, [&](int64_t i, int64_t len) { f(out + i, x + i, len); });
}

void silu_backward(float* dx, const float* dout, const float* x, int64_t n, int threads) {
  DSV3_CHECK(n >= 0, "silu_backward: negative length ", n);
  DSV3_CHECK(n == 0 || (dx && dout && x), "silu_backward: null pointer");
  auto* f = pick(silu_backward_avx512, silu_backward_avx2, silu_backward_ref);
  parallel_elems(n, threads, [&](int64_t i, int64_t len) { f(dx + i, dout + i, x + i, len); });
}

void swiglu_forward(float* h, int64_t ld_h, const float* gate, int64_t ld_gate, const float* up,
                    int64_t ld_up, int64_t T, int64_t I, int threads) {
  check_rows("swiglu_forward", T, I, ld_h, ld_gate, ld_up);
  DSV3_CHECK(T == 0 || I == 0 || (h && gate && up), "swiglu_forward: null pointer");
  auto* f = pick(swiglu_forward_avx512, swiglu_forward_avx2, swiglu_forward_ref);
  parallel_rows(T, T * I, threads, [&](int64_t b, int64_t e) {
    f(h + b * ld_h, ld_h, gate + b * ld_gate, ld_gate, up + b * ld_up, ld_up, e - b, I);
  });
}

void swiglu_backward(float* dgate, int64_t ld_dgate, float* dup, int64_t ld_dup, const float* dh,
                     int64_t ld_dh, const float* gate, int64_t ld_gate, const float* up,
                     int64_t ld_up, int64_t T, int64_t I, int threads) {
  check_rows("swiglu_backward", T, I, ld_dgate, ld_dup, ld_dh);
  check_rows("swiglu_backward", T, I, ld_gate, ld_up, I);
  DSV3_CHECK(T == 0 || I == 0 || (dgate && dup && dh && gate && up), "swiglu_backward: null pointer");
  auto* f = pick(swiglu_backward_avx512, swiglu_backward_avx2, swiglu_backward_ref);
  parallel_rows(T, T * I, threads, [&](int64_t b, int64_t e) {
    f(dgate + b * ld_dgate, ld_dgate, dup + b * ld_dup, ld_dup, dh + b * ld_dh, ld_dh,
      gate + b * ld_gate, ld_gate, up + b * ld_up, ld_up, e - b, I);
  });
}

}  // namespace dsv3
