// Scalar twins of kernels/softmax.h: sums in double, elementwise steps in float in the
// order the AVX-512 path uses.
#include <cmath>

#include "kernels/softmax.h"

namespace dsv3 {

float row_max_ref(const float* x, int64_t C) {
  float m = -INFINITY;
  for (int64_t c = 0; c < C; ++c)
    if (x[c] > m) m = x[c];
  return m;
}

float row_logsumexp_ref(const float* x, int64_t C) {
  const float m = row_max_ref(x, C);
  if (m == -INFINITY) return m;  // empty or all −inf: log 0
  double s = 0;
  for (int64_t c = 0; c < C; ++c) s += std::exp(x[c] - m);
  return m + float(std::log(s));
}

void softmax_forward_ref(float* y, const float* x, int64_t T, int64_t C, float scale,
                         const int32_t* valid_len) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    float* yr = y + t * C;
    const int64_t len = valid_len ? valid_len[t] : C;
    const float m = row_max_ref(xr, len);
    if (m == -INFINITY) {  // empty or fully masked by −inf: no mass anywhere, all zeros
      for (int64_t c = 0; c < C; ++c) yr[c] = 0.0f;
      continue;
    }
    double s = 0;
    for (int64_t c = 0; c < len; ++c) {
      const float e = std::exp((xr[c] - m) * scale);
      yr[c] = e;
      s += e;
    }
    const float inv = float(1.0 / s);
    for (int64_t c = 0; c < len; ++c) yr[c] *= inv;
    for (int64_t c = len; c < C; ++c) yr[c] = 0.0f;
  }
}

void softmax_backward_ref(float* dx, const float* dy, const float* y, int64_t T, int64_t C,
                          float scale) {
  for (int64_t t = 0; t < T; ++t) {
    const float* g = dy + t * C;
    const float* yr = y + t * C;
    float* d = dx + t * C;
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += double(g[c]) * yr[c];
    const float s = float(dot);
    for (int64_t c = 0; c < C; ++c) d[c] = (scale * yr[c]) * (g[c] - s);
  }
}

float log_softmax_row_ref(float* out, const float* x, int64_t C) {
  const float lse = row_logsumexp_ref(x, C);
  for (int64_t c = 0; c < C; ++c) out[c] = x[c] - lse;
  return lse;
}

int64_t argmax_row_ref(const float* x, int64_t C) {
  int64_t best = 0;
  float bv = -INFINITY;
  for (int64_t c = 0; c < C; ++c)
    if (x[c] > bv) {
      bv = x[c];
      best = c;
    }
  return best;
}

}  // namespace dsv3
