// Tensor views, buffers, the arena, CPU dispatch and range splitting.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "core/check.h"
#include "core/cpu.h"
#include "core/parallel.h"
#include "core/tensor.h"

namespace dsv3 {
namespace {

TEST(TensorView, ContiguousStridesAndViews) {
  float data[2 * 3 * 4];
  for (int i = 0; i < 24; ++i) data[i] = float(i);
  TensorView v(data, DType::F32, {2, 3, 4});
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.stride[0], 12);
  EXPECT_EQ(v.stride[2], 1);
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(v.nbytes(), 24 * sizeof(float));
  EXPECT_EQ(v.shape_str(), "[2, 3, 4]");
  const TensorView m = v.as_2d();  // [6, 4]
  EXPECT_EQ(m.shape[0], 6);
  EXPECT_EQ(m.shape[1], 4);
  const TensorView r = m.row(5);
  EXPECT_EQ(r.ptr<float>()[0], 20.0f);
  const TensorView t = m.transposed();  // [4, 6], strides (1, 4)
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.ptr<float>()[3 * t.stride[0] + 2 * t.stride[1]], data[2 * 4 + 3]);
}

TEST(TensorView, RejectsBadShapes) {
  int64_t shape[7] = {1, 1, 1, 1, 1, 1, 1};
  EXPECT_THROW(TensorView(nullptr, DType::F32, 7, shape), Error);
  int64_t neg[2] = {2, -1};
  EXPECT_THROW(TensorView(nullptr, DType::F32, 2, neg), Error);
  // Element counts past int64 are errors, not a wrapped (UB) product.
  int64_t huge[2] = {int64_t(1) << 32, int64_t(1) << 32};
  EXPECT_THROW(TensorView(nullptr, DType::F32, 2, huge), Error);
  EXPECT_THROW(Tensor::empty(DType::F32, {int64_t(1) << 62, 4}), Error);  // bytes wrap to 0
  EXPECT_THROW(Tensor::empty(DType::F32, {3, -1}), Error);
}

TEST(Buffer, AlignedAndZeroed) {
  for (size_t n : {1u, 63u, 64u, 65u, 4097u}) {
    Buffer b(n);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % kAlign, 0u);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(b.as<uint8_t>()[i], 0);
  }
  Tensor t = Tensor::empty(DType::BF16, {3, 5});
  EXPECT_EQ(t.view.nbytes(), 30u);
  // Rounding up to kAlign must not wrap to a 0-byte allocation.
  EXPECT_THROW(Buffer(SIZE_MAX - 10), Error);
}

TEST(Arena, BumpsAlignsResetsAndReportsExhaustion) {
  Arena a(1024);
  void* p = a.alloc(10);
  void* q = a.alloc(10);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kAlign, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(q) % kAlign, 0u);
  EXPECT_EQ(static_cast<char*>(q) - static_cast<char*>(p), 64);
  const size_t mark = a.mark();
  a.view(DType::F32, {100});
  a.reset(mark);
  EXPECT_EQ(a.used(), mark);
  EXPECT_GE(a.high_water(), mark + 400);
  try {
    a.alloc(2000);
    FAIL() << "expected an exhausted arena to throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("arena exhausted"), std::string::npos);
  }
  EXPECT_THROW(a.alloc(SIZE_MAX - 8), Error);  // start + bytes used to wrap past the check
  EXPECT_THROW(a.view(DType::F32, {int64_t(1) << 62, 4}), Error);
}

TEST(Cpu, SetIsaClampsToBest) {
  const Isa best = best_isa();
  set_isa(Isa::Scalar);
  EXPECT_EQ(active_isa(), Isa::Scalar);
  set_isa(Isa::Avx512);
  EXPECT_EQ(active_isa(), best);  // never above what the CPU has
  if (best == Isa::Avx512) {
    EXPECT_TRUE(cpu_features().avx512bf16);
    EXPECT_TRUE(cpu_features().avx512f);
  }
}

TEST(Parallel, SplitRangeCoversExactlyOnce) {
  for (int64_t n : {0, 1, 7, 64, 1001}) {
    for (int parts : {1, 2, 3, 8, 64}) {
      int64_t expect = 0;
      for (int p = 0; p < parts; ++p) {
        int64_t b, e;
        split_range(n, parts, p, &b, &e);
        ASSERT_EQ(b, expect);
        ASSERT_GE(e, b);
        ASSERT_LE(e - b, n / parts + 1);
        expect = e;
      }
      ASSERT_EQ(expect, n);
    }
  }
  EXPECT_EQ(resolve_threads(3), 3);
  EXPECT_GE(resolve_threads(0), 1);
}

TEST(Check, MessagesCarryTheirParts) {
  try {
    DSV3_CHECK(1 + 1 == 3, "tensor ", "w", " has ", 3, " dims");
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tensor w has 3 dims");
  }
}

}  // namespace
}  // namespace dsv3
