// Absorbed-MLA slice products: argument checks and dispatch on the active ISA.
#include "kernels/mla_absorb.h"

#include "core/check.h"
#include "core/cpu.h"

namespace dsv3 {
namespace {

// x_cols / y_cols: the widths of x and y rows for this product.
void check_args(const MlaAbsorb& p, const char* what, int64_t x_cols, int64_t y_cols) {
  DSV3_CHECK(p.T >= 0 && p.rows >= 0 && p.K >= 0, what, ": negative dimension T ", p.T, " rows ",
             p.rows, " K ", p.K);
  DSV3_CHECK(p.dtype == DType::F32 || p.dtype == DType::BF16 || p.dtype == DType::F16 ||
                 p.dtype == DType::F8_E4M3,
             what, ": weight dtype ", dtype_name(p.dtype), " not supported (F32, BF16, F16, F8_E4M3)");
  DSV3_CHECK(p.r0 >= 0, what, ": negative first row r0 ", p.r0);
  DSV3_CHECK(p.ldw >= p.K, what, ": ldw ", p.ldw, " < K ", p.K);
  DSV3_CHECK(p.T <= 1 || p.ldx >= x_cols, what, ": ldx ", p.ldx, " < ", x_cols);
  DSV3_CHECK(p.T <= 1 || p.ldy >= y_cols, what, ": ldy ", p.ldy, " < ", y_cols);
  if (p.T == 0 || y_cols == 0) return;
  DSV3_CHECK(p.y && (x_cols == 0 || (p.x && p.w)), what, ": null pointer");
  if (p.dtype == DType::F8_E4M3 && x_cols > 0)
    DSV3_CHECK(p.scale && p.ld_scale >= (p.K + 127) / 128, what, ": FP8 weight needs block scales",
               " with ld_scale ≥ ceil(K/128) = ", (p.K + 127) / 128, ", got ", p.ld_scale);
}

}  // namespace

void slice_xw(const MlaAbsorb& p) {
  check_args(p, "slice_xw", p.rows, p.K);
  if (p.T == 0 || p.K == 0) return;
  if (active_isa() == Isa::Avx512) avx512::slice_xw(p);
  else slice_xw_ref(p);
}

void slice_xwt(const MlaAbsorb& p) {
  check_args(p, "slice_xwt", p.K, p.rows);
  if (p.T == 0 || p.rows == 0) return;
  if (active_isa() == Isa::Avx512) avx512::slice_xwt(p);
  else slice_xwt_ref(p);
}

}  // namespace dsv3
