// F32 and BF16 GEMM: every ISA path (set_isa) against the scalar reference, all four
// transpose combinations, accumulate on and off, odd shapes, padded leading dimensions,
// operands one element off 64-byte alignment, 1..3 threads.
//
// Tolerance, from the math: the kernels form each C element as FP32 sums of exact (BF16)
// or FMA-rounded (F32) products, K terms split in KC blocks each added to C, plus C0 when
// accumulating; by the standard bound |fl(sum) - sum| <= gamma_n * sum|terms|, gamma_n =
// n·u/(1-n·u), n <= K + K/16 + 2. The reference sums in double (error <= u·|C|). So
//   |C - ref| <= 2·(K + 8)·u·(Σ_k |a_ik||b_kj| + |C0_ij|),
// with a factor ~2 of slack; Σ|a||b| comes from the reference on |A|, |B|.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>

#include "core/check.h"
#include "core/parallel.h"
#include "core/dtype.h"
#include "gemm_test_util.h"
#include "kernels/gemm.h"
#include "kernels/gemm_internal.h"

namespace dsv3 {
namespace {

using testing::IsaGuard;
using testing::kU;
using testing::Mat;

struct Shape {
  int64_t M, N, K;
};

std::vector<Shape> shapes() {
  std::vector<Shape> s = {{1, 1, 1},    {2, 3, 7},     {3, 17, 1},    {7, 33, 15},
                          {15, 31, 65}, {17, 63, 33},  {1, 129, 257}, {31, 65, 2},
                          {65, 7, 129}, {14, 32, 16},  {28, 64, 200}, {33, 1, 63},  {3, 5, 1030},
                          {16, 70, 100}, {9, 45, 40}};
  if (testing::kFull) {
    s.insert(s.end(), {{127, 129, 255}, {129, 257, 127}, {300, 45, 401}, {257, 300, 63},
                       {63, 1000, 31}, {2, 4100, 9}, {520, 40, 20}, {1, 300, 1000}, {20, 40, 2100}});
  }
  return s;
}

// Runs the GEMM (gemm_f32 / gemm_bf16, or `run` for BF16 when given) on random operands
// and checks it against the scalar reference.
template <class T, class ToF>
void run_case(Shape s, bool ta, bool tb, bool acc, int threads, std::mt19937& rng, ToF to_f,
              T (*from_f)(float), void (*run)(const GemmBF16&, int) = nullptr) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  Mat<T> A(ta ? s.K : s.M, ta ? s.M : s.K, 3), B(tb ? s.N : s.K, tb ? s.K : s.N, 5);
  Mat<float> C(s.M, s.N, 2), R(s.M, s.N, 0), S(s.M, s.N, 0);
  Mat<float> Aabs(A.rows, A.cols, 0), Babs(B.rows, B.cols, 0);
  for (int64_t i = 0; i < A.rows; ++i)
    for (int64_t j = 0; j < A.cols; ++j) {
      A.at(i, j) = from_f(u(rng));
      Aabs.at(i, j) = std::fabs(to_f(A.at(i, j)));
    }
  for (int64_t i = 0; i < B.rows; ++i) {
    for (int64_t j = 0; j < B.cols; ++j) {
      B.at(i, j) = from_f(u(rng));
      Babs.at(i, j) = std::fabs(to_f(B.at(i, j)));
    }
    // NaN in the padding past each row: a kernel that reads beyond the matrix (say a
    // K pair past an odd K) turns C into NaN even where it multiplies the read by zero.
    for (int64_t j = B.cols; j < B.ld; ++j) B.at(i, j) = from_f(NAN);
  }
  for (int64_t i = 0; i < s.M; ++i)
    for (int64_t j = 0; j < s.N; ++j) C.at(i, j) = R.at(i, j) = u(rng);
  // Σ|a||b| by the reference on absolute values.
  gemm_f32_ref({s.M, s.N, s.K, Aabs.p, Aabs.ld, ta, Babs.p, Babs.ld, tb, S.p, S.ld, false});
  // Padding of C (past N) must survive.
  for (int64_t i = 0; i < s.M; ++i) C.at(i, s.N) = C.at(i, s.N + 1) = 12345.f;

