#include "train/mla_train.h"

#include "core/parallel.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/check.h"
#include "core/scratch.h"
#include "kernels/convert.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/softmax.h"

namespace dsv3 {
namespace {

// Query rows per causal chunk: a chunk's scores span only the keys [0, t1) it can see, so
// the attention GEMMs do ~T²/2 work instead of T²; 64 rows keep the GEMMs' M large enough.
constexpr int64_t kChunk = 64;

// C [M,N] (ldc) (+)= op(A) · op(B) on the calling thread (we parallelise over heads); F32
// operands, or BF16 ones (uint16_t) with F32 accumulation.
template <class T>
void mm(float* C, int64_t ldc, const T* A, int64_t lda, bool ta, const T* B, int64_t ldb, bool tb,
        int64_t M, int64_t N, int64_t K, bool acc) {
  std::conditional_t<std::is_same_v<T, float>, GemmF32, GemmBF16> g;
  g.M = M; g.N = N; g.K = K;
  g.A = A; g.lda = lda; g.trans_a = ta;
  g.B = B; g.ldb = ldb; g.trans_b = tb;
  g.C = C; g.ldc = ldc; g.accumulate = acc;
  if constexpr (std::is_same_v<T, float>) gemm_f32(g, 1);
  else gemm_bf16(g, 1);
}

// Whether the attention GEMMs take BF16 operands (mla_train.h).
bool bf16_attention(const TLinearCtx& lc) { return lc.prec != Precision::F32; }

// x [n] rounded to BF16 into buf, over the threads.
const uint16_t* rounded(std::vector<uint16_t>& buf, const float* x, int64_t n) {
  uint16_t* p = grow(buf, n);
  convert_f32_to_bf16(x, p, n);
  return p;
}

// A chunk x [m, cols] (contiguous) rounded into dst (inside a region: on the calling thread).
uint16_t* rounded_rows(uint16_t* dst, const float* x, int64_t m, int64_t cols) {
  convert_f32_to_bf16(x, dst, m * cols);
  return dst;
}

const float* wp(const Weight& w) { return w.w.ptr<float>(); }
float* gp(Weight& g) { return g.w.ptr<float>(); }

struct Dims {
  int64_t B, T, M, H, nh, dn, dr, dv, dq, dkv, dc, R, r;
  Dims(const ModelConfig& c, int64_t B_, int64_t T_)
      : B(B_), T(T_), M(B_ * T_), H(c.hidden_size), nh(c.num_attention_heads),
        dn(c.qk_nope_head_dim), dr(c.qk_rope_head_dim), dv(c.v_head_dim), dq(c.qk_head_dim()),
        dkv(c.qk_nope_head_dim + c.v_head_dim), dc(c.kv_lora_rank),
        R(c.kv_lora_rank + c.qk_rope_head_dim), r(c.q_lora_rank) {}
};

// Every tensor used must be a contiguous F32 view with the config's element count.
void check_weights(const ModelConfig& c, const AttentionWeights& w, const char* what) {
  const int64_t H = c.hidden_size, nh = c.num_attention_heads, dq = c.qk_head_dim();
  const int64_t dc = c.kv_lora_rank, r = c.q_lora_rank;
  auto f32 = [&](const Weight& x, const char* name, int64_t numel) {
    DSV3_CHECK(x.w.data != nullptr && x.w.dtype == DType::F32 && x.w.is_contiguous(),
               "MLA training: ", what, " ", name, " must be a contiguous F32 tensor");
    DSV3_CHECK(x.w.numel() == numel, "MLA training: ", what, " ", name, " has ", x.w.numel(),
               " elements, the config implies ", numel);
  };
  if (c.has_q_lora()) {
    f32(w.q_a_proj, "q_a_proj", r * H);
    f32(w.q_a_layernorm, "q_a_layernorm", r);
    f32(w.q_b_proj, "q_b_proj", nh * dq * r);
  } else {
    f32(w.q_proj, "q_proj", nh * dq * H);
  }
  f32(w.kv_a_proj_with_mqa, "kv_a_proj_with_mqa", (dc + c.qk_rope_head_dim) * H);
  f32(w.kv_a_layernorm, "kv_a_layernorm", dc);
  f32(w.kv_b_proj, "kv_b_proj", nh * (c.qk_nope_head_dim + c.v_head_dim) * dc);
  f32(w.o_proj, "o_proj", H * nh * c.v_head_dim);
}

void fill_positions(MlaTrainScratch& s, int64_t T) {
  int32_t* pos = grow(s.pos, T);
  int32_t* valid = grow(s.valid, T);
  for (int64_t t = 0; t < T; ++t) {
    pos[t] = int32_t(t);
    valid[t] = int32_t(t + 1);
  }
}

// The up-projections from the saved pre-norm activations: s.q (q_pe rotated), s.kvn,
// s.kpe (rotated), s.kvb. Forward and backward both call this, so backward sees the very
// values the forward attended with. The forward passes rstd_q / rstd_kv to save (else null).
void project_up(const float* x, const Dims& d, const ModelConfig& c, const AttentionWeights& w,
                const RopeTable& rope, const TLinearCtx& lc, const MlaTrainSaved& sv,
                MlaTrainScratch& s, float* rstd_q, float* rstd_kv) {
  const float eps = float(c.rms_norm_eps);
  const int32_t* pos = s.pos.data();
  // pos is per token within a sequence; rope_forward takes [T] rows, so rotate sequence by
  // sequence.
  float* q = grow(s.q, d.M * d.nh * d.dq);
  if (c.has_q_lora()) {
    float* qn = grow(s.qn, d.M * d.r);
    rmsnorm_forward(qn, d.r, rstd_q, sv.qa.data(), d.r, wp(w.q_a_layernorm), d.M, d.r, eps,
                    lc.threads);
    tlinear_forward(q, qn, wp(w.q_b_proj), d.M, d.nh * d.dq, d.r, lc, s.lin);
  } else {
    tlinear_forward(q, x, wp(w.q_proj), d.M, d.nh * d.dq, d.H, lc, s.lin);
  }
  float* kvn = grow(s.kvn, d.M * d.dc);
  rmsnorm_forward(kvn, d.dc, rstd_kv, sv.kv.data(), d.R, wp(w.kv_a_layernorm), d.M, d.dc, eps,
                  lc.threads);
  float* kpe = grow(s.kpe, d.M * d.dr);
  for (int64_t b = 0; b < d.B; ++b) {
    const int64_t r0 = b * d.T;
    rope_forward(q + r0 * d.nh * d.dq + d.dn, d.nh * d.dq, d.dq, q + r0 * d.nh * d.dq + d.dn,
                 d.nh * d.dq, d.dq, pos, d.T, d.nh, rope, lc.threads);
    rope_forward(kpe + r0 * d.dr, d.dr, 0, sv.kv.data() + r0 * d.R + d.dc, d.R, 0, pos, d.T, 1,
                 rope, lc.threads);
  }
  float* kvb = grow(s.kvb, d.M * d.nh * d.dkv);
  tlinear_forward(kvb, kvn, wp(w.kv_b_proj), d.M, d.nh * d.dkv, d.dc, lc, s.lin);
}

}  // namespace

int64_t mla_train_p_floats(int64_t T) {
  int64_t n = 0;
  for (int64_t t0 = 0; t0 < T; t0 += kChunk) {
    const int64_t t1 = std::min(T, t0 + kChunk);
    n += (t1 - t0) * t1;
  }
  return n;
}

size_t MlaTrainSaved::bytes() const {
  return (qa.size() + rstd_q.size() + kv.size() + rstd_kv.size() + P.size()) * sizeof(float) +
         size_t(o.bytes());
}

void mla_train_forward(float* out, const float* x, int64_t B, int64_t T, const ModelConfig& c,
                       const AttentionWeights& w, const RopeTable& rope, float softmax_scale,
                       const TLinearCtx& lc, MlaTrainSaved& sv, MlaTrainScratch& s) {
  DSV3_CHECK(B > 0 && T > 0, "MLA training: batch ", B, " x ", T, " must be positive");
  DSV3_CHECK(T <= rope.n_pos, "MLA training: T = ", T, " exceeds the RoPE table (", rope.n_pos,
             " positions)");
  DSV3_ASSERT(rope.dim == c.qk_rope_head_dim);
  check_weights(c, w, "weight");
  const Dims d(c, B, T);
  sv.B = B;
  sv.T = T;
  fill_positions(s, T);

  // The saved pre-norm activations and rstd (BF16: x rounded once for both projections).
  const uint16_t* x16 = c.has_q_lora() ? tlinear_input_bf16(x, d.M, d.H, lc, s.lin) : nullptr;
  if (c.has_q_lora()) {
    grow(sv.qa, d.M * d.r);
    grow(sv.rstd_q, d.M);
    tlinear_forward(sv.qa.data(), x, wp(w.q_a_proj), d.M, d.r, d.H, lc, s.lin, false, x16);
  }
  grow(sv.kv, d.M * d.R);
  grow(sv.rstd_kv, d.M);
  tlinear_forward(sv.kv.data(), x, wp(w.kv_a_proj_with_mqa), d.M, d.R, d.H, lc, s.lin, false, x16);
  project_up(x, d, c, w, rope, lc, sv, s, c.has_q_lora() ? sv.rstd_q.data() : nullptr,
             sv.rstd_kv.data());

  // Attention per (sequence, head), causal row chunks; P saved chunk by chunk.
  const int64_t np = mla_train_p_floats(T);
  float* P = grow(sv.P, d.B * d.nh * np);
  float* o = sv.o.begin(attention_output_format(lc), d.M, d.nh * d.dv, s.ow);
  const float* q = s.q.data();
  const float* kvb = s.kvb.data();
  const float* kpe = s.kpe.data();
  const int32_t* valid = s.valid.data();
  const int nt = resolve_threads(lc.threads);
  const int64_t ldq = d.nh * d.dq, ldkv = d.nh * d.dkv, ldo = d.nh * d.dv;
  const bool b16 = bf16_attention(lc);
  const uint16_t* q16 = b16 ? rounded(s.q16, q, d.M * ldq) : nullptr;
  const uint16_t* kvb16 = b16 ? rounded(s.kvb16, kvb, d.M * ldkv) : nullptr;
  const uint16_t* kpe16 = b16 ? rounded(s.kpe16, kpe, d.M * d.dr) : nullptr;
  if (b16) {
    if (s.per_thread16.size() < size_t(nt)) s.per_thread16.resize(size_t(nt));
    for (int i = 0; i < nt; ++i) grow(s.per_thread16[size_t(i)], kChunk * d.T);
  }
  parallel_region(nt, [&](Team& team) { team.for_dynamic_nowait(d.B * d.nh, [&](int64_t bh) {
    const int64_t b = bh / d.nh, h = bh % d.nh, r0 = b * d.T;
    const int64_t oq = r0 * ldq + h * d.dq;          // Q [T, nope+rope] (ld ldq)
    const int64_t okv = r0 * ldkv + h * d.dkv;       // K_nope [T, nope], then V [T, v] (ld ldkv)
    const int64_t okp = r0 * d.dr;                   // K_pe [T, rope] (ld dr)
    float* Pc = P + bh * np;
    for (int64_t t0 = 0; t0 < d.T; t0 += kChunk) {
      const int64_t t1 = std::min(d.T, t0 + kChunk), m = t1 - t0;
      float* oc = o + (r0 + t0) * ldo + h * d.dv;
      // scores [m, t1] = q_nope·k_nopeᵀ + q_pe·k_peᵀ, then the causal softmax in place;
      // o [m, v] = P · V.
      if (b16) {
        const uint16_t* Q = q16 + oq + t0 * ldq;
        mm(Pc, t1, Q, ldq, false, kvb16 + okv, ldkv, true, m, t1, d.dn, false);
        mm(Pc, t1, Q + d.dn, ldq, false, kpe16 + okp, d.dr, true, m, t1, d.dr, true);
        softmax_forward(Pc, Pc, m, t1, softmax_scale, valid + t0, 1);
        const uint16_t* P16 = rounded_rows(s.per_thread16[size_t(team.tid())].data(), Pc, m, t1);
        mm(oc, ldo, P16, t1, false, kvb16 + okv + d.dn, ldkv, false, m, d.dv, t1, false);
      } else {
        const float* Q = q + oq + t0 * ldq;
        mm(Pc, t1, Q, ldq, false, kvb + okv, ldkv, true, m, t1, d.dn, false);
        mm(Pc, t1, Q + d.dn, ldq, false, kpe + okp, d.dr, true, m, t1, d.dr, true);
        softmax_forward(Pc, Pc, m, t1, softmax_scale, valid + t0, 1);
        mm(oc, ldo, Pc, t1, false, kvb + okv + d.dn, ldkv, false, m, d.dv, t1, false);
      }
      Pc += m * t1;
    }
  }); });
  tlinear_forward(out, o, wp(w.o_proj), d.M, d.H, d.nh * d.dv, lc, s.lin);
  sv.o.seal(o, lc.threads);
}

void mla_train_backward(float* dx, const float* dout, const float* x, int64_t B, int64_t T,
                        const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                        const RopeTable& rope, float softmax_scale, const TLinearCtx& lc,
                        const MlaTrainSaved& sv, MlaTrainScratch& s) {
  DSV3_CHECK(sv.B == B && sv.T == T, "MLA training: backward for ", B, " x ", T,
             " but the forward saved ", sv.B, " x ", sv.T);
  check_weights(c, w, "weight");
  check_weights(c, g, "gradient");
  const Dims d(c, B, T);
  fill_positions(s, T);
  project_up(x, d, c, w, rope, lc, sv, s, nullptr, nullptr);

  // o_proj: d_o [M, heads·v] = dout · W_o; dW_o += doutᵀ · o.
  float* d_o = grow(s.d_o, d.M * d.nh * d.dv);
  tlinear_backward(d_o, gp(g.o_proj), dout, sv.o.read(s.ow, lc.threads), wp(w.o_proj), d.M, d.H,
                   d.nh * d.dv, lc, s.lin);

  // Attention backward per (sequence, head):
  //   dP = dO·Vᵀ, dV += Pᵀ·dO, dS = softmax_backward(dP), dQ = dS·K, dK += dSᵀ·Q.
  const int64_t np = mla_train_p_floats(T);
  const int64_t ldq = d.nh * d.dq, ldkv = d.nh * d.dkv, ldo = d.nh * d.dv;
  float* dq = grow(s.dq, d.M * ldq);
  float* dkvb = grow(s.dkvb, d.M * ldkv);
  float* dkpe_h = grow(s.dkpe_h, d.B * d.nh * d.T * d.dr);
  const float* q = s.q.data();
  const float* kvb = s.kvb.data();
  const float* kpe = s.kpe.data();
  const float* P = sv.P.data();
  const int nt = resolve_threads(lc.threads);
  if (s.per_thread.size() < size_t(nt)) s.per_thread.resize(size_t(nt));
  for (int i = 0; i < nt; ++i) grow(s.per_thread[size_t(i)], kChunk * d.T);
  const bool b16 = bf16_attention(lc);
  const uint16_t* q16 = b16 ? rounded(s.q16, q, d.M * ldq) : nullptr;
  const uint16_t* kvb16 = b16 ? rounded(s.kvb16, kvb, d.M * ldkv) : nullptr;
  const uint16_t* kpe16 = b16 ? rounded(s.kpe16, kpe, d.M * d.dr) : nullptr;
  const uint16_t* do16 = b16 ? rounded(s.do16, d_o, d.M * ldo) : nullptr;
  if (b16) {
    if (s.per_thread16.size() < size_t(nt)) s.per_thread16.resize(size_t(nt));
    for (int i = 0; i < nt; ++i) grow(s.per_thread16[size_t(i)], kChunk * d.T);
  }
  parallel_region(nt, [&](Team& team) { team.for_dynamic(d.B * d.nh, [&](int64_t bh) {
    const int64_t b = bh / d.nh, h = bh % d.nh, r0 = b * d.T;
    float* dP = s.per_thread[size_t(team.tid())].data();  // [m, t1]
    uint16_t* c16 = b16 ? s.per_thread16[size_t(team.tid())].data() : nullptr;  // P, then dS
    const int64_t oq = r0 * ldq + h * d.dq, okv = r0 * ldkv + h * d.dkv, okp = r0 * d.dr;
    const int64_t oo = r0 * ldo + h * d.dv;
    const float* Q = q + oq;
    const float* Kn = kvb + okv;
    const float* V = Kn + d.dn;
    const float* Kp = kpe + okp;
    const float* dO = d_o + oo;
    float* dQ = dq + r0 * ldq + h * d.dq;
    float* dKn = dkvb + r0 * ldkv + h * d.dkv;
    float* dV = dKn + d.dn;
    float* dKp = dkpe_h + bh * d.T * d.dr;  // [T, rope] this head's share of dk_pe
    for (int64_t t = 0; t < d.T; ++t) {
      std::memset(dKn + t * ldkv, 0, size_t(d.dkv) * sizeof(float));
      std::memset(dKp + t * d.dr, 0, size_t(d.dr) * sizeof(float));
    }
    const float* Pc = P + bh * np;
    for (int64_t t0 = 0; t0 < d.T; t0 += kChunk) {
      const int64_t t1 = std::min(d.T, t0 + kChunk), m = t1 - t0;
      if (b16) {
        const uint16_t* dO16 = do16 + oo + t0 * ldo;
        const uint16_t* Q16 = q16 + oq + t0 * ldq;
        mm(dP, t1, dO16, ldo, false, kvb16 + okv + d.dn, ldkv, true, m, t1, d.dv, false);
        rounded_rows(c16, Pc, m, t1);
        mm(dV, ldkv, c16, t1, true, dO16, ldo, false, t1, d.dv, m, true);
        softmax_backward(dP, dP, Pc, m, t1, softmax_scale, 1);
        rounded_rows(c16, dP, m, t1);
        mm(dQ + t0 * ldq, ldq, c16, t1, false, kvb16 + okv, ldkv, false, m, d.dn, t1, false);
        mm(dQ + t0 * ldq + d.dn, ldq, c16, t1, false, kpe16 + okp, d.dr, false, m, d.dr, t1, false);
        mm(dKn, ldkv, c16, t1, true, Q16, ldq, false, t1, d.dn, m, true);
        mm(dKp, d.dr, c16, t1, true, Q16 + d.dn, ldq, false, t1, d.dr, m, true);
        Pc += m * t1;
        continue;
      }
      mm(dP, t1, dO + t0 * ldo, ldo, false, V, ldkv, true, m, t1, d.dv, false);
      mm(dV, ldkv, Pc, t1, true, dO + t0 * ldo, ldo, false, t1, d.dv, m, true);
      softmax_backward(dP, dP, Pc, m, t1, softmax_scale, 1);
      mm(dQ + t0 * ldq, ldq, dP, t1, false, Kn, ldkv, false, m, d.dn, t1, false);
      mm(dQ + t0 * ldq + d.dn, ldq, dP, t1, false, Kp, d.dr, false, m, d.dr, t1, false);
      mm(dKn, ldkv, dP, t1, true, Q + t0 * ldq, ldq, false, t1, d.dn, m, true);
      mm(dKp, d.dr, dP, t1, true, Q + t0 * ldq + d.dn, ldq, false, t1, d.dr, m, true);
      Pc += m * t1;
    }
  }); });

  // k_pe is shared by the heads: its gradient is the sum over heads, then un-rotated into
  // the rope columns of d[c ; k_pe].
  float* dkv = grow(s.dkv, d.M * d.R);
  for (int64_t b = 0; b < d.B; ++b) {
    const float* src0 = dkpe_h + b * d.nh * d.T * d.dr;
    for (int64_t t = 0; t < d.T; ++t) {
      float* dst = dkv + (b * d.T + t) * d.R + d.dc;
      std::memcpy(dst, src0 + t * d.dr, size_t(d.dr) * sizeof(float));
      for (int64_t h = 1; h < d.nh; ++h) {
        const float* src = src0 + (h * d.T + t) * d.dr;
        for (int64_t i = 0; i < d.dr; ++i) dst[i] += src[i];
      }
    }
    rope_backward(dkv + b * d.T * d.R + d.dc, d.R, 0, dkv + b * d.T * d.R + d.dc, d.R, 0,
                  s.pos.data(), d.T, 1, rope, lc.threads);
    rope_backward(dq + b * d.T * ldq + d.dn, ldq, d.dq, dq + b * d.T * ldq + d.dn, ldq, d.dq,
                  s.pos.data(), d.T, d.nh, rope, lc.threads);
  }

  // kv path: kv_b_proj, kv_a_layernorm (into the c columns of dkv), kv_a_proj_with_mqa (dx).
  float* dkvn = grow(s.dqa, std::max(d.M * d.dc, d.M * d.r));  // [M, kv_lora]
  tlinear_backward(dkvn, gp(g.kv_b_proj), dkvb, s.kvn.data(), wp(w.kv_b_proj), d.M, d.nh * d.dkv,
                   d.dc, lc, s.lin);
  rmsnorm_backward(dkv, d.R, gp(g.kv_a_layernorm), dkvn, d.dc, sv.kv.data(), d.R,
                   wp(w.kv_a_layernorm), sv.rstd_kv.data(), d.M, d.dc, false, lc.threads);
  // BF16: x rounded once for the weight gradients of kv_a and q_a / q_proj (deferred ones
  // round it when they run).
  const uint16_t* x16 = lc.defer ? nullptr : tlinear_input_bf16(x, d.M, d.H, lc, s.lin);
  tlinear_backward(dx, gp(g.kv_a_proj_with_mqa), dkv, x, wp(w.kv_a_proj_with_mqa), d.M, d.R, d.H,
                   lc, s.lin, false, x16);

  // q path, added into dx.
  if (c.has_q_lora()) {
    float* dqn = grow(s.dqa, std::max(d.M * d.dc, d.M * d.r));  // [M, q_lora]
    tlinear_backward(dqn, gp(g.q_b_proj), dq, s.qn.data(), wp(w.q_b_proj), d.M, d.nh * d.dq, d.r,
                     lc, s.lin);
    rmsnorm_backward(dqn, d.r, gp(g.q_a_layernorm), dqn, d.r, sv.qa.data(), d.r,
                     wp(w.q_a_layernorm), sv.rstd_q.data(), d.M, d.r, false, lc.threads);
    tlinear_backward(dx, gp(g.q_a_proj), dqn, x, wp(w.q_a_proj), d.M, d.r, d.H, lc, s.lin, true, x16);
  } else {
    tlinear_backward(dx, gp(g.q_proj), dq, x, wp(w.q_proj), d.M, d.nh * d.dq, d.H, lc, s.lin,
                     true, x16);
  }
}

}  // namespace dsv3
