// Every code of BF16, F16, F8_E4M3 and F8_E5M2 is decoded and compared with a slow
// reference written from the format definitions; encoding is checked at every code, at
// every midpoint between neighbouring codes (the ties), one ulp either side of each
// midpoint, and on random floats, against a nearest-value search with ties to even.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"

namespace dsv3 {
namespace {

struct Format {
  int ebits, mbits, bias;
  bool has_inf;        // IEEE-style inf/NaN at the top exponent (F16, BF16, E5M2)
  bool saturate;       // finite overflow -> max finite (FP8) instead of inf (F16, BF16)
  float (*decode)(uint32_t);
  uint32_t (*encode)(float);
};

// Decode from the definition: (-1)^s * 2^(e-bias) * (1 + m/2^mbits), subnormal when e=0.
double ref_decode(const Format& f, uint32_t code, bool* is_nan, bool* is_inf) {
  const uint32_t s = code >> (f.ebits + f.mbits) & 1, e = code >> f.mbits & ((1u << f.ebits) - 1),
                 m = code & ((1u << f.mbits) - 1);
  const uint32_t emax = (1u << f.ebits) - 1;
  *is_nan = *is_inf = false;
  if (f.has_inf && e == emax) {
    if (m) *is_nan = true; else *is_inf = true;
    return s ? -INFINITY : INFINITY;
  }
  if (!f.has_inf && e == emax && m == (1u << f.mbits) - 1) { *is_nan = true; return NAN; }
  const double mag = e == 0 ? std::ldexp(double(m), 1 - f.bias - f.mbits)
                            : std::ldexp(double((1u << f.mbits) + m), int(e) - f.bias - f.mbits);
  return s ? -mag : mag;
}

struct Table {
  std::vector<double> value;     // finite non-negative values, ascending
  std::vector<uint32_t> code;    // their codes (positive sign)
  double max_finite;
};

Table finite_table(const Format& f) {
  Table t;
  const uint32_t n = 1u << (f.ebits + f.mbits);  // codes with sign bit clear
  for (uint32_t c = 0; c < n; ++c) {
    bool nan, inf;
    const double v = ref_decode(f, c, &nan, &inf);
    if (nan || inf) continue;
    t.value.push_back(v);
    t.code.push_back(c);
  }
  t.max_finite = t.value.back();
  return t;
}

// Nearest representable with ties to the even code, then the overflow policy.
uint32_t ref_encode(const Format& f, const Table& t, float x) {
  const uint32_t sign = std::signbit(x) ? 1u << (f.ebits + f.mbits) : 0u;
  const uint32_t emax = (1u << f.ebits) - 1;
  const uint32_t inf_code = emax << f.mbits;
  const uint32_t nan_code = f.has_inf ? (emax << f.mbits) | (1u << (f.mbits - 1))
                                      : (emax << f.mbits) | ((1u << f.mbits) - 1);
  if (std::isnan(x)) return sign | nan_code;
  if (std::isinf(x)) return f.has_inf ? (sign | inf_code) : (sign | nan_code);
  const double a = std::fabs(double(x));
  if (a > t.max_finite) {
    if (f.saturate) return sign | t.code.back();
    // IEEE: overflow to inf iff a >= max + half an ulp of the top binade.
    const double ulp = t.value.back() - t.value[t.value.size() - 2];
    if (a >= t.max_finite + ulp / 2) return sign | inf_code;
    return sign | t.code.back();
  }
  const auto it = std::lower_bound(t.value.begin(), t.value.end(), a);
  const size_t hi = size_t(it - t.value.begin());
  if (t.value[hi] == a || hi == 0) return sign | t.code[hi];
  const size_t lo = hi - 1;
  const double dl = a - t.value[lo], dh = t.value[hi] - a;
  if (dl < dh) return sign | t.code[lo];
  if (dh < dl) return sign | t.code[hi];
  return sign | ((t.code[lo] & 1) ? t.code[hi] : t.code[lo]);
}

bool same_code(const Format& f, uint32_t a, uint32_t b) {
  // All NaN codes are equivalent as long as the sign matches.
  bool an, ai, bn, bi;
  ref_decode(f, a, &an, &ai);
  ref_decode(f, b, &bn, &bi);
  if (an || bn) return an && bn;
  return a == b;
}

void check_format(const Format& f, int random_samples) {
  const uint32_t ncodes = 1u << (1 + f.ebits + f.mbits);
  // Decode: every code.
  for (uint32_t c = 0; c < ncodes; ++c) {
    bool nan, inf;
    const double want = ref_decode(f, c, &nan, &inf);
    const float got = f.decode(c);
    if (nan) {
      ASSERT_TRUE(std::isnan(got)) << "code " << c;
    } else {
      ASSERT_EQ(double(got), want) << "code " << c;
      ASSERT_EQ(std::signbit(got), bool(c >> (f.ebits + f.mbits))) << "sign of code " << c;
    }
  }
  // Encode: every code value, midpoints, midpoints +- 1 ulp (of float), random.
  const Table t = finite_table(f);
  std::vector<float> probes;
  for (size_t i = 0; i < t.value.size(); ++i) {
    probes.push_back(float(t.value[i]));
    if (i + 1 < t.value.size()) {
      const float mid = float((t.value[i] + t.value[i + 1]) / 2);  // exact in float
      probes.push_back(mid);
      probes.push_back(std::nextafter(mid, 0.f));
      probes.push_back(std::nextafter(mid, INFINITY));
    }
  }
  const double ulp = t.value.back() - t.value[t.value.size() - 2];
  for (double v : {t.max_finite + ulp / 2, t.max_finite + ulp, t.max_finite * 4, 1e30})
    probes.push_back(float(v));
  probes.push_back(std::numeric_limits<float>::denorm_min());
  probes.push_back(std::numeric_limits<float>::min());
  probes.push_back(INFINITY);
  probes.push_back(NAN);
  std::mt19937 rng(42);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < random_samples; ++i) probes.push_back(f32_from_bits(bits(rng)));
  const size_t n = probes.size();
  for (size_t i = 0; i < n; ++i) probes.push_back(-probes[i]);
  for (float x : probes) {
    const uint32_t want = ref_encode(f, t, x), got = f.encode(x);
    ASSERT_TRUE(same_code(f, got, want)) << "x=" << x << " (bits " << std::hex << f32_bits(x)
                                         << ") got " << got << " want " << want;
  }
}

TEST(DType, BF16EveryCode) {
  check_format({8, 7, 127, true, false, [](uint32_t c) { return bf16_to_f32(uint16_t(c)); },
                [](float x) { return uint32_t(f32_to_bf16(x)); }},
               200000);
}

TEST(DType, F16EveryCode) {
  check_format({5, 10, 15, true, false, [](uint32_t c) { return f16_to_f32(uint16_t(c)); },
                [](float x) { return uint32_t(f32_to_f16(x)); }},
               200000);
}

TEST(DType, E4M3EveryCode) {
  check_format({4, 3, 7, false, true, [](uint32_t c) { return e4m3_to_f32(uint8_t(c)); },
                [](float x) { return uint32_t(f32_to_e4m3(x)); }},
               200000);
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(f32_to_e4m3(1e6f), 0x7e);
  EXPECT_EQ(f32_to_e4m3(-1e6f), 0xfe);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
}

TEST(DType, E5M2EveryCode) {
  check_format({5, 2, 15, true, true, [](uint32_t c) { return e5m2_to_f32(uint8_t(c)); },
                [](float x) { return uint32_t(f32_to_e5m2(x)); }},
               200000);
  EXPECT_EQ(e5m2_to_f32(0x7b), 57344.0f);
  EXPECT_EQ(f32_to_e5m2(1e6f), 0x7b);
}

TEST(DType, Names) {
  for (int i = 0; i < kNumDTypes; ++i) {
    DType t;
    ASSERT_TRUE(dtype_from_name(dtype_name(DType(i)), &t));
    EXPECT_EQ(int(t), i);
  }
  DType t;
  EXPECT_FALSE(dtype_from_name("F8_E4M3FN", &t));
  EXPECT_EQ(dtype_size(DType::F8_E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
}

}  // namespace
}  // namespace dsv3
