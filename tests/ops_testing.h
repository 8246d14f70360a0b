// Helpers shared by the kernel tests of norm/activation/softmax/rope/loss/topk: random
// data at deliberately misaligned addresses, the list of ISA paths to run, and an ulp
// measure. Tolerances themselves live next to each check, with their derivation.
#pragma once
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/cpu.h"

namespace dsv3::testing {

inline constexpr float kEps = FLT_EPSILON;  // 2^-23: one ulp relative to a value in [1, 2)

// Every ISA level; set_isa clamps to what the CPU has, so on a machine without AVX-512 the
// higher levels rerun a lower path (still correct, just not new coverage).
inline const Isa kIsas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512};

// Restores the ISA at scope exit so one failing test cannot leak a lowered level.
struct IsaScope {
  explicit IsaScope(Isa isa) { set_isa(isa); }
  ~IsaScope() { set_isa(best_isa()); }
};

// A float array whose data() is offset by `misalign` floats from a 64-byte boundary, so
// that vector loads are never accidentally aligned.
class Floats {
 public:
  explicit Floats(int64_t n, int misalign = 1) : buf_(size_t(n + 32)), off_(misalign) {
    while ((reinterpret_cast<uintptr_t>(buf_.data() + off_) & 63) != uintptr_t(4 * misalign))
      ++off_;
  }
  float* data() { return buf_.data() + off_; }
  const float* data() const { return buf_.data() + off_; }
  float& operator[](int64_t i) { return data()[i]; }
  float operator[](int64_t i) const { return data()[i]; }

 private:
  std::vector<float> buf_;
  int64_t off_;
};

inline void fill_uniform(float* x, int64_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  for (int64_t i = 0; i < n; ++i) x[i] = u(rng);
}

// Distance in units of the float ulp at the exact value `exact`.
inline double ulp_error(float got, double exact) {
  const double ae = std::fabs(exact);
  const float f = float(ae);
  const double ulp = ae < FLT_MIN ? std::ldexp(1.0, -149) : std::nextafter(f, INFINITY) - f;
  return std::fabs(double(got) - exact) / ulp;
}

}  // namespace dsv3::testing
