// RoPE / YaRN: tables against PyTorch float64 vectors written by
// tools/reference/yarn_rope.py (tests/data/yarn_rope.txt), the AVX-512 and AVX2 rotations against
// the scalar twin (bit-identical), backward as the adjoint of forward, and finite
// differences.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/rope.h"
#include "model/mla.h"
#include "ops_testing.h"
#include "train/train_config.h"

namespace dsv3 {
namespace {

using testing::Floats;
using testing::IsaScope;
using testing::kEps;
using testing::kIsas;

struct RefConfig {
  std::string name;
  int64_t dim = 0, qk_head_dim = 0;
  double theta = 0;
  bool yarn = false;
  YarnParams scaling;
  double softmax_scale = 0;
  std::vector<double> freq;
  std::vector<int64_t> pos;
  std::vector<std::vector<double>> cos, sin;
};

std::vector<double> read_doubles(std::istringstream& in) {
  std::vector<double> v;
  double d;
  while (in >> d) v.push_back(d);
  return v;
}

std::vector<RefConfig> load_reference() {
  const std::string here = __FILE__;
  const std::string path = here.substr(0, here.rfind('/')) + "/data/yarn_rope.txt";
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << "cannot open " << path;
  std::vector<RefConfig> out;
  std::string line;
  RefConfig cur;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream in(line);
    std::string key;
    in >> key;
    if (key == "config") {
      cur = RefConfig();
      std::string k;
      in >> cur.name;
      while (in >> k) {
        if (k == "dim")
          in >> cur.dim;
        else if (k == "theta")
          in >> cur.theta;
        else if (k == "factor")
          in >> cur.scaling.factor;
        else if (k == "orig")
          in >> cur.scaling.original_max_position_embeddings;
        else if (k == "beta_fast")
          in >> cur.scaling.beta_fast;
        else if (k == "beta_slow")
          in >> cur.scaling.beta_slow;
        else if (k == "mscale")
          in >> cur.scaling.mscale;
        else if (k == "mscale_all_dim")
          in >> cur.scaling.mscale_all_dim;
        else if (k == "qk_head_dim")
          in >> cur.qk_head_dim;
        else if (k == "yarn") {
          int y;
          in >> y;
          cur.yarn = y != 0;
        }
      }
    } else if (key == "softmax_scale") {
      in >> cur.softmax_scale;
    } else if (key == "freq") {
      cur.freq = read_doubles(in);
    } else if (key == "pos") {
      int64_t p;
      std::string which;
      in >> p >> which;
      if (which == "cos") {
        cur.pos.push_back(p);
        cur.cos.push_back(read_doubles(in));
      } else
        cur.sin.push_back(read_doubles(in));
    } else if (key == "end") {
      out.push_back(cur);
    }
  }
  return out;
}

TEST(Yarn, TablesMatchPyTorchReference) {
  const std::vector<RefConfig> refs = load_reference();
  ASSERT_EQ(refs.size(), 6u);
  for (const RefConfig& r : refs) {
    const YarnParams* ys = r.yarn ? &r.scaling : nullptr;
    const int64_t half = r.dim / 2;
    std::vector<double> freq(static_cast<size_t>(half));
    rope_frequencies(freq.data(), r.dim, r.theta, ys);
    ASSERT_EQ(r.freq.size(), size_t(half)) << r.name;
    // Both sides compute theta^(−2i/dim) in double (pow may differ by an ulp) and the
    // same blend: 8 double ulps.
    for (int64_t i = 0; i < half; ++i)
      EXPECT_NEAR(freq[size_t(i)], r.freq[size_t(i)], 8 * 2.2e-16 * r.freq[size_t(i)])
          << r.name << " i=" << i;
    EXPECT_NEAR(attention_softmax_scale(r.qk_head_dim, ys), r.softmax_scale, kEps * r.softmax_scale)
        << r.name;
    // Tables: one row at a time, at the reference positions. The angle pos·freq agrees to
    // ~1e5 · 8 · 2^-52 ≈ 2e-10 rad; our float entries are one rounding of a double, so
    // they are within half a float ulp (≤ 2^-24·|v|) plus that.
    for (size_t j = 0; j < r.pos.size(); ++j) {
      std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
      rope_build_table(c.data(), s.data(), r.pos[j], 1, r.dim, r.theta, ys);
      for (int64_t i = 0; i < half; ++i) {
        EXPECT_NEAR(c[size_t(i)], r.cos[j][size_t(i)],
                    std::fabs(r.cos[j][size_t(i)]) * 0x1p-24 + 1e-9)
            << r.name << " pos " << r.pos[j] << " i=" << i;
        EXPECT_NEAR(s[size_t(i)], r.sin[j][size_t(i)],
                    std::fabs(r.sin[j][size_t(i)]) * 0x1p-24 + 1e-9)
            << r.name << " pos " << r.pos[j] << " i=" << i;
      }
    }
  }
}

// The shipped context-extension configs of the demo model (docs/long-context.md) hold the
// YaRN numbers of the reference's tiny-ext-* entries, and the path both training
// (train_model.cpp) and inference (model.cpp) take from a config to the kernels —
// yarn_params, rope_frequencies, rope_build_table, attention_softmax_scale — gives the
// reference's frequencies, table rows and mscale'd softmax scale for them.
TEST(Yarn, ExtensionConfigsMatchPyTorchReference) {
  const std::vector<RefConfig> refs = load_reference();
  const std::string here = __FILE__;
  const std::string repo = here.substr(0, here.rfind('/')) + "/..";
  const TrainConfig base = load_train_config(repo + "/configs/tiny.json");
  EXPECT_TRUE(base.model.rope_scaling.type.empty());
  for (const char* name : {"tiny-ext-1024", "tiny-ext-4096"}) {
    SCOPED_TRACE(name);
    const RefConfig* r = nullptr;
    for (const RefConfig& c : refs)
      if (c.name == name) r = &c;
    ASSERT_NE(r, nullptr);
    const TrainConfig t = load_train_config(repo + "/configs/" + name + ".json");
    const ModelConfig& m = t.model;
    YarnParams storage;
    const YarnParams* y = yarn_params(m, &storage);
    ASSERT_NE(y, nullptr);
    // The report's rule (§4.3): factors over the pre-training length, mscale = mscale_all_dim = 1,
    // and room for factor × original positions (the release: 40 × 4096 = 163840).
    EXPECT_EQ(y->original_max_position_embeddings, base.seq_len);
    EXPECT_EQ(y->factor, r->scaling.factor);
    EXPECT_EQ(y->original_max_position_embeddings, r->scaling.original_max_position_embeddings);
    EXPECT_EQ(y->beta_fast, r->scaling.beta_fast);
    EXPECT_EQ(y->beta_slow, r->scaling.beta_slow);
    EXPECT_EQ(y->mscale, r->scaling.mscale);
    EXPECT_EQ(y->mscale_all_dim, r->scaling.mscale_all_dim);
    EXPECT_EQ(double(m.max_position_embeddings), y->factor * double(base.seq_len));
    EXPECT_LE(t.seq_len, m.max_position_embeddings);
    EXPECT_EQ(m.qk_rope_head_dim, r->dim);
    EXPECT_EQ(m.qk_head_dim(), r->qk_head_dim);
    EXPECT_EQ(m.rope_theta, r->theta);
    std::vector<double> freq(static_cast<size_t>(r->dim / 2));
    rope_frequencies(freq.data(), m.qk_rope_head_dim, m.rope_theta, y);
    for (size_t i = 0; i < freq.size(); ++i)
      EXPECT_NEAR(freq[i], r->freq[i], 8 * 2.2e-16 * r->freq[i]) << "i=" << i;
    EXPECT_NEAR(attention_softmax_scale(m.qk_head_dim(), y), r->softmax_scale, kEps * r->softmax_scale);
    // mscale = 0.1 ln(factor) + 1 (√t of the report), squared into the softmax scale.
    const double mscale = 0.1 * std::log(y->factor) + 1.0;
    EXPECT_NEAR(r->softmax_scale, mscale * mscale / std::sqrt(double(m.qk_head_dim())), 1e-15);
    // The table rows at the reference positions inside the trained length.
    const int64_t half = r->dim / 2;
    for (size_t j = 0; j < r->pos.size(); ++j) {
      if (r->pos[j] >= t.seq_len) continue;
      std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
      rope_build_table(c.data(), s.data(), r->pos[j], 1, m.qk_rope_head_dim, m.rope_theta, y);
      for (int64_t i = 0; i < half; ++i) {
        EXPECT_NEAR(c[size_t(i)], r->cos[j][size_t(i)], std::fabs(r->cos[j][size_t(i)]) * 0x1p-24 + 1e-9)
            << "pos " << r->pos[j] << " i=" << i;
        EXPECT_NEAR(s[size_t(i)], r->sin[j][size_t(i)], std::fabs(r->sin[j][size_t(i)]) * 0x1p-24 + 1e-9)
            << "pos " << r->pos[j] << " i=" << i;
      }
    }
  }
}

TEST(Yarn, MscaleAndScaleHelpers) {
  EXPECT_EQ(yarn_get_mscale(1.0, 1.0), 1.0);
  EXPECT_EQ(yarn_get_mscale(0.5, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(yarn_get_mscale(40.0, 1.0), 0.1 * std::log(40.0) + 1.0);
  // No scaling: plain 1/sqrt(d).
  EXPECT_FLOAT_EQ(attention_softmax_scale(192, nullptr), float(1.0 / std::sqrt(192.0)));
  YarnParams none;  // factor 1
  EXPECT_FLOAT_EQ(attention_softmax_scale(192, &none), float(1.0 / std::sqrt(192.0)));
}

struct Layout {
  int64_t T, H, dim, st, sh, off;  // token stride, head stride, offset of the rope slice
};

TEST(Rope, AvxMatchesScalarBitExactStrided) {
  const int64_t n_pos = 50;
  const Layout layouts[] = {{5, 3, 64, 3 * 192 + 7, 192, 128},  // q_pe inside [q_nope ; q_pe]
                            {4, 1, 64, 576, 576, 512},          // k_pe inside [c_KV ; k_pe]
                            {3, 5, 6, 31, 6, 1},                // tail: 3 pairs
                            {2, 2, 2, 9, 4, 3},                 // one pair
                            {7, 2, 34, 70, 35, 0},              // 17 pairs: 8 + 8 + 1
                            // 150 pairs: more than one per-token block of cos/sin vectors
                            // (AVX-512: 128 pairs + 22, AVX2: 64 + 64 + 22).
                            {2, 3, 300, 3 * 301 + 5, 301, 1}};
  for (const Layout& L : layouts) {
    std::vector<float> c(size_t(n_pos * L.dim / 2)), s(c.size());
    YarnParams ys;  // DeepSeek-V3's: table amplitude mscale/mscale_all_dim = 1
    ys.factor = 40;
    ys.mscale_all_dim = 1;
    rope_build_table(c.data(), s.data(), 0, n_pos, L.dim, 10000.0, &ys);
    const RopeTable tab{c.data(), s.data(), n_pos, L.dim};
    std::vector<int32_t> pos(size_t(L.T));
    for (int64_t t = 0; t < L.T; ++t) pos[size_t(t)] = int32_t((t * 17 + 3) % n_pos);
    const int64_t n = L.T * L.st + L.off + 64;
    Floats x(n), ref(n), out(n), back(n);
    testing::fill_uniform(x.data(), n, -2.f, 2.f, uint32_t(L.dim));
    for (bool inverse : {false, true}) {
      for (int64_t i = 0; i < n; ++i) ref[i] = out[i] = x[i];
      rope_rows_ref(ref.data() + L.off, L.st, L.sh, x.data() + L.off, L.st, L.sh, pos.data(), L.T,
                    L.H, c.data(), s.data(), L.dim, inverse);
      for (Isa isa : kIsas) {
        IsaScope scope(isa);
        for (int64_t i = 0; i < n; ++i) out[i] = x[i];
        // In place, like the model does on q_pe / k_pe.
        if (inverse)
          rope_backward(out.data() + L.off, L.st, L.sh, out.data() + L.off, L.st, L.sh, pos.data(),
                        L.T, L.H, tab);
        else
          rope_forward(out.data() + L.off, L.st, L.sh, out.data() + L.off, L.st, L.sh, pos.data(),
                       L.T, L.H, tab);
        for (int64_t i = 0; i < n; ++i)
          ASSERT_EQ(out[i], ref[i]) << isa_name(isa) << " dim=" << L.dim << " i=" << i;
      }
    }
    // Backward undoes forward: a rotation by −θ after +θ with float cos/sin (c² + s² = 1
    // within 2·2^-24) and 3 roundings per op: |Δ| ≤ 8 eps·(|x0| + |x1|).
    rope_forward(out.data() + L.off, L.st, L.sh, x.data() + L.off, L.st, L.sh, pos.data(), L.T, L.H,
                 tab);
    for (int64_t i = 0; i < n; ++i) back[i] = out[i];
    rope_backward(back.data() + L.off, L.st, L.sh, out.data() + L.off, L.st, L.sh, pos.data(), L.T,
                  L.H, tab);
    for (int64_t t = 0; t < L.T; ++t)
      for (int64_t h = 0; h < L.H; ++h)
        for (int64_t i = 0; i < L.dim; ++i) {
          const int64_t e = L.off + t * L.st + h * L.sh + i, p = e - (i & 1) + ((i & 1) ^ 1);
          EXPECT_NEAR(back[e], x[e], 8 * kEps * (std::fabs(x[e]) + std::fabs(x[p])));
        }
  }
}

// Forward is linear, so its gradient is the transpose: Σ dout·R(x) must equal Σ R⁻¹(dout)·x
// (in double, from float results with ≤ 3 roundings each: 1e-5 on sums of ~600 terms of
// size ~1), and a central difference is exact up to rounding (step 0.25, tolerance 1e-5).
TEST(Rope, BackwardIsAdjointAndMatchesFiniteDifferences) {
  const int64_t T = 4, H = 3, D = 64, n_pos = 4096;
  std::vector<float> c(size_t(n_pos * D / 2)), s(c.size());
  rope_build_table(c.data(), s.data(), 0, n_pos, D, 10000.0, nullptr);
  const RopeTable tab{c.data(), s.data(), n_pos, D};
  const int32_t pos[T] = {0, 1, 2000, 4095};
  Floats x(T * H * D), dout(T * H * D), y(T * H * D), dx(T * H * D);
  testing::fill_uniform(x.data(), T * H * D, -1.f, 1.f, 41);
  testing::fill_uniform(dout.data(), T * H * D, -1.f, 1.f, 42);
  for (Isa isa : kIsas) {
    IsaScope scope(isa);
    rope_forward(y.data(), H * D, D, x.data(), H * D, D, pos, T, H, tab);
    rope_backward(dx.data(), H * D, D, dout.data(), H * D, D, pos, T, H, tab);
    double a = 0, b = 0;
    for (int64_t i = 0; i < T * H * D; ++i) {
      a += double(dout[i]) * y[i];
      b += double(dx[i]) * x[i];
    }
    EXPECT_NEAR(a, b, 1e-5) << isa_name(isa);
    auto L = [&] {
      Floats o(T * H * D);
      rope_rows_ref(o.data(), H * D, D, x.data(), H * D, D, pos, T, H, c.data(), s.data(), D,
                    false);
      double sum = 0;
      for (int64_t i = 0; i < T * H * D; ++i) sum += double(dout[i]) * o[i];
      return sum;
    };
    for (int64_t i : {int64_t(0), int64_t(1), int64_t(D + 7), int64_t(T * H * D - 1)}) {
      const float keep = x[i];
      x[i] = keep + 0.25f;
      const double lp = L();
      x[i] = keep - 0.25f;
      const double lm = L();
      x[i] = keep;
      EXPECT_NEAR(dx[i], (lp - lm) / 0.5, 1e-5) << isa_name(isa) << " i=" << i;
    }
  }
}

TEST(Rope, RejectsBadInput) {
  float c[4] = {1, 1, 1, 1}, s[4] = {};
  float x[8] = {};
  const RopeTable tab{c, s, 2, 4};
  const int32_t bad[1] = {2};
  EXPECT_THROW(rope_forward(x, 4, 4, x, 4, 4, bad, 1, 1, tab), Error);
  const RopeTable odd{c, s, 2, 3};
  const int32_t ok[1] = {0};
  EXPECT_THROW(rope_forward(x, 4, 4, x, 4, 4, ok, 1, 1, odd), Error);
  EXPECT_THROW(rope_forward(x, 4, 4, x, 4, 4, nullptr, 1, 1, tab), Error);
  EXPECT_THROW(rope_forward(x, 4, 4, x, 4, 2, ok, 1, 1, tab), Error);  // in place, other head stride
  double f[4];
  EXPECT_THROW(rope_frequencies(f, 5, 10000.0, nullptr), Error);
  YarnParams ys;
  ys.factor = 4;
  ys.original_max_position_embeddings = 0;
  EXPECT_THROW(rope_frequencies(f, 8, 10000.0, &ys), Error);
}

}  // namespace
}  // namespace dsv3
