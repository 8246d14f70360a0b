// The activation cache of FP8 training (src/train/act_cache.h): the E5M6 format against a
// brute-force nearest-value search over its table, its power-of-two tile scales and 12-bit
// packing, non-finite inputs, and ActCache's three formats (values read back, bytes held).
// That the trainer's backward really reads these rounded values is tested where the caches
// are used (test_moe_train, test_mla_train: *CachesIn*).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/quant.h"
#include "train/act_cache.h"

namespace dsv3 {
namespace {

bool finite_code(int c) { return ((c >> 6) & 31) != 31; }

TEST(E5M6, EveryCodeRoundTrips) {
  int finite = 0;
  for (int c = 0; c < 4096; ++c) {
    const float v = e5m6_to_f32(uint16_t(c));
    if (!finite_code(c)) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    ++finite;
    ASSERT_TRUE(std::isfinite(v)) << c;
    EXPECT_EQ(f32_to_e5m6(v), c) << "code " << c << " value " << v;
  }
  EXPECT_EQ(finite, 2 * 31 * 64);
  EXPECT_EQ(e5m6_to_f32(0x7BF), kE5M6Max);  // e = 30, m = 63: the largest finite value
  EXPECT_EQ(e5m6_to_f32(0x001), std::ldexp(1.0f, -20));  // the smallest subnormal
  EXPECT_EQ(e5m6_to_f32(0x040), std::ldexp(1.0f, -14));  // the smallest normal
  EXPECT_TRUE(std::isnan(e5m6_to_f32(f32_to_e5m6(NAN))));
}

// Round to nearest, ties to the even code, checked against every finite value.
TEST(E5M6, RoundsToNearestEven) {
  std::vector<float> pos;
  for (int c = 0; c < 2048; ++c)
    if (finite_code(c)) pos.push_back(e5m6_to_f32(uint16_t(c)));  // ascending
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> lg(-24.0f, std::log2(kE5M6Max)), sgn(-1.0f, 1.0f);
  std::vector<float> xs;
  for (int i = 0; i < 4000; ++i) xs.push_back(std::copysign(std::exp2(lg(rng)), sgn(rng)));
  for (size_t k = 0; k + 1 < pos.size(); k += 37) xs.push_back(0.5f * (pos[k] + pos[k + 1]));  // ties
  xs.push_back(kE5M6Max);
  xs.push_back(-0.0f);
  for (float x : xs) {
    const float a = std::fabs(x);
    size_t best = 0;
    for (size_t k = 1; k < pos.size(); ++k)
      if (std::fabs(pos[k] - a) < std::fabs(pos[best] - a) ||
          (std::fabs(pos[k] - a) == std::fabs(pos[best] - a) && (k % 2) == 0))
        best = k;
    const uint16_t c = f32_to_e5m6(x);
    EXPECT_EQ(c & 0x7FF, best) << "x = " << x;
    EXPECT_EQ((c >> 11) & 1, std::signbit(x) ? 1 : 0) << "x = " << x;
  }
}

TEST(E5M6, TilesScalePowersOfTwoAndPack) {
  // Odd widths (a half-used last byte) and partial tiles; the last case is large enough
  // for the OpenMP loop to run on both threads.
  for (int64_t K : {1, 127, 259, 1025}) {
    const int64_t M = K == 1025 ? 64 : 3, nb = fp8_blocks(K);
    std::mt19937 rng(static_cast<uint32_t>(K));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> x(size_t(M * K));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < K; ++j)  // rows of very different magnitudes
        x[size_t(i * K + j)] = nd(rng) * std::ldexp(1.0f, int(i % 3) * 40 - 50);
    std::vector<uint8_t> code(size_t(e5m6_packed_bytes(M, K)), 0xAB);
    std::vector<float> scale(size_t(M * nb)), y(x.size());
    encode_e5m6_1x128(x.data(), M, K, code.data(), scale.data(), 2);
    decode_e5m6_1x128(code.data(), scale.data(), M, K, y.data(), 2);
    EXPECT_EQ(e5m6_packed_bytes(M, K), M * ((3 * K + 1) / 2));
    if (K % 2) {  // the last byte of an odd row holds one value: its high nibble stays zero
      for (int64_t i = 0; i < M; ++i) {
        EXPECT_EQ(code[size_t((i + 1) * ((3 * K + 1) / 2) - 1)] >> 4, 0) << "row " << i;
      }
    }
    for (int64_t i = 0; i < M; ++i)
      for (int64_t t = 0; t < nb; ++t) {
        const float s = scale[size_t(i * nb + t)];
        int e = 0;
        EXPECT_EQ(std::frexp(s, &e), 0.5f) << "scale " << s << " is not a power of two";
        float amax = 0;
        for (int64_t j = t * 128; j < std::min(K, t * 128 + 128); ++j)
          amax = std::max(amax, std::fabs(x[size_t(i * K + j)]));
        EXPECT_LE(amax / s, kE5M6Max);
        EXPECT_GT(amax / s, kE5M6Max / 2);  // the smallest power of two that fits
        for (int64_t j = t * 128; j < std::min(K, t * 128 + 128); ++j) {
          const float v = x[size_t(i * K + j)];
          // The decoded value is the scaled code, exactly (power-of-two scale), and within
          // half a step: 2^-7 relative for normals, s·2^-21 absolute for subnormals.
          EXPECT_EQ(y[size_t(i * K + j)], e5m6_to_f32(f32_to_e5m6(v / s)) * s);
          EXPECT_LE(std::fabs(y[size_t(i * K + j)] - v),
                    std::max(std::fabs(v) * 0x1p-7f, s * 0x1p-21f)) << i << "," << j;
        }
      }
  }
}

TEST(E5M6, NonFiniteValuesStayInTheirElement) {
  std::vector<float> x(200, 0.25f);
  x[3] = NAN;
  x[4] = INFINITY;
  x[150] = -INFINITY;
  x[151] = 3.0f;
  std::vector<uint8_t> code(size_t(e5m6_packed_bytes(1, 200)));
  std::vector<float> scale(2), y(200);
  encode_e5m6_1x128(x.data(), 1, 200, code.data(), scale.data(), 1);
  decode_e5m6_1x128(code.data(), scale.data(), 1, 200, y.data(), 1);
  EXPECT_TRUE(std::isnan(y[3]));
  EXPECT_TRUE(std::isnan(y[4]));
  EXPECT_TRUE(std::isnan(y[150]));
  EXPECT_EQ(y[0], 0.25f);
  EXPECT_EQ(y[127], 0.25f);
  EXPECT_EQ(y[151], 3.0f);
  EXPECT_EQ(y[199], 0.25f);
}

TEST(ActCache, FormatsReadBackAndBytes) {
  const int64_t R = 5, C = 300, nb = fp8_blocks(C);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> x(size_t(R * C));
  for (float& v : x) v = nd(rng);
  std::vector<float> work, rwork;

  ActCache f32;
  float* p = f32.begin(ActFormat::F32, R, C, work);
  EXPECT_EQ(p, f32.f32.data());  // written in place: nothing to encode
  std::copy(x.begin(), x.end(), p);
  f32.seal(p, 1);
  const float* r = f32.read(rwork, 1);
  EXPECT_EQ(r, f32.f32.data());
  EXPECT_EQ(std::vector<float>(r, r + R * C), x);
  EXPECT_EQ(f32.bytes(), R * C * 4);

  ActCache e4;
  p = e4.begin(ActFormat::E4M3, R, C, work);
  EXPECT_EQ(p, work.data());
  std::copy(x.begin(), x.end(), p);
  e4.seal(p, 2);
  std::vector<uint8_t> q(size_t(R * C));
  std::vector<float> s(size_t(R * nb)), want(x.size());
  quantize_fp8_1x128_ref(x.data(), DType::F32, R, C, C, q.data(), C, s.data());
  dequantize_fp8_1x128_ref(q.data(), R, C, C, s.data(), want.data(), DType::F32, C);
  r = e4.read(rwork, 2);
  EXPECT_EQ(std::vector<float>(r, r + R * C), want);
  EXPECT_NE(want, x);  // it really rounds
  EXPECT_EQ(e4.bytes(), R * C + R * nb * 4);

  ActCache e5;
  p = e5.begin(ActFormat::E5M6, R, C, work);
  std::copy(x.begin(), x.end(), p);
  e5.seal(p, 2);
  std::vector<uint8_t> c5(size_t(e5m6_packed_bytes(R, C)));
  std::vector<float> s5(size_t(R * nb));
  encode_e5m6_1x128(x.data(), R, C, c5.data(), s5.data(), 1);
  decode_e5m6_1x128(c5.data(), s5.data(), R, C, want.data(), 1);
  r = e5.read(rwork, 2);
  EXPECT_EQ(std::vector<float>(r, r + R * C), want);
  EXPECT_NE(want, x);
  EXPECT_EQ(e5.bytes(), R * (C * 3 / 2) + R * nb * 4);
}

}  // namespace
}  // namespace dsv3
