// RoPE / YaRN tables and the rotation's entry points (kernels/rope.h).
#include "kernels/rope.h"

#include <cmath>
#include <numbers>

#include "core/check.h"
#include "core/cpu.h"
#include "kernels/row_parallel.h"

namespace dsv3 {

namespace {

// YaRN's inverse dimension formula: the dimension (in units of full head dim) whose
// wavelength makes num_rotations turns over max_pos positions.
double correction_dim(double num_rotations, int64_t dim, double theta, double max_pos) {
  return double(dim) * std::log(max_pos / (num_rotations * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(theta));
}

bool yarn_active(const YarnParams* yarn) { return yarn && yarn->factor > 1.0; }

void check_yarn(const YarnParams& y) {
  DSV3_CHECK(y.original_max_position_embeddings > 0,
             "rope_scaling.original_max_position_embeddings must be > 0, got ",
             y.original_max_position_embeddings);
  DSV3_CHECK(y.beta_fast > 0 && y.beta_slow > 0,
             "rope_scaling.beta_fast/beta_slow must be > 0, got ", y.beta_fast, "/", y.beta_slow);
}

}  // namespace

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

float attention_softmax_scale(int64_t qk_head_dim, const YarnParams* yarn) {
  DSV3_CHECK(qk_head_dim > 0, "attention_softmax_scale: qk_head_dim must be > 0");
  double s = 1.0 / std::sqrt(double(qk_head_dim));
  if (yarn_active(yarn)) {
    const double m = yarn_get_mscale(yarn->factor, yarn->mscale_all_dim);
    s *= m * m;
  }
  return float(s);
}

void rope_frequencies(double* freq, int64_t dim, double theta, const YarnParams* yarn) {
  DSV3_CHECK(dim > 0 && dim % 2 == 0, "rope: head dim must be even and > 0, got ", dim);
  DSV3_CHECK(theta > 1.0, "rope_theta must be > 1, got ", theta);
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) freq[i] = std::pow(theta, -double(2 * i) / double(dim));
  if (!yarn_active(yarn)) return;
  check_yarn(*yarn);
  const double L = double(yarn->original_max_position_embeddings);
  // Dimensions below `low` turn more than beta_fast times over the original length and
  // keep their frequency (extrapolate); above `high` fewer than beta_slow: interpolated.
  double low = std::floor(correction_dim(yarn->beta_fast, dim, theta, L));
  double high = std::ceil(correction_dim(yarn->beta_slow, dim, theta, L));
  if (low < 0) low = 0;
  if (high > double(dim - 1)) high = double(dim - 1);
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    double ramp = (double(i) - low) / (high - low);
    ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
    freq[i] = freq[i] / yarn->factor * ramp + freq[i] * (1.0 - ramp);
  }
}

void rope_build_table(float* cos, float* sin, int64_t pos0, int64_t n_pos, int64_t dim,
                      double theta, const YarnParams* yarn) {
  DSV3_CHECK(pos0 >= 0 && n_pos >= 0, "rope_build_table: bad position range ", pos0, " + ", n_pos);
  const int64_t half = dim / 2;
  double freq[512];
  DSV3_CHECK(half <= 512, "rope: head dim ", dim, " larger than 1024 is not supported");
  rope_frequencies(freq, dim, theta, yarn);
  const double amp = yarn_active(yarn) ? yarn_get_mscale(yarn->factor, yarn->mscale) /
                                             yarn_get_mscale(yarn->factor, yarn->mscale_all_dim)
                                       : 1.0;
  for (int64_t p = 0; p < n_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(pos0 + p) * freq[i];
      cos[p * half + i] = float(std::cos(a) * amp);
      sin[p * half + i] = float(std::sin(a) * amp);
    }
}

namespace {

void rope_apply(const char* what, float* out, int64_t out_st, int64_t out_sh, const float* x,
                int64_t x_st, int64_t x_sh, const int32_t* pos, int64_t T, int64_t H,
                const RopeTable& tab, bool inverse, int threads) {
  DSV3_CHECK(T >= 0 && H >= 0, what, ": negative shape T=", T, " H=", H);
  DSV3_CHECK(tab.cos && tab.sin && tab.dim > 0 && tab.dim % 2 == 0, what,
             ": the table is empty or its dim ", tab.dim, " is odd");
  DSV3_CHECK(T == 0 || H == 0 || (out && x && pos), what, ": null pointer");
  DSV3_CHECK(out != x || (out_st == x_st && out_sh == x_sh), what,
             ": in place needs the same strides for input and output");
  for (int64_t t = 0; t < T; ++t)
    DSV3_CHECK(pos[t] >= 0 && pos[t] < tab.n_pos, what, ": position ", pos[t], " of token ", t,
               " outside the table [0, ", tab.n_pos, ")");
  auto* f = pick(rope_rows_avx512, rope_rows_avx2, rope_rows_ref);
  parallel_rows(T, T * H * tab.dim, threads, [&](int64_t b, int64_t e) {
    f(out + b * out_st, out_st, out_sh, x + b * x_st, x_st, x_sh, pos + b, e - b, H, tab.cos,
      tab.sin, tab.dim, inverse);
  });
}

}  // namespace

void rope_forward(float* out, int64_t out_st, int64_t out_sh, const float* x, int64_t x_st,
                  int64_t x_sh, const int32_t* pos, int64_t T, int64_t H, const RopeTable& tab,
                  int threads) {
  rope_apply("rope_forward", out, out_st, out_sh, x, x_st, x_sh, pos, T, H, tab, false, threads);
}

void rope_backward(float* dx, int64_t dx_st, int64_t dx_sh, const float* dout, int64_t d_st,
                   int64_t d_sh, const int32_t* pos, int64_t T, int64_t H, const RopeTable& tab,
                   int threads) {
  rope_apply("rope_backward", dx, dx_st, dx_sh, dout, d_st, d_sh, pos, T, H, tab, true, threads);
}

}  // namespace dsv3
