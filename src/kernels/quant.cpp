// Quantiser entry points: argument checks, then dispatch on the active ISA.
#include "kernels/quant.h"

#include "core/check.h"
#include "core/cpu.h"
#include "core/parallel.h"
#include "kernels/quant_impl.h"

namespace dsv3 {

namespace {

void check_io(DType t, const char* what) {
  DSV3_CHECK(t == DType::F32 || t == DType::BF16, what, ": the non-FP8 side must be F32 or BF16, got ",
             dtype_name(t));
}

// rows x cols read with stride ld_in, written with stride ld_out (elements).
void check_shape(int64_t rows, int64_t cols, int64_t ld_in, int64_t ld_out, const void* in,
                 const void* out, const void* scale, const char* what) {
  DSV3_CHECK(rows >= 0 && cols >= 0, what, ": negative shape [", rows, ", ", cols, "]");
  DSV3_CHECK(ld_in >= cols, what, ": input row stride ", ld_in, " < ", cols, " columns");
  DSV3_CHECK(rows == 0 || cols == 0 || (in && out && scale), what, ": null pointer");
  (void)ld_out;
}

bool fast() { return active_isa() == Isa::Avx512; }

}  // namespace

void quantize_fp8_1x128(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                        uint8_t* q, int64_t ldq, float* scale, int threads) {
  check_io(xtype, "quantize_fp8_1x128");
  check_shape(M, K, ldx, ldq, x, q, scale, "quantize_fp8_1x128");
  DSV3_CHECK(ldq >= K, "quantize_fp8_1x128: ldq ", ldq, " < K ", K);
  if (fast()) avx512::quantize_fp8_1x128(x, xtype == DType::BF16, M, K, ldx, q, ldq, scale, resolve_threads(threads));
  else quantize_fp8_1x128_ref(x, xtype, M, K, ldx, q, ldq, scale);
}

void quantize_fp8_128x1_t(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                          uint8_t* q, int64_t ldq, float* scale, int threads) {
  check_io(xtype, "quantize_fp8_128x1_t");
  check_shape(M, K, ldx, ldq, x, q, scale, "quantize_fp8_128x1_t");
  DSV3_CHECK(ldq >= M, "quantize_fp8_128x1_t: ldq ", ldq, " < M ", M, " (the output is [K, M])");
  if (fast()) avx512::quantize_fp8_128x1_t(x, xtype == DType::BF16, M, K, ldx, q, ldq, scale, resolve_threads(threads));
  else quantize_fp8_128x1_t_ref(x, xtype, M, K, ldx, q, ldq, scale);
}

void quantize_fp8_128x128(const void* w, DType wtype, int64_t N, int64_t K, int64_t ldw,
                          uint8_t* q, int64_t ldq, float* scale, int threads) {
  check_io(wtype, "quantize_fp8_128x128");
  check_shape(N, K, ldw, ldq, w, q, scale, "quantize_fp8_128x128");
  DSV3_CHECK(ldq >= K, "quantize_fp8_128x128: ldq ", ldq, " < K ", K);
  if (fast()) avx512::quantize_fp8_128x128(w, wtype == DType::BF16, N, K, ldw, q, ldq, scale, resolve_threads(threads));
  else quantize_fp8_128x128_ref(w, wtype, N, K, ldw, q, ldq, scale);
}

void dequantize_fp8_1x128(const uint8_t* q, int64_t M, int64_t K, int64_t ldq,
                          const float* scale, void* out, DType otype, int64_t ldo, int threads) {
  check_io(otype, "dequantize_fp8_1x128");
  check_shape(M, K, ldq, ldo, q, out, scale, "dequantize_fp8_1x128");
  DSV3_CHECK(ldo >= K, "dequantize_fp8_1x128: ldo ", ldo, " < K ", K);
  if (fast()) avx512::dequantize_fp8_1x128(q, M, K, ldq, scale, out, otype == DType::BF16, ldo, resolve_threads(threads));
  else dequantize_fp8_1x128_ref(q, M, K, ldq, scale, out, otype, ldo);
}

void dequantize_fp8_128x128(const uint8_t* q, int64_t N, int64_t K, int64_t ldq,
                            const float* scale, void* out, DType otype, int64_t ldo,
                            int threads) {
  check_io(otype, "dequantize_fp8_128x128");
  check_shape(N, K, ldq, ldo, q, out, scale, "dequantize_fp8_128x128");
  DSV3_CHECK(ldo >= K, "dequantize_fp8_128x128: ldo ", ldo, " < K ", K);
  if (fast()) avx512::dequantize_fp8_128x128(q, N, K, ldq, scale, out, otype == DType::BF16, ldo, resolve_threads(threads));
  else dequantize_fp8_128x128_ref(q, N, K, ldq, scale, out, otype, ldo);
}

}  // namespace dsv3
