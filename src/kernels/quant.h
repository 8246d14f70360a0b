// FP8 E4M3 quantisation as DeepSeek-V3 defines it (report §3.3, SPEC §3, §6):
//   scale = amax / 448 over a tile, q = e4m3(x / scale) (round to nearest even,
//   saturating), and x ≈ decode(q) · scale. The checkpoint's `weight_scale_inv` is this
//   scale (W = fp8 · s).
// Tiles: activations one scale per row per 128 columns ("1x128"), weights one scale per
// 128x128 block; edge tiles are partial (ceil division). A tile whose amax is 0 (or so
// small that amax/448 is not a normal float) gets scale FLT_MIN, so x / scale stays finite.
// Scales are row-major: 1x128 -> [M, ceil(K/128)], 128x128 -> [ceil(N/128), ceil(K/128)].
// Inputs may be F32 or BF16 (xtype). Each function has a scalar reference (*_ref); the
// AVX-512 versions are bit-identical to it (tests/test_quant.cpp), threads over rows/tiles.
// Non-finite input: NaN elements do not count towards amax and encode as the NaN code; an
// inf makes its tile's scale inf, so the inf encodes as NaN and the tile's finite values
// as ±0.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace dsv3 {

inline constexpr int kFp8Block = 128;
inline constexpr int64_t fp8_blocks(int64_t n) { return (n + kFp8Block - 1) / kFp8Block; }

// x [M,K] with row stride ldx (elements) -> q [M,K] (row stride ldq), scale [M, blocks(K)].
void quantize_fp8_1x128(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                        uint8_t* q, int64_t ldq, float* scale, int threads = 0);
// Tiles of 128 rows x 1 column, written transposed so that the long side is contiguous:
// x [M,K] -> q [K,M] (row stride ldq), scale [K, blocks(M)]. This is the layout the Wgrad
// GEMM consumes (contraction over tokens), DeepSeek-V3's "128x1" backward tiles.
void quantize_fp8_128x1_t(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                          uint8_t* q, int64_t ldq, float* scale, int threads = 0);
// w [N,K] -> q [N,K], scale [blocks(N), blocks(K)].
void quantize_fp8_128x128(const void* w, DType wtype, int64_t N, int64_t K, int64_t ldw,
                          uint8_t* q, int64_t ldq, float* scale, int threads = 0);
// Inverse maps; out is F32 or BF16 (otype).
void dequantize_fp8_1x128(const uint8_t* q, int64_t M, int64_t K, int64_t ldq,
                          const float* scale, void* out, DType otype, int64_t ldo,
                          int threads = 0);
void dequantize_fp8_128x128(const uint8_t* q, int64_t N, int64_t K, int64_t ldq,
                            const float* scale, void* out, DType otype, int64_t ldo,
                            int threads = 0);

void quantize_fp8_1x128_ref(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                            uint8_t* q, int64_t ldq, float* scale);
void quantize_fp8_128x1_t_ref(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                              uint8_t* q, int64_t ldq, float* scale);
void quantize_fp8_128x128_ref(const void* w, DType wtype, int64_t N, int64_t K, int64_t ldw,
                              uint8_t* q, int64_t ldq, float* scale);
void dequantize_fp8_1x128_ref(const uint8_t* q, int64_t M, int64_t K, int64_t ldq,
                              const float* scale, void* out, DType otype, int64_t ldo);
void dequantize_fp8_128x128_ref(const uint8_t* q, int64_t N, int64_t K, int64_t ldq,
                                const float* scale, void* out, DType otype, int64_t ldo);

}  // namespace dsv3
