// GEMV (kernels/gemv.h): every ISA path and both FP8 conversions against an exact
// (double) sum, on odd N and K (partial 128-blocks and 64-byte tails), M = 1..kGemvMaxM, strided
// and misaligned operands, accumulate, 1-3 threads. The scalar reference is held to the
// same bound. Tolerance (gemv.h): |y - exact| ≤ (2^-15 + 2(K+2)·2^-24)·Σ|w·s·x| — F32
// accumulation in any order costs ≤ (K-1)·2^-24 of Σ|terms|, the x·s rounding and the
// block-scale product one more 2^-24 each, and the BF16 hi+lo split of x·s loses at most
// 2^-17 relative (each part rounds to 8 significant bits).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/check.h"
#include "core/cpu.h"
#include "core/dtype.h"
#include "kernels/gemv.h"
#include "kernels/quant.h"

namespace dsv3 {
namespace {

struct IsaGuard {
  ~IsaGuard() {
    set_isa(best_isa());
    set_bf16_mode(best_bf16_mode());
  }
};

// The BF16 GEMV has two AVX-512 forms (core/cpu.h Bf16Mode: VDPBF16PS on the hi+lo pair, or
// W widened for FMAs with F32 x); both run on any AVX-512 CPU.
constexpr Bf16Mode kModes[] = {Bf16Mode::Dot, Bf16Mode::Fma};

std::vector<Isa> isas() {
  std::vector<Isa> v{Isa::Scalar};
  if (best_isa() >= Isa::Avx2) v.push_back(Isa::Avx2);
  if (best_isa() >= Isa::Avx512) v.push_back(Isa::Avx512);
  return v;
}

struct Shape { int64_t N, K; };
const Shape kShapes[] = {{1, 1}, {3, 5}, {7, 64}, {5, 65}, {13, 127}, {130, 129}, {131, 300}, {257, 1000}};

// Checks y against the exact value of y0 + x·Wᵀ given as (exact, S = Σ|terms|).
// x_bits: significant bits x·s keeps on the path (16 for the hi+lo split; 8 for
// Fp8Path::BF16LutX8, which rounds it to BF16 once: relative error 2^-9, bound 2^-8).
void expect_close(const std::vector<float>& y, int64_t ldy, const std::vector<double>& exact,
                  const std::vector<double>& mag, int64_t M, int64_t N, int64_t K, const char* what,
                  int x_bits = 16) {
  const double rel = std::ldexp(1.0, x_bits == 16 ? -15 : -8) + 2.0 * double(K + 2) * std::ldexp(1.0, -24);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const double e = exact[m * N + n], tol = rel * mag[m * N + n] + 1e-30;
      ASSERT_NEAR(double(y[m * ldy + n]), e, tol) << what << " m=" << m << " n=" << n << " N=" << N << " K=" << K;
    }
}

TEST(Gemv, Fp8MatchesExactOnEveryPath) {
  IsaGuard guard;
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> u(-1.f, 1.f), ls(-10.f, -2.f);
  for (const Shape& sh : kShapes) {
    const int64_t N = sh.N, K = sh.K, ldw = K + 3, ldx = K + 1, ldy = N + 2;
    const int64_t nb = fp8_blocks(N), kb = fp8_blocks(K);
    std::vector<uint8_t> wbuf(N * ldw + 1);
    uint8_t* w = wbuf.data() + 1;  // misaligned
    for (auto& c : wbuf) { c = uint8_t(rng()); if ((c & 0x7f) == 0x7f) c = 0; }
    std::vector<float> s(nb * kb), xbuf(kGemvMaxM * ldx + 1);
    for (auto& v : s) v = std::exp2(ls(rng));
    float* x = xbuf.data() + 1;  // misaligned
    for (auto& v : xbuf) v = u(rng) * std::exp2(float(int(rng() % 9) - 4));
    for (int64_t M = 1; M <= kGemvMaxM; ++M) {
      std::vector<double> exact(M * N), mag(M * N);
      std::vector<float> y0(M * ldy);
      for (auto& v : y0) v = u(rng);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double e = 0, a = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double t = double(e4m3_to_f32(w[n * ldw + k])) * s[(n / 128) * kb + k / 128] * x[m * ldx + k];
            e += t;
            a += std::fabs(t);
          }
          exact[m * N + n] = e;
          mag[m * N + n] = a;
        }
      for (bool acc : {false, true}) {
        std::vector<double> want = exact, wmag = mag;
        if (acc)
          for (int64_t m = 0; m < M; ++m)
            for (int64_t n = 0; n < N; ++n) {
              want[m * N + n] += y0[m * ldy + n];
              wmag[m * N + n] += std::fabs(y0[m * ldy + n]);
            }
        std::vector<float> y = y0;
        GemvFP8 ref{M, N, K, w, ldw, s.data(), x, ldx, y.data(), ldy, acc};
        gemv_fp8_ref(ref);
        expect_close(y, ldy, want, wmag, M, N, K, "fp8 ref");
        for (Isa isa : isas()) {
          set_isa(isa);
          for (Fp8Path path : {Fp8Path::Auto, Fp8Path::F16, Fp8Path::BF16Lut, Fp8Path::BF16LutX8, Fp8Path::F32Lut})
            for (int threads : {1, 2, 3}) {
              if (isa != Isa::Avx512 && path != Fp8Path::Auto) continue;  // one FP8 path below AVX-512
              y = y0;
              GemvFP8 p{M, N, K, w, ldw, s.data(), x, ldx, y.data(), ldy, acc, path};
              gemv_fp8(p, threads);
              SCOPED_TRACE(testing::Message() << "path " << int(path) << " threads " << threads << " acc " << acc << " M " << M);
              expect_close(y, ldy, want, wmag, M, N, K, isa_name(isa),
                           path == Fp8Path::BF16LutX8 && isa == Isa::Avx512 ? 8 : 16);
              // Rows of y beyond N (the ldy padding) are never written.
              for (int64_t m = 0; m < M; ++m)
                for (int64_t n = N; n < ldy && m * ldy + n < int64_t(y.size()); ++n)
                  ASSERT_EQ(y[m * ldy + n], y0[m * ldy + n]);
            }
        }
      }
    }
  }
}

