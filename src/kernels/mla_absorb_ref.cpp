// Scalar twins of the absorbed-MLA slice products (kernels/mla_absorb.h): each weight decoded
// exactly (core/dtype.h), products and sums in double in plain index order, one rounding to
// F32 at the end. The reference the AVX-512 path is tested against, and the fallback for
// CPUs without AVX-512.
#include <cstdint>

#include "core/dtype.h"
#include "kernels/mla_absorb.h"

namespace dsv3 {
namespace {

// W[r, c] as the exact value (decode · block scale), in double.
double weight_at(const MlaAbsorb& p, int64_t r, int64_t c) {
  const int64_t i = r * p.ldw + c;
  switch (p.dtype) {
    case DType::F32: return static_cast<const float*>(p.w)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p.w)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p.w)[i]);
    default:
      return double(e4m3_to_f32(static_cast<const uint8_t*>(p.w)[i])) *
             double(p.scale[(r / 128) * p.ld_scale + c / 128]);
  }
}

}  // namespace

void slice_xw_ref(const MlaAbsorb& p) {
  for (int64_t t = 0; t < p.T; ++t) {
    for (int64_t c = 0; c < p.K; ++c) {
      float* y = p.y + t * p.ldy + c;
      double s = p.accumulate ? double(*y) : 0.0;
      for (int64_t d = 0; d < p.rows; ++d) s += double(p.x[t * p.ldx + d]) * weight_at(p, p.r0 + d, c);
      *y = float(s);
    }
  }
}

void slice_xwt_ref(const MlaAbsorb& p) {
  for (int64_t t = 0; t < p.T; ++t) {
    for (int64_t j = 0; j < p.rows; ++j) {
      float* y = p.y + t * p.ldy + j;
      double s = p.accumulate ? double(*y) : 0.0;
      for (int64_t c = 0; c < p.K; ++c) s += double(p.x[t * p.ldx + c]) * weight_at(p, p.r0 + j, c);
      *y = float(s);
    }
  }
}

}  // namespace dsv3
