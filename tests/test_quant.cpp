// FP8 quantisers (kernels/quant.h): every ISA path bit-identical to the scalar reference
// (codes, scales, and untouched padding) on odd shapes with partial edge tiles, strided
// rows, F32 and BF16 on either side; special values; the round-trip error bound.
//
// Policy for non-finite input (same on every path): NaN elements do not count towards a
// tile's amax and encode as the NaN code; an inf makes the tile's scale inf, so the inf
// encodes as NaN (inf/inf) and the tile's finite elements as ±0.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/check.h"
#include "core/cpu.h"
#include "core/dtype.h"
#include "kernels/quant.h"

namespace dsv3 {
namespace {

struct IsaGuard {
  ~IsaGuard() { set_isa(best_isa()); }
};

std::vector<Isa> fast_isas() {
  std::vector<Isa> v{Isa::Scalar};
  if (best_isa() >= Isa::Avx2) v.push_back(Isa::Avx2);
  if (best_isa() >= Isa::Avx512) v.push_back(Isa::Avx512);
  return v;
}

struct Shape { int64_t M, K; };
// {45, 19}: for the 128x1 quantiser's 16-row byte transpose, a tile of 2 full row groups
// plus 13 rows, and a column group of 3 after a full one.
const Shape kShapes[] = {{1, 1}, {1, 130}, {3, 127}, {2, 16}, {45, 19}, {129, 257}, {130, 200}, {257, 129}};

// Random values whose magnitude varies by tile and element (exponents 2^-30..2^30), with
// special values sprinkled in when `specials`.
std::vector<float> make_input(int64_t n, uint32_t seed, bool specials) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = u(rng) * std::exp2(float(int(rng() % 61) - 30));
  if (specials && n > 0) {
    const float sp[] = {0.f, -0.f, 1e-40f, -3e-45f, FLT_MIN, 3e38f, -FLT_MAX, NAN, 448.f, -464.f};
    for (int i = 0; i < 40; ++i) v[rng() % n] = sp[rng() % 10];
  }
  return v;
}

// Input buffer in dtype t with row stride ld.
std::vector<uint8_t> to_buffer(const std::vector<float>& v, int64_t rows, int64_t cols, int64_t ld, DType t) {
  std::vector<uint8_t> b(size_t(rows * ld) * dtype_size(t) + 8, 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) store_from_f32(b.data(), t, size_t(r * ld + c), v[r * cols + c]);
  return b;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

enum class Kind { Row1x128, Col128x1T, Block128 };

void run_quant(Kind kind, bool ref, const void* x, DType t, int64_t M, int64_t K, int64_t ldx,
               uint8_t* q, int64_t ldq, float* s, int threads) {
  switch (kind) {
    case Kind::Row1x128:
      ref ? quantize_fp8_1x128_ref(x, t, M, K, ldx, q, ldq, s) : quantize_fp8_1x128(x, t, M, K, ldx, q, ldq, s, threads);
      break;
    case Kind::Col128x1T:
      ref ? quantize_fp8_128x1_t_ref(x, t, M, K, ldx, q, ldq, s) : quantize_fp8_128x1_t(x, t, M, K, ldx, q, ldq, s, threads);
      break;
    case Kind::Block128:
      ref ? quantize_fp8_128x128_ref(x, t, M, K, ldx, q, ldq, s) : quantize_fp8_128x128(x, t, M, K, ldx, q, ldq, s, threads);
      break;
  }
}

TEST(Quant, EveryPathMatchesReferenceBitForBit) {
  IsaGuard guard;
  uint32_t seed = 1;
  for (Kind kind : {Kind::Row1x128, Kind::Col128x1T, Kind::Block128})
    for (const Shape& sh : kShapes)
      for (DType t : {DType::F32, DType::BF16})
        for (bool specials : {false, true}) {
          const int64_t M = sh.M, K = sh.K, ldx = K + 5;
          const bool tr = kind == Kind::Col128x1T;
          const int64_t qrows = tr ? K : M, ldq = (tr ? M : K) + 3;
          const int64_t ns = kind == Kind::Row1x128 ? M * fp8_blocks(K)
                             : tr ? K * fp8_blocks(M) : fp8_blocks(M) * fp8_blocks(K);
          const std::vector<uint8_t> x = to_buffer(make_input(M * K, seed++, specials), M, K, ldx, t);
          std::vector<uint8_t> q_ref(qrows * ldq, 0xab);
          std::vector<float> s_ref(ns, -1.f);
          run_quant(kind, true, x.data(), t, M, K, ldx, q_ref.data(), ldq, s_ref.data(), 1);
          for (Isa isa : fast_isas()) {
            set_isa(isa);
            for (int threads : {1, 2, 3}) {
              std::vector<uint8_t> q(qrows * ldq, 0xab);
              std::vector<float> s(ns, -1.f);
              run_quant(kind, false, x.data(), t, M, K, ldx, q.data(), ldq, s.data(), threads);
              ASSERT_EQ(q, q_ref) << isa_name(isa) << " kind " << int(kind) << " M=" << M << " K=" << K
                                  << " " << dtype_name(t) << " specials " << specials;
              ASSERT_TRUE(same_bits(s, s_ref)) << isa_name(isa) << " kind " << int(kind);
            }
          }
          // Dequantisation back to F32 / BF16 (1x128 and 128x128 layouts).
          if (tr) continue;
          for (DType ot : {DType::F32, DType::BF16}) {
            const int64_t ldo = K + 2;
            std::vector<uint8_t> o_ref(M * ldo * dtype_size(ot) + 4, 0xcd);
            if (kind == Kind::Row1x128) dequantize_fp8_1x128_ref(q_ref.data(), M, K, ldq, s_ref.data(), o_ref.data(), ot, ldo);
            else dequantize_fp8_128x128_ref(q_ref.data(), M, K, ldq, s_ref.data(), o_ref.data(), ot, ldo);
            for (Isa isa : fast_isas()) {
              set_isa(isa);
              std::vector<uint8_t> o(o_ref.size(), 0xcd);
              if (kind == Kind::Row1x128) dequantize_fp8_1x128(q_ref.data(), M, K, ldq, s_ref.data(), o.data(), ot, ldo, 2);
              else dequantize_fp8_128x128(q_ref.data(), M, K, ldq, s_ref.data(), o.data(), ot, ldo, 2);
              ASSERT_EQ(o, o_ref) << "dequant " << isa_name(isa) << " " << dtype_name(ot) << " M=" << M << " K=" << K;
            }
          }
        }
}

// The spacing of E4M3 values around magnitude v (v ≤ 448): 2^-9 below 2^-6, else 2^(e-3).
double e4m3_ulp(double v) {
  if (v < std::ldexp(1.0, -6)) return std::ldexp(1.0, -9);
  return std::ldexp(1.0, int(std::floor(std::log2(v))) - 3);
}

// Round trip of finite input: |decode(q)·s - x| ≤ ½ ulp_E4M3(|x|/s)·s, plus the two F32
// roundings (x/s and decode·s), each ≤ 2^-24 relative, and the ulp taken at the larger of
// |x|/s and the decoded value (a value may round up into the next binade).
TEST(Quant, RoundTripWithinHalfAnUlpOfTheTileScale) {
  for (Kind kind : {Kind::Row1x128, Kind::Block128}) {
    const int64_t M = 130, K = 300;
    const std::vector<float> x = make_input(M * K, 99, false);
    std::vector<uint8_t> q(M * K);
    const int64_t ns = kind == Kind::Row1x128 ? M * fp8_blocks(K) : fp8_blocks(M) * fp8_blocks(K);
    std::vector<float> s(ns), y(M * K);
    run_quant(kind, false, x.data(), DType::F32, M, K, K, q.data(), K, s.data(), 2);
    if (kind == Kind::Row1x128) dequantize_fp8_1x128(q.data(), M, K, K, s.data(), y.data(), DType::F32, K);
    else dequantize_fp8_128x128(q.data(), M, K, K, s.data(), y.data(), DType::F32, K);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) {
        const double sc = kind == Kind::Row1x128 ? s[m * fp8_blocks(K) + k / 128]
                                                 : s[(m / 128) * fp8_blocks(K) + k / 128];
        const double xv = x[m * K + k], v = std::fabs(xv) / sc, d = std::fabs(double(e4m3_to_f32(q[m * K + k])));
        const double tol = 0.5 * e4m3_ulp(std::fmax(v, d)) * sc + std::fabs(xv) * std::ldexp(1.0, -22);
        ASSERT_NEAR(double(y[m * K + k]), xv, tol) << "m=" << m << " k=" << k;
      }
  }
}

TEST(Quant, NonFinitePolicy) {
  IsaGuard guard;
  for (Isa isa : fast_isas()) {
    set_isa(isa);
    std::vector<float> x(256, 1.f);
    x[3] = NAN;        // tile 0: NaN skipped by amax, encodes NaN
    x[130] = INFINITY; // tile 1: scale inf
    std::vector<uint8_t> q(256);
    std::vector<float> s(2);
    quantize_fp8_1x128(x.data(), DType::F32, 1, 256, 256, q.data(), 256, s.data());
    EXPECT_EQ(s[0], 1.f / 448.f) << isa_name(isa);
    EXPECT_EQ(q[3] & 0x7f, 0x7f);
    EXPECT_EQ(q[0], f32_to_e4m3(448.f));
    EXPECT_TRUE(std::isinf(s[1]));
    EXPECT_EQ(q[130] & 0x7f, 0x7f);
    EXPECT_EQ(q[129], 0);
    // An all-zero tile gets scale FLT_MIN and zero codes.
    std::vector<float> z(128, 0.f);
    quantize_fp8_1x128(z.data(), DType::F32, 1, 128, 128, q.data(), 128, s.data());
    EXPECT_EQ(s[0], FLT_MIN);
    EXPECT_EQ(q[5], 0);
  }
}

TEST(Quant, RejectsBadArguments) {
  std::vector<float> x(64);
  std::vector<uint8_t> q(64);
  std::vector<float> s(4);
  EXPECT_THROW(quantize_fp8_1x128(x.data(), DType::F16, 2, 32, 32, q.data(), 32, s.data()), Error);
  EXPECT_THROW(quantize_fp8_1x128(x.data(), DType::F32, 2, 32, 16, q.data(), 32, s.data()), Error);
  EXPECT_THROW(quantize_fp8_128x1_t(x.data(), DType::F32, 32, 2, 2, q.data(), 16, s.data()), Error);
  EXPECT_THROW(dequantize_fp8_128x128(q.data(), 2, 32, 32, s.data(), x.data(), DType::F32, 8), Error);
}

}  // namespace
}  // namespace dsv3