TEST(Gemv, Bf16MatchesExactOnEveryPath) {
  IsaGuard guard;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (const Shape& sh : kShapes) {
    const int64_t N = sh.N, K = sh.K, ldw = K + 1, ldx = K + 3, ldy = N + 1;
    std::vector<uint16_t> wbuf(N * ldw + 1);
    uint16_t* w = wbuf.data() + 1;
    for (auto& h : wbuf) h = f32_to_bf16(u(rng) * std::exp2(float(int(rng() % 11) - 5)));
    std::vector<float> xbuf(kGemvMaxM * ldx + 1);
    float* x = xbuf.data() + 1;
    for (auto& v : xbuf) v = u(rng);
    for (int64_t M = 1; M <= kGemvMaxM; ++M) {
      std::vector<double> exact(M * N), mag(M * N);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double e = 0, a = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double t = double(bf16_to_f32(w[n * ldw + k])) * x[m * ldx + k];
            e += t;
            a += std::fabs(t);
          }
          exact[m * N + n] = e;
          mag[m * N + n] = a;
        }
      std::vector<float> y(M * ldy, 0.f);
      GemvBF16 ref{M, N, K, w, ldw, x, ldx, y.data(), ldy, false};
      gemv_bf16_ref(ref);
      expect_close(y, ldy, exact, mag, M, N, K, "bf16 ref");
      for (Isa isa : isas())
      for (Bf16Mode mode : kModes) {
        set_isa(isa);
        set_bf16_mode(mode);
        for (int threads : {1, 2, 3})
          for (bool x_bf16 : {false, true}) {
            std::vector<float> y2(M * ldy, 5.f);
            GemvBF16 p{M, N, K, w, ldw, x, ldx, y2.data(), ldy, true, x_bf16};
            gemv_bf16(p, threads);
            std::vector<double> want = exact, wmag = mag;
            for (auto& v : want) v += 5.0;
            for (auto& v : wmag) v += 5.0;
            SCOPED_TRACE(testing::Message() << "x_bf16 " << x_bf16 << " threads " << threads << " mode "
                                            << bf16_mode_name(mode));
            expect_close(y2, ldy, want, wmag, M, N, K, isa_name(isa), x_bf16 ? 8 : 16);
          }
      }
    }
  }
}

