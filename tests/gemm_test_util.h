// Helpers shared by the GEMM tests: operands at deliberately awkward addresses (64-byte
// aligned + one element) with padded leading dimensions, and per-ISA test loops.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
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

// A kernel variant: an ISA level and, at AVX-512, how BF16 is multiplied (core/cpu.h
// Bf16Mode: both run on any AVX-512 CPU, whichever is this CPU's default).
struct Variant {
  Isa isa;
  Bf16Mode mode;
  std::string name() const {
    return std::string(isa_name(isa)) + (isa == Isa::Avx512 ? std::string("/") + bf16_mode_name(mode) : "");
  }
  void set() const {
    set_isa(isa);
    set_bf16_mode(mode);
  }
};

inline std::vector<Variant> variants() {
  std::vector<Variant> v;
  for (Isa i : isas()) {
    if (i == Isa::Avx512) {
      v.push_back({i, Bf16Mode::Dot});
      v.push_back({i, Bf16Mode::Fma});
    } else {
      v.push_back({i, best_bf16_mode()});
    }
  }
  return v;
}

struct IsaGuard {
  ~IsaGuard() {
    set_isa(best_isa());
    set_bf16_mode(best_bf16_mode());
  }
};

}  // namespace dsv3::testing
