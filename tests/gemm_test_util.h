// Helpers shared by the GEMM tests: operands at deliberately awkward addresses (64-byte
// aligned + one element) with padded leading dimensions, and per-ISA test loops.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/cpu.h"

namespace dsv3::testing {

// Release builds run the full shape list; sanitizer/debug builds (no NDEBUG) a subset,
// so that the ASan suite stays short.
#ifdef NDEBUG
inline constexpr bool kFull = true;
#else
inline constexpr bool kFull = false;
#endif

// u = 2^-24: the unit roundoff of FP32.
inline constexpr double kU = 1.0 / 16777216.0;

// A matrix of `rows` x `cols` with row stride ld = cols + pad, whose first element sits one
// element past a 64-byte boundary.
template <class T>
struct Mat {
  int64_t rows = 0, cols = 0, ld = 0;
  std::vector<T> store;
  T* p = nullptr;
  Mat(int64_t r, int64_t c, int64_t pad) : rows(r), cols(c), ld(c + pad) {
    store.resize(size_t(r * ld + 64 / sizeof(T) + 1));
    uintptr_t a = reinterpret_cast<uintptr_t>(store.data());
    a = (a + 63) / 64 * 64 + sizeof(T);
    p = reinterpret_cast<T*>(a);
  }
  Mat(const Mat&) = delete;  // p points into store
  Mat& operator=(const Mat&) = delete;
  Mat(Mat&&) = default;  // moving a vector keeps its buffer, so p stays valid
  Mat& operator=(Mat&&) = default;
  T& at(int64_t i, int64_t j) { return p[i * ld + j]; }
  const T& at(int64_t i, int64_t j) const { return p[i * ld + j]; }
};

// The ISA levels this CPU can run, lowest first; each test restores the best level.
inline std::vector<Isa> isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (int(i) <= int(best_isa())) v.push_back(i);
  return v;
}

struct IsaGuard {
  ~IsaGuard() { set_isa(best_isa()); }
};

}  // namespace dsv3::testing
