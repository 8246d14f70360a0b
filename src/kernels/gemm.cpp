// GEMM entry points: argument checks and dispatch on the active ISA.
#include "kernels/gemm.h"

#include "core/check.h"
#include "core/cpu.h"

namespace dsv3 {

namespace {

template <class P>
void check_args(const P& p, const char* what) {
  DSV3_CHECK(p.M >= 0 && p.N >= 0 && p.K >= 0, what, ": negative dimension");
  DSV3_CHECK(p.ldc >= p.N, what, ": ldc ", p.ldc, " < N ", p.N);
  DSV3_CHECK(p.lda >= (p.trans_a ? p.M : p.K), what, ": lda ", p.lda, " too small");
  DSV3_CHECK(p.ldb >= (p.trans_b ? p.K : p.N), what, ": ldb ", p.ldb, " too small");
}

}  // namespace

void gemm_f32(const GemmF32& p, int threads) {
  check_args(p, "gemm_f32");
  (void)threads;
  gemm_f32_ref(p);
}

void gemm_bf16(const GemmBF16& p, int threads) {
  check_args(p, "gemm_bf16");
  (void)threads;
  gemm_bf16_ref(p);
}

}  // namespace dsv3
