// Internal: AVX-512 array converters behind kernels/convert.h (plain declarations).
#pragma once
#include <cstdint>

namespace dsv3::avx512 {

void convert_f32_to_bf16(const float* x, uint16_t* y, int64_t n);
void split_f32_to_bf16_pair(const float* x, uint16_t* hi, uint16_t* lo, int64_t n);
void convert_bf16_to_f32(const uint16_t* x, float* y, int64_t n);
void convert_f32_to_f16(const float* x, uint16_t* y, int64_t n);
void convert_f16_to_f32(const uint16_t* x, float* y, int64_t n);
void convert_e4m3_to_f32(const uint8_t* x, float* y, int64_t n);
void convert_e4m3_to_bf16(const uint8_t* x, uint16_t* y, int64_t n);
void convert_f32_to_e4m3(const float* x, uint8_t* y, int64_t n);

}  // namespace dsv3::avx512
