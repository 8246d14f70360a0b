// An activation that a training forward keeps for its backward, in the precision the
// report's FP8 recipe caches it (§3.3.3 "Low-precision storage"; docs/training.md "Memory"):
//   F32   the values as computed (F32 and BF16 training: nothing is rounded)
//   E4M3  FP8 in 1x128 tiles, one F32 scale per row per 128 columns (kernels/quant.h), for
//         the inputs of the MoE SwiGLU (the gate/up projections' outputs): 1 B + 1/32 B a value
//   E5M6  a 12-bit float (sign, 5 exponent bits with bias 15, 6 mantissa bits, subnormals;
//         exponent 31 is reserved: no infinities, NaN only) in 1x128 tiles whose scales are powers of two, for the input of
//         the linear after attention (o_proj): 1.5 B + 1/32 B a value. The report uses it for
//         these activations because they are precision-sensitive; the power-of-two scales
//         make the backward's re-tiling into 128x1 add no rounding of its own.
// The forward writes the F32 values where begin() says (the cache itself under F32, else a
// work buffer), uses them, then calls seal(), which encodes them. The backward reads them
// back through read(), decoded into a work buffer. So the forward computes with exact values
// and only what crosses to the backward is rounded, as in the report.
#pragma once
#include <cstdint>
#include <vector>

#include "train/tlinear.h"

namespace dsv3 {

enum class ActFormat { F32, E4M3, E5M6 };

// The formats by training precision: FP8 caches the SwiGLU inputs in E4M3 and the attention
// output in E5M6; F32 and BF16 training cache F32 (so does FP8 with c.f32_cache, for tests).
inline ActFormat swiglu_input_format(const TLinearCtx& c) {
  return c.prec == Precision::FP8 && !c.f32_cache ? ActFormat::E4M3 : ActFormat::F32;
}
inline ActFormat attention_output_format(const TLinearCtx& c) {
  return c.prec == Precision::FP8 && !c.f32_cache ? ActFormat::E5M6 : ActFormat::F32;
}

struct ActCache {
  ActFormat format = ActFormat::F32;
  int64_t rows = 0, cols = 0;
  std::vector<float> f32;     // F32: [rows, cols]
  std::vector<uint8_t> code;  // E4M3: [rows, cols] bytes; E5M6: two values in three bytes
  std::vector<float> scale;   // [rows, ceil(cols / 128)]

  // Sizes the cache for [rows, cols] in format f and returns where the forward writes the
  // F32 values: the cache (F32) or work, grown to fit (otherwise).
  float* begin(ActFormat f, int64_t rows, int64_t cols, std::vector<float>& work);
  // Encodes the values the forward wrote (x: what begin returned). A no-op under F32.
  void seal(const float* x, int threads);
  // The F32 values the backward uses: the cache itself (F32) or decoded into work.
  const float* read(std::vector<float>& work, int threads) const;
  // The bytes the cache holds for its current shape (what a step keeps per activation).
  int64_t bytes() const;
};

// E5M6 codes (12 bits in a uint16_t): round to nearest even; |x| must be <= kE5M6Max after
// scaling (the tile scale guarantees it). NaN encodes as the code 0x7FF (decodes as NaN).
inline constexpr float kE5M6Max = 65024.0f;  // (2 - 2^-6) · 2^15
uint16_t f32_to_e5m6(float x);
float e5m6_to_f32(uint16_t c);

// The scaling the cache uses (exposed for tests): x [M, K] -> codes packed as in ActCache,
// scales [M, ceil(K/128)] (powers of two), and back.
void encode_e5m6_1x128(const float* x, int64_t M, int64_t K, uint8_t* code, float* scale,
                       int threads);
void decode_e5m6_1x128(const uint8_t* code, const float* scale, int64_t M, int64_t K, float* x,
                       int threads);
int64_t e5m6_packed_bytes(int64_t M, int64_t K);  // per row: ceil(K·12/8), rows contiguous

}  // namespace dsv3
