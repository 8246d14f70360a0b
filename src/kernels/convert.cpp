// Array converters: dispatch on the active ISA; the scalar loops over core/dtype.h are the
// reference and the fallback.
#include "kernels/convert.h"

#include <cstdint>
#include <cstring>

#include "core/check.h"
#include "core/cpu.h"
#include "kernels/convert_impl.h"
#include "kernels/row_parallel.h"

namespace dsv3 {

namespace {

bool fast() { return active_isa() == Isa::Avx512; }

void check_n(int64_t n, const void* x, const void* y, const char* what) {
  DSV3_CHECK(n >= 0, what, ": negative length ", n);
  DSV3_CHECK(n == 0 || (x && y), what, ": null pointer");
}

}  // namespace

void convert_f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
  check_n(n, x, y, "convert_f32_to_bf16");
  // Over the threads (kernels/row_parallel.h; inside a parallel region, on the caller): a BF16
  // training step converts every weight matrix and its input before each GEMM, and on the
  // caller alone the other threads waited for it (~6% of a step of configs/moe-150m.json).
  parallel_rows(n, n, 0, [&](int64_t b, int64_t e) {
    if (fast()) return avx512::convert_f32_to_bf16(x + b, y + b, e - b);
    for (int64_t i = b; i < e; ++i) y[i] = f32_to_bf16(x[i]);
  });
}

void split_f32_to_bf16_pair(const float* x, uint16_t* hi, uint16_t* lo, int64_t n) {
  check_n(n, x, hi, "split_f32_to_bf16_pair");
  DSV3_CHECK(n == 0 || lo, "split_f32_to_bf16_pair: null pointer");
  if (fast()) return avx512::split_f32_to_bf16_pair(x, hi, lo, n);
  for (int64_t i = 0; i < n; ++i) {
    hi[i] = f32_to_bf16(x[i]);
    lo[i] = f32_to_bf16(x[i] - bf16_to_f32(hi[i]));
  }
}

void convert_bf16_to_f32(const uint16_t* x, float* y, int64_t n) {
  check_n(n, x, y, "convert_bf16_to_f32");
  if (fast()) return avx512::convert_bf16_to_f32(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_f32(x[i]);
}

void convert_f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  check_n(n, x, y, "convert_f32_to_f16");
  if (fast()) return avx512::convert_f32_to_f16(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_f16(x[i]);
}

void convert_f16_to_f32(const uint16_t* x, float* y, int64_t n) {
  check_n(n, x, y, "convert_f16_to_f32");
  if (fast()) return avx512::convert_f16_to_f32(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = f16_to_f32(x[i]);
}

void convert_e4m3_to_f32(const uint8_t* x, float* y, int64_t n) {
  check_n(n, x, y, "convert_e4m3_to_f32");
  if (fast()) return avx512::convert_e4m3_to_f32(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = e4m3_to_f32(x[i]);
}

void convert_e4m3_to_bf16(const uint8_t* x, uint16_t* y, int64_t n) {
  check_n(n, x, y, "convert_e4m3_to_bf16");
  if (fast()) return avx512::convert_e4m3_to_bf16(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_bf16(e4m3_to_f32(x[i]));
}

void convert_f32_to_e4m3(const float* x, uint8_t* y, int64_t n) {
  check_n(n, x, y, "convert_f32_to_e4m3");
  if (fast()) return avx512::convert_f32_to_e4m3(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_e4m3(x[i]);
}

void convert(const void* x, DType xt, void* y, DType yt, int64_t n) {
  check_n(n, x, y, "convert");
  if (xt == yt) {
    DSV3_CHECK(n <= INT64_MAX / int64_t(dtype_size(xt)), "convert: length ", n, " too large");
    std::memmove(y, x, size_t(n) * dtype_size(xt));
    return;
  }
  const auto* f = static_cast<const float*>(x);
  const auto* h = static_cast<const uint16_t*>(x);
  const auto* b = static_cast<const uint8_t*>(x);
  if (xt == DType::F32 && yt == DType::BF16) return convert_f32_to_bf16(f, static_cast<uint16_t*>(y), n);
  if (xt == DType::BF16 && yt == DType::F32) return convert_bf16_to_f32(h, static_cast<float*>(y), n);
  if (xt == DType::F32 && yt == DType::F16) return convert_f32_to_f16(f, static_cast<uint16_t*>(y), n);
  if (xt == DType::F16 && yt == DType::F32) return convert_f16_to_f32(h, static_cast<float*>(y), n);
  if (xt == DType::F8_E4M3 && yt == DType::F32) return convert_e4m3_to_f32(b, static_cast<float*>(y), n);
  if (xt == DType::F8_E4M3 && yt == DType::BF16) return convert_e4m3_to_bf16(b, static_cast<uint16_t*>(y), n);
  if (xt == DType::F32 && yt == DType::F8_E4M3) return convert_f32_to_e4m3(f, static_cast<uint8_t*>(y), n);
  DSV3_FAIL("convert: no converter from ", dtype_name(xt), " to ", dtype_name(yt));
}

}  // namespace dsv3
