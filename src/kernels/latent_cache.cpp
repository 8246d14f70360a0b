#include "kernels/latent_cache.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"

namespace dsv3 {

const char* cache_dtype_name(CacheDtype d) {
  switch (d) {
    case CacheDtype::BF16: return "bf16";
    case CacheDtype::FP8: return "fp8";
    default: return "f32";
  }
}

bool parse_cache_dtype(const std::string& s, CacheDtype* d) {
  if (s == "f32") *d = CacheDtype::F32;
  else if (s == "bf16") *d = CacheDtype::BF16;
  else if (s == "fp8") *d = CacheDtype::FP8;
  else return false;
  return true;
}

void cache_encode_row(void* dst, const float* src, int64_t R, CacheDtype d) {
  switch (d) {
    case CacheDtype::F32:
      std::memcpy(dst, src, size_t(R) * sizeof(float));
      return;
    case CacheDtype::BF16: {
      // Byte copies: a stored row need not be 2-byte aligned (a pool of odd-sized FP8 rows
      // reused as BF16, a test's deliberately misaligned buffer).
      uint8_t* h = static_cast<uint8_t*>(dst);
      for (int64_t r = 0; r < R; ++r) {
        const uint16_t v = f32_to_bf16(src[r]);
        std::memcpy(h + 2 * r, &v, 2);
      }
      return;
    }
    case CacheDtype::FP8: {
      uint8_t* q = static_cast<uint8_t*>(dst);
      float amax = 0;
      bool finite = true;
      for (int64_t r = 0; r < R; ++r) {
        finite = finite && std::isfinite(src[r]);
        amax = std::max(amax, std::fabs(src[r]));
      }
      DSV3_ASSERT(finite);  // a NaN or inf would poison the row's scale
      // An all-zero row keeps scale 0: every code 0, every value 0.
      const float s = amax / kE4M3Max;
      for (int64_t r = 0; r < R; ++r) q[r] = s > 0 ? f32_to_e4m3(src[r] / s) : uint8_t(0);
      std::memcpy(q + R, &s, sizeof(float));
      return;
    }
  }
}

void cache_decode_row(float* dst, const void* src, int64_t R, CacheDtype d) {
  switch (d) {
    case CacheDtype::F32:
      std::memcpy(dst, src, size_t(R) * sizeof(float));
      return;
    case CacheDtype::BF16: {
      const uint8_t* h = static_cast<const uint8_t*>(src);
      for (int64_t r = 0; r < R; ++r) {
        uint16_t v;
        std::memcpy(&v, h + 2 * r, 2);
        dst[r] = bf16_to_f32(v);
      }
      return;
    }
    case CacheDtype::FP8: {
      // A table of the 256 codes: e4m3_to_f32 is exact, so the product below is the value's
      // single rounding.
      static const std::vector<float> lut = [] {
        std::vector<float> t(256);
        for (int c = 0; c < 256; ++c) t[size_t(c)] = e4m3_to_f32(uint8_t(c));
        return t;
      }();
      const uint8_t* q = static_cast<const uint8_t*>(src);
      float s;
      std::memcpy(&s, q + R, sizeof(float));
      for (int64_t r = 0; r < R; ++r) dst[r] = lut[q[r]] * s;
      return;
    }
  }
}

void cache_round_row(void* dst, float* src, int64_t R, CacheDtype d) {
  if (d == CacheDtype::F32) {
    if (dst) std::memcpy(dst, src, size_t(R) * sizeof(float));
    return;
  }
  // DeepSeek-V3's stored rows (BF16 1152 bytes, FP8 580) fit; bigger rows take the heap.
  alignas(64) uint8_t local[2048];
  std::vector<uint8_t> heap;
  uint8_t* buf = static_cast<uint8_t*>(dst);
  if (!buf) {
    const int64_t n = cache_row_bytes(d, R);
    if (n <= int64_t(sizeof(local))) buf = local;
    else { heap.resize(size_t(n)); buf = heap.data(); }
  }
  cache_encode_row(buf, src, R, d);
  cache_decode_row(src, buf, R, d);
}

}  // namespace dsv3