// x_bf16 means exactly "x rounded to BF16 once": on AVX-512 its y is bit-identical to the
// hi+lo path given x already rounded (lo is then 0, and VDPBF16PS adds the zero products
// without changing the sum), and it differs from the hi+lo path on the unrounded x. (In
// Bf16Mode::Fma the path without x_bf16 is F32 FMAs, another summation: Bf16Paths above
// holds both modes to the contract.)
TEST(Gemv, Bf16XRoundsActivationsOnce) {
  if (best_isa() < Isa::Avx512) GTEST_SKIP() << "x_bf16 is an AVX-512 path";
  IsaGuard guard;
  set_isa(Isa::Avx512);
  set_bf16_mode(Bf16Mode::Dot);
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int64_t N = 300, K = 1000;
  std::vector<uint16_t> w(N * K);
  for (auto& h : w) h = f32_to_bf16(u(rng));
  for (int64_t M : {1, 5, 16}) {
    std::vector<float> x(M * K), xr(M * K), y1(M * N), y2(M * N), y3(M * N);
    for (auto& v : x) v = u(rng);
    for (size_t i = 0; i < x.size(); ++i) xr[i] = bf16_to_f32(f32_to_bf16(x[i]));
    gemv_bf16(GemvBF16{M, N, K, w.data(), K, x.data(), K, y1.data(), N, false, true}, 2);
    gemv_bf16(GemvBF16{M, N, K, w.data(), K, xr.data(), K, y2.data(), N, false, false}, 2);
    gemv_bf16(GemvBF16{M, N, K, w.data(), K, x.data(), K, y3.data(), N, false, false}, 2);
    EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float))) << "M " << M;
    EXPECT_NE(0, std::memcmp(y1.data(), y3.data(), y1.size() * sizeof(float))) << "M " << M;
  }
}

// Row invariance (gemv.h): on a fixed path and thread count, row m of y is bit-identical
// to the same row of x computed alone (M = 1), for every M, every position of the row in
// the batch and whatever its neighbours are. A pool of P rows of x (random, plus a zero
// row, a copy of row 0 and a row of large values); batch b of size M puts pool row
// (i + P - b) % P at position i, so across b = 0..M-1 pool row 0 visits every position
// with different neighbours, and every row of every batch is checked against its M = 1
// result. accumulate = true starts each row of y from that pool row's own y0.
struct InvarianceCase {
  int64_t N, K;
};
const InvarianceCase kInvarianceShapes[] = {{1, 1}, {3, 5}, {13, 127}, {67, 300}, {131, 257}};

