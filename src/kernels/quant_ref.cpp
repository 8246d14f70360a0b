// Scalar reference quantisers (kernels/quant.h): the definition the vector versions are
// tested against and the portable fallback.
#include <cfloat>
#include <cmath>

#include "kernels/quant.h"

namespace dsv3 {

namespace {

float load(const void* base, DType t, int64_t i) {
  return t == DType::F32 ? static_cast<const float*>(base)[i]
                         : bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
}

void store(void* base, DType t, int64_t i, float v) {
  if (t == DType::F32) static_cast<float*>(base)[i] = v;
  else static_cast<uint16_t*>(base)[i] = f32_to_bf16(v);
}

// scale = amax / 448, floored at FLT_MIN so that x / scale is finite (quant.h).
float scale_for(float amax) {
  const float s = amax / kE4M3Max;
  return s >= FLT_MIN ? s : FLT_MIN;
}

// Quantises the tile rows [r0,r1) x cols [c0,c1) of x with one scale; element (r,c) of
// the output goes to q[r*qr + c*qc].
float quantize_tile(const void* x, DType t, int64_t ldx, int64_t r0, int64_t r1, int64_t c0,
                    int64_t c1, uint8_t* q, int64_t qr, int64_t qc) {
  float amax = 0.f;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) amax = std::fmax(amax, std::fabs(load(x, t, r * ldx + c)));
  const float s = scale_for(amax);
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) q[r * qr + c * qc] = f32_to_e4m3(load(x, t, r * ldx + c) / s);
  return s;
}

int64_t end_of(int64_t start, int64_t n) { return start + kFp8Block < n ? start + kFp8Block : n; }

}  // namespace

void quantize_fp8_1x128_ref(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                            uint8_t* q, int64_t ldq, float* scale) {
  const int64_t kb = fp8_blocks(K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < kb; ++b)
      scale[m * kb + b] = quantize_tile(x, xtype, ldx, m, m + 1, b * kFp8Block,
                                        end_of(b * kFp8Block, K), q, ldq, 1);
}

void quantize_fp8_128x1_t_ref(const void* x, DType xtype, int64_t M, int64_t K, int64_t ldx,
                              uint8_t* q, int64_t ldq, float* scale) {
  const int64_t mb = fp8_blocks(M);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t b = 0; b < mb; ++b)
      scale[k * mb + b] = quantize_tile(x, xtype, ldx, b * kFp8Block, end_of(b * kFp8Block, M),
                                        k, k + 1, q, 1, ldq);
}

void quantize_fp8_128x128_ref(const void* w, DType wtype, int64_t N, int64_t K, int64_t ldw,
                              uint8_t* q, int64_t ldq, float* scale) {
  const int64_t nb = fp8_blocks(N), kb = fp8_blocks(K);
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t j = 0; j < kb; ++j)
      scale[i * kb + j] = quantize_tile(w, wtype, ldw, i * kFp8Block, end_of(i * kFp8Block, N),
                                        j * kFp8Block, end_of(j * kFp8Block, K), q, ldq, 1);
}

void dequantize_fp8_1x128_ref(const uint8_t* q, int64_t M, int64_t K, int64_t ldq,
                              const float* scale, void* out, DType otype, int64_t ldo) {
  const int64_t kb = fp8_blocks(K);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k)
      store(out, otype, m * ldo + k, e4m3_to_f32(q[m * ldq + k]) * scale[m * kb + k / kFp8Block]);
}

void dequantize_fp8_128x128_ref(const uint8_t* q, int64_t N, int64_t K, int64_t ldq,
                                const float* scale, void* out, DType otype, int64_t ldo) {
  const int64_t kb = fp8_blocks(K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      store(out, otype, n * ldo + k,
            e4m3_to_f32(q[n * ldq + k]) * scale[(n / kFp8Block) * kb + k / kFp8Block]);
}

}  // namespace dsv3
