// RMSNorm entry points: argument checks, dispatch on the active ISA, threads over rows
// (forward, dx) and over column blocks (dw).
#include "kernels/norm.h"

#include "core/check.h"
#include "core/cpu.h"
#include "kernels/row_parallel.h"

namespace dsv3 {

namespace {

void check_shape(const char* what, int64_t T, int64_t C, int64_t ld_out, int64_t ld_in, float eps) {
  DSV3_CHECK(T >= 0 && C > 0, what, ": need T >= 0 and C > 0, got T=", T, " C=", C);
  DSV3_CHECK(ld_out >= C && ld_in >= C, what, ": row strides (", ld_out, ", ", ld_in,
             ") must be >= C=", C);
  DSV3_CHECK(eps >= 0, what, ": eps must be >= 0, got ", eps);
}

}  // namespace

void rmsnorm_forward(float* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                     const float* w, int64_t T, int64_t C, float eps, int threads) {
  check_shape("rmsnorm_forward", T, C, ldo, ldx, eps);
  DSV3_CHECK(T == 0 || (out && x && w), "rmsnorm_forward: null pointer");
  const Isa isa = active_isa();
  auto* f = isa == Isa::Avx512 ? rmsnorm_forward_avx512
            : isa == Isa::Avx2 ? rmsnorm_forward_avx2
                               : rmsnorm_forward_ref;
  parallel_rows(T, T * C, threads, [&](int64_t b, int64_t e) {
    f(out + b * ldo, ldo, rstd ? rstd + b : nullptr, x + b * ldx, ldx, w, e - b, C, eps);
  });
}

void rmsnorm_forward_bf16(uint16_t* out, int64_t ldo, float* rstd, const float* x, int64_t ldx,
                          const float* w, int64_t T, int64_t C, float eps, int threads) {
  check_shape("rmsnorm_forward_bf16", T, C, ldo, ldx, eps);
  DSV3_CHECK(T == 0 || (out && x && w), "rmsnorm_forward_bf16: null pointer");
  const Isa isa = active_isa();
  auto* f = isa == Isa::Avx512 ? rmsnorm_forward_bf16_avx512
            : isa == Isa::Avx2 ? rmsnorm_forward_bf16_avx2
                               : rmsnorm_forward_bf16_ref;
  parallel_rows(T, T * C, threads, [&](int64_t b, int64_t e) {
    f(out + b * ldo, ldo, rstd ? rstd + b : nullptr, x + b * ldx, ldx, w, e - b, C, eps);
  });
}

void rmsnorm_backward(float* dx, int64_t lddx, float* dw, const float* dout, int64_t lddo,
                      const float* x, int64_t ldx, const float* w, const float* rstd, int64_t T,
                      int64_t C, bool accumulate_dx, int threads) {
  check_shape("rmsnorm_backward", T, C, lddx, lddo, 0.f);
  DSV3_CHECK(ldx >= C, "rmsnorm_backward: ldx ", ldx, " < C=", C);
  DSV3_CHECK(T == 0 || (dx && dout && x && w && rstd), "rmsnorm_backward: null pointer");
  DSV3_CHECK(!(accumulate_dx && dx == dout),
             "rmsnorm_backward: dx aliases dout, cannot accumulate");
  DSV3_CHECK(dx != dout || lddx == lddo, "rmsnorm_backward: dx aliases dout with a different row stride (",
             lddx, " vs ", lddo, ")");
  const Isa isa = active_isa();
  auto* fdw = isa == Isa::Avx512 ? rmsnorm_backward_dw_avx512
              : isa == Isa::Avx2 ? rmsnorm_backward_dw_avx2
                                 : rmsnorm_backward_dw_ref;
  auto* fdx = isa == Isa::Avx512 ? rmsnorm_backward_dx_avx512
              : isa == Isa::Avx2 ? rmsnorm_backward_dx_avx2
                                 : rmsnorm_backward_dx_ref;
  // dw before dx: dx may overwrite dout in place. Column blocks of 64 keep the AVX-512
  // loop on full vectors; each block sums its rows in a fixed order (deterministic).
  if (dw) {
    const int64_t nblk = (C + 63) / 64;
    parallel_rows(nblk, T * C, threads, [&](int64_t b, int64_t e) {
      const int64_t c0 = b * 64, c1 = e * 64 < C ? e * 64 : C;
      fdw(dw, dout, lddo, x, ldx, rstd, T, c0, c1);
    });
  }
  parallel_rows(T, T * C, threads, [&](int64_t b, int64_t e) {
    fdx(dx + b * lddx, lddx, dout + b * lddo, lddo, x + b * ldx, ldx, w, rstd + b, e - b, C,
        accumulate_dx);
  });
}

}  // namespace dsv3
