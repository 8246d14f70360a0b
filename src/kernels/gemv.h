// The decode matrix-vector product: y[M,N] = x[M,K] · W[N,K]ᵀ for M = 1..kGemvMaxM rows of
// x (one token, draft tokens for multi-token prediction, or the decode tokens of up to 16
// requests batched by the serving engine), W in BF16 or in FP8 E4M3 with one scale per
// 128x128 block (kernels/quant.h layout; the checkpoint's `weight_scale_inv`, W = fp8 · s).
// x and y are F32; accumulate adds into y.
//
// Batch-1 decode streams every weight once per token, so the kernels are built to run at
// memory bandwidth: W is read once, converted in registers, rows split over threads. With
// M > 1 the rows of x share each weight load, so W is still streamed once per call.
//
// Row invariance (tests/test_gemv.cpp checks it bitwise): on one ISA path (active_isa(),
// Fp8Path) and thread count, row m of y depends only on row m of x (and y[m] when
// accumulating), W and the scales: it is bit-identical whatever M is, wherever the row sits
// among the M rows and whatever the other rows hold, and equal to computing that row alone
// (M = 1). The serving engine relies on it: a request's logits do not depend on who else is
// batched with it. Every kernel computes each output (n, m) with the same operations in
// the same order (same split of K, same K tail, same reduction, same FP8 scale handling);
// the tile shapes differ by M only in which outputs they compute together. Rows are split
// over threads by N, never by K, so today the result does not depend on the thread count
// either, but that is not promised. Different ISA paths or Fp8Paths give different bits.
//
// Numerical contract (tests/test_gemv.cpp checks it): with S[m,n] = Σ_k |w[n,k]·s|·|x[m,k]|
//   |y - y_exact| ≤ (2^-15 + 2·(K+2)·2^-24) · S   (+ |y_in|·2^-24 terms with accumulate)
// for both the fast paths and the scalar references (gemv_*_ref), where y_exact is the
// exact sum of the decoded weights times x (Fp8Path::BF16LutX8: 2^-8 instead of 2^-15). The 2^-15 term covers paths that carry x as a
// BF16 hi+lo pair (≈16 significant bits: AVX-512 BF16, and FP8 BF16Lut); the K term covers F32 accumulation.
// Those paths use VDPBF16PS, which flushes subnormal BF16 inputs to zero, so the bound
// also assumes nonzero weights and x·s at least 2^-118 in magnitude (x's lo part normal).
// (Assumes |x·s| < 2^100 so that x·s and its BF16 split stay finite.)
// NaN/inf: an inf or NaN in x, or a NaN weight code (0x7f/0xff), makes the affected y
// non-finite (inf or NaN; paths may differ on which).
#pragma once
#include <cstddef>
#include <cstdint>

namespace dsv3 {

inline constexpr int kGemvMaxM = 16;

struct GemvBF16 {
  int64_t M = 1, N = 0, K = 0;
  const uint16_t* w = nullptr; int64_t ldw = 0;  // [N, K] BF16 bit patterns
  const float* x = nullptr; int64_t ldx = 0;     // [M, K]
  float* y = nullptr; int64_t ldy = 0;           // [M, N]
  bool accumulate = false;
  // Round x to BF16 once instead of carrying the hi+lo pair: one VDPBF16PS per pair, half
  // the multiply work (what BF16 inference does with activations; the BF16 twin of
  // Fp8Path::BF16LutX8). Contract |y - y_exact| ≤ (2^-8 + 2·K·2^-24)·S. AVX-512 only; the
  // other paths ignore it (they are more exact, within the same bound).
  bool x_bf16 = false;
};

// How the FP8 path turns codes into numbers in registers (gemv_avx512.cpp explains them;
// `dsv3 bench gemv --path` compares them). On AVX-512, Auto = BF16Lut (F32Lut in
// Bf16Mode::Fma, core/cpu.h), the fastest that meets the contract above; the AVX2 path always converts through F16. BF16LutX8 skips the low half of x·s — x·s is rounded to BF16
// as DeepSeek-V3's BF16 inference does with activations — for about 2/3 of the work per
// byte; its contract is looser: |y - y_exact| ≤ (2^-8 + 2·K·2^-24)·S.
// F32Lut: the LUT's BF16 values widened to F32 and FMAs with x·s in F32 (exact x, as F16);
// Auto in Bf16Mode::Fma (core/cpu.h). The AVX2 path ignores the choice.
enum class Fp8Path { Auto, F16, BF16Lut, BF16LutX8, F32Lut };

struct GemvFP8 {
  int64_t M = 1, N = 0, K = 0;
  const uint8_t* w = nullptr; int64_t ldw = 0;  // [N, K] E4M3 codes
  const float* w_scale = nullptr;               // [ceil(N/128), ceil(K/128)]
  const float* x = nullptr; int64_t ldx = 0;    // [M, K]
  float* y = nullptr; int64_t ldy = 0;          // [M, N]
  bool accumulate = false;
  Fp8Path path = Fp8Path::Auto;
};

// threads = 0 uses default_threads(); dispatch on active_isa().
void gemv_bf16(const GemvBF16& p, int threads = 0);
void gemv_fp8(const GemvFP8& p, int threads = 0);
void gemv_bf16_ref(const GemvBF16& p);
void gemv_fp8_ref(const GemvFP8& p);

// Reads `bytes` bytes at p with the widest loads the active ISA has, split over threads,
// and returns a value that depends on every byte (so the reads cannot be optimised away).
// This is what `dsv3 bench membw` times: the streaming-read bandwidth GEMV is judged by.
uint64_t stream_read(const void* p, size_t bytes, int threads = 0);

}  // namespace dsv3
