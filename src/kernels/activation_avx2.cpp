// AVX2 activations (kernels/activation.h): activation_avx512.cpp on 8 lanes with exp256.
#include <immintrin.h>

#include <cstdint>

#include "kernels/activation.h"
#include "kernels/simd_avx2.h"

namespace dsv3 {

namespace {

inline __m256 sigmoid256(__m256 g) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
  return _mm256_div_ps(one, _mm256_add_ps(one, e));
}

inline __m256 dsilu256(__m256 g, __m256 s) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_mul_ps(s, _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, s))));
}

}  // namespace

void exp_f32_avx2(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) store8(y + i, n - i, exp256(load8(x + i, n - i)));
}

void silu_forward_avx2(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 g = load8(x + i, n - i);
    store8(out + i, n - i, _mm256_mul_ps(g, sigmoid256(g)));
  }
}

void silu_backward_avx2(float* dx, const float* dout, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 g = load8(x + i, n - i);
    store8(dx + i, n - i, _mm256_mul_ps(load8(dout + i, n - i), dsilu256(g, sigmoid256(g))));
  }
}

void swiglu_forward_avx2(float* h, int64_t ld_h, const float* gate, int64_t ld_gate,
                         const float* up, int64_t ld_up, int64_t T, int64_t I) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < I; i += 8) {
      const int64_t n = I - i;
      const __m256 g = load8(gate + t * ld_gate + i, n);
      store8(h + t * ld_h + i, n,
             _mm256_mul_ps(_mm256_mul_ps(g, sigmoid256(g)), load8(up + t * ld_up + i, n)));
    }
}

void swiglu_backward_avx2(float* dgate, int64_t ld_dgate, float* dup, int64_t ld_dup,
                          const float* dh, int64_t ld_dh, const float* gate, int64_t ld_gate,
                          const float* up, int64_t ld_up, int64_t T, int64_t I) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < I; i += 8) {
      const int64_t n = I - i;
      const __m256 g = load8(gate + t * ld_gate + i, n);
      const __m256 u = load8(up + t * ld_up + i, n);
      const __m256 d = load8(dh + t * ld_dh + i, n);
      const __m256 s = sigmoid256(g);
      store8(dgate + t * ld_dgate + i, n, _mm256_mul_ps(_mm256_mul_ps(d, u), dsilu256(g, s)));
      store8(dup + t * ld_dup + i, n, _mm256_mul_ps(d, _mm256_mul_ps(g, s)));
    }
}

}  // namespace dsv3
