// Latent-cache decode attention (kernels/latent_attn.h): every ISA path and the scalar twin
// against a double-precision two-pass softmax attention written here, on odd R/dc, S from 1
// to 5000, M = 1..17 rows with causal valid lengths (rows of one token share a length),
// misaligned pointers, strides wider than the rows, 1 and 2 threads, and scores far beyond
// F32 exp's range (only a running max keeps them finite).
//
// Tolerance per output o[m, j] (u = 2^-24), the contract in latent_attn.h:
//   fast path:  |o − o_exact| ≤ (2·scale·R·A + S + 16)·u·2·C_j
//     A = max_s Σ_r |q_r·c_sr| (a score's F32 dot product is off by ≤ R·u·A, times scale;
//     a score error δ moves each softmax weight by the factor e^{±δ} and the normalised
//     average by ≤ 2δ·C_j), S·u for the Σ of ≤ S weighted terms relative to Σ p·|c| ≤ C_j,
//     16 for exp (≤ 2 ulp), the rescalings, the merge and the final division.
//     C_j = max_s |c_sj| over the valid positions.
//   scalar twin: double throughout, one rounding: ≤ u·|o| + (2·scale·R·A + S)·2^-52·2·C_j,
//     checked as ≤ 2u·C_j.
// The double reference's own error is ~(R + S)·2^-53 relative, far below both.
// Stored caches (BF16, FP8 with a row scale; kernels/latent_cache.h) are checked against the
// double attention over their decoded values, contiguous and paged. Their fast path multiplies
// in BF16 (latent_attn.h): q as q_hi + q_lo (≤ 2^-16 relative: 256u), two roundings per
// VDPBF16PS pair instead of one per FMA, and P rounded to BF16 (≤ 2^-8 relative per weight;
// the sum l is of the unrounded weights, so o moves by ≤ 2^-8·Σ p·|c| / l ≤ 2^-8·C_j):
//   |o − o_exact| ≤ (2·scale·(2R + 260)·A + S + 16)·u·2·C_j + 2^-8·C_j
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/check.h"
#include "core/cpu.h"
#include "kernels/latent_attn.h"
#include "ops_testing.h"