template <class Call>
void check_row_invariance(int64_t N, int64_t K, const std::vector<float>& pool, int64_t ldx,
                          int64_t P, const std::vector<float>& y0pool, Call&& call,
                          const char* what) {
  const int64_t ldy = N + 3;
  for (bool acc : {false, true}) {
    // alone[r]: pool row r computed with M = 1.
    std::vector<float> alone(P * N);
    for (int64_t r = 0; r < P; ++r) {
      std::vector<float> y(y0pool.begin() + r * N, y0pool.begin() + (r + 1) * N);
      call(1, pool.data() + 1 + r * ldx, y.data(), ldy, acc);
      std::copy(y.begin(), y.end(), alone.begin() + r * N);
    }
    for (int64_t M = 2; M <= kGemvMaxM; ++M)
      for (int64_t b = 0; b < M; ++b) {
        // x rows of the batch, contiguous with stride ldx, misaligned by one float.
        std::vector<float> xb(M * ldx + 1), y(M * ldy, -7.f);
        std::vector<int64_t> row(M);
        for (int64_t i = 0; i < M; ++i) {
          row[i] = (i + P - b) % P;
          std::copy(pool.begin() + 1 + row[i] * ldx, pool.begin() + 1 + row[i] * ldx + K, xb.begin() + 1 + i * ldx);
          std::copy(y0pool.begin() + row[i] * N, y0pool.begin() + (row[i] + 1) * N, y.begin() + i * ldy);
        }
        call(M, xb.data() + 1, y.data(), ldy, acc);
        for (int64_t i = 0; i < M; ++i)
          ASSERT_EQ(std::memcmp(y.data() + i * ldy, alone.data() + row[i] * N, size_t(N) * sizeof(float)), 0)
              << what << " N=" << N << " K=" << K << " M=" << M << " batch " << b << " position " << i
              << " pool row " << row[i] << " acc " << acc;
      }
  }
}

// Pool of P = kGemvMaxM + 3 rows of x with stride ldx (offset by one float), and one row
// of y0 per pool row.
void make_pool(std::mt19937& rng, int64_t N, int64_t K, int64_t ldx, int64_t P, std::vector<float>* pool,
               std::vector<float>* y0) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  pool->assign(P * ldx + 1, 0.f);
  for (int64_t r = 0; r < P; ++r)
    for (int64_t k = 0; k < K; ++k) {
      float v = u(rng) * std::exp2(float(int(rng() % 9) - 4));
      if (r == 1) v = 0.f;                                  // a zero row
      if (r == 2) v = (*pool)[1 + k];                       // a copy of row 0
      if (r == 3) v = u(rng) * 1e20f;                       // large values
      (*pool)[1 + r * ldx + k] = v;
    }
  y0->resize(P * N);
  for (auto& v : *y0) v = u(rng);
}

TEST(Gemv, RowsAreBitIdenticalForEveryBatchSize) {
  IsaGuard guard;
  std::mt19937 rng(2024);
  std::uniform_real_distribution<float> u(-1.f, 1.f), ls(-10.f, -2.f);
  const int64_t P = kGemvMaxM + 3;
  for (const InvarianceCase& sh : kInvarianceShapes) {
    const int64_t N = sh.N, K = sh.K, ldw = K + 3, ldx = K + 5;
    std::vector<float> pool, y0;
    make_pool(rng, N, K, ldx, P, &pool, &y0);
    // FP8 W (no NaN codes: a NaN row is NaN for every M, but NaN payloads need not match).
    std::vector<uint8_t> w8buf(N * ldw + 1);
    for (auto& c : w8buf) { c = uint8_t(rng()); if ((c & 0x7f) == 0x7f) c = 0; }
    std::vector<float> s(fp8_blocks(N) * fp8_blocks(K));
    for (auto& v : s) v = std::exp2(ls(rng));
    std::vector<uint16_t> w16buf(N * ldw + 1);
    for (auto& h : w16buf) h = f32_to_bf16(u(rng) * std::exp2(float(int(rng() % 11) - 5)));
    for (Isa isa : isas()) {
      set_isa(isa);
      for (int threads : {1, 3}) {
        SCOPED_TRACE(testing::Message() << isa_name(isa) << " threads " << threads);
        for (Bf16Mode mode : kModes) {
          set_bf16_mode(mode);
          for (bool x_bf16 : {false, true})
            check_row_invariance(N, K, pool, ldx, P, y0,
                [&](int64_t M, const float* x, float* y, int64_t ldy, bool acc) {
                  gemv_bf16(GemvBF16{M, N, K, w16buf.data() + 1, ldw, x, ldx, y, ldy, acc, x_bf16}, threads);
                }, x_bf16 ? "bf16 x_bf16" : mode == Bf16Mode::Dot ? "bf16 dot" : "bf16 fma");
        }
        set_bf16_mode(best_bf16_mode());
        for (Fp8Path path : {Fp8Path::Auto, Fp8Path::F16, Fp8Path::BF16Lut, Fp8Path::BF16LutX8, Fp8Path::F32Lut}) {
          if (isa != Isa::Avx512 && path != Fp8Path::Auto) continue;  // one FP8 path below AVX-512
          SCOPED_TRACE(testing::Message() << "fp8 path " << int(path));
          check_row_invariance(N, K, pool, ldx, P, y0,
              [&](int64_t M, const float* x, float* y, int64_t ldy, bool acc) {
                gemv_fp8(GemvFP8{M, N, K, w8buf.data() + 1, ldw, s.data(), x, ldx, y, ldy, acc, path}, threads);
              }, "fp8");
        }
      }
    }
  }
}

