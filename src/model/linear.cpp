#include "model/linear.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "core/cpu.h"
#include "core/scratch.h"
#include "core/dtype.h"
#include "kernels/convert.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "kernels/row_parallel.h"

namespace dsv3 {

int64_t linear_out(const Weight& w) { return w.w.shape[0]; }
int64_t linear_in(const Weight& w) { return w.w.shape[1]; }

namespace {

// F16 weights: dequantise one row at a time (no DeepSeek release uses F16; correctness only).
void linear_f16(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const Weight& w,
                LinearScratch& s, bool accumulate) {
  const int64_t N = linear_out(w), K = linear_in(w);
  grow(s.w_row, K);
  for (int64_t n = 0; n < N; ++n) {
    dequantize_rows(s.w_row.data(), w, n, 1);
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += x[m * ldx + k] * s.w_row[size_t(k)];
      y[m * ldy + n] = accumulate ? y[m * ldy + n] + acc : acc;
    }
  }
}

// Floats of the one-GEMM hi/lo form's output (2·M rows by a block of columns): 16 MB. Wider
// outputs go in blocks of columns (multiples of 128, the FP8 scale block); only beyond
// M = 16384 rows, where even 128 columns pass it, do the parts take two GEMMs.
constexpr int64_t kLinearPairMaxOut = int64_t(1) << 22;

// Rows [n0, n1) of w as a weight of their own (FP8: n0 on a 128-row scale block).
Weight weight_rows(const Weight& w, int64_t n0, int64_t n1) {
  const int64_t K = linear_in(w);
  DSV3_ASSERT(n0 >= 0 && n0 <= n1 && n1 <= linear_out(w));
  Weight sub = w;
  sub.w.shape[0] = n1 - n0;
  sub.w.data = static_cast<uint8_t*>(w.w.data) + size_t(n0 * K) * dtype_size(w.w.dtype);
  if (w.fp8()) {
    DSV3_ASSERT(n0 % 128 == 0);
    sub.scale.data = w.scale.ptr<float>() + (n0 / 128) * w.scale.shape[1];
    sub.scale.shape[0] = (n1 - n0 + 127) / 128;
  }
  return sub;
}

// y[n] (+)= h[n] + l[n]: the two parts' products first, then the sum they add to.
void add_pair_row(float* y, const float* h, const float* l, int64_t n, bool accumulate) {
  if (accumulate)
    for (int64_t i = 0; i < n; ++i) y[i] += h[i] + l[i];
  else
    for (int64_t i = 0; i < n; ++i) y[i] = h[i] + l[i];
}

// x·wᵀ into C for `rows` rows of activations lda apart, F32 (a32) or BF16 (a16; the other
// null): the GEMM of w's dtype, BF16 or FP8, its weight marked streamed.
void weight_gemm(const float* a32, const uint16_t* a16, int64_t rows, int64_t lda, const Weight& w,
                 float* C, int64_t ldc, bool acc, int threads) {
  if (w.w.dtype == DType::BF16) {
    GemmBF16 g;
    g.M = rows; g.N = linear_out(w); g.K = linear_in(w);
    g.A = a16; g.A_f32 = a32; g.lda = lda;
    g.B = w.w.ptr<uint16_t>(); g.ldb = g.K; g.trans_b = true;
    g.C = C; g.ldc = ldc; g.accumulate = acc;
    g.w_streamed = true;
    gemm_bf16(g, threads);
  } else {
    GemmFP8 g;
    g.M = rows; g.N = linear_out(w); g.K = linear_in(w);
    g.A_bf16 = a16; g.A_f32 = a32; g.lda = lda;
    g.B = w.w.ptr<uint8_t>(); g.ldb = g.K; g.trans_b = true;
    g.b_layout = Fp8BLayout::Block128;
    g.b_scale = w.scale.ptr<float>(); g.ldb_scale = w.scale.shape[1];
    g.C = C; g.ldc = ldc; g.accumulate = acc;
    g.w_streamed = true;
    gemm_fp8(g, threads);
  }
}

}  // namespace

