// Array converters (kernels/convert.h) against the scalar functions of core/dtype.h
// (themselves checked exhaustively in test_dtype.cpp): every BF16 and F16 code, every
// E4M3 code, and for the narrowing directions random bit patterns (NaN payloads
// included), every round-to-nearest-even midpoint and its neighbours one F32 ulp away.
// All comparisons are bit for bit, through misaligned pointers and odd lengths so the
// masked tails run too.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/check.h"
#include "core/cpu.h"
#include "core/dtype.h"
#include "kernels/convert.h"

namespace dsv3 {
namespace {

struct IsaGuard {
  ~IsaGuard() { set_isa(best_isa()); }
};

std::vector<Isa> isas() {
  std::vector<Isa> v{Isa::Scalar};
  if (best_isa() >= Isa::Avx2) v.push_back(Isa::Avx2);
  if (best_isa() >= Isa::Avx512) v.push_back(Isa::Avx512);
  return v;
}

// Runs f(src, dst, n) on src shifted to an odd address and compares dst with want.
template <class S, class D, class F>
void check_all(const std::vector<S>& src, const std::vector<D>& want, F f, const char* what) {
  IsaGuard guard;
  for (Isa isa : isas()) {
    set_isa(isa);
    for (size_t shift : {size_t(0), size_t(1)}) {
      const size_t n = src.size() - shift;
      std::vector<S> s(src.size() + 1);
      std::memcpy(s.data() + 1, src.data() + shift, n * sizeof(S));
      std::vector<D> d(n + 2, D(0x5a));
      f(s.data() + 1, d.data() + 1, int64_t(n));
      for (size_t i = 0; i < n; ++i)
        ASSERT_EQ(std::memcmp(&d[i + 1], &want[i + shift], sizeof(D)), 0)
            << what << " " << isa_name(isa) << " element " << i + shift;
      ASSERT_EQ(d[0], D(0x5a)) << what << ": wrote before the array";
      ASSERT_EQ(d[n + 1], D(0x5a)) << what << ": wrote past the array";
    }
  }
}

std::vector<uint16_t> all_u16() {
  std::vector<uint16_t> v(65536);
  for (int i = 0; i < 65536; ++i) v[i] = uint16_t(i);
  return v;
}

TEST(Convert, Bf16AndF16ToF32EveryCode) {
  const std::vector<uint16_t> codes = all_u16();
  std::vector<float> want(codes.size());
  for (size_t i = 0; i < codes.size(); ++i) want[i] = bf16_to_f32(codes[i]);
  check_all(codes, want, convert_bf16_to_f32, "bf16->f32");
  for (size_t i = 0; i < codes.size(); ++i) want[i] = f16_to_f32(codes[i]);
  check_all(codes, want, convert_f16_to_f32, "f16->f32");
}

TEST(Convert, E4M3EveryCode) {
  std::vector<uint8_t> codes(256 * 3 + 5);
  for (size_t i = 0; i < codes.size(); ++i) codes[i] = uint8_t(i);
  std::vector<float> wf(codes.size());
  std::vector<uint16_t> wb(codes.size());
  for (size_t i = 0; i < codes.size(); ++i) {
    wf[i] = e4m3_to_f32(codes[i]);
    wb[i] = f32_to_bf16(wf[i]);
  }
  check_all(codes, wf, convert_e4m3_to_f32, "e4m3->f32");
  check_all(codes, wb, convert_e4m3_to_bf16, "e4m3->bf16");
}

// Inputs for the narrowing conversions: random bit patterns, specials, and for each
// target format every midpoint between neighbouring codes with its F32 neighbours.
std::vector<float> narrowing_inputs() {
  std::vector<float> v;
  std::mt19937 rng(5);
  for (int i = 0; i < (1 << 18); ++i) v.push_back(f32_from_bits(uint32_t(rng())));
  for (float s : {0.f, -0.f, INFINITY, -INFINITY, NAN, -NAN, 448.f, 464.f, -464.01f, 65504.f,
                  65520.f, 1e-45f, 1e-40f, 3.4e38f})
    v.push_back(s);
  auto add_mid = [&](double a, double b) {
    const float m = float((a + b) / 2);  // exact: one more bit than either neighbour
    v.push_back(m);
    v.push_back(std::nextafter(m, INFINITY));
    v.push_back(std::nextafter(m, -INFINITY));
    v.push_back(-m);
  };
  for (uint32_t h = 0; h < 0x7f80; ++h) add_mid(bf16_to_f32(uint16_t(h)), bf16_to_f32(uint16_t(h + 1)));
  for (uint32_t h = 0; h < 0x7c00; ++h) add_mid(f16_to_f32(uint16_t(h)), f16_to_f32(uint16_t(h + 1)));
  for (uint32_t c = 0; c < 0x7e; ++c) add_mid(e4m3_to_f32(uint8_t(c)), e4m3_to_f32(uint8_t(c + 1)));
  return v;
}

TEST(Convert, NarrowingMatchesScalarOnMidpointsAndRandomBits) {
  const std::vector<float> x = narrowing_inputs();
  std::vector<uint16_t> w16(x.size());
  std::vector<uint8_t> w8(x.size());
  for (size_t i = 0; i < x.size(); ++i) w16[i] = f32_to_bf16(x[i]);
  check_all(x, w16, convert_f32_to_bf16, "f32->bf16");
  for (size_t i = 0; i < x.size(); ++i) w16[i] = f32_to_f16(x[i]);
  check_all(x, w16, convert_f32_to_f16, "f32->f16");
  for (size_t i = 0; i < x.size(); ++i) w8[i] = f32_to_e4m3(x[i]);
  check_all(x, w8, convert_f32_to_e4m3, "f32->e4m3");
}

// The hi + lo pair of the F32-activation GEMMs (model/linear.cpp): each part bit for bit
// the scalar bf16(x) and bf16(x − hi), through the same odd addresses and masked tails,
// neither part written past its end; and the pair carries x to 2^-16 relative.
TEST(Convert, SplitIntoBf16PairMatchesScalar) {
  const std::vector<float> x = narrowing_inputs();
  std::vector<uint32_t> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t h = f32_to_bf16(x[i]);
    want[i] = h | uint32_t(f32_to_bf16(x[i] - bf16_to_f32(h))) << 16;
  }
  check_all(x, want, [](const float* src, uint32_t* d, int64_t n) {
    std::vector<uint16_t> hi(size_t(n) + 1, 0x5a5a), lo(size_t(n) + 1, 0x5a5a);
    split_f32_to_bf16_pair(src, hi.data(), lo.data(), n);
    ASSERT_EQ(hi[size_t(n)], 0x5a5a) << "hi written past its end";
    ASSERT_EQ(lo[size_t(n)], 0x5a5a) << "lo written past its end";
    for (int64_t i = 0; i < n; ++i) d[i] = hi[size_t(i)] | uint32_t(lo[size_t(i)]) << 16;
  }, "f32->bf16 pair");
  for (float v : x) {
    if (!std::isfinite(v) || std::fabs(v) > 1e37f || std::fabs(v) < 1e-30f) continue;
    uint16_t h, l;
    split_f32_to_bf16_pair(&v, &h, &l, 1);
    ASSERT_LE(std::fabs(double(bf16_to_f32(h)) + bf16_to_f32(l) - v), std::ldexp(std::fabs(double(v)), -16)) << v;
  }
}

TEST(Convert, GenericDispatchAndErrors) {
  const float x[3] = {1.5f, -2.f, 0.25f};
  uint16_t h[3];
  float back[3];
  convert(x, DType::F32, h, DType::BF16, 3);
  convert(h, DType::BF16, back, DType::F32, 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(back[i], x[i]);
  EXPECT_THROW(convert(x, DType::F32, h, DType::I16, 3), Error);
  EXPECT_THROW(convert_f32_to_bf16(x, h, -1), Error);
}

}  // namespace
}  // namespace dsv3
