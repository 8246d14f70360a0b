// Scalar reference GEMMs: the definition the fast kernels are tested against, and the
// portable fallback. Accumulates in double so the reference error is far below the
// kernels' (the tests derive their tolerances from K and the input magnitudes).
#include "kernels/gemm.h"

#include "core/dtype.h"

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
  gemm_ref_impl(p, [](uint16_t v) { return bf16_to_f32(v); });
}

}  // namespace dsv3
