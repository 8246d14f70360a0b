// Array converters between element types, bit-identical to the scalar conversions of
// core/dtype.h (round to nearest even; its overflow/NaN policy), with AVX-512 paths
// (F16 via F16C instructions) chosen by active_isa(). Single-threaded, except
// convert_f32_to_bf16, which splits a large array over the default thread count as the row
// kernels do (kernels/row_parallel.h; training converts each weight before its BF16 GEMM).
// Pointers need no alignment; n may be any length.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace dsv3 {

void convert_f32_to_bf16(const float* x, uint16_t* y, int64_t n);
// x as a pair of BF16 numbers, hi = bf16(x) and lo = bf16(x − hi) (≈16 significant bits:
// the forward's F32-activation contract, docs/numerics.md). Single-threaded.
void split_f32_to_bf16_pair(const float* x, uint16_t* hi, uint16_t* lo, int64_t n);
void convert_bf16_to_f32(const uint16_t* x, float* y, int64_t n);
void convert_f32_to_f16(const float* x, uint16_t* y, int64_t n);
void convert_f16_to_f32(const uint16_t* x, float* y, int64_t n);
void convert_e4m3_to_f32(const uint8_t* x, float* y, int64_t n);
void convert_e4m3_to_bf16(const uint8_t* x, uint16_t* y, int64_t n);
// No scaling: values beyond ±448 saturate (quant.h scales first).
void convert_f32_to_e4m3(const float* x, uint8_t* y, int64_t n);

// Any pair among the above (and same-type copies); throws dsv3::Error naming the pair
// otherwise.
void convert(const void* x, DType xtype, void* y, DType ytype, int64_t n);

}  // namespace dsv3
