// Internal: the ISA-specific GEMV kernels behind kernels/gemv.h. Plain declarations only,
// so that *_avx512.cpp files can include it (CMakeLists.txt explains why).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/gemv.h"

namespace dsv3 {

// Floats of 64-byte aligned scratch one thread needs for M rows of x of length K
// (defined in gemv.cpp, baseline code).
int64_t gemv_scratch_floats(int64_t M, int64_t K);

}  // namespace dsv3

namespace dsv3::avx512 {

// scratch: gemv_scratch_floats(M, K) floats (BF16), times `threads` (FP8).
void gemv_bf16(const GemvBF16& p, int threads, float* scratch);
void gemv_fp8(const GemvFP8& p, Fp8Path path, int threads, float* scratch);
uint64_t stream_read(const void* p, size_t bytes, int threads);

}  // namespace dsv3::avx512

namespace dsv3::avx2 {

// Same scratch as avx512::gemv_scratch_floats; FP8 always takes the F16 conversion.
void gemv_bf16(const GemvBF16& p, int threads, float* scratch);
void gemv_fp8(const GemvFP8& p, int threads, float* scratch);

}  // namespace dsv3::avx2