TEST(Gemv, NonFiniteInputsGiveNonFiniteOutputs) {
  IsaGuard guard;
  const int64_t N = 9, K = 200;
  std::vector<uint8_t> w(N * K, 0x38);  // 1.0
  w[3 * K + 150] = 0x7f;                 // NaN code in row 3
  std::vector<float> s(fp8_blocks(N) * fp8_blocks(K), 0.5f), x(K, 1.f), y(N);
  for (Isa isa : isas()) {
    set_isa(isa);
    for (Fp8Path path : {Fp8Path::Auto, Fp8Path::F16, Fp8Path::BF16Lut, Fp8Path::BF16LutX8, Fp8Path::F32Lut}) {
      GemvFP8 p{1, N, K, w.data(), K, s.data(), x.data(), K, y.data(), N, false, path};
      gemv_fp8(p, 2);
      for (int64_t n = 0; n < N; ++n)
        EXPECT_EQ(std::isfinite(y[n]), n != 3) << isa_name(isa) << " path " << int(path) << " n=" << n;
    }
  }
  x[7] = INFINITY;
  for (Isa isa : isas()) {
    set_isa(isa);
    GemvFP8 p{1, N, K, w.data(), K, s.data(), x.data(), K, y.data(), N, false, Fp8Path::Auto};
    gemv_fp8(p, 2);
    for (int64_t n = 0; n < N; ++n) EXPECT_FALSE(std::isfinite(y[n])) << isa_name(isa);
  }
}

TEST(Gemv, RejectsBadArguments) {
  std::vector<uint8_t> w(64);
  constexpr int64_t M = kGemvMaxM + 1;
  std::vector<float> s(1), x(16 * M), y(16 * M);
  GemvFP8 p{M, 4, 16, w.data(), 16, s.data(), x.data(), 16, y.data(), 4, false};
  EXPECT_THROW(gemv_fp8(p), Error);  // M > kGemvMaxM
  p.M = 1;
  p.ldw = 8;
  EXPECT_THROW(gemv_fp8(p), Error);  // ldw < K
  p.ldw = 16;
  p.w_scale = nullptr;
  EXPECT_THROW(gemv_fp8(p), Error);
  GemvBF16 b{2, 4, 16, nullptr, 16, x.data(), 16, y.data(), 4, false};
  EXPECT_THROW(gemv_bf16(b), Error);
}

TEST(Gemv, StreamReadSeesEveryByte) {
  IsaGuard guard;
  std::vector<uint8_t> buf((1 << 20) + 77, 0);
  for (Isa isa : isas()) {
    set_isa(isa);
    const uint64_t base = stream_read(buf.data(), buf.size(), 2);
    for (size_t i : {size_t(0), size_t(12345), buf.size() - 1}) {
      buf[i] = 1;
      EXPECT_NE(stream_read(buf.data(), buf.size(), 2), base) << isa_name(isa) << " byte " << i;
      buf[i] = 0;
    }
  }
}

}  // namespace
}  // namespace dsv3
