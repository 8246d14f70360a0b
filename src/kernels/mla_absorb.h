// The two weight-slice products of absorbed MLA decode (DeepSeek-V2 §2.1.2 "absorb W_UK into
// W_Q, W_UV into W_O"), over kv_b_proj W [heads·(nope+v), kv_lora] used in place:
//   slice_xw   y[t, c] = Σ_{d<rows} x[t, d] · W[r0 + d, c]   (c < K)     q_lat = q_nope · W_UK_h
//   slice_xwt  y[t, j] = Σ_{c<K}    x[t, c] · W[r0 + j, c]   (j < rows)  o = o_lat · W_UV_hᵀ
// W is F32, BF16, F16 or FP8 E4M3 with 128x128 block scales (the checkpoint's
// `weight_scale_inv`, W[r, c] = decode(code) · scale[r/128][c/128]). r0 need not be a multiple
// of 128 (tiny test models), so the scale row is looked up per weight row.
//
// Numerics (docs/numerics.md): x stays F32 (never rounded to BF16); every weight element is
// decoded to F32 exactly; the block scale is folded into x (x·s, one rounding per element),
// products summed with F32 FMAs. With n the summation length (rows for slice_xw, K for
// slice_xwt) and S = Σ |x · W| over the terms of one output,
//   |y - y_exact| ≤ (n + 2) · 2^-24 · (S + |y_in|)   (y_in: y before the call, 0 unless accumulate)
// for the AVX-512 path (first order); the scalar twins (*_ref) sum in double and round once, so
// they are within 2^-24·|y_exact| + n·2^-52·(S + |y_in|). (Assumes |x·s| < 2^100.) A NaN code (0x7f/0xff) or a
// non-finite x makes the outputs it touches non-finite.
//
// Built for T = 1..4 (one decode token, a few draft tokens): memory/decode-bound, every weight
// byte is read once per call for all T ≤ 4; larger T runs in groups of 4 (weights re-read,
// from cache). Single-threaded (callers split heads over threads); no allocation.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace dsv3 {

struct MlaAbsorb {
  int64_t T = 1;     // rows of x and y
  int64_t rows = 0;  // weight rows in the slice: [r0, r0 + rows)
  int64_t K = 0;     // weight columns (kv_lora_rank)
  // The whole weight, not just the slice, so that block scales can be found.
  DType dtype = DType::F32;              // F32, BF16, F16 or F8_E4M3
  const void* w = nullptr; int64_t ldw = 0;  // [N, ldw] elements; N ≥ r0 + rows
  const float* scale = nullptr; int64_t ld_scale = 0;  // E4M3: [ceil(N/128), ld_scale ≥ ceil(K/128)]
  int64_t r0 = 0;
  const float* x = nullptr; int64_t ldx = 0;  // slice_xw: [T, rows]; slice_xwt: [T, K]
  float* y = nullptr; int64_t ldy = 0;        // slice_xw: [T, K];    slice_xwt: [T, rows]
  bool accumulate = false;                    // y += instead of y =
};

// Dispatch on active_isa(): AVX-512 kernels, otherwise the scalar twins. Check arguments.
void slice_xw(const MlaAbsorb& p);
void slice_xwt(const MlaAbsorb& p);
void slice_xw_ref(const MlaAbsorb& p);
void slice_xwt_ref(const MlaAbsorb& p);

namespace avx512 {
void slice_xw(const MlaAbsorb& p);   // mla_absorb_avx512.cpp; arguments already checked
void slice_xwt(const MlaAbsorb& p);
}  // namespace avx512

}  // namespace dsv3
