#include "train/act_cache.h"

#include <cfloat>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/parallel.h"
#include "core/scratch.h"
#include "kernels/quant.h"

namespace dsv3 {
namespace {

constexpr uint16_t kE5M6NaN = 0x7FF;

uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

// A power of two s with amax / s <= kE5M6Max (the smallest such, FLT_MIN at least).
float pow2_scale(float amax) {
  if (!(amax > 0.0f)) return 1.0f;
  int e = 0;
  const float f = std::frexp(amax / kE5M6Max, &e);  // amax / max = f · 2^e, f in [0.5, 1)
  const float s = std::ldexp(1.0f, f == 0.5f ? e - 1 : e);
  return s < FLT_MIN ? FLT_MIN : s;
}

void put(uint8_t* row, int64_t j, uint16_t c) {
  uint8_t* p = row + (j / 2) * 3;
  if (j % 2 == 0) {
    p[0] = uint8_t(c & 0xFF);
    p[1] = uint8_t((p[1] & 0xF0) | (c >> 8));
  } else {
    p[1] = uint8_t((p[1] & 0x0F) | ((c & 0xF) << 4));
    p[2] = uint8_t(c >> 4);
  }
}

uint16_t get(const uint8_t* row, int64_t j) {
  const uint8_t* p = row + (j / 2) * 3;
  if (j % 2 == 0) return uint16_t(p[0] | ((p[1] & 0xF) << 8));
  return uint16_t((p[1] >> 4) | (p[2] << 4));
}

struct E5M6Table {
  float v[4096];
  E5M6Table() {
    for (int c = 0; c < 4096; ++c) {
      const int e = (c >> 6) & 31, m = c & 63;
      float a;
      if (e == 0) a = std::ldexp(float(m), -20);  // subnormal: m/64 · 2^-14
      else if (e == 31) a = NAN;  // reserved (encode never makes it)
      else a = std::ldexp(1.0f + float(m) / 64.0f, e - 15);
      v[c] = (c & 0x800) ? -a : a;
    }
  }
};
const E5M6Table& e5m6_table() {
  static const E5M6Table t;
  return t;
}

}  // namespace

uint16_t f32_to_e5m6(float x) {
  if (std::isnan(x)) return kE5M6NaN;
  const uint32_t b = bits_of(x);
  const uint16_t sign = uint16_t((b >> 31) << 11);
  const float a = std::fabs(x);
  DSV3_ASSERT(a <= kE5M6Max);
  if (a < 0x1p-14f) {  // subnormal: multiples of 2^-20, the default rounding (nearest even)
    return uint16_t(sign | uint16_t(std::nearbyint(a * 0x1p20f)));  // 64 carries into e = 1
  }
  const uint32_t ab = bits_of(a);
  const uint32_t r = ab + 0xFFFFu + ((ab >> 17) & 1u);  // round the 23-bit mantissa to 6 bits
  const uint32_t e = (r >> 23) - 127 + 15, m = (r >> 17) & 63u;
  return uint16_t(sign | (e << 6) | m);
}

float e5m6_to_f32(uint16_t c) { return e5m6_table().v[c & 0xFFF]; }

int64_t e5m6_packed_bytes(int64_t M, int64_t K) { return M * ((K * 3 + 1) / 2); }

void encode_e5m6_1x128(const float* x, int64_t M, int64_t K, uint8_t* code, float* scale,
                       int threads) {
  const int64_t nb = fp8_blocks(K), rb = (K * 3 + 1) / 2;
  parallel_for(M, M * K >= (1 << 15) ? threads : 1, [&](int64_t i) {
    const float* xr = x + i * K;
    uint8_t* row = code + i * rb;
    if (K % 2) row[rb - 1] = 0;  // the unused high nibble of an odd row's last byte
    for (int64_t t = 0; t < nb; ++t) {
      const int64_t j0 = t * kFp8Block, j1 = std::min(K, j0 + kFp8Block);
      float amax = 0.0f;
      for (int64_t j = j0; j < j1; ++j)
        if (std::isfinite(xr[j])) amax = std::max(amax, std::fabs(xr[j]));
      const float s = pow2_scale(amax);
      scale[i * nb + t] = s;
      for (int64_t j = j0; j < j1; ++j)
        put(row, j, std::isfinite(xr[j]) ? f32_to_e5m6(xr[j] / s) : kE5M6NaN);
    }
  });
}

void decode_e5m6_1x128(const uint8_t* code, const float* scale, int64_t M, int64_t K, float* x,
                       int threads) {
  const int64_t nb = fp8_blocks(K), rb = (K * 3 + 1) / 2;
  const float* tab = e5m6_table().v;
  parallel_for(M, M * K >= (1 << 15) ? threads : 1, [&](int64_t i) {
    const uint8_t* row = code + i * rb;
    for (int64_t j = 0; j < K; ++j) x[i * K + j] = tab[get(row, j)] * scale[i * nb + j / kFp8Block];
  });
}

float* ActCache::begin(ActFormat f, int64_t r, int64_t c, std::vector<float>& work) {
  format = f;
  rows = r;
  cols = c;
  if (f == ActFormat::F32) return grow(f32, r * c);
  return grow(work, r * c);
}

void ActCache::seal(const float* x, int threads) {
  switch (format) {
    case ActFormat::F32:
      DSV3_ASSERT(x == f32.data());
      return;
    case ActFormat::E4M3:
      quantize_fp8_1x128(x, DType::F32, rows, cols, cols, grow(code, rows * cols), cols,
                         grow(scale, rows * fp8_blocks(cols)), threads);
      return;
    case ActFormat::E5M6:
      encode_e5m6_1x128(x, rows, cols, grow(code, e5m6_packed_bytes(rows, cols)),
                        grow(scale, rows * fp8_blocks(cols)), threads);
      return;
  }
}

const float* ActCache::read(std::vector<float>& work, int threads) const {
  switch (format) {
    case ActFormat::F32:
      return f32.data();
    case ActFormat::E4M3: {
      float* x = grow(work, rows * cols);
      dequantize_fp8_1x128(code.data(), rows, cols, cols, scale.data(), x, DType::F32, cols,
                           threads);
      return x;
    }
    case ActFormat::E5M6: {
      float* x = grow(work, rows * cols);
      decode_e5m6_1x128(code.data(), scale.data(), rows, cols, x, threads);
      return x;
    }
  }
  return nullptr;
}

int64_t ActCache::bytes() const {
  const int64_t sc = rows * fp8_blocks(cols) * int64_t(sizeof(float));
  switch (format) {
    case ActFormat::F32: return rows * cols * int64_t(sizeof(float));
    case ActFormat::E4M3: return rows * cols + sc;
    case ActFormat::E5M6: return e5m6_packed_bytes(rows, cols) + sc;
  }
  return 0;
}

}  // namespace dsv3
