// FP8 block-scaled GEMM (gemm.h, DeepSeek-V3 report §3.3): operands made by the quantisers
// of quant.h in the three layouts training uses (fprop 1x128 x 128x128 with W [N,K], dgrad
// with W [K,N], wgrad 128x1 both sides), plus BF16 activations.
//  1. gemm_fp8 (every ISA path: AVX-512, AVX2, scalar) against gemm_fp8_ref. Both sum each 128-K block in FP32,
//     in different orders; both partials are within gamma_128·Σ_blk|a||b| of the exact
//     block sum, and the block promotions C += partial·(sa·sb) then add at most a few u
//     per block. Tolerance: 2·(128 + blocks(K) + 4)·u·(Σ_k |a·sa||b·sb| + |C0|).
//  2. gemm_fp8_ref against F32 GEMM of the dequantised operands: both compute the same
//     exact products up to FP32 rounding (dequantised values are code·scale rounded once),
//     tolerance 4·(K + 8)·u·(Σ|a·sa||b·sb| + |C0|).
//  3. gemm_fp8_ref against the F32 GEMM of the original (unquantised) operands: E4M3 keeps
//     3 mantissa bits, so each operand is within 2^-4 relative (plus subnormal flushes near
//     amax/448·2^-9), tolerance (2·2^-4 + 2^-8)·Σ|x||w| + 2^-9-scale slack.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/dtype.h"
#include "gemm_test_util.h"
#include "kernels/gemm.h"
#include "kernels/gemm_internal.h"
#include "kernels/quant.h"