void linear_forward(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const Weight& w,
                    LinearScratch& s, bool accumulate, int threads) {
  const int64_t N = linear_out(w), K = linear_in(w);
  DSV3_ASSERT(w.w.ndim == 2 && M >= 0);
  if (M == 0) return;
  const DType dt = w.w.dtype;
  // Few rows (decode): the GEMV, whose rows do not depend on each other (F32 and F16 weights:
  // one row per call), so a row's result is the same alone or in a batch (docs/serve.md).
  if (M <= kLinearGemvMaxM && M > 1 && dt != DType::BF16 && dt != DType::F8_E4M3)
    return linear_gemv(y, ldy, x, ldx, M, w, s, accumulate, threads);
  if (dt == DType::F32) {
    GemmF32 g;
    g.M = M; g.N = N; g.K = K;
    g.A = x; g.lda = ldx;
    g.B = w.w.ptr<float>(); g.ldb = K; g.trans_b = true;
    g.C = y; g.ldc = ldy; g.accumulate = accumulate;
    gemm_f32(g, threads);
    return;
  }
  if (dt == DType::F16) return linear_f16(y, ldy, x, ldx, M, w, s, accumulate);
  DSV3_ASSERT(dt == DType::BF16 || dt == DType::F8_E4M3);
  if (M <= kLinearGemvMaxM) return linear_gemv(y, ldy, x, ldx, M, w, s, accumulate, threads);
  // Where BF16 is multiplied as FP32 FMAs anyway (core/cpu.h Bf16Mode::Fma; and below
  // AVX-512, whose kernels widen every operand to F32), the weight takes x as it is, F32:
  // one GEMM, no split, and the exact F32 products.
  const bool x_f32 = bf16_mode() == Bf16Mode::Fma || active_isa() < Isa::Avx512;
  if (!w.x_bf16 && x_f32) return weight_gemm(x, nullptr, M, ldx, w, y, ldy, accumulate, threads);
  // x = hi + lo with hi = bf16(x), lo = bf16(x − hi): hi·Wᵀ + lo·Wᵀ gives x·Wᵀ to ~2^-16
  // relative per product (docs/numerics.md: activations are not rounded to BF16) — unless
  // the weight asks for BF16 activations (Weight::x_bf16): then hi alone.
  // Both parts go through ONE GEMM as 2M rows [hi ; lo], so W is read, decoded (FP8) and
  // packed once per call for both, and the small per-expert M's get twice the rows per W
  // pass; the two halves are summed afterwards, in blocks of columns where the output would
  // pass kLinearPairMaxOut (a vocabulary head, a full-size model's kv_b_proj over the whole
  // context). Past 16384 rows, two GEMMs, the second accumulating. Either way a row's result
  // depends only on the call's shape, never on the other rows (docs/serve.md).
  uint16_t* hi = grow(s.x_bf16, 2 * M * K);
  uint16_t* lo = hi + M * K;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    if (w.x_bf16)
      convert_f32_to_bf16(xr, hi + m * K, K);
    else
      split_f32_to_bf16_pair(xr, hi + m * K, lo + m * K, K);
  }
  // x·wbᵀ for `rows` rows of A into C (wb: w or a block of its rows).
  auto gemm = [&](const uint16_t* A, int64_t rows, const Weight& wb, float* C, int64_t ldc, bool acc) {
    weight_gemm(nullptr, A, rows, K, wb, C, ldc, acc, threads);
  };
  if (w.x_bf16) return gemm(hi, M, w, y, ldy, accumulate);
  const int64_t nb = std::min(N, kLinearPairMaxOut / (2 * M) / 128 * 128);
  if (nb < 128 && nb < N) {
    gemm(hi, M, w, y, ldy, accumulate);
    gemm(lo, M, w, y, ldy, true);
    return;
  }
  float* y2 = grow(s.y2, 2 * M * nb);
  for (int64_t n0 = 0; n0 < N; n0 += nb) {
    const int64_t nc = std::min(nb, N - n0);
    gemm(hi, 2 * M, weight_rows(w, n0, n0 + nc), y2, nc, false);
    parallel_rows(M, M * nc, threads, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        add_pair_row(y + m * ldy + n0, y2 + m * nc, y2 + (M + m) * nc, nc, accumulate);
    });
  }
}

