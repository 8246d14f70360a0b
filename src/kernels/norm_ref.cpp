// Scalar twins of the RMSNorm kernels (kernels/norm.h): sums in double, everything else
// in float in the same order as the vector paths, so they differ only by the rounding
// of the row sums.
#include <cmath>

#include "core/dtype.h"
#include "kernels/norm.h"

namespace dsv3 {

namespace {

float row_rstd(const float* x, int64_t C, float eps) {
  double ss = 0;
  for (int64_t c = 0; c < C; ++c) ss += double(x[c]) * double(x[c]);
  return float(1.0 / std::sqrt(ss / double(C) + double(eps)));
}

}  // namespace

void rmsnorm_forward_ref(float* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                         const float* w, int64_t T, int64_t C, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    float* o = out + t * ldo;
    const float r = row_rstd(xr, C, eps);
    for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] * r) * w[c];
    if (rstd) rstd[t] = r;
  }
}

void rmsnorm_forward_bf16_ref(uint16_t* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                              const float* w, int64_t T, int64_t C, float eps) {
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * ldx;
    uint16_t* o = out + t * ldo;
    const float r = row_rstd(xr, C, eps);
    for (int64_t c = 0; c < C; ++c) o[c] = f32_to_bf16((xr[c] * r) * w[c]);
    if (rstd) rstd[t] = r;
  }
}

void rmsnorm_backward_dx_ref(float* dx, int64_t lddx, const float* dout, int64_t lddo,
                             const float* x, int64_t ldx, const float* w, const float* rstd,
                             int64_t T, int64_t C, bool accumulate_dx) {
  for (int64_t t = 0; t < T; ++t) {
    const float* g = dout + t * lddo;
    const float* xr = x + t * ldx;
    float* d = dx + t * lddx;
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += double(g[c] * w[c]) * double(xr[c]);
    const float r = rstd[t];
    const float k = float(double(r) * r * r * dot / double(C));
    for (int64_t c = 0; c < C; ++c) {
      const float v = r * (g[c] * w[c]) - k * xr[c];
      d[c] = accumulate_dx ? d[c] + v : v;
    }
  }
}

void rmsnorm_backward_dw_ref(float* dw, const float* dout, int64_t lddo, const float* x,
                             int64_t ldx, const float* rstd, int64_t T, int64_t c0, int64_t c1) {
  // Column blocks so the rows stream contiguously (see norm_avx512.cpp); per column the
  // rows are summed in order.
  constexpr int64_t kBlock = 256;
  double acc[kBlock];
  for (int64_t b = c0; b < c1; b += kBlock) {
    const int64_t n = c1 - b < kBlock ? c1 - b : kBlock;
    for (int64_t c = 0; c < n; ++c) acc[c] = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < n; ++c)
        acc[c] += double(dout[t * lddo + b + c] * x[t * ldx + b + c]) * rstd[t];
    for (int64_t c = 0; c < n; ++c) dw[b + c] += float(acc[c]);
  }
}

void rmsnorm_backward_ref(float* dx, int64_t lddx, float* dw, const float* dout, int64_t lddo,
                          const float* x, int64_t ldx, const float* w, const float* rstd, int64_t T,
                          int64_t C, bool accumulate_dx) {
  // dw first: dx may overwrite dout in place.
  if (dw) rmsnorm_backward_dw_ref(dw, dout, lddo, x, ldx, rstd, T, 0, C);
  rmsnorm_backward_dx_ref(dx, lddx, dout, lddo, x, ldx, w, rstd, T, C, accumulate_dx);
}

}  // namespace dsv3
