// A linear layer y = x · Wᵀ over a checkpoint weight used in place (F32, BF16, F16 or FP8
// E4M3 with 128x128 block scales), under the contract of docs/numerics.md: F32 activations
// times the exact weight (FP8: decode(code)·scale), FP32 accumulation. The BF16 dot-product
// kernels take x as a BF16 hi+lo pair (~16 significant bits), never x rounded to BF16.
//
// Dispatch: M ≤ kLinearGemvMaxM rows go to the decode GEMV kernels (kernels/gemv.h: weight-streaming,
// memory-bound), more rows to the packed GEMMs (kernels/gemm.h). F16 weights (no released
// DeepSeek checkpoint uses them) take a slow row-by-row path.
#pragma once
#include <cstdint>
#include <vector>

#include "model/weights.h"

namespace dsv3 {

// Scratch a caller keeps across calls so that steady-state decoding does not allocate.
struct LinearScratch {
  std::vector<uint16_t> x_bf16;  // [2, M, K] x as BF16 hi and lo parts (GEMM paths)
  std::vector<float> y2;         // [2, M, block] hi·Wᵀ and lo·Wᵀ (one GEMM over both parts)
  std::vector<float> w_row;      // [K] one dequantised row (F16 path)
};

// linear_forward sends M ≤ kLinearGemvMaxM rows to the GEMV (row-invariant, kernels/gemv.h),
// more to the GEMMs.
inline constexpr int64_t kLinearGemvMaxM = 4;

int64_t linear_out(const Weight& w);  // N (rows of W)
int64_t linear_in(const Weight& w);   // K (columns of W)

// y [M, N] (row stride ldy) = x [M, K] (row stride ldx) · Wᵀ; accumulate adds into y.
// threads = 0: default_threads(); 1 inside a caller's parallel region.
void linear_forward(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const Weight& w,
                    LinearScratch& s, bool accumulate = false, int threads = 0);

// y = x · Wᵀ through the decode GEMV for any M: chunks of kGemvMaxM rows, each row computed
// exactly as alone (BF16 / FP8 weights; F32 / F16 go row by row through linear_forward).
void linear_gemv(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const Weight& w,
                 LinearScratch& s, bool accumulate = false, int threads = 0);

// The rows of a batched forward (several sequences' tokens, model.h forward_batch) and how a
// linear runs over them. Sequences [0, n_small) have ≤ kLinearGemvMaxM rows each and come
// first; off[i] .. off[i+1] are sequence i's rows.
//   invariant  every row is computed exactly as in a forward of its sequence alone: the small
//              sequences' rows together through linear_gemv (weights streamed once per
//              kGemvMaxM rows), each larger sequence by its own linear_forward (docs/serve.md).
//   !invariant one linear_forward over all rows (one GEMM: fastest, results depend on the batch).
struct LinearBatch {
  const int64_t* off = nullptr;  // [n_seqs + 1]
  int n_seqs = 0, n_small = 0;
  bool invariant = true;
  int threads = 0;
  // One sequence of T rows; off: storage for its two offsets.
  static LinearBatch single(int64_t* off, int64_t T, int threads) {
    off[0] = 0;
    off[1] = T;
    LinearBatch lb;
    lb.off = off;
    lb.n_seqs = 1;
    lb.n_small = T <= kLinearGemvMaxM ? 1 : 0;
    lb.threads = threads;
    return lb;
  }
  int64_t rows() const { return off[n_seqs]; }
  int64_t small_rows() const { return off[n_small]; }
  // y [rows, N] (ldy) = x [rows, K] (ldx) · Wᵀ.
  void run(float* y, int64_t ldy, const float* x, int64_t ldx, const Weight& w, LinearScratch& s,
           bool accumulate = false) const;
};

// Rows [n0, n1) of y = x · Wᵀ for M ≤ kGemvMaxM rows of x, on the calling thread: the unit of
// work when a caller spreads many small matmuls (the experts of a decode step) over its own
// parallel region. FP8 weights need n0 % 128 == 0 (the block-scale row).
void linear_rows(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const Weight& w,
                 int64_t n0, int64_t n1, LinearScratch& s, bool accumulate = false);

// Rows [r0, r0 + n) of W dequantised to F32 into out [n, K] (row stride K): the absorbed
// MLA form needs W_UK / W_UV slices of kv_b_proj whose row offsets need not be multiples
// of 128, so the block scale is looked up per row.
void dequantize_rows(float* out, const Weight& w, int64_t r0, int64_t n);

// A 1-D weight (norm gain, router bias) converted to F32.
std::vector<float> weight_to_f32(const Weight& w);


}  // namespace dsv3
