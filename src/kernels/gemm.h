// Matrix multiply in the three forms training needs, for F32, BF16 and FP8 block-scaled
// operands. All matrices are row-major with an explicit leading dimension (elements).
//
//   C[M,N] = op(A)[M,K] · op(B)[K,N]          (accumulate: C += ...)
//   op(A) = A        A stored [M,K]   (trans_a = false)
//         = Aᵀ       A stored [K,M]   (trans_a = true)
//   op(B) = B        B stored [K,N]   (trans_b = false)
//         = Bᵀ       B stored [N,K]   (trans_b = true)
//
// The three forms of a linear layer y = x·Wᵀ with W stored [out, in]:
//   Fprop  y  = x · Wᵀ      gemm(false, true,  T, out, in, x, W, y)
//   Dgrad  dx = dy · W      gemm(false, false, T, in, out, dy, W, dx)
//   Wgrad  dW = dyᵀ · x     gemm(true,  false, out, in, T, dy, x, dW, accumulate)
//
// threads = 0 uses default_threads() (core/parallel.h). Each entry point dispatches on
// active_isa() (core/cpu.h) and has a scalar reference twin, gemm_*_ref, kept for tests
// and as the portable fallback.
#pragma once
#include <cstdint>

namespace dsv3 {

struct GemmF32 {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr; int64_t lda = 0; bool trans_a = false;
  const float* B = nullptr; int64_t ldb = 0; bool trans_b = false;
  float* C = nullptr; int64_t ldc = 0;
  bool accumulate = false;
};

// BF16 inputs (raw uint16 bit patterns), FP32 accumulation and output.
struct GemmBF16 {
  int64_t M = 0, N = 0, K = 0;
  const uint16_t* A = nullptr; int64_t lda = 0; bool trans_a = false;
  const uint16_t* B = nullptr; int64_t ldb = 0; bool trans_b = false;
  float* C = nullptr; int64_t ldc = 0;
  bool accumulate = false;
};

void gemm_f32(const GemmF32& p, int threads = 0);
void gemm_f32_ref(const GemmF32& p);
void gemm_bf16(const GemmBF16& p, int threads = 0);
void gemm_bf16_ref(const GemmBF16& p);

}  // namespace dsv3
