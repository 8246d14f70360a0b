// Scalar rotation (kernels/rope.h). Written as x·c + x_partner·(±s), the exact operation
// sequence of the AVX-512 path, so the two are bit-identical.
#include "kernels/rope.h"

namespace dsv3 {

void rope_rows_ref(float* out, int64_t out_st, int64_t out_sh, const float* x, int64_t x_st,
                   int64_t x_sh, const int32_t* pos, int64_t T, int64_t H, const float* cos,
                   const float* sin, int64_t dim, bool inverse) {
  const int64_t half = dim / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + int64_t(pos[t]) * half;
    const float* s = sin + int64_t(pos[t]) * half;
    for (int64_t h = 0; h < H; ++h) {
      const float* xr = x + t * x_st + h * x_sh;
      float* o = out + t * out_st + h * out_sh;
      for (int64_t i = 0; i < half; ++i) {
        const float x0 = xr[2 * i], x1 = xr[2 * i + 1];
        const float sn = inverse ? -s[i] : s[i];
        o[2 * i] = x0 * c[i] + x1 * -sn;
        o[2 * i + 1] = x1 * c[i] + x0 * sn;
      }
    }
  }
}

}  // namespace dsv3
