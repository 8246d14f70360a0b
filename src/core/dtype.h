// Element types and exact scalar conversions between them.
//
// Rounding is round-to-nearest-even everywhere. Overflow policy:
//   BF16, F16   IEEE: overflow rounds to +-inf, NaN stays NaN (as hardware and PyTorch).
//   F8_E4M3     "e4m3fn" (OCP FP8, no infinities, max 448, NaN = S.1111.111): finite
//               values beyond 448 saturate to +-448; +-inf and NaN become NaN, because
//               the format cannot say "infinite" and a silent 448 would hide an overflow.
//   F8_E5M2     (max 57344, has inf): finite values beyond 57344 saturate to +-57344,
//               +-inf stays inf, NaN stays NaN.
// These scalar functions are the reference for the vector converters in kernels/ and
// are tested over every code (tests/test_dtype.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace dsv3 {

enum class DType : uint8_t {
  F32, F16, BF16, F8_E4M3, F8_E5M2, F64,
  I8, I16, I32, I64, U8, U16, U32, U64, BOOL,
};
inline constexpr int kNumDTypes = 15;

size_t dtype_size(DType t);
// The safetensors name ("F32", "BF16", "F8_E4M3", ...).
const char* dtype_name(DType t);
// Parses a safetensors dtype name; returns false when unknown.
bool dtype_from_name(std::string_view name, DType* out);
bool dtype_is_float(DType t);

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// ---- BF16: the top 16 bits of an IEEE binary32 -------------------------------------
inline float bf16_to_f32(uint16_t h) { return f32_from_bits(uint32_t(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; carries into the exponent
  return uint16_t(u >> 16);
}

// ---- F16, F8_E4M3, F8_E5M2 ------------------------------------------------------------
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float e4m3_to_f32(uint8_t c);
uint8_t f32_to_e4m3(float f);
float e5m2_to_f32(uint8_t c);
uint8_t f32_to_e5m2(float f);

inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kE5M2Max = 57344.0f;

// Reads element i of a contiguous array of floating type t as f32 (slow; for tools/tests).
float load_as_f32(const void* base, DType t, size_t i);
// Writes v rounded to t into element i (slow; for tools/tests).
void store_from_f32(void* base, DType t, size_t i, float v);

}  // namespace dsv3