  if constexpr (sizeof(T) == 4) {
    GemmF32 p{s.M, s.N, s.K, A.p, A.ld, ta, B.p, B.ld, tb, C.p, C.ld, acc};
    GemmF32 r = p;
    r.C = R.p; r.ldc = R.ld;
    gemm_f32_ref(r);
    gemm_f32(p, threads);
  } else {
    GemmBF16 p{s.M, s.N, s.K, A.p, A.ld, ta, B.p, B.ld, tb, C.p, C.ld, acc};
    GemmBF16 r = p;
    r.C = R.p; r.ldc = R.ld;
    gemm_bf16_ref(r);
    if (run) run(p, threads);
    else gemm_bf16(p, threads);
  }
  int bad = 0;
  for (int64_t i = 0; i < s.M; ++i) {
    for (int64_t j = 0; j < s.N; ++j) {
      const double c0 = acc ? 1.0 : 0.0;  // |C0| <= 1
      const double tol = 2.0 * double(s.K + 8) * kU * (S.at(i, j) + c0);
      const double err = std::fabs(double(C.at(i, j)) - double(R.at(i, j)));
      if (!(err <= tol) && bad++ < 5)
        ADD_FAILURE() << "M=" << s.M << " N=" << s.N << " K=" << s.K << " ta=" << ta
                      << " tb=" << tb << " acc=" << acc << " threads=" << threads << " isa="
                      << isa_name(active_isa()) << " bf16=" << bf16_mode_name(bf16_mode()) << " at (" << i << "," << j << "): got "
                      << C.at(i, j) << " want " << R.at(i, j) << " tol " << tol;
    }
    ASSERT_EQ(C.at(i, s.N), 12345.f) << "wrote past N in row " << i;
    ASSERT_EQ(C.at(i, s.N + 1), 12345.f) << "wrote past N in row " << i;
  }
}

float id(float x) { return x; }
float bf16_f(uint16_t h) { return bf16_to_f32(h); }

template <class T, class ToF>
void run_all(ToF to_f, T (*from_f)(float)) {
  IsaGuard guard;
  std::mt19937 rng(7);
  for (const testing::Variant& v : testing::variants()) {
    const Isa isa = v.isa;
    v.set();
    int n = 0;
    for (const Shape& s : shapes()) {
      // The scalar path is the reference itself: one pass over the shapes is enough.
      for (int t = 0; t < 4; ++t) {
        if (isa == Isa::Scalar && t > 0) continue;
        const bool ta = t & 1, tb = t & 2;
        for (bool acc : {false, true}) {
          const int threads = 1 + (n++ % 3);
          run_case<T>(s, ta, tb, acc, threads, rng, to_f, from_f);
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(Gemm, F32AllPathsMatchReference) { run_all<float>(id, id); }

TEST(Gemm, BF16AllPathsMatchReference) { run_all<uint16_t>(bf16_f, f32_to_bf16); }

// Large, thread-split problems: a grid that splits M (tall), one that splits N (skinny),
// and the unpacked skinny kernels for a few dozen rows against a big W (gemm_avx512.cpp
// takes them when N·K >= 2^19 (F32) / 2^21 (BF16)).
TEST(Gemm, LargeShapesBothGrids) {
  std::mt19937 rng(3);
  for (Shape s : {Shape{testing::kFull ? 600 : 100, 70, 520}, Shape{5, testing::kFull ? 5000 : 700, 200}}) {
    run_case<float>(s, false, true, false, 2, rng, id, id);
    run_case<uint16_t>(s, false, false, true, 2, rng, bf16_f, f32_to_bf16);
  }
  run_case<float>(testing::kFull ? Shape{40, 300, 1800} : Shape{19, 600, 900}, false, true, true, 2, rng, id, id);
  // More rows than one A block (MC = 518) per thread: the multi-block loops.
  run_case<float>(Shape{1100, 40, 30}, true, false, false, 1, rng, id, id);
  run_case<uint16_t>(Shape{1100, 40, 30}, false, true, true, 2, rng, bf16_f, f32_to_bf16);
  run_case<uint16_t>(Shape{testing::kFull ? 30 : 17, 1030, 2040}, false, true, false, 2, rng, bf16_f, f32_to_bf16);
}

// The AVX-512 broadcast-W BF16 kernel (gemm_bcast_avx512.cpp), called directly: row tiles
// of 48 / 32 / 16 and fewer rows, column groups of 9 and their edges, odd K (the tail
// pair), K past one 4096 block (C updated between blocks), 1..3 threads, accumulate on and
// off; then shapes gemm_bf16 itself routes there (16..512 rows mostly filling vectors of
// 16, K >= 512, N·K >= 2^19; or 6..128 rows of a streamed W: gemm_avx512.cpp).
TEST(Gemm, BF16BroadcastPath) {
  if (best_isa() != Isa::Avx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  IsaGuard guard;
  set_isa(Isa::Avx512);
  std::mt19937 rng(11);
  std::vector<Shape> direct = {{16, 10, 256}, {32, 19, 301}, {47, 23, 513}, {64, 46, 258}, {113, 30, 300},
                               {48, 5, 260}, {16, 11, 4099}, {96, 1, 256}, {5, 20, 70}, {1, 9, 1},
                               {100, 20, 2900}};  // last: one row tile per L2 block of A
  if (testing::kFull) direct.insert(direct.end(), {{512, 50, 600}, {250, 100, 8200}});
  int n = 0;
  for (const Shape& sh : direct)
    for (bool acc : {false, true})
      run_case<uint16_t>(sh, false, true, acc, 1 + n++ % 3, rng, bf16_f, f32_to_bf16,
                         detail::gemm_bcast_bf16_avx512);
  for (Shape sh : {Shape{16, 1030, 512}, Shape{29, 520, 1027}})
    run_case<uint16_t>(sh, false, true, true, 2, rng, bf16_f, f32_to_bf16);
  // A weight marked streamed goes there from 6 rows (a last half vector: 7 = 8 lanes, 20 =
  // 16 + 8).
  for (Shape sh : {Shape{7, 520, 300}, Shape{20, 300, 260}})
    run_case<uint16_t>(sh, false, true, false, 2, rng, bf16_f, f32_to_bf16, +[](const GemmBF16& p, int t) {
      GemmBF16 q = p;
      q.w_streamed = true;
      gemm_bf16(q, t);
    });
}

// BF16 W with F32 activations (GemmBF16::A_f32, what linear_forward passes in Bf16Mode::Fma):
// the reference first against a double product of the same values, then every variant
// against the reference, fprop and dgrad forms, with the products of full F32 values (not
// exact in F32: each FMA rounds once, within the same bound).
TEST(Gemm, BF16WithF32Activations) {
  IsaGuard guard;
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<Shape> list = {{1, 5, 7}, {5, 33, 100}, {17, 64, 513}, {40, 300, 260}, {150, 70, 129}};
  if (testing::kFull) list.push_back({600, 90, 1030});
  int n = 0;
  for (const Shape& s : list) {
    for (bool tb : {true, false}) {
      Mat<float> A(s.M, s.K, 3), S(s.M, s.N, 0), Aabs(s.M, s.K, 0), Babs(tb ? s.N : s.K, tb ? s.K : s.N, 0);
      Mat<uint16_t> B(tb ? s.N : s.K, tb ? s.K : s.N, 5);
      for (int64_t i = 0; i < s.M; ++i)
        for (int64_t k = 0; k < s.K; ++k) Aabs.at(i, k) = std::fabs(A.at(i, k) = u(rng) * (1.f + float(k % 5)));
      for (int64_t i = 0; i < B.rows; ++i)
        for (int64_t j = 0; j < B.cols; ++j) Babs.at(i, j) = std::fabs(bf16_to_f32(B.at(i, j) = f32_to_bf16(u(rng))));
      gemm_f32_ref({s.M, s.N, s.K, Aabs.p, Aabs.ld, false, Babs.p, Babs.ld, tb, S.p, S.ld, false});
      for (bool acc : {false, true}) {
        Mat<float> R(s.M, s.N, 0), C(s.M, s.N, 2);
        for (int64_t i = 0; i < s.M; ++i)
          for (int64_t j = 0; j < s.N; ++j) R.at(i, j) = C.at(i, j) = u(rng);
        for (int64_t i = 0; i < s.M; ++i) C.at(i, s.N) = C.at(i, s.N + 1) = 12345.f;
        GemmBF16 p;
        p.M = s.M; p.N = s.N; p.K = s.K;
        p.A_f32 = A.p; p.lda = A.ld;
        p.B = B.p; p.ldb = B.ld; p.trans_b = tb;
        p.accumulate = acc;
        GemmBF16 r = p;
        r.C = R.p; r.ldc = R.ld;
        std::vector<double> want(size_t(s.M * s.N));
        for (int64_t i = 0; i < s.M; ++i)
          for (int64_t j = 0; j < s.N; ++j) {
            double d = acc ? double(R.at(i, j)) : 0.0;
            for (int64_t k = 0; k < s.K; ++k)
              d += double(A.at(i, k)) * double(bf16_to_f32(tb ? B.at(j, k) : B.at(k, j)));
            want[size_t(i * s.N + j)] = d;
          }
        gemm_bf16_ref(r);
        for (int64_t i = 0; i < s.M; ++i)
          for (int64_t j = 0; j < s.N; ++j)
            ASSERT_NEAR(R.at(i, j), want[size_t(i * s.N + j)], 1e-6 * (S.at(i, j) + 1.0)) << "reference";
        for (const testing::Variant& v : testing::variants()) {
          v.set();
          Mat<float> D(s.M, s.N, 2);
          for (int64_t i = 0; i < s.M; ++i)
            for (int64_t j = 0; j < s.N + 2; ++j) D.at(i, j) = C.at(i, j);
          GemmBF16 q = p;
          q.C = D.p; q.ldc = D.ld;
          gemm_bf16(q, 1 + n++ % 3);
          int bad = 0;
          for (int64_t i = 0; i < s.M; ++i) {
            for (int64_t j = 0; j < s.N; ++j) {
              const double tol = 2.0 * double(s.K + 8) * kU * (S.at(i, j) + 1.0);
              const double err = std::fabs(double(D.at(i, j)) - double(R.at(i, j)));
              if (!(err <= tol) && bad++ < 5)
                ADD_FAILURE() << v.name() << " M=" << s.M << " N=" << s.N << " K=" << s.K << " tb=" << tb
                              << " acc=" << acc << " at (" << i << "," << j << "): got " << D.at(i, j)
                              << " want " << R.at(i, j) << " tol " << tol;
            }
            ASSERT_EQ(D.at(i, s.N), 12345.f) << v.name() << " wrote past N";
          }
        }
      }
    }
  }
}

// Called from inside a parallel region (a layer already split over threads), the GEMM
// gets a team of one and must still cover every part of C.
TEST(Gemm, InsideParallelRegion) {
  std::mt19937 rng(9);
  std::vector<float> out(2, 0.f);
  std::mutex one_at_a_time;  // gtest's failure reporting is not raced
  parallel_region(2, [&](Team&) {
    std::lock_guard<std::mutex> g(one_at_a_time);
    std::mt19937 local(rng());
    for (Shape s : {Shape{60, 100, 80}, Shape{3, 300, 300}, Shape{700, 30, 40}}) {
      run_case<float>(s, false, true, false, 2, local, id, id);
      run_case<uint16_t>(s, true, false, true, 3, local, bf16_f, f32_to_bf16);
    }
  });
}

TEST(Gemm, ZeroSizes) {
  std::vector<float> c(6, 5.f), a(6, 1.f), b(6, 1.f);
  gemm_f32({2, 3, 0, a.data(), 1, false, b.data(), 3, false, c.data(), 3, true});
  EXPECT_EQ(c[0], 5.f);  // K = 0 with accumulate: C unchanged
  gemm_f32({2, 3, 0, a.data(), 1, false, b.data(), 3, false, c.data(), 3, false});
  EXPECT_EQ(c[5], 0.f);  // K = 0 without: C = 0
  gemm_f32({0, 3, 4, a.data(), 4, false, b.data(), 3, false, c.data(), 3, false});
}

TEST(Gemm, BadArgumentsThrow) {
  std::vector<float> a(16), b(16), c(16);
  EXPECT_THROW(gemm_f32({2, 2, 2, a.data(), 1, false, b.data(), 2, false, c.data(), 2, false}), Error);
  EXPECT_THROW(gemm_f32({2, 2, 2, a.data(), 2, false, b.data(), 2, false, c.data(), 1, false}), Error);
  EXPECT_THROW(gemm_f32({-1, 2, 2, a.data(), 2, false, b.data(), 2, false, c.data(), 2, false}), Error);
  EXPECT_THROW(gemm_f32({2, 2, 2, nullptr, 2, false, b.data(), 2, false, c.data(), 2, false}), Error);
}

}  // namespace
}  // namespace dsv3
