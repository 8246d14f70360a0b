// Top-k: every ISA path bit-identical to the scalar twin, both equal to a stable sort by
// value (ties to the lower index), on routing-sized and vocabulary-sized rows with ties,
// −inf and NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/check.h"
#include "kernels/softmax.h"
#include "kernels/row_parallel.h"
#include "kernels/topk.h"
#include "ops_testing.h"

namespace dsv3 {
namespace {

using testing::Floats;
using testing::IsaScope;
using testing::kIsas;

// The first k of a stable sort by descending value, NaN last (independent of the kernel).
void sort_reference(const float* x, int64_t C, int64_t k, std::vector<float>* v,
                    std::vector<int32_t>* i) {
  std::vector<int32_t> idx(static_cast<size_t>(C));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) {
    const bool na = std::isnan(x[a]), nb = std::isnan(x[b]);
    if (na || nb) return !na && nb;
    return x[a] > x[b];
  });
  v->assign(size_t(k), 0.f);
  i->assign(size_t(k), 0);
  for (int64_t j = 0; j < k; ++j) {
    (*i)[size_t(j)] = idx[size_t(j)];
    (*v)[size_t(j)] = x[idx[size_t(j)]];
  }
}

void check_case(const float* x, int64_t ld, int64_t T, int64_t C, int64_t k, const char* what) {
  std::vector<float> vr(size_t(T * k)), vf(size_t(T * k));
  std::vector<int32_t> ir(size_t(T * k)), jf(size_t(T * k));
  topk_rows_ref(vr.data(), ir.data(), x, ld, T, C, k);
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    topk_forward(vf.data(), jf.data(), x, ld, T, C, k);
    for (int64_t j = 0; j < T * k; ++j) {
      ASSERT_EQ(jf[size_t(j)], ir[size_t(j)])
          << what << " " << isa_name(isa) << " C=" << C << " k=" << k;
      ASSERT_TRUE(vf[size_t(j)] == vr[size_t(j)] ||
                  (std::isnan(vf[size_t(j)]) && std::isnan(vr[size_t(j)])));
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    std::vector<float> sv;
    std::vector<int32_t> si;
    sort_reference(x + t * ld, C, k, &sv, &si);
    for (int64_t j = 0; j < k; ++j)
      ASSERT_EQ(ir[size_t(t * k + j)], si[size_t(j)])
          << what << " C=" << C << " k=" << k << " t=" << t << " j=" << j;
  }
}

TEST(TopK, RandomRowsWithTies) {
  for (int64_t C : {int64_t(1), int64_t(3), int64_t(17), int64_t(127), int64_t(129), int64_t(256),
                    int64_t(1000)}) {
    const int64_t T = 4, ld = C + 5;
    Floats x(T * ld);
    testing::fill_uniform(x.data(), T * ld, -1.f, 1.f, uint32_t(C));
    for (int64_t k : {int64_t(1), int64_t(2), int64_t(8), C}) {
      if (k > C) continue;
      check_case(x.data(), ld, T, C, k, "distinct");
    }
    // Many ties: values from {0, 1, 2, 3}.
    for (int64_t i = 0; i < T * ld; ++i) x[i] = std::floor((x[i] + 1.f) * 2.f);
    for (int64_t k : {int64_t(1), int64_t(8), C}) {
      if (k > C) continue;
      check_case(x.data(), ld, T, C, k, "ties");
    }
  }
}

TEST(TopK, InfAndNaN) {
  for (int64_t C : {int64_t(5), int64_t(40), int64_t(300)}) {
    Floats x(C);
    testing::fill_uniform(x.data(), C, -1.f, 1.f, uint32_t(C + 9));
    for (int64_t i = 0; i < C; i += 3) x[i] = -INFINITY;
    for (int64_t i = 1; i < C; i += 7) x[i] = NAN;
    check_case(x.data(), C, 1, C, std::min<int64_t>(C, 8), "inf/nan");
    check_case(x.data(), C, 1, C, C, "inf/nan all");
    for (int64_t i = 0; i < C; ++i) x[i] = -INFINITY;
    check_case(x.data(), C, 1, C, 4, "all -inf");
    for (int64_t i = 0; i < C; ++i) x[i] = NAN;
    check_case(x.data(), C, 1, C, 4, "all nan");
  }
}

// Routing: 8 of 256 experts for many tokens (threads over rows), and sampling: top-50 of
// the 129280-entry vocabulary; top-1 equals argmax.
TEST(TopK, ModelShapes) {
  const int64_t T = 128, E = 256;  // T·E = kParallelMinWork: the default threads do fork
  static_assert(T * E >= kParallelMinWork);
  Floats s(T * E);
  testing::fill_uniform(s.data(), T * E, 0.f, 1.f, 5);
  check_case(s.data(), E, T, E, 8, "routing");
  const int64_t V = 129280;
  Floats logits(V);
  testing::fill_uniform(logits.data(), V, -10.f, 10.f, 6);
  check_case(logits.data(), V, 1, V, 50, "vocab");
  float v;
  int32_t i;
  topk_forward(&v, &i, logits.data(), V, 1, V, 1);
  EXPECT_EQ(i, argmax_row(logits.data(), V));
}

TEST(TopK, RejectsBadK) {
  float x[4] = {}, v[8];
  int32_t i[8];
  EXPECT_THROW(topk_forward(v, i, x, 4, 1, 4, 0), Error);
  EXPECT_THROW(topk_forward(v, i, x, 4, 1, 4, 5), Error);
  EXPECT_THROW(topk_forward(v, i, x, 2, 1, 4, 2), Error);
  EXPECT_THROW(topk_forward(v, nullptr, x, 4, 1, 4, 2), Error);
}

}  // namespace
}  // namespace dsv3