namespace dsv3 {
namespace {

using testing::IsaGuard;
using testing::kU;
using testing::Mat;

enum class Form { Fprop, Dgrad, Wgrad, FpropBf16A, FpropF32A };

// A copy of m (whose rows are stored densely from m.p) with row stride cols + pad.
Mat<float> padded(const Mat<float>& m, int64_t pad) {
  Mat<float> r(m.rows, m.cols, pad);
  for (int64_t i = 0; i < m.rows; ++i)
    for (int64_t j = 0; j < m.cols; ++j) r.at(i, j) = m.p[i * m.cols + j];
  return r;
}

struct Fp8Case {
  // Operands as the GEMM sees them.
  Mat<uint8_t> a, b;       // A [M,K]; B [N,K] (trans) or [K,N]
  Mat<float> sa, sb;       // scale grids
  Mat<uint16_t> a16;       // BF16 A (FpropBf16A)
  Mat<float> a32;          // F32 A (FpropF32A)
  Mat<float> xa, xb;       // original F32 operands, as op(A) [M,K] and op(B) [K,N]
  GemmFP8 p;
  Fp8Case(Form f, int64_t M, int64_t N, int64_t K, std::mt19937& rng)
      : a(M, K, 3), b(f == Form::Dgrad ? K : N, f == Form::Dgrad ? N : K, 5),
        sa(M, fp8_blocks(K), 1), sb(1, 1, 0), a16(M, K, 2), a32(M, K, 3), xa(M, K, 0), xb(K, N, 0) {
    std::normal_distribution<float> g(0.f, 1.f);
    // Rows of very different magnitude exercise the per-tile scales.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) xa.at(i, k) = g(rng) * (i % 3 == 0 ? 100.f : 0.01f + float(k % 7));
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < N; ++j) xb.at(k, j) = g(rng) * (j % 5 == 0 ? 0.001f : 1.f);
    p.M = M; p.N = N; p.K = K;
    p.C = nullptr;
    if (f == Form::Wgrad) {
      // dW = dyᵀ·x: A = dyᵀ and B = xᵀ, each quantised along tokens by the 128x1 quantiser
      // from its [tokens, features] storage.
      Mat<float> dy(K, M, 0), x(K, N, 0);
      for (int64_t t = 0; t < K; ++t) {
        for (int64_t i = 0; i < M; ++i) dy.at(t, i) = xa.at(i, t);
        for (int64_t j = 0; j < N; ++j) x.at(t, j) = xb.at(t, j);
      }
      quantize_fp8_128x1_t_ref(dy.p, DType::F32, K, M, dy.ld, a.p, a.ld, sa.p);
      sa.ld = fp8_blocks(K);
      sb = Mat<float>(N, fp8_blocks(K), 2);
      quantize_fp8_128x1_t_ref(x.p, DType::F32, K, N, x.ld, b.p, b.ld, sb.p);
      // quantize_fp8_128x1_t writes scale rows of blocks(K) floats, dense.
      sb.ld = fp8_blocks(K);
      p.b_layout = Fp8BLayout::Col128;
      p.trans_b = true;
    } else {
      quantize_fp8_1x128_ref(xa.p, DType::F32, M, K, xa.ld, a.p, a.ld, sa.p);
      sa.ld = fp8_blocks(K);
      if (f == Form::Dgrad) {  // W stored [K,N] (= [out, in]); blocks over the stored matrix
        sb = Mat<float>(fp8_blocks(K), fp8_blocks(N), 0);
        quantize_fp8_128x128_ref(xb.p, DType::F32, K, N, xb.ld, b.p, b.ld, sb.p);
        p.trans_b = false;
      } else {  // W stored [N,K]
        Mat<float> w(N, K, 0);
        for (int64_t j = 0; j < N; ++j)
          for (int64_t k = 0; k < K; ++k) w.at(j, k) = xb.at(k, j);
        sb = Mat<float>(fp8_blocks(N), fp8_blocks(K), 0);
        quantize_fp8_128x128_ref(w.p, DType::F32, N, K, w.ld, b.p, b.ld, sb.p);
        p.trans_b = true;
      }
    }
    // The quantisers write dense scale rows; give the GEMM strided ones.
    sa = padded(sa, 3);
    sb = padded(sb, 2);
    p.A = a.p; p.lda = a.ld; p.a_scale = sa.p; p.lda_scale = sa.ld;
    p.B = b.p; p.ldb = b.ld; p.b_scale = sb.p; p.ldb_scale = sb.ld;
    if (f == Form::FpropBf16A) {
      for (int64_t i = 0; i < M; ++i)
        for (int64_t k = 0; k < K; ++k) a16.at(i, k) = f32_to_bf16(xa.at(i, k));
      p.A_bf16 = a16.p; p.lda = a16.ld;
    }
    if (f == Form::FpropF32A) {
      for (int64_t i = 0; i < M; ++i)
        for (int64_t k = 0; k < K; ++k) a32.at(i, k) = xa.at(i, k);
      p.A_f32 = a32.p; p.lda = a32.ld;
    }
  }
  // Decoded, scaled operand values as the GEMM defines them.
  double av(int64_t i, int64_t k) const {
    if (p.A_f32) return p.A_f32[i * p.lda + k];
    if (p.A_bf16) return bf16_to_f32(p.A_bf16[i * p.lda + k]);
    return double(e4m3_to_f32(p.A[i * p.lda + k])) * p.a_scale[i * p.lda_scale + k / 128];
  }
  double bv(int64_t k, int64_t j) const {
    const float code = e4m3_to_f32(p.trans_b ? p.B[j * p.ldb + k] : p.B[k * p.ldb + j]);
    float s;
    if (p.b_layout == Fp8BLayout::Col128) s = p.b_scale[j * p.ldb_scale + k / 128];
    else if (p.trans_b) s = p.b_scale[(j / 128) * p.ldb_scale + k / 128];
    else s = p.b_scale[(k / 128) * p.ldb_scale + j / 128];
    return double(code) * s;
  }
};

struct Shape {
  int64_t M, N, K;
};

std::vector<Shape> shapes() {
  // Edges of both fast paths' blocking: AVX-512 14x32 tiles with KC 1024, AVX2 6x16 tiles
  // with KC 256 and MC 120 ({13, 18, 520}: three KC steps, the last one 8 wide; {530, 9,
  // 130}: tall M, several A blocks, the shared-B schedule at 2 threads).
  std::vector<Shape> s = {{1, 1, 1}, {3, 7, 127}, {17, 33, 128}, {15, 129, 129},
                          {2, 3, 300}, {31, 65, 257}, {1, 40, 1100}, {6, 130, 257}, {9, 45, 260},
                          {13, 18, 520}, {530, 9, 130}};
  if (testing::kFull)
    s.insert(s.end(), {{65, 257, 385}, {129, 63, 1030}, {300, 130, 200}, {7, 300, 2100}});
  return s;
}

const char* form_name(Form f) {
  return f == Form::Fprop ? "fprop" : f == Form::Dgrad ? "dgrad" : f == Form::Wgrad ? "wgrad"
       : f == Form::FpropBf16A ? "fprop-bf16A" : "fprop-f32A";
}

// Σ_k |a·sa||b·sb| per element, from the decoded operands.
Mat<float> abs_sums(const Fp8Case& c) {
  const GemmFP8& p = c.p;
  Mat<float> ad(p.M, p.K, 0), bd(p.K, p.N, 0), S(p.M, p.N, 0);
  for (int64_t i = 0; i < p.M; ++i)
    for (int64_t k = 0; k < p.K; ++k) ad.at(i, k) = float(std::fabs(c.av(i, k)));
  for (int64_t k = 0; k < p.K; ++k)
    for (int64_t j = 0; j < p.N; ++j) bd.at(k, j) = float(std::fabs(c.bv(k, j)));
  gemm_f32_ref({p.M, p.N, p.K, ad.p, ad.ld, false, bd.p, bd.ld, false, S.p, S.ld, false});
  return S;
}

// The starting C of every comparison (accumulate adds to it).
float c0_at(int64_t i, int64_t j) { return float((i + 2 * j) % 5) - 2.f; }

// What a path must reproduce on one case: gemm_fp8_ref's C with accumulate off and on, and
// Σ|a||b| for the tolerance. Computed once, shared by every path run on the case.
struct Expected {
  Mat<float> R[2], S;
  explicit Expected(const Fp8Case& c)
      : R{Mat<float>(c.p.M, c.p.N, 0), Mat<float>(c.p.M, c.p.N, 0)}, S(abs_sums(c)) {
    for (int acc = 0; acc < 2; ++acc) {
      for (int64_t i = 0; i < c.p.M; ++i)
        for (int64_t j = 0; j < c.p.N; ++j) R[acc].at(i, j) = c0_at(i, j);
      GemmFP8 p = c.p;
      p.accumulate = acc;
      p.C = R[acc].p; p.ldc = R[acc].ld;
      gemm_fp8_ref(p);
    }
  }
};

// Runs run(p) on c with accumulate off and on and compares C with the reference's.
template <class Run>
void compare_with_ref(const Fp8Case& c, Form f, const Expected& e, const char* path, Run run) {
  const int64_t M = c.p.M, N = c.p.N, K = c.p.K;
  for (int acc = 0; acc < 2; ++acc) {
    const Mat<float>& R = e.R[acc];
    Mat<float> C(M, N, 3);
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) C.at(i, j) = c0_at(i, j);
      C.at(i, N) = 777.f;
    }
    GemmFP8 p = c.p;
    p.accumulate = acc;
    p.C = C.p; p.ldc = C.ld;
    run(p);
    const double nblk = double(fp8_blocks(K));
    int bad = 0;
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t j = 0; j < N; ++j) {
        const double sum = double(e.S.p[i * e.S.ld + j]) + (acc ? 2.0 : 0.0);
        const double tol = 2.0 * (128.0 + nblk + 4.0) * kU * sum;
        const double err = std::fabs(double(C.at(i, j)) - double(R.p[i * R.ld + j]));
        if (!(err <= tol) && bad++ < 5)
          ADD_FAILURE() << form_name(f) << " " << path << " M=" << M << " N=" << N << " K=" << K
                        << " acc=" << acc << " at (" << i << "," << j << "): got " << C.at(i, j)
                        << " want " << R.p[i * R.ld + j] << " tol " << tol;
      }
      ASSERT_EQ(C.at(i, N), 777.f) << "wrote past N";
    }
  }
}

