// Scalar reference GEMMs: the definition the fast kernels are tested against, and the
// portable fallback. F32/BF16 accumulate in double so the reference error is far below
// the kernels' (the tests derive their tolerances from K and the input magnitudes); FP8
// follows DeepSeek-V3's definition literally (FP32 per 128-K block, then promoted).
#include "kernels/gemm.h"

#include <algorithm>

#include "core/dtype.h"
#include "kernels/quant.h"

namespace dsv3 {

namespace {

template <class P, class Load>
void gemm_ref_impl(const P& p, Load load) {
  for (int64_t i = 0; i < p.M; ++i) {
    for (int64_t j = 0; j < p.N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < p.K; ++k) {
        const auto a = p.trans_a ? p.A[k * p.lda + i] : p.A[i * p.lda + k];
        const auto b = p.trans_b ? p.B[j * p.ldb + k] : p.B[k * p.ldb + j];
        acc += double(load(a)) * double(load(b));
      }
      float& c = p.C[i * p.ldc + j];
      c = p.accumulate ? float(double(c) + acc) : float(acc);
    }
  }
}

}  // namespace

void gemm_f32_ref(const GemmF32& p) {
  gemm_ref_impl(p, [](float v) { return v; });
}

void gemm_bf16_ref(const GemmBF16& p) {
  if (!p.A_f32) return gemm_ref_impl(p, [](uint16_t v) { return bf16_to_f32(v); });
  for (int64_t i = 0; i < p.M; ++i) {
    for (int64_t j = 0; j < p.N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < p.K; ++k) {
        const uint16_t b = p.trans_b ? p.B[j * p.ldb + k] : p.B[k * p.ldb + j];
        acc += double(p.A_f32[i * p.lda + k]) * double(bf16_to_f32(b));
      }
      float& c = p.C[i * p.ldc + j];
      c = p.accumulate ? float(double(c) + acc) : float(acc);
    }
  }
}

// The FP8 definition (gemm.h): per 128-K block, a sequential FP32 sum of FP32 products of
// the decoded operands (each product is exact: at most 8 x 4 significant bits), then
// C += partial * (scale_a * scale_b), blocks in increasing K.
void gemm_fp8_ref(const GemmFP8& p) {
  float e4m3[256];  // decode table
  for (int c = 0; c < 256; ++c) e4m3[c] = e4m3_to_f32(uint8_t(c));
  const int64_t nkb = fp8_blocks(p.K);
  for (int64_t i = 0; i < p.M; ++i) {
    for (int64_t j = 0; j < p.N; ++j) {
      float c = p.accumulate ? p.C[i * p.ldc + j] : 0.f;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * kFp8Block, k1 = std::min<int64_t>(p.K, k0 + kFp8Block);
        float partial = 0.f;
        for (int64_t k = k0; k < k1; ++k) {
          const float a = p.A_f32    ? p.A_f32[i * p.lda + k]
                          : p.A_bf16 ? bf16_to_f32(p.A_bf16[i * p.lda + k])
                                     : e4m3[p.A[i * p.lda + k]];
          const float b = e4m3[p.trans_b ? p.B[j * p.ldb + k] : p.B[k * p.ldb + j]];
          partial += a * b;
        }
        const float sa = p.A_bf16 || p.A_f32 ? 1.f : p.a_scale[i * p.lda_scale + kb];
        float sb;
        if (p.b_layout == Fp8BLayout::Col128) sb = p.b_scale[j * p.ldb_scale + kb];
        else if (p.trans_b) sb = p.b_scale[(j / kFp8Block) * p.ldb_scale + kb];
        else sb = p.b_scale[kb * p.ldb_scale + j / kFp8Block];
        c += partial * (sa * sb);
      }
      p.C[i * p.ldc + j] = c;
    }
  }
}

}  // namespace dsv3