void linear_gemv(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const Weight& w,
                 LinearScratch& s, bool accumulate, int threads) {
  const int64_t N = linear_out(w), K = linear_in(w);
  const DType dt = w.w.dtype;
  if (dt != DType::BF16 && dt != DType::F8_E4M3) {  // no GEMV: one row at a time
    for (int64_t m = 0; m < M; ++m)
      linear_forward(y + m * ldy, ldy, x + m * ldx, ldx, 1, w, s, accumulate, threads);
    return;
  }
  for (int64_t m0 = 0; m0 < M; m0 += kGemvMaxM) {
    const int64_t mc = std::min<int64_t>(kGemvMaxM, M - m0);
    // Decode: the weight streams once; the kernels carry x as a BF16 hi+lo pair (gemv.h).
    if (dt == DType::BF16) {
      GemvBF16 g;
      g.M = mc; g.N = N; g.K = K;
      g.w = w.w.ptr<uint16_t>(); g.ldw = K;
      g.x = x + m0 * ldx; g.ldx = ldx;
      g.y = y + m0 * ldy; g.ldy = ldy; g.accumulate = accumulate;
      g.x_bf16 = w.x_bf16;
      gemv_bf16(g, threads);
    } else {
      GemvFP8 g;
      g.M = mc; g.N = N; g.K = K;
      g.w = w.w.ptr<uint8_t>(); g.ldw = K; g.w_scale = w.scale.ptr<float>();
      g.x = x + m0 * ldx; g.ldx = ldx;
      g.y = y + m0 * ldy; g.ldy = ldy; g.accumulate = accumulate;
      if (w.x_bf16) g.path = Fp8Path::BF16LutX8;
      gemv_fp8(g, threads);
    }
  }
}

void LinearBatch::run(float* y, int64_t ldy, const float* x, int64_t ldx, const Weight& w,
                      LinearScratch& s, bool accumulate) const {
  if (!invariant) return linear_forward(y, ldy, x, ldx, rows(), w, s, accumulate, threads);
  const int64_t ns = small_rows();
  if (ns > 0) linear_gemv(y, ldy, x, ldx, ns, w, s, accumulate, threads);
  for (int i = n_small; i < n_seqs; ++i)
    linear_forward(y + off[i] * ldy, ldy, x + off[i] * ldx, ldx, off[i + 1] - off[i], w, s,
                   accumulate, threads);
}

void linear_rows(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t M, const Weight& w,
                 int64_t n0, int64_t n1, LinearScratch& s, bool accumulate) {
  DSV3_ASSERT(n0 >= 0 && n0 <= n1 && n1 <= linear_out(w) && M <= kGemvMaxM);
  if (n0 == n1 || M == 0) return;
  linear_gemv(y + n0, ldy, x, ldx, M, weight_rows(w, n0, n1), s, accumulate, 1);
}

void dequantize_rows(float* out, const Weight& w, int64_t r0, int64_t n) {
  const int64_t K = linear_in(w);
  DSV3_ASSERT(r0 >= 0 && r0 + n <= linear_out(w));
  for (int64_t r = r0; r < r0 + n; ++r) {
    float* o = out + (r - r0) * K;
    switch (w.w.dtype) {
      case DType::F32: std::memcpy(o, w.w.ptr<float>() + r * K, size_t(K) * sizeof(float)); break;
      case DType::BF16: convert_bf16_to_f32(w.w.ptr<uint16_t>() + r * K, o, K); break;
      case DType::F16: convert_f16_to_f32(w.w.ptr<uint16_t>() + r * K, o, K); break;
      case DType::F8_E4M3: {
        convert_e4m3_to_f32(w.w.ptr<uint8_t>() + r * K, o, K);
        const float* sc = w.scale.ptr<float>() + (r / 128) * w.scale.shape[1];
        for (int64_t k = 0; k < K; ++k) o[k] *= sc[k / 128];
        break;
      }
      default: DSV3_ASSERT(false);
    }
  }
}

std::vector<float> weight_to_f32(const Weight& w) {
  const int64_t n = w.w.numel();
  std::vector<float> out(static_cast<size_t>(n));
  switch (w.w.dtype) {
    case DType::F32: std::memcpy(out.data(), w.w.data, size_t(n) * sizeof(float)); break;
    case DType::BF16: convert_bf16_to_f32(w.w.ptr<uint16_t>(), out.data(), n); break;
    case DType::F16: convert_f16_to_f32(w.w.ptr<uint16_t>(), out.data(), n); break;
    default: DSV3_FAIL("weight of dtype ", dtype_name(w.w.dtype), " cannot be a norm or bias");
  }
  return out;
}

}  // namespace dsv3