namespace dsv3 {
namespace {

using testing::Floats;
using testing::IsaScope;

constexpr double kU = 0x1p-24;

struct Case {
  int64_t M, S, R, dc, nh;  // nh: rows per token (rows of token t share valid_len)
  float qmag = 1.0f;        // |q| range: large values push scores past exp's range
};

struct Data {
  Case c;
  int64_t ldq, ldo;
  Floats q, cache, o;      // cache: the values attended over (decoded when stored otherwise)
  CacheDtype dtype;
  std::vector<uint8_t> stored;  // [S, row bytes] + 1: the stored rows (misaligned by a byte)
  std::vector<int32_t> valid;
  float scale;
  explicit Data(const Case& cs, uint32_t seed, CacheDtype dt = CacheDtype::F32)
      : c(cs), ldq(cs.R + 3), ldo(cs.dc + 5), q(cs.M * (cs.R + 3), 3), cache(cs.S * cs.R, 1),
        o(cs.M * (cs.dc + 5), 2), dtype(dt), valid(size_t(cs.M)) {
    testing::fill_uniform(q.data(), c.M * ldq, -c.qmag, c.qmag, seed);
    testing::fill_uniform(cache.data(), c.S * c.R, -1.0f, 1.0f, seed + 1);
    if (dtype != CacheDtype::F32) {
      const int64_t rb = cache_row_bytes(dtype, c.R);
      stored.assign(size_t(c.S * rb + 1), 0);
      for (int64_t s = 0; s < c.S; ++s) {
        // Rows of different magnitudes, so FP8's per-row scales differ.
        for (int64_t r = 0; r < c.R; ++r) cache[s * c.R + r] *= float(1 + s % 5);
        cache_round_row(stored.data() + 1 + s * rb, cache.data() + s * c.R, c.R, dtype);
      }
    }
    scale = float(1.0 / std::sqrt(double(c.R)));
    // Causal: token t of T = ceil(M / nh) new tokens sees positions [0, S − T + t + 1).
    const int64_t T = (c.M + c.nh - 1) / c.nh;
    for (int64_t m = 0; m < c.M; ++m)
      valid[size_t(m)] = int32_t(std::max<int64_t>(0, c.S - T + m / c.nh + 1));
  }
  LatentAttn args() {
    LatentAttn a;
    a.o = o.data(); a.ldo = ldo;
    a.q = q.data(); a.ldq = ldq;
    a.cache = dtype == CacheDtype::F32 ? static_cast<const void*>(cache.data())
                                       : static_cast<const void*>(stored.data() + 1);
    a.dtype = dtype;
    a.valid_len = valid.data();
    a.scale = scale; a.M = c.M; a.S = c.S; a.dc = c.dc; a.R = c.R;
    return a;
  }
};

enum class Bound { Twin, Fast, FastBf16 };

// Checks o against a two-pass double softmax attention within the bound of the path taken.
void check(Data& d, Bound b, const char* what) {
  const Case& c = d.c;
  double worst = 0;  // largest error / bound
  for (int64_t m = 0; m < c.M; ++m) {
    const float* q = d.q.data() + m * d.ldq;
    const int64_t n = d.valid[size_t(m)];
    std::vector<double> z(static_cast<size_t>(n));
    double zmax = -INFINITY, A = 0;
    for (int64_t s = 0; s < n; ++s) {
      double dot = 0, mag = 0;
      for (int64_t r = 0; r < c.R; ++r) {
        dot += double(q[r]) * d.cache[s * c.R + r];
        mag += std::fabs(double(q[r]) * d.cache[s * c.R + r]);
      }
      z[size_t(s)] = double(d.scale) * dot;
      zmax = std::max(zmax, z[size_t(s)]);
      A = std::max(A, mag);
    }
    double L = 0;
    for (auto& v : z) L += (v = std::exp(v - zmax));
    for (int64_t j = 0; j < c.dc; ++j) {
      double acc = 0, cj = 0;
      for (int64_t s = 0; s < n; ++s) {
        acc += z[size_t(s)] * d.cache[s * c.R + j];
        cj = std::max(cj, std::fabs(double(d.cache[s * c.R + j])));
      }
      const double exact = n ? acc / L : 0.0;
      const double got = d.o[m * d.ldo + j];
      const double bound =
          b == Bound::Twin ? 2 * kU * cj
          : b == Bound::Fast ? (2 * d.scale * c.R * A + c.S + 16) * kU * 2 * cj
                             : (2 * d.scale * (2 * c.R + 260) * A + c.S + 16) * kU * 2 * cj + 0x1p-8 * cj;
      ASSERT_TRUE(std::isfinite(got)) << what << " m " << m << " j " << j;
      const double err = std::fabs(got - exact);
      ASSERT_LE(err, bound) << what << " m " << m << " j " << j << " exact " << exact;
      if (bound > 0) worst = std::max(worst, err / bound);
    }
  }
  std::printf("%s M %lld S %lld R %lld: max err / bound %.3g\n", what, (long long)c.M,
              (long long)c.S, (long long)c.R, worst);
}

// The bound of the path active_isa() takes for rows stored as dt.
Bound fast_bound(CacheDtype dt = CacheDtype::F32) {
  if (active_isa() != Isa::Avx512) return Bound::Twin;
  return dt == CacheDtype::F32 ? Bound::Fast : Bound::FastBf16;
}

const Case kCases[] = {
    {1, 1, 40, 24, 1},   {3, 7, 40, 24, 3},    {8, 300, 40, 24, 4},  {17, 300, 40, 24, 8},
    {17, 5000, 40, 24, 4}, {8, 5000, 576, 512, 8}, {17, 300, 576, 512, 4}, {3, 7, 576, 512, 1},
    {1, 5000, 320, 256, 1},
};

TEST(LatentAttn, RefMatchesDouble) {
  uint32_t seed = 1;
  for (const Case& c : kCases) {
    Data d(c, seed += 7);
    latent_attention_ref(d.args());
    SCOPED_TRACE(::testing::Message() << "M " << c.M << " S " << c.S << " R " << c.R);
    check(d, Bound::Twin, "ref");
  }
}

TEST(LatentAttn, EveryIsaAndThreadCount) {
  uint32_t seed = 100;
  for (Isa isa : testing::kIsas) {
    IsaScope scope(isa);
    for (int threads : {1, 2}) {
      for (const Case& c : kCases) {
        Data d(c, seed += 7);
        latent_attention(d.args(), threads);
        SCOPED_TRACE(::testing::Message() << isa_name(active_isa()) << " threads " << threads
                                          << " M " << c.M << " S " << c.S << " R " << c.R);
        check(d, fast_bound(), active_isa() == Isa::Avx512 ? "avx512" : "twin");
      }
    }
  }
}

// |q| ≤ 100 with R = 40: a scaled score has σ ≈ 33, so the largest of 5000 is ~120, past F32
// exp's range (88.7): only the running max keeps the weights finite. The bound stays tight
// (2·scale·R·A·2u with A ≲ 2000: a few 1e-3 of C_j).
TEST(LatentAttn, LargeScoresStayFinite) {
  for (CacheDtype dt : {CacheDtype::F32, CacheDtype::BF16, CacheDtype::FP8}) {
    for (Isa isa : testing::kIsas) {
      IsaScope scope(isa);
      for (int threads : {1, 2}) {
        Data d({17, 5000, 40, 24, 4, 100.0f}, 77, dt);
        latent_attention(d.args(), threads);
        check(d, fast_bound(dt), active_isa() == Isa::Avx512 ? "large avx512" : "large twin");
      }
    }
  }
}

// The BF16 path at high precision: with q = 0 every score is 0 and every weight exactly 1
// (exp(0), and 1 in BF16), so o is the plain mean of the valid rows and the P rounding, which
// dominates the path's bound, vanishes: o is within the F32 sums' (S + 16)·u·2·C_j. A position
// dropped, counted twice or paired with the wrong row (odd tiles: 35 and 67 positions end in
// a half pair after full ones) moves o by ~C_j / S, far beyond that.
TEST(LatentAttn, Bf16PathIsExactUnderUniformWeights) {
  const Case cases[] = {{5, 35, 100, 80, 5}, {8, 300, 320, 256, 8}, {3, 67, 72, 72, 3}, {1, 1, 24, 16, 1},
                        {17, 1000, 576, 512, 17}};
  uint32_t seed = 4000;
  for (const Case& c : cases) {
    for (int threads : {1, 2}) {
      SCOPED_TRACE(::testing::Message() << "M " << c.M << " S " << c.S << " threads " << threads);
      Data d(c, seed += 3, CacheDtype::BF16);
      std::fill(d.q.data(), d.q.data() + c.M * d.ldq, 0.0f);
      latent_attention(d.args(), threads);
      check(d, Bound::Fast, active_isa() == Isa::Avx512 ? "uniform bf16 avx512" : "uniform bf16 twin");
    }
  }
}

// Rows with no valid position give zeros; a row's output does not depend on the others.
TEST(LatentAttn, EmptyRowsAndRowIndependence) {
  Data d({5, 600, 40, 24, 1}, 9);
  d.valid = {0, 600, 1, 0, 333};
  latent_attention(d.args(), 2);
  for (int64_t j = 0; j < 24; ++j) {
    EXPECT_EQ(d.o[0 * d.ldo + j], 0.0f);
    EXPECT_EQ(d.o[3 * d.ldo + j], 0.0f);
    // One position: the softmax weight is 1 (exp(0)·1/1), so o is that cache row exactly.
    EXPECT_EQ(d.o[2 * d.ldo + j], d.cache[j]);
  }
  check(d, fast_bound(), "empty");
}

// latent_attention_batch: each call's output is bit-identical to latent_attention of that
// call alone with the same thread count — calls of different sizes (some split over both
// threads, some too small to split, one empty), every ISA, 1 and 2 threads. The inputs of
// each call are distinct, so a call reading another's scratch would differ.
TEST(LatentAttn, BatchEqualsEachCallAlone) {
  const Case cases[] = {{8, 200, 320, 256, 8}, {8, 1, 320, 256, 8},   {16, 900, 320, 256, 8},
                        {0, 10, 320, 256, 8},  {24, 4000, 40, 24, 8}, {8, 33, 320, 256, 8}};
  for (Isa isa : testing::kIsas) {
    IsaScope scope(isa);
    for (int threads : {1, 2}) {
      std::vector<Data> alone, batch;
      std::vector<LatentAttn> calls;
      uint32_t seed = 500;
      for (const Case& c : cases) {
        alone.emplace_back(c, seed);
        batch.emplace_back(c, seed);
        seed += 11;
      }
      for (Data& d : batch) calls.push_back(d.args());
      latent_attention_batch(calls.data(), int(calls.size()), threads);
      for (size_t i = 0; i < alone.size(); ++i) {
        latent_attention(alone[i].args(), threads);
        SCOPED_TRACE(::testing::Message() << isa_name(active_isa()) << " threads " << threads
                                          << " call " << i);
        const int64_t n = alone[i].c.M * alone[i].ldo;
        for (int64_t k = 0; k < n; ++k)
          ASSERT_EQ(std::bit_cast<uint32_t>(alone[i].o[k]), std::bit_cast<uint32_t>(batch[i].o[k]))
              << "element " << k;
        if (alone[i].c.M > 0) check(batch[i], fast_bound(), "batch");
      }
    }
  }
  // A bad call anywhere in the batch is refused before any work.
  Data good({8, 10, 40, 24, 8}, 1), bad({8, 10, 40, 24, 8}, 2);
  LatentAttn two[2] = {good.args(), bad.args()};
  two[1].dc = 41;
  EXPECT_THROW(latent_attention_batch(two, 2, 2), Error);
}

// BF16 and FP8 stored rows, contiguous and paged (shuffled blocks of 7 positions with a
// stride wider than the rows): every ISA and thread count within the bound of its path for
// the attention over the decoded values, and the paged result bit-identical to the contiguous.
// Shapes cover the BF16 path's edges: R and dc not multiples of 32 (masked columns), dc with a
// 32-column chunk past the 64-column blocks (80), an odd last tile (33, 65: a pair with one
// row), one position, M not a multiple of 4.
TEST(LatentAttn, StoredRowsContiguousAndPaged) {
  const Case cases[] = {{8, 300, 40, 24, 4},   {17, 1000, 320, 256, 8}, {4, 33, 576, 512, 4},
                        {1, 1, 24, 16, 1},     {5, 65, 100, 80, 5},     {6, 97, 72, 72, 3}};
  uint32_t seed = 900;
  for (CacheDtype dt : {CacheDtype::BF16, CacheDtype::FP8, CacheDtype::F32}) {
    for (Isa isa : testing::kIsas) {
      IsaScope scope(isa);
      for (int threads : {1, 2}) {
        for (const Case& c : cases) {
          SCOPED_TRACE(::testing::Message() << cache_dtype_name(dt) << " " << isa_name(active_isa())
                                            << " threads " << threads << " M " << c.M << " S " << c.S);
          Data d(c, seed += 7, dt);
          latent_attention(d.args(), threads);
          check(d, fast_bound(dt), cache_dtype_name(dt));
          // The same rows in blocks, the blocks in shuffled order.
          const int64_t br = 7, rb = cache_row_bytes(dt, c.R), stride = br * rb + 9;
          const int64_t nb = (c.S + br - 1) / br;
          std::vector<int32_t> table(static_cast<size_t>(nb));
          for (int64_t b = 0; b < nb; ++b) table[size_t(b)] = int32_t(b);
          std::shuffle(table.begin(), table.end(), std::mt19937(seed));
          std::vector<uint8_t> pool(static_cast<size_t>(nb * stride));
          const uint8_t* src = static_cast<const uint8_t*>(d.args().cache);
          for (int64_t s = 0; s < c.S; ++s)
            std::memcpy(pool.data() + table[size_t(s / br)] * stride + (s % br) * rb, src + s * rb,
                        size_t(rb));
          Data p(c, seed, dt);  // same q (seed), fresh output
          LatentAttn a = d.args();
          a.o = p.o.data();
          a.cache = pool.data();
          a.block_table = table.data();
          a.block_rows = br;
          a.block_stride = stride;
          latent_attention(a, threads);
          for (int64_t m = 0; m < c.M; ++m)
            for (int64_t j = 0; j < c.dc; ++j)
              ASSERT_EQ(std::bit_cast<uint32_t>(d.o[m * d.ldo + j]),
                        std::bit_cast<uint32_t>(p.o[m * p.ldo + j]))
                  << "m " << m << " j " << j;
        }
      }
    }
  }
}

// A row's output does not depend on how many rows share the call: up to 8 rows the BF16
// path's P·V interleaves the row pairs in registers, beyond 8 through a buffer (latent_attn_
// avx512.cpp) — the same products in the same order, so the same bits. M = 1, 4, 8 against
// the first rows of an M = 9 call, BF16 and FP8 rows, an odd S (a lone last row), 1 and 2
// threads, with dc a multiple of 32 and not. (S is long enough that every M splits its
// positions over both threads alike: the split itself depends on M·S, latent_attn.cpp.)
TEST(LatentAttn, StoredRowsSameBitsWhateverM) {
  for (CacheDtype dt : {CacheDtype::BF16, CacheDtype::FP8})
    for (const auto& [R, dc] : {std::pair<int64_t, int64_t>{320, 256}, {100, 80}})
      for (int threads : {1, 2}) {
        SCOPED_TRACE(::testing::Message() << cache_dtype_name(dt) << " R " << R << " threads " << threads);
        Data big({9, 4001, R, dc, 9}, 77, dt);
        latent_attention(big.args(), threads);
        for (int64_t M : {1, 4, 8}) {
          Data d({9, 4001, R, dc, 9}, 77, dt);  // same inputs
          LatentAttn a = d.args();
          a.M = M;
          latent_attention(a, threads);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t j = 0; j < dc; ++j)
              ASSERT_EQ(std::bit_cast<uint32_t>(d.o[m * d.ldo + j]), std::bit_cast<uint32_t>(big.o[m * big.ldo + j]))
                  << "M " << M << " m " << m << " j " << j;
        }
      }
}

// The stored forms' rounding: BF16 (8 significant bits) within 2^-8 relative of each value;
// FP8 (E4M3: 3 mantissa
// bits, half an ulp = 2^-4 relative; below 2^-6 in units of the scale max|row|/448, steps of
// 2^-9 units) within 2^-4 relative or 2^-10·max|row|/448 absolute, times 1 + 2^-20 for the
// F32 division by the scale and product with it; encode(decode(encode x)) = encode x.
TEST(LatentCache, RoundingBounds) {
  const int64_t R = 333;
  std::vector<float> x(static_cast<size_t>(R)), y;
  testing::fill_uniform(x.data(), R, -3.0f, 3.0f, 5);
  x[7] = 0; x[8] = 1e-6f; x[9] = -250.0f;
  for (CacheDtype dt : {CacheDtype::BF16, CacheDtype::FP8}) {
    y = x;
    std::vector<uint8_t> a(static_cast<size_t>(cache_row_bytes(dt, R))), b(a.size());
    cache_round_row(a.data(), y.data(), R, dt);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    for (int64_t r = 0; r < R; ++r) {
      const double e = std::fabs(double(y[size_t(r)]) - x[size_t(r)]), ax = std::fabs(double(x[size_t(r)]));
      if (dt == CacheDtype::BF16) EXPECT_LE(e, ax * 0x1p-8) << r;
      else EXPECT_LE(e, std::max(ax * 0x1p-4, double(amax) / 448 * 0x1p-10) * (1 + 0x1p-20)) << r;
    }
    std::vector<float> z = y;
    cache_round_row(b.data(), z.data(), R, dt);
    EXPECT_EQ(a, b) << cache_dtype_name(dt);
    EXPECT_EQ(y, z) << cache_dtype_name(dt);
  }
  // An all-zero row stays zero (scale 0).
  std::vector<float> zero(static_cast<size_t>(R), 0.0f);
  cache_round_row(nullptr, zero.data(), R, CacheDtype::FP8);
  for (float v : zero) EXPECT_EQ(v, 0.0f);
  CacheDtype d;
  EXPECT_TRUE(parse_cache_dtype("fp8", &d));
  EXPECT_EQ(d, CacheDtype::FP8);
  EXPECT_FALSE(parse_cache_dtype("f16", &d));
}

TEST(LatentAttn, BadArguments) {
  Data d({2, 10, 40, 24, 1}, 3);
  LatentAttn a = d.args();
  a.dc = 41;
  EXPECT_THROW(latent_attention(a), Error);
  a = d.args();
  d.valid[1] = 11;
  EXPECT_THROW(latent_attention(a), Error);
  d.valid[1] = -1;
  EXPECT_THROW(latent_attention(a), Error);
  d.valid[1] = 10;
  a.scale = 0;
  EXPECT_THROW(latent_attention(a), Error);
  a = d.args();
  a.ldq = 39;
  EXPECT_THROW(latent_attention(a), Error);
}

}  // namespace
}  // namespace dsv3
