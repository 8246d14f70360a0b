// AVX-512 activations (kernels/activation.h): the same operation sequence as
// activation_ref.cpp with exp512 (simd_avx512.h) in place of expf. Differences from the
// scalar twin: the exp's rounding, and GCC may fuse a mul+add into an FMA here (C++ default
// -ffp-contract=fast), which only drops a rounding; tests/test_activation.cpp allows both.
// GCC 12 reports its own _mm512_undefined_* placeholders inside the intrinsic headers as
// "may be used uninitialized" (a false positive); silence it for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstdint>

#include "kernels/activation.h"
#include "kernels/simd_avx512.h"

namespace dsv3 {

namespace {

inline __m512 sigmoid512(__m512 g) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
  return _mm512_div_ps(one, _mm512_add_ps(one, e));
}

inline __m512 dsilu512(__m512 g, __m512 s) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_mul_ps(s, _mm512_add_ps(one, _mm512_mul_ps(g, _mm512_sub_ps(one, s))));
}

}  // namespace

void exp_f32_avx512(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lanes_mask(n - i);
    store16(y + i, m, exp512(load16_m(m, x + i)));
  }
}

void silu_forward_avx512(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lanes_mask(n - i);
    const __m512 g = load16_m(m, x + i);
    store16(out + i, m, _mm512_mul_ps(g, sigmoid512(g)));
  }
}

void silu_backward_avx512(float* dx, const float* dout, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = lanes_mask(n - i);
    const __m512 g = load16_m(m, x + i);
    const __m512 d = _mm512_mul_ps(load16_m(m, dout + i), dsilu512(g, sigmoid512(g)));
    store16(dx + i, m, d);
  }
}

void swiglu_forward_avx512(float* h, int64_t ld_h, const float* gate, int64_t ld_gate,
                           const float* up, int64_t ld_up, int64_t T, int64_t I) {
  for (int64_t t = 0; t < T; ++t) {
    const float* gr = gate + t * ld_gate;
    const float* ur = up + t * ld_up;
    float* hr = h + t * ld_h;
    for (int64_t i = 0; i < I; i += 16) {
      const __mmask16 m = lanes_mask(I - i);
      const __m512 g = load16_m(m, gr + i);
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(g, sigmoid512(g)), load16_m(m, ur + i));
      store16(hr + i, m, v);
    }
  }
}

void swiglu_backward_avx512(float* dgate, int64_t ld_dgate, float* dup, int64_t ld_dup,
                            const float* dh, int64_t ld_dh, const float* gate, int64_t ld_gate,
                            const float* up, int64_t ld_up, int64_t T, int64_t I) {
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < I; i += 16) {
      const __mmask16 m = lanes_mask(I - i);
      const __m512 g = load16_m(m, gate + t * ld_gate + i);
      const __m512 u = load16_m(m, up + t * ld_up + i);
      const __m512 d = load16_m(m, dh + t * ld_dh + i);
      const __m512 s = sigmoid512(g);
      const __m512 dg = _mm512_mul_ps(_mm512_mul_ps(d, u), dsilu512(g, s));
      const __m512 du = _mm512_mul_ps(d, _mm512_mul_ps(g, s));
      store16(dgate + t * ld_dgate + i, m, dg);
      store16(dup + t * ld_dup + i, m, du);
    }
  }
}

}  // namespace dsv3
