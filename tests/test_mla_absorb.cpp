// Absorbed-MLA slice products (kernels/mla_absorb.h): every ISA path and the scalar twin
// against a double-precision dequantise-then-multiply, for every weight dtype, on odd
// shapes (K, rows not multiples of 16 or 128), slice offsets r0 that are not multiples of
// 128, misaligned pointers, strides wider than the rows, accumulate on and off.
//
// Tolerances (the contract in mla_absorb.h), with n the summation length, S = Σ|x·W| over
// the terms of one output and u = 2^-24:
//   fast path:  |y - y_exact| ≤ (n + 2)·u·(S + |y_in|)  — one rounding of x·s, at most n + 1
//               roundings along any term's path through the F32 FMA chain, lane reduction
//               and the final add of y_in (first-order bound; the ×1.01 below covers the
//               second-order terms, (n·u)² ≲ 1e-9 relative here).
//   scalar twin: sums in double, one rounding: |y - y_exact| ≤ u·|y_exact| + n·2^-52·S,
//               checked as ≤ 2u·(S + |y_in|).
// y_exact is computed in double from the exact weight values; with |x|,|W·s| ~ 1 and n ≤ 700
// its own error (n·2^-53·S) is far below these bounds.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/check.h"
#include "core/cpu.h"
#include "core/dtype.h"
#include "kernels/mla_absorb.h"
#include "ops_testing.h"

namespace dsv3 {
namespace {

using testing::Floats;
using testing::IsaScope;

constexpr double kU = 0x1p-24;

// A weight [N, ldw] of dtype dt at a misaligned address (one element past a 64-byte
// boundary), with block scales [ceil(N/128), ld_scale] for E4M3.
struct TestWeight {
  DType dt;
  int64_t N, K, ldw, ld_scale;
  std::vector<uint8_t> bytes;
  std::vector<float> scale;
  size_t esize, off;

  TestWeight(DType d, int64_t n, int64_t k, int64_t ld, uint32_t seed)
      : dt(d), N(n), K(k), ldw(ld), ld_scale((k + 127) / 128 + 1), esize(dtype_size(d)) {
    bytes.resize(size_t(N * ldw) * esize + 128);
    off = 0;
    while ((reinterpret_cast<uintptr_t>(bytes.data() + off) & 63) != esize) ++off;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    for (int64_t i = 0; i < N * ldw; ++i) {
      void* w = data();
      switch (dt) {
        case DType::F32: static_cast<float*>(w)[i] = u(rng); break;
        case DType::BF16: static_cast<uint16_t*>(w)[i] = f32_to_bf16(u(rng)); break;
        case DType::F16: static_cast<uint16_t*>(w)[i] = f32_to_f16(u(rng)); break;
        default: {
          uint8_t c;
          do c = uint8_t(rng()); while ((c & 0x7f) == 0x7f);  // no NaN codes
          static_cast<uint8_t*>(w)[i] = c;
        }
      }
    }
    // Scales spanning several binades, as weight_scale_inv does (~2^-12..2^-4).
    std::uniform_real_distribution<float> e(-12.f, -4.f);
    scale.resize(size_t((N + 127) / 128 * ld_scale));
    for (float& s : scale) s = std::exp2(e(rng));
  }
  void* data() { return bytes.data() + off; }
  double at(int64_t r, int64_t c) {
    const double v = load_as_f32(data(), dt, size_t(r * ldw + c));
    return dt == DType::F8_E4M3 ? v * double(scale[size_t((r / 128) * ld_scale + c / 128)]) : v;
  }
  MlaAbsorb params(int64_t r0, int64_t rows) {
    MlaAbsorb p;
    p.rows = rows; p.K = K; p.dtype = dt; p.w = data(); p.ldw = ldw; p.r0 = r0;
    if (dt == DType::F8_E4M3) { p.scale = scale.data(); p.ld_scale = ld_scale; }
    return p;
  }
};

struct Shape { int64_t N, K, r0, rows; };

// transposed = false: slice_xw (x [T, rows], y [T, K]); true: slice_xwt (x [T, K], y [T, rows]).
void check(DType dt, const Shape& s, int64_t T, bool accumulate, bool transposed, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << dtype_name(dt) << " N " << s.N << " K " << s.K << " r0 "
                                    << s.r0 << " rows " << s.rows << " T " << T << " acc "
                                    << accumulate << (transposed ? " xwt" : " xw"));
  TestWeight W(dt, s.N, s.K, s.K + 5, seed);
  const int64_t xc = transposed ? s.K : s.rows, yc = transposed ? s.rows : s.K, n = xc;
  const int64_t ldx = xc + 3, ldy = yc + 7;
  Floats x(T * ldx, 1), y0(T * ldy, 3);
  testing::fill_uniform(x.data(), T * ldx, -1.f, 1.f, seed + 1);
  testing::fill_uniform(y0.data(), T * ldy, -1.f, 1.f, seed + 2);
  // Exact result and S = Σ|x·W| per output, in double.
  std::vector<double> exact(size_t(T * yc)), mag(size_t(T * yc));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < yc; ++o) {
      double e = accumulate ? double(y0[t * ldy + o]) : 0.0, a = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        const double w = transposed ? W.at(s.r0 + o, i) : W.at(s.r0 + i, o);
        e += double(x[t * ldx + i]) * w;
        a += std::fabs(double(x[t * ldx + i]) * w);
      }
      exact[size_t(t * yc + o)] = e;
      mag[size_t(t * yc + o)] = a + (accumulate ? std::fabs(double(y0[t * ldy + o])) : 0.0);
    }
  auto run = [&](bool ref) {
    Floats y(T * ldy, 3);
    std::memcpy(y.data(), y0.data(), size_t(T * ldy) * sizeof(float));
    MlaAbsorb p = W.params(s.r0, s.rows);
    p.T = T; p.x = x.data(); p.ldx = ldx; p.y = y.data(); p.ldy = ldy; p.accumulate = accumulate;
    if (ref) transposed ? slice_xwt_ref(p) : slice_xw_ref(p);
    else transposed ? slice_xwt(p) : slice_xw(p);
    std::vector<float> out(size_t(T * ldy));
    std::memcpy(out.data(), y.data(), out.size() * sizeof(float));
    return out;
  };
  const std::vector<float> ref = run(true);
  for (Isa isa : {Isa::Scalar, Isa::Avx512}) {
    IsaScope scope(isa);
    SCOPED_TRACE(isa_name(active_isa()));
    const std::vector<float> got = run(false);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t o = 0; o < yc; ++o) {
        const size_t i = size_t(t * yc + o);
        const double e = exact[i], tol_fast = double(n + 2) * kU * mag[i] * 1.01;
        const double tol_ref = 2 * kU * mag[i];
        const float r = ref[size_t(t * ldy + o)], g = got[size_t(t * ldy + o)];
        ASSERT_LE(std::fabs(double(r) - e), tol_ref) << "ref t " << t << " o " << o;
        ASSERT_LE(std::fabs(double(g) - e), tol_fast) << "t " << t << " o " << o;
        ASSERT_LE(std::fabs(double(g) - double(r)), tol_fast + tol_ref) << "t " << t << " o " << o;
      }
      // Padding between rows of y is never written.
      for (int64_t o = yc; o < ldy; ++o)
        ASSERT_EQ(f32_bits(got[size_t(t * ldy + o)]), f32_bits(y0[t * ldy + o]));
    }
  }
}

