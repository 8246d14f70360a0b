#include "train/tlinear.h"

#include <cstring>
#include <string>

#include "core/check.h"
#include "core/scratch.h"
#include "core/dtype.h"
#include "kernels/convert.h"
#include "kernels/gemm.h"
#include "kernels/quant.h"

namespace dsv3 {
namespace {

int64_t blocks(int64_t n) { return (n + 127) / 128; }

uint16_t* to_bf16(std::vector<uint16_t>& buf, const float* x, int64_t n) {
  uint16_t* p = grow(buf, n);
  convert_f32_to_bf16(x, p, n);
  return p;
}

// W [n] in BF16: its place in the context's copy of the arena, or rounded into buf.
const uint16_t* weight_bf16(const TLinearCtx& c, std::vector<uint16_t>& buf, const float* W, int64_t n) {
  if (c.w_bf16 != nullptr && W >= c.w_base && W < c.w_base + c.w_n) {
    DSV3_ASSERT(W + n <= c.w_base + c.w_n);
    return c.w_bf16 + (W - c.w_base);
  }
  return to_bf16(buf, W, n);
}

}  // namespace

const char* precision_name(Precision p) {
  return p == Precision::F32 ? "f32" : p == Precision::BF16 ? "bf16" : "fp8";
}

Precision parse_precision(const char* s) {
  const std::string v = s ? s : "";
  if (v == "f32") return Precision::F32;
  if (v == "bf16") return Precision::BF16;
  if (v == "fp8") return Precision::FP8;
  DSV3_FAIL("precision must be f32, bf16 or fp8, got '", v, "'");
}

const uint16_t* tlinear_input_bf16(const float* x, int64_t M, int64_t K, const TLinearCtx& c,
                                   TLinearScratch& s) {
  return c.prec == Precision::BF16 && M * K > 0 ? to_bf16(s.x16, x, M * K) : nullptr;
}

void tlinear_forward(float* y, const float* x, const float* W, int64_t M, int64_t N, int64_t K,
                     const TLinearCtx& c, TLinearScratch& s, bool acc, const uint16_t* x16) {
  if (M == 0 || N == 0) return;
  switch (c.prec) {
    case Precision::F32: {
      GemmF32 g;
      g.M = M; g.N = N; g.K = K;
      g.A = x; g.lda = K;
      g.B = W; g.ldb = K; g.trans_b = true;
      g.C = y; g.ldc = N; g.accumulate = acc;
      gemm_f32(g, c.threads);
      return;
    }
    case Precision::BF16: {
      GemmBF16 g;
      g.M = M; g.N = N; g.K = K;
      g.A = x16 ? x16 : to_bf16(s.a16, x, M * K); g.lda = K;
      g.B = weight_bf16(c, s.b16, W, N * K); g.ldb = K; g.trans_b = true;
      g.C = y; g.ldc = N; g.accumulate = acc;
      gemm_bf16(g, c.threads);
      return;
    }
    case Precision::FP8: {
      uint8_t* a = grow(s.a8, M * K);
      float* sa = grow(s.sa, M * blocks(K));
      quantize_fp8_1x128(x, DType::F32, M, K, K, a, K, sa, c.threads);
      uint8_t* b = grow(s.b8, N * K);
      float* sb = grow(s.sb, blocks(N) * blocks(K));
      quantize_fp8_128x128(W, DType::F32, N, K, K, b, K, sb, c.threads);
      GemmFP8 g;
      g.M = M; g.N = N; g.K = K;
      g.A = a; g.lda = K; g.a_scale = sa; g.lda_scale = blocks(K);
      g.B = b; g.ldb = K; g.trans_b = true; g.b_layout = Fp8BLayout::Block128;
      g.b_scale = sb; g.ldb_scale = blocks(K);
      g.C = y; g.ldc = N; g.accumulate = acc;
      gemm_fp8(g, c.threads);
      return;
    }
  }
}

void tlinear_backward(float* dx, float* dW, const float* dy, const float* x, const float* W,
                      int64_t M, int64_t N, int64_t K, const TLinearCtx& c, TLinearScratch& s,
                      bool acc_dx, const uint16_t* x16) {
  if (M == 0) return;
  if (c.defer != nullptr && dW != nullptr) {
    DeferredWGrad& d = c.defer->emplace_back();
    d.dW = dW;
    d.W = W;
    d.M = M;
    d.N = N;
    d.K = K;
    d.prec = c.prec;
    d.dy.assign(dy, dy + M * N);
    d.x.assign(x, x + M * K);
    dW = nullptr;
    if (dx == nullptr) return;
  }
  switch (c.prec) {
    case Precision::F32: {
      if (dx) {
        GemmF32 g;  // dx [M,K] = dy [M,N] · W [N,K]
        g.M = M; g.N = K; g.K = N;
        g.A = dy; g.lda = N;
        g.B = W; g.ldb = K;
        g.C = dx; g.ldc = K; g.accumulate = acc_dx;
        gemm_f32(g, c.threads);
      }
      if (dW) {
        GemmF32 g;  // dW [N,K] += dyᵀ [N,M] · x [M,K]
        g.M = N; g.N = K; g.K = M;
        g.A = dy; g.lda = N; g.trans_a = true;
        g.B = x; g.ldb = K;
        g.C = dW; g.ldc = K; g.accumulate = true;
        gemm_f32(g, c.threads);
      }
      return;
    }
    case Precision::BF16: {
      const uint16_t* dy16 = to_bf16(s.a16, dy, M * N);
      if (dx) {
        GemmBF16 g;
        g.M = M; g.N = K; g.K = N;
        g.A = dy16; g.lda = N;
        g.B = weight_bf16(c, s.b16, W, N * K); g.ldb = K;
        g.C = dx; g.ldc = K; g.accumulate = acc_dx;
        gemm_bf16(g, c.threads);
      }
      if (dW) {
        GemmBF16 g;
        g.M = N; g.N = K; g.K = M;
        g.A = dy16; g.lda = N; g.trans_a = true;
        g.B = x16 ? x16 : to_bf16(s.b16, x, M * K); g.ldb = K;
        g.C = dW; g.ldc = K; g.accumulate = true;
        gemm_bf16(g, c.threads);
      }
      return;
    }
    case Precision::FP8: {
      if (dx) {
        // dgrad: dy in 1x128 tiles along N (this GEMM's K), W in its 128x128 blocks.
        uint8_t* a = grow(s.a8, M * N);
        float* sa = grow(s.sa, M * blocks(N));
        quantize_fp8_1x128(dy, DType::F32, M, N, N, a, N, sa, c.threads);
        uint8_t* b = grow(s.b8, N * K);
        float* sb = grow(s.sb, blocks(N) * blocks(K));
        quantize_fp8_128x128(W, DType::F32, N, K, K, b, K, sb, c.threads);
        GemmFP8 g;
        g.M = M; g.N = K; g.K = N;
        g.A = a; g.lda = N; g.a_scale = sa; g.lda_scale = blocks(N);
        g.B = b; g.ldb = K; g.trans_b = false; g.b_layout = Fp8BLayout::Block128;
        g.b_scale = sb; g.ldb_scale = blocks(K);
        g.C = dx; g.ldc = K; g.accumulate = acc_dx;
        gemm_fp8(g, c.threads);
      }
      if (dW) {
        // wgrad: both operands in 128x1 tiles along the tokens (the contraction).
        uint8_t* a = grow(s.a8, N * M);
        float* sa = grow(s.sa, N * blocks(M));
        quantize_fp8_128x1_t(dy, DType::F32, M, N, N, a, M, sa, c.threads);
        uint8_t* b = grow(s.b8, K * M);
        float* sb = grow(s.sb, K * blocks(M));
        quantize_fp8_128x1_t(x, DType::F32, M, K, K, b, M, sb, c.threads);
        GemmFP8 g;
        g.M = N; g.N = K; g.K = M;
        g.A = a; g.lda = M; g.a_scale = sa; g.lda_scale = blocks(M);
        g.B = b; g.ldb = M; g.trans_b = true; g.b_layout = Fp8BLayout::Col128;
        g.b_scale = sb; g.ldb_scale = blocks(M);
        g.C = dW; g.ldc = K; g.accumulate = true;
        gemm_fp8(g, c.threads);
      }
      return;
    }
  }
}

void tlinear_run_deferred(std::vector<DeferredWGrad>& d, const TLinearCtx& c, TLinearScratch& s) {
  TLinearCtx now = c;
  now.defer = nullptr;
  for (DeferredWGrad& w : d) {
    now.prec = w.prec;
    tlinear_backward(nullptr, w.dW, w.dy.data(), w.x.data(), w.W, w.M, w.N, w.K, now, s);
  }
  d.clear();
}

}  // namespace dsv3
