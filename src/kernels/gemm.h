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
// and as the portable fallback. Paths: AVX-512 (F32 FMA, BF16/FP8 vdpbf16ps — or, in
// core/cpu.h's Bf16Mode::Fma (Intel), BF16/FP8 widened to F32 while packing and FMAs; packed 14x32
// register tiles; for skinny fprop an unpacked dot-product kernel (a few rows) or, BF16
// and FP8 with 16..512 rows, W broadcast in place against packed A), AVX2 (F32, BF16 and
// FP8 widened to F32 while packing, 6x16 tiles), scalar (the references). Any thread
// count works; called from inside a parallel region the GEMM runs on the calling thread.
// DSV3_GEMM_PATH=packed|dot|bcast forces one AVX-512 path where the form allows it (for
// benchmarking the routing; results are the same within the tolerance below).
// The fast paths accumulate in FP32 (in a different order than the references): per
// element |C - exact| <= ~(K + K/16 + 2)·2^-24·(Σ_k |a_ik·b_kj| + |C0|) (tests/test_gemm.cpp).
// BF16 products are exact in FP32; vdpbf16ps treats BF16 subnormal inputs as zero.
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
  bool w_streamed = false;  // as GemmFP8::w_streamed (B is the weight)
  // F32 activations as A instead of BF16 (trans_a false; A then unused): the products are
  // of the F32 values. The AVX-512 kernels take it in their FMA form only (core/cpu.h
  // Bf16Mode), whatever the mode.
  const float* A_f32 = nullptr;
};

// FP8 block-scaled GEMM as DeepSeek-V3 trains with it (report §3.3, SPEC §3): operands are
// E4M3 codes with FP32 scales (value = decode(code) · scale), and the FP32 accumulation is
// "promoted" every 128 elements of K: each 128-K block's partial sum starts from fresh
// accumulators and is then added as  C += partial · (scale_a · scale_b).
//
//   A  op(A) = A, stored [M,K] (row stride lda), always K-contiguous. Either
//        E4M3 codes `A` with a_scale [M, blocks(K)] (row stride lda_scale): one scale per
//        row per 128 columns of K, the layout of quantize_fp8_1x128 (quant.h); or
//        BF16 `A_bf16` (high-precision activations; scale 1), when A_bf16 != nullptr; or
//        F32 `A_f32` (activations as they are; scale 1), when A_f32 != nullptr. The AVX-512
//        kernels take it in their FMA form only (core/cpu.h Bf16Mode), whatever the mode.
//   B  E4M3 codes. b_layout says how its scales are laid out:
//        Block128: weights, one scale per 128x128 block of the *stored* matrix, the layout
//          of quantize_fp8_128x128. trans_b: B stored [N,K] (fprop x·Wᵀ), b_scale
//          [blocks(N), blocks(K)]; !trans_b: B stored [K,N] (dgrad dy·W), b_scale
//          [blocks(K), blocks(N)]. Row stride of b_scale: ldb_scale.
//        Col128: one scale per column j per 128 rows of K, B stored [N,K] (trans_b must be
//          true), b_scale [N, blocks(K)] — the layout of quantize_fp8_128x1_t, which the
//          wgrad GEMM dW = dyᵀ·x consumes (A = dyᵀ quantised along tokens the same way).
//   C  [M,N] FP32, row stride ldc; accumulate adds to it.
enum class Fp8BLayout { Block128, Col128 };

struct GemmFP8 {
  int64_t M = 0, N = 0, K = 0;
  const uint8_t* A = nullptr; int64_t lda = 0;
  const float* a_scale = nullptr; int64_t lda_scale = 0;
  const uint16_t* A_bf16 = nullptr;  // used instead of A / a_scale when set
  const float* A_f32 = nullptr;      // F32 activations (scale 1), instead of all of the above
  const uint8_t* B = nullptr; int64_t ldb = 0; bool trans_b = true;
  Fp8BLayout b_layout = Fp8BLayout::Block128;
  const float* b_scale = nullptr; int64_t ldb_scale = 0;
  float* C = nullptr; int64_t ldc = 0;
  bool accumulate = false;
  // W is streamed from memory, read once per call (a served model's weights, far larger
  // than the caches): a hint for the choice of kernel, never for the result's meaning.
  bool w_streamed = false;
};

void gemm_f32(const GemmF32& p, int threads = 0);
void gemm_f32_ref(const GemmF32& p);
void gemm_bf16(const GemmBF16& p, int threads = 0);
void gemm_bf16_ref(const GemmBF16& p);
void gemm_fp8(const GemmFP8& p, int threads = 0);
// Block by block as defined above: each 128-K partial is a sequential FP32 sum of exact
// FP32 products of the decoded operands; the kernels sum in another order (within a block
// only), which changes a partial by at most ~128·eps·Σ|a||b| over that block.
void gemm_fp8_ref(const GemmFP8& p);

}  // namespace dsv3