const DType kDTypes[] = {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3};

TEST(MlaAbsorb, OddShapesAllDtypes) {
  // N, K, r0, rows: K = 136, 200 (not multiples of 16/128), r0 = 0, 77, 128, 300.
  const Shape shapes[] = {{256, 136, 0, 77}, {512, 200, 77, 130}, {200, 17, 128, 5},
                          {512, 136, 300, 128}, {256, 512, 128, 128}};
  uint32_t seed = 1;
  for (DType dt : kDTypes)
    for (const Shape& s : shapes)
      for (int64_t T : {1, 3, 4, 7})
        for (bool acc : {false, true})
          for (bool tr : {false, true}) check(dt, s, T, acc, tr, seed++);
}

TEST(MlaAbsorb, PanelsLongerThanStackBuffer) {
  // rows (slice_xw) and K (slice_xwt) beyond the kernels' 512-entry x·s panel.
  const Shape s{900, 700, 77, 600};
  uint32_t seed = 100;
  for (DType dt : kDTypes)
    for (bool tr : {false, true}) check(dt, s, 5, true, tr, seed++);
}

TEST(MlaAbsorb, EmptySums) {
  for (bool acc : {false, true}) {
    check(DType::F8_E4M3, {128, 40, 3, 0}, 2, acc, false, 7);  // rows = 0: y = 0 (or y_in)
    check(DType::BF16, {128, 0, 3, 9}, 2, acc, true, 8);       // K = 0
  }
}

// Every E4M3 code decodes exactly: x = 1, scale = 1, one row of all 256 codes, added to
// y = -0 (so that -0 · 1 keeps its sign: +0 + -0 would be +0).
TEST(MlaAbsorb, E4M3DecodeExactEveryCode) {
  std::vector<uint8_t> codes(256 + 1);
  for (int c = 0; c < 256; ++c) codes[size_t(c) + 1] = uint8_t(c);
  const float scale[2] = {1.f, 1.f};
  const float one = 1.f;
  for (Isa isa : {Isa::Scalar, Isa::Avx512}) {
    IsaScope scope(isa);
    Floats y(256, 1);
    for (int c = 0; c < 256; ++c) y[c] = -0.0f;
    MlaAbsorb p;
    p.T = 1; p.rows = 1; p.K = 256; p.dtype = DType::F8_E4M3; p.w = codes.data() + 1; p.ldw = 256;
    p.scale = scale; p.ld_scale = 2; p.x = &one; p.y = y.data(); p.accumulate = true;
    slice_xw(p);
    for (int c = 0; c < 256; ++c) {
      const float e = e4m3_to_f32(uint8_t(c));
      if (std::isnan(e)) EXPECT_TRUE(std::isnan(y[c])) << "code " << c;
      else EXPECT_EQ(f32_bits(y[c]), f32_bits(e)) << "code " << c << " " << isa_name(active_isa());
    }
  }
}

TEST(MlaAbsorb, BadArgumentsAreErrors) {
  std::vector<uint8_t> w(64);
  float x[8] = {}, y[8] = {};
  MlaAbsorb p;
  p.T = 1; p.rows = 2; p.K = 4; p.dtype = DType::F8_E4M3; p.w = w.data(); p.ldw = 4;
  p.x = x; p.y = y;
  EXPECT_THROW(slice_xw(p), Error);  // FP8 without scales
  p.dtype = DType::I32;
  EXPECT_THROW(slice_xwt(p), Error);
  p.dtype = DType::F32; p.ldw = 3;
  EXPECT_THROW(slice_xw(p), Error);
}

}  // namespace
}  // namespace dsv3
