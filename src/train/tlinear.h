// The linear layer of training, y = x · Wᵀ with W [N, K] (out, in) a plain F32 parameter,
// in three arithmetic modes (SPEC §3, report §3.3):
//   F32   every GEMM in F32 (the mode the gradient tests hold to the PyTorch reference);
//   BF16  operands rounded to BF16, FP32 accumulation (as PyTorch's bf16 autocast);
//   FP8   DeepSeek-V3's recipe: activations and output gradients quantised to E4M3 in 1x128
//         tiles, weights in 128x128 blocks, wgrad operands in 128x1 tiles along the tokens,
//         FP32 promotion every 128 of K (kernels/gemm.h GemmFP8, kernels/quant.h).
// Master weights, gradients and everything outside the GEMMs stay F32.
//
//   forward   y [M, N]  = x [M, K] · Wᵀ                 (written, or added with acc)
//   backward  dx [M, K] = dy [M, N] · W                  (written, or added with acc_dx; skipped if null)
//             dW [N, K] += dyᵀ · x                       (always added: gradient accumulation)
#pragma once
#include <cstdint>
#include <vector>

namespace dsv3 {

enum class Precision { F32, BF16, FP8 };
const char* precision_name(Precision p);
Precision parse_precision(const char* s);  // "f32" | "bf16" | "fp8"; throws otherwise

struct TLinearScratch {
  std::vector<uint16_t> a16, b16;     // BF16 copies of operands
  std::vector<uint16_t> x16;          // the caller's: an input rounded once for two linears
  std::vector<uint8_t> a8, b8;        // E4M3 codes
  std::vector<float> sa, sb;          // their scales
  std::vector<float> t;               // transposes
};

// ZB's split backward (Zero Bubble, Qi et al. 2023; docs/distributed.md): what one deferred
// dW += dyᵀ · x needs. dy and x are copied: both may live in work buffers the rest of the
// backward overwrites (the recomputed norms, an expert's gathered rows).
struct DeferredWGrad {
  float* dW = nullptr;
  const float* W = nullptr;
  int64_t M = 0, N = 0, K = 0;
  Precision prec = Precision::F32;  // the GEMM's mode (the router's is always F32)
  std::vector<float> dy, x;  // [M, N], [M, K]
};

struct TLinearCtx {
  Precision prec = Precision::F32;
  int threads = 0;
  // Set: tlinear_backward computes dx only and appends its weight gradient here, for
  // tlinear_run_deferred (the W op) to add later — the same GEMM on the same operands, so the
  // same bits.
  std::vector<DeferredWGrad>* defer = nullptr;
  // Tests: the activations a forward keeps for its backward stay F32 under FP8 too (by
  // default FP8 caches them in E4M3 / E5M6: train/act_cache.h).
  bool f32_cache = false;
  // BF16: the weight arena [w_base, w_base + w_n) has a BF16 copy w_bf16 in the same layout
  // (train/train_weights.h): a W inside it is read from the copy instead of rounded here —
  // the same values, so the same bits.
  const float* w_base = nullptr;
  const uint16_t* w_bf16 = nullptr;
  int64_t w_n = 0;
};

// x16 (optional): x already rounded to BF16 (convert_f32_to_bf16(x), the same bits), which
// BF16 mode then uses instead of rounding x again — for two linears that read one input
// (gate and up, forward and weight gradient). Other modes ignore it; x must be given too.
void tlinear_forward(float* y, const float* x, const float* W, int64_t M, int64_t N, int64_t K,
                     const TLinearCtx& c, TLinearScratch& s, bool acc = false,
                     const uint16_t* x16 = nullptr);
void tlinear_backward(float* dx, float* dW, const float* dy, const float* x, const float* W,
                      int64_t M, int64_t N, int64_t K, const TLinearCtx& c, TLinearScratch& s,
                      bool acc_dx = false, const uint16_t* x16 = nullptr);
// x [M, K] rounded to BF16 into s.x16 when c's mode is BF16 (the x16 argument above), else
// nullptr.
const uint16_t* tlinear_input_bf16(const float* x, int64_t M, int64_t K, const TLinearCtx& c,
                                   TLinearScratch& s);
// The deferred weight gradients in recorded order (c.defer ignored); empties d.
void tlinear_run_deferred(std::vector<DeferredWGrad>& d, const TLinearCtx& c, TLinearScratch& s);

}  // namespace dsv3
