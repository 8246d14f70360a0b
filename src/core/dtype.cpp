#include "core/dtype.h"

#include <cmath>

#include "core/check.h"

namespace dsv3 {

namespace {

struct DTypeInfo {
  const char* name;
  size_t size;
  bool is_float;
};

constexpr DTypeInfo kInfo[kNumDTypes] = {
    {"F32", 4, true},  {"F16", 2, true},  {"BF16", 2, true}, {"F8_E4M3", 1, true},
    {"F8_E5M2", 1, true}, {"F64", 8, true}, {"I8", 1, false}, {"I16", 2, false},
    {"I32", 4, false}, {"I64", 8, false}, {"U8", 1, false},  {"U16", 2, false},
    {"U32", 4, false}, {"U64", 8, false}, {"BOOL", 1, false},
};

// A binary minifloat with kE exponent bits, kM mantissa bits and bias kBias, encoded from
// binary32 with round-to-nearest-even. kMaxFinite is the largest finite magnitude code.
template <int kE, int kM, int kBias>
struct MiniFloat {
  static constexpr int kMinNormalExp = 1 - kBias;  // exponent of the smallest normal

  static float decode(uint32_t code) {
    const uint32_t sign = code >> (kE + kM) & 1u;
    const uint32_t exp = code >> kM & ((1u << kE) - 1u);
    const uint32_t man = code & ((1u << kM) - 1u);
    float mag;
    if (exp == 0) {
      mag = std::ldexp(float(man), kMinNormalExp - kM);
    } else {
      mag = std::ldexp(float((1u << kM) | man), int(exp) - kBias - kM);
    }
    return sign ? -mag : mag;
  }

  // Magnitude code of |f| (finite, not NaN), before any overflow handling: may return a
  // code past the largest finite one when |f| rounds beyond it.
  static uint32_t encode_magnitude(float f) {
    const uint32_t u = f32_bits(f) & 0x7fffffffu;
    const int exp32 = int(u >> 23) - 127;
    if (exp32 < kMinNormalExp) {
      // Subnormal range of the target: quantise |f| to multiples of 2^(minexp-kM). The
      // product is exact (power-of-two scale) and nearbyint rounds half to even in the
      // default rounding mode; a result of 2^kM is exactly the smallest normal code.
      const float q = std::nearbyint(std::ldexp(f32_from_bits(u), kM - kMinNormalExp));
      return uint32_t(q);
    }
    // Normal: drop 23-kM mantissa bits with round-half-even; a carry moves into the
    // exponent field, which is exactly the next binade.
    constexpr int kDrop = 23 - kM;
    const uint32_t r = (u + ((1u << (kDrop - 1)) - 1u) + ((u >> kDrop) & 1u)) >> kDrop;
    return r - (uint32_t(127 - kBias) << kM);
  }
};

using E4M3 = MiniFloat<4, 3, 7>;
using E5M2 = MiniFloat<5, 2, 15>;
using F16 = MiniFloat<5, 10, 15>;

}  // namespace

size_t dtype_size(DType t) { return kInfo[int(t)].size; }
const char* dtype_name(DType t) { return kInfo[int(t)].name; }
bool dtype_is_float(DType t) { return kInfo[int(t)].is_float; }

bool dtype_from_name(std::string_view name, DType* out) {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (name == kInfo[i].name) {
      *out = DType(i);
      return true;
    }
  }
  return false;
}

float f16_to_f32(uint16_t h) {
  if ((h & 0x7c00u) == 0x7c00u) {  // inf / NaN keep their payload
    return f32_from_bits((uint32_t(h & 0x8000u) << 16) | 0x7f800000u |
                         (uint32_t(h & 0x3ffu) << 13));
  }
  return F16::decode(h);
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((u >> 13) & 0x3ffu));
  if ((u & 0x7fffffffu) == 0x7f800000u) return uint16_t(sign | 0x7c00u);
  const uint32_t m = F16::encode_magnitude(f);
  if (m >= 0x7c00u) return uint16_t(sign | 0x7c00u);  // rounds past 65504: inf
  return uint16_t(sign | m);
}

float e4m3_to_f32(uint8_t c) {
  if ((c & 0x7fu) == 0x7fu) return f32_from_bits((c & 0x80u ? 0xffc00000u : 0x7fc00000u));
  return E4M3::decode(c);
}

uint8_t f32_to_e4m3(float f) {
  const uint32_t u = f32_bits(f);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  if ((u & 0x7fffffffu) >= 0x7f800000u) return uint8_t(sign | 0x7fu);  // inf, NaN -> NaN
  if (std::fabs(f) > kE4M3Max) return uint8_t(sign | 0x7eu);          // saturate
  return uint8_t(sign | E4M3::encode_magnitude(f));
}

float e5m2_to_f32(uint8_t c) {
  if ((c & 0x7cu) == 0x7cu) {
    const uint32_t s = (c & 0x80u) ? 0x80000000u : 0u;
    return f32_from_bits(s | ((c & 0x3u) ? 0x7fc00000u : 0x7f800000u));
  }
  return E5M2::decode(c);
}

uint8_t f32_to_e5m2(float f) {
  const uint32_t u = f32_bits(f);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint8_t(sign | 0x7fu);   // NaN
  if ((u & 0x7fffffffu) == 0x7f800000u) return uint8_t(sign | 0x7cu);  // inf
  if (std::fabs(f) > kE5M2Max) return uint8_t(sign | 0x7bu);          // saturate
  return uint8_t(sign | E5M2::encode_magnitude(f));
}

float load_as_f32(const void* base, DType t, size_t i) {
  const auto* p = static_cast<const uint8_t*>(base);
  switch (t) {
    case DType::F32: { float v; std::memcpy(&v, p + 4 * i, 4); return v; }
    case DType::F64: { double v; std::memcpy(&v, p + 8 * i, 8); return float(v); }
    case DType::BF16: { uint16_t v; std::memcpy(&v, p + 2 * i, 2); return bf16_to_f32(v); }
    case DType::F16: { uint16_t v; std::memcpy(&v, p + 2 * i, 2); return f16_to_f32(v); }
    case DType::F8_E4M3: return e4m3_to_f32(p[i]);
    case DType::F8_E5M2: return e5m2_to_f32(p[i]);
    default: DSV3_FAIL("load_as_f32: ", dtype_name(t), " is not a floating type");
  }
}

void store_from_f32(void* base, DType t, size_t i, float v) {
  auto* p = static_cast<uint8_t*>(base);
  switch (t) {
    case DType::F32: std::memcpy(p + 4 * i, &v, 4); return;
    case DType::F64: { double d = v; std::memcpy(p + 8 * i, &d, 8); return; }
    case DType::BF16: { uint16_t h = f32_to_bf16(v); std::memcpy(p + 2 * i, &h, 2); return; }
    case DType::F16: { uint16_t h = f32_to_f16(v); std::memcpy(p + 2 * i, &h, 2); return; }
    case DType::F8_E4M3: p[i] = f32_to_e4m3(v); return;
    case DType::F8_E5M2: p[i] = f32_to_e5m2(v); return;
    default: DSV3_FAIL("store_from_f32: ", dtype_name(t), " is not a floating type");
  }
}

}  // namespace dsv3
