// Internal: the AVX-512 quantisers behind kernels/quant.h (plain declarations, includable
// from *_avx512.cpp). `bf16` selects BF16 instead of F32 for the non-FP8 side.
#pragma once
#include <cstdint>

namespace dsv3::avx512 {

void quantize_fp8_1x128(const void* x, bool bf16, int64_t M, int64_t K, int64_t ldx,
                        uint8_t* q, int64_t ldq, float* scale, int threads);
void quantize_fp8_128x1_t(const void* x, bool bf16, int64_t M, int64_t K, int64_t ldx,
                          uint8_t* q, int64_t ldq, float* scale, int threads);
void quantize_fp8_128x128(const void* w, bool bf16, int64_t N, int64_t K, int64_t ldw,
                          uint8_t* q, int64_t ldq, float* scale, int threads);
void dequantize_fp8_1x128(const uint8_t* q, int64_t M, int64_t K, int64_t ldq,
                          const float* scale, void* out, bool bf16, int64_t ldo, int threads);
void dequantize_fp8_128x128(const uint8_t* q, int64_t N, int64_t K, int64_t ldq,
                            const float* scale, void* out, bool bf16, int64_t ldo, int threads);

}  // namespace dsv3::avx512