TEST(GemmFp8, AllPathsMatchReference) {
  IsaGuard guard;
  std::mt19937 rng(11);
  int n = 0;
  for (const Shape& s : shapes()) {
    for (Form f : {Form::Fprop, Form::Dgrad, Form::Wgrad, Form::FpropBf16A, Form::FpropF32A}) {
      const Fp8Case c(f, s.M, s.N, s.K, rng);
      const Expected e(c);
      for (const testing::Variant& v : testing::variants()) {
        // The scalar path is gemm_fp8_ref itself: small shapes are enough to check the dispatch.
        if (v.isa == Isa::Scalar && s.M * s.N * s.K > 100000) continue;
        v.set();
        compare_with_ref(c, f, e, v.name().c_str(), [&](const GemmFP8& p) { gemm_fp8(p, 1 + (n++ % 2)); });
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
  }
}

// The AVX-512 broadcast-W kernel (gemm_bcast_avx512.cpp) called directly on every shape
// above and every form it serves (W [N,K]: fprop with E4M3 or BF16 A, wgrad's Col128
// scales), whatever gemm_fp8 would route there; then shapes that gemm_fp8 itself routes
// to it (gemm_avx512.cpp): 6..64 rows of a W of >= 2^20 codes, 6..128 of one marked
// streamed, or rows filling >= 90% of their half vectors.
TEST(GemmFp8, BroadcastPath) {
  if (best_isa() != Isa::Avx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  std::mt19937 rng(13);
  int n = 0;
  std::vector<Shape> all = shapes();
  all.push_back({47, 20, 4200});  // two K blocks of 4096, the second 104 long
  // A last vector of <= 8 rows (256-bit operations) alone, after one full vector, and
  // after two in a 3-vector tile.
  all.insert(all.end(), {{8, 9, 256}, {24, 20, 300}, {40, 19, 1100}});
  IsaGuard guard;
  // Both forms of the kernel (core/cpu.h Bf16Mode); F32 activations take the FMA form in
  // either mode.
  for (Bf16Mode mode : {Bf16Mode::Dot, Bf16Mode::Fma}) {
    set_bf16_mode(mode);
    for (const Shape& s : all) {
      for (Form f : {Form::Fprop, Form::Wgrad, Form::FpropBf16A, Form::FpropF32A}) {
        const Fp8Case c(f, s.M, s.N, s.K, rng);
        compare_with_ref(c, f, Expected(c), mode == Bf16Mode::Dot ? "bcast/dot" : "bcast/fma",
                         [&](const GemmFP8& p) { detail::gemm_bcast_fp8_avx512(p, 1 + (n++ % 3)); });
      }
    }
  }
  set_bf16_mode(best_bf16_mode());
  set_isa(Isa::Avx512);
  const Fp8Case c(Form::FpropBf16A, 16, 2048, 1024, rng);
  compare_with_ref(c, Form::FpropBf16A, Expected(c), "routed", [](const GemmFP8& p) { gemm_fp8(p, 2); });
  for (Shape s : {Shape{7, 1024, 1024}, Shape{24, 768, 300}, Shape{22, 520, 260}}) {
    const Fp8Case c1(Form::FpropBf16A, s.M, s.N, s.K, rng);
    compare_with_ref(c1, Form::FpropBf16A, Expected(c1), "routed, 1 thread", [](const GemmFP8& p) { gemm_fp8(p, 1); });
  }
  // A small W marked streamed (an inference weight) at row counts the in-cache rule leaves
  // packed (12 rows: 75% of a vector; 100: three row tiles, the last vector half).
  for (int64_t m : {12, 100}) {
    const Fp8Case cs(Form::FpropBf16A, m, 520, 300, rng);
    compare_with_ref(cs, Form::FpropBf16A, Expected(cs), "streamed W", [](const GemmFP8& p) {
      GemmFP8 q = p;
      q.w_streamed = true;
      gemm_fp8(q, 2);
    });
  }
}

// Every one of the 256 E4M3 codes through every path, exactly: C[0,j] = 1.0 · code j (the
// other K terms are 0 · code j = 0, or NaN for the NaN codes, which must give NaN anyway),
// with B stored [N,K] and [K,N], N = 256 columns, so that the vector decoders (16 codes per
// row for [K,N], 8x8 transposed blocks for [N,K]) see every code; with 1 row (the skinny
// kernels) and 12 (the packed one). Then the codes as A: C[i,0] = code i · 1.0, 256 rows.
// Scales 1: the result is the decoded value, which e4m3_to_f32 defines (core/dtype.h).
TEST(GemmFp8, EveryCodeDecodesExactly) {
  IsaGuard guard;
  const int64_t N = 256, K = 8;
  std::vector<uint8_t> bt(N * K), bn(K * N);
  for (int64_t j = 0; j < N; ++j)
    for (int64_t k = 0; k < K; ++k) bt[size_t(j * K + k)] = bn[size_t(k * N + j)] = uint8_t(j);
  const std::vector<float> one(N, 1.f);
  auto check = [](float got, int64_t code, const std::string& what) {
    const float want = e4m3_to_f32(uint8_t(code));
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(got)) << what << " code " << code;
    else EXPECT_EQ(got, want) << what << " code " << code;
  };
  for (int64_t M : {1, 12}) {
    std::vector<uint8_t> a(size_t(M * K), 0);
    a[0] = f32_to_e4m3(1.f);
    for (bool trans_b : {true, false}) {
      GemmFP8 p;
      p.M = M; p.N = N; p.K = K;
      p.A = a.data(); p.lda = K; p.a_scale = one.data(); p.lda_scale = 1;
      p.B = trans_b ? bt.data() : bn.data(); p.ldb = trans_b ? K : N; p.trans_b = trans_b;
      p.b_scale = one.data(); p.ldb_scale = trans_b ? 1 : 2;  // blocks(K) = 1; blocks(N) = 2
      for (const testing::Variant& v : testing::variants()) {
        v.set();
        std::vector<float> C(size_t(M * N), 5.f);
        p.C = C.data(); p.ldc = N;
        gemm_fp8(p, 1);
        for (int64_t j = 0; j < N; ++j)
          check(C[size_t(j)], j, v.name() + " M=" + std::to_string(M) + " trans_b=" + std::to_string(trans_b));
        // The broadcast-W kernel decodes W rows its own way (both forms), called directly.
        if (v.isa == Isa::Avx512 && trans_b) {
          std::fill(C.begin(), C.end(), 5.f);
          detail::gemm_bcast_fp8_avx512(p, 1);
          for (int64_t j = 0; j < N; ++j) check(C[size_t(j)], j, v.name() + " bcast M=" + std::to_string(M));
        }
      }
    }
  }
  std::vector<uint8_t> a(size_t(N * K), 0), b(size_t(K), 0);
  for (int64_t i = 0; i < N; ++i) a[size_t(i * K)] = uint8_t(i);
  b[0] = f32_to_e4m3(1.f);
  GemmFP8 p;
  p.M = N; p.N = 1; p.K = K;
  p.A = a.data(); p.lda = K; p.a_scale = one.data(); p.lda_scale = 1;
  p.B = b.data(); p.ldb = K; p.trans_b = true;
  p.b_scale = one.data(); p.ldb_scale = 1;
  for (const testing::Variant& v : testing::variants()) {
    v.set();
    std::vector<float> C(size_t(N), 5.f);
    p.C = C.data(); p.ldc = 1;
    gemm_fp8(p, 1);
    for (int64_t i = 0; i < N; ++i) check(C[size_t(i)], i, v.name() + " as A");
  }
}

// The reference against plain F32 GEMMs: of the dequantised operands (tight), and of the
// original operands (FP8 quantisation error).
TEST(GemmFp8, ReferenceMatchesDequantisedAndOriginal) {
  std::mt19937 rng(5);
  for (const Shape& s : std::vector<Shape>{{5, 9, 300}, {33, 130, 257}, {2, 260, 129}}) {
    for (Form f : {Form::Fprop, Form::Dgrad, Form::Wgrad, Form::FpropBf16A}) {
      Fp8Case c(f, s.M, s.N, s.K, rng);
      Mat<float> R(s.M, s.N, 0);
      GemmFP8 p = c.p;
      p.C = R.p; p.ldc = R.ld;
      gemm_fp8_ref(p);
      for (int64_t i = 0; i < s.M; ++i) {
        for (int64_t j = 0; j < s.N; ++j) {
          double deq = 0, sum_deq = 0, orig = 0, sum_orig = 0;
          for (int64_t k = 0; k < s.K; ++k) {
            const double a = float(c.av(i, k)), b = float(c.bv(k, j));  // dequantised F32
            deq += a * b;
            sum_deq += std::fabs(a * b);
            orig += double(c.xa.at(i, k)) * c.xb.at(k, j);
            sum_orig += std::fabs(double(c.xa.at(i, k)) * c.xb.at(k, j));
          }
          const double r = R.at(i, j);
          ASSERT_LE(std::fabs(r - deq), 4.0 * double(s.K + 8) * kU * sum_deq + 1e-30)
              << form_name(f) << " (" << i << "," << j << ")";
          ASSERT_LE(std::fabs(r - orig), (2.0 / 16 + 1.0 / 256) * sum_orig + 1e-6 * sum_orig)
              << form_name(f) << " (" << i << "," << j << ")";
        }
      }
    }
  }
}

TEST(GemmFp8, BadArgumentsThrow) {
  std::mt19937 rng(1);
  Fp8Case c(Form::Fprop, 4, 4, 200, rng);
  std::vector<float> C(16);
  GemmFP8 p = c.p;
  p.C = C.data(); p.ldc = 4;
  p.lda_scale = 1;  // < blocks(K) = 2
  EXPECT_THROW(gemm_fp8(p), Error);
  p = c.p; p.C = C.data(); p.ldc = 4;
  p.b_layout = Fp8BLayout::Col128; p.trans_b = false; p.ldb = 4;
  EXPECT_THROW(gemm_fp8(p), Error);
  p = c.p; p.C = C.data(); p.ldc = 4;
  p.b_scale = nullptr;
  EXPECT_THROW(gemm_fp8(p), Error);
}

}  // namespace
}  // namespace dsv3
