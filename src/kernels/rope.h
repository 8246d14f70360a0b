// Rotary position embedding as the DeepSeek-V3 checkpoints use it (SPEC §1): the
// INTERLEAVED-pair convention, pair i = (x[2i], x[2i+1]) rotated by angle pos·freq_i,
//
//   out[2i]   = x[2i]·cos − x[2i+1]·sin
//   out[2i+1] = x[2i]·sin + x[2i+1]·cos,     cos, sin of pos·freq_i,
//
// with freq_i = theta^(−2i/dim), blended by YaRN (arXiv 2309.00071) when the config has
// rope_scaling (DeepSeek-V3 inference/model.py precompute_freqs_cis; HF DeepseekV3 Yarn):
//
//   d(r)   = dim · ln(L_orig / (2π r)) / (2 ln theta)           (correction dim for r rotations)
//   low    = max(floor(d(beta_fast)), 0),  high = min(ceil(d(beta_slow)), dim − 1)
//   ramp_i = clamp((i − low) / (high − low), 0, 1)   (high += 0.001 when equal), i < dim/2
//   freq_i = freq_i/factor · ramp_i + freq_i · (1 − ramp_i)
//
// and the table is multiplied by get_mscale(factor, mscale)/get_mscale(factor,
// mscale_all_dim) as the HF modeling code does (1 for every released DeepSeek config).
// The attention softmax scale is 1/sqrt(qk_head_dim) · m², m = get_mscale(factor,
// mscale_all_dim), get_mscale(s, a) = 0.1·a·ln(s) + 1 (1 when s ≤ 1).
//
// Tables are computed in double and rounded once to float (PyTorch's float32 table loses
// ~pos·2^-24 rad of angle; at 128K positions that is ~0.01 rad, so we do not mimic it).
// Backward is the transpose of the forward: rotation by −angle with the same table, which
// is the inverse rotation whenever the table amplitude is 1 (all released configs).
// Dispatch on active_isa(): the *_avx512 kernels, the *_avx2 kernels, or the scalar twins
// (*_ref), which are also what the tests compare the others against.
#pragma once
#include <cstdint>

namespace dsv3 {

// The numbers of config.json "rope_scaling" of type "yarn" (model/config.h RopeScaling);
// factor ≤ 1 means no scaling.
struct YarnParams {
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 1.0, mscale_all_dim = 0.0;
};

// 0.1·mscale·ln(scale) + 1, or 1 when scale ≤ 1 (YaRN's attention temperature).
double yarn_get_mscale(double scale, double mscale);
// 1/sqrt(qk_head_dim) · m², m = yarn_get_mscale(factor, mscale_all_dim) (yarn may be null).
float attention_softmax_scale(int64_t qk_head_dim, const YarnParams* yarn);
// freq [dim/2] in double (yarn may be null: plain RoPE).
void rope_frequencies(double* freq, int64_t dim, double theta, const YarnParams* yarn);
// cos, sin [n_pos, dim/2] for positions pos0 .. pos0+n_pos−1.
void rope_build_table(float* cos, float* sin, int64_t pos0, int64_t n_pos, int64_t dim,
                      double theta, const YarnParams* yarn);

// A built table: cos, sin [n_pos, dim/2], row p for position p.
struct RopeTable {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int64_t n_pos = 0, dim = 0;
};

// x [T, H, dim] addressed as x + t·x_st + h·x_sh (strides in elements, so x may be the
// rope slice of a wider per-head row, e.g. q_pe inside [q_nope ; q_pe]); same for out.
// pos [T]: each token's position, 0 ≤ pos < n_pos. out may equal x (in place, same strides).
void rope_forward(float* out, int64_t out_st, int64_t out_sh, const float* x, int64_t x_st,
                  int64_t x_sh, const int32_t* pos, int64_t T, int64_t H, const RopeTable& tab,
                  int threads = 0);
// dx = inverse rotation of dout (written; may equal dout).
void rope_backward(float* dx, int64_t dx_st, int64_t dx_sh, const float* dout, int64_t d_st,
                   int64_t d_sh, const int32_t* pos, int64_t T, int64_t H, const RopeTable& tab,
                   int threads = 0);

// Row kernels behind the dispatchers (internal): inverse = rotate by −angle.
void rope_rows_ref(float* out, int64_t out_st, int64_t out_sh, const float* x, int64_t x_st,
                   int64_t x_sh, const int32_t* pos, int64_t T, int64_t H, const float* cos,
                   const float* sin, int64_t dim, bool inverse);
void rope_rows_avx512(float* out, int64_t out_st, int64_t out_sh, const float* x, int64_t x_st,
                      int64_t x_sh, const int32_t* pos, int64_t T, int64_t H, const float* cos,
                      const float* sin, int64_t dim, bool inverse);
void rope_rows_avx2(float* out, int64_t out_st, int64_t out_sh, const float* x, int64_t x_st,
                    int64_t x_sh, const int32_t* pos, int64_t T, int64_t H, const float* cos,
                    const float* sin, int64_t dim, bool inverse);

}  // namespace dsv3
