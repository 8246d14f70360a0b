// Scalar twins of kernels/activation.h. The operation order here is the one the AVX-512
// path follows: s = 1/(1+e), silu = g·s, silu' = s·(1 + g·(1 − s)).
#include <cmath>

#include "kernels/activation.h"

namespace dsv3 {

namespace {

inline float sigmoid(float g) { return 1.0f / (1.0f + std::exp(-g)); }
inline float dsilu(float g, float s) { return s * (1.0f + g * (1.0f - s)); }

}  // namespace

void exp_f32_ref(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

void silu_forward_ref(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * sigmoid(x[i]);
}

void silu_backward_ref(float* dx, const float* dout, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = x[i];
    dx[i] = dout[i] * dsilu(g, sigmoid(g));
  }
}

void swiglu_forward_ref(float* h, int64_t ld_h, const float* gate, int64_t ld_gate, const float* up,
                        int64_t ld_up, int64_t T, int64_t I) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < I; ++i) {
      const float g = gate[t * ld_gate + i];
      h[t * ld_h + i] = (g * sigmoid(g)) * up[t * ld_up + i];
    }
}

void swiglu_backward_ref(float* dgate, int64_t ld_dgate, float* dup, int64_t ld_dup,
                         const float* dh, int64_t ld_dh, const float* gate, int64_t ld_gate,
                         const float* up, int64_t ld_up, int64_t T, int64_t I) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < I; ++i) {
      const float g = gate[t * ld_gate + i], u = up[t * ld_up + i], d = dh[t * ld_dh + i];
      const float s = sigmoid(g);
      dgate[t * ld_dgate + i] = (d * u) * dsilu(g, s);
      dup[t * ld_dup + i] = d * (g * s);
    }
}

}  // namespace dsv3
