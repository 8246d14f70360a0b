// Quantiser entry points: argument checks, then dispatch on the active ISA.
#include "core/check.h"
#include "kernels/quant.h"

namespace dsv3 {

namespace {

void check_io(DType in, DType out_or_in, const char* what) {
  DSV3_CHECK(in == DType::F32 || in == DType::BF16, what, ": input must be F32 or BF16, got ",
             dtype_name(in));
  DSV3_CHECK(out_or_in == DType::F32 || out_or_in == DType::BF16, what,
             ": output must be F32 or BF16, got ", dtype_name(out_or_in));
}

}  // namespace

void quantize_fp8_1x128(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                        uint8_t* q, int64_t ldq, float* scale, int threads) {
  check_io(xtype, xtype, "quantize_fp8_1x128");
  quantize_fp8_1x128_ref(x, xtype, M, K, ldx, q, ldq, scale);
}

void quantize_fp8_128x1_t(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                          uint8_t* q, int64_t ldq, float* scale, int threads) {
  check_io(xtype, xtype, "quantize_fp8_128x1_t");
  quantize_fp8_128x1_t_ref(x, xtype, M, K, ldx, q, ldq, scale);
}

void quantize_fp8_128x128(const void* w, DType wtype, int64_t N, int64_t K, int64_t ldw,
                          uint8_t* q, int64_t ldq, float* scale, int threads) {
  check_io(wtype, wtype, "quantize_fp8_128x128");
  quantize_fp8_128x128_ref(w, wtype, N, K, ldw, q, ldq, scale);
}

void dequantize_fp8_1x128(const uint8_t* q, int64_t M, int64_t K, int64_t ldq,
                          const float* scale, void* out, DType otype, int64_t ldo, int threads) {
  check_io(otype, otype, "dequantize_fp8_1x128");
  dequantize_fp8_1x128_ref(q, M, K, ldq, scale, out, otype, ldo);
}

void dequantize_fp8_128x128(const uint8_t* q, int64_t N, int64_t K, int64_t ldq,
                            const float* scale, void* out, DType otype, int64_t ldo,
                            int threads) {
  check_io(otype, otype, "dequantize_fp8_128x128");
  dequantize_fp8_128x128_ref(q, N, K, ldq, scale, out, otype, ldo);
}

}  // namespace dsv3
