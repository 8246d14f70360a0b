#include "train/train_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <omp.h>

#include "core/check.h"
#include "core/parallel.h"
#include "kernels/loss.h"
#include "kernels/norm.h"

namespace dsv3 {
namespace {

template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  if (v.size() < size_t(n)) v.resize(size_t(n));
  return v.data();
}

const float* fp(const Weight& w) { return w.w.ptr<float>(); }
float* fp_mut(const Weight& w) { return w.w.ptr<float>(); }

constexpr int32_t kIgnore = -1;

}  // namespace

struct TrainModel::Impl {
  const ParamSet& ps;
  const ModelConfig& c;
  TrainModelOptions o;
  int64_t B, T, N, H, V, D;
  float eps;
  std::vector<float> rope_cos, rope_sin;
  RopeTable rope;
  float softmax_scale;
  TLinearCtx lc;
  TLinearScratch ls;
  MlaTrainScratch mla_s;
  MoeTrainScratch moe_s;

  struct BlockState {
    std::vector<float> x_in, h;  // [N, H] block input and the residual after attention
    MlaTrainSaved mla;
    MoeTrainSaved moe;
    MlpTrainSaved mlp;
  };
  std::vector<BlockState> blocks;   // main layers, then one per MTP module
  std::vector<float> x_last;        // [N, H] the last main block's output (before model.norm)
  std::vector<float> hN, dhN;       // [N, H] after model.norm, and its gradient
  std::vector<float> xn, dxn, a, f, dx, dh, rstd;  // work [N, H] / [N]
  std::vector<float> logits, losses;
  std::vector<int32_t> tgt;         // [N]

  struct MtpState {
    std::vector<int32_t> ids, tgt;  // [N]
    std::vector<float> cat;         // [N, 2H] [enorm(e) ; hnorm(h_prev)]
    std::vector<float> x_pre;       // [N, H] block output before shared_head.norm
    std::vector<float> hk, dhk;     // [N, H] after shared_head.norm, and its gradient
    std::vector<float> e;           // [N, H] embedding rows
  };
  std::vector<MtpState> mtp;

  Impl(const ParamSet& p, const TrainModelOptions& opt)
      : ps(p), c(p.config()), o(opt), B(opt.batch), T(opt.seq_len), N(opt.batch * opt.seq_len),
        H(c.hidden_size), V(c.vocab_size),
        D(opt.mtp && p.with_mtp() ? c.num_nextn_predict_layers : 0), eps(float(c.rms_norm_eps)) {
    DSV3_CHECK(B > 0 && T > 1, "batch and seq_len must be positive (seq_len ≥ 2)");
    DSV3_CHECK(T <= c.max_position_embeddings, "seq_len ", T, " exceeds max_position_embeddings ",
               c.max_position_embeddings);
    const int64_t half = c.qk_rope_head_dim / 2;
    rope_cos.resize(size_t(T * half));
    rope_sin.resize(size_t(T * half));
    YarnParams y;
    const bool yarn = c.rope_scaling.type == "yarn";
    if (yarn) {
      y.factor = c.rope_scaling.factor;
      y.original_max_position_embeddings = c.rope_scaling.original_max_position_embeddings;
      y.beta_fast = c.rope_scaling.beta_fast;
      y.beta_slow = c.rope_scaling.beta_slow;
      y.mscale = c.rope_scaling.mscale;
      y.mscale_all_dim = c.rope_scaling.mscale_all_dim;
    }
    rope_build_table(rope_cos.data(), rope_sin.data(), 0, T, c.qk_rope_head_dim, c.rope_theta,
                     yarn ? &y : nullptr);
    rope = RopeTable{rope_cos.data(), rope_sin.data(), T, c.qk_rope_head_dim};
    softmax_scale = attention_softmax_scale(c.qk_head_dim(), yarn ? &y : nullptr);
    lc.prec = o.precision;
    lc.threads = o.threads;
    blocks.resize(size_t(c.num_hidden_layers + D));
    for (auto& b : blocks) {
      b.x_in.resize(size_t(N * H));
      b.h.resize(size_t(N * H));
    }
    mtp.resize(size_t(D));
  }

  void embed(float* x, const float* table, const int32_t* ids) {
    for (int64_t r = 0; r < N; ++r) {
      DSV3_CHECK(ids[r] >= 0 && ids[r] < V, "token id ", ids[r], " outside the vocabulary [0, ", V, ")");
      std::memcpy(x + r * H, table + int64_t(ids[r]) * H, size_t(H) * sizeof(float));
    }
  }
  void embed_backward(float* dtable, const int32_t* ids, const float* dx) {
    // Rows can repeat an id, so columns are split over threads rather than rows.
    const int nt = resolve_threads(o.threads);
#pragma omp parallel num_threads(nt)
    {
      int64_t c0, c1;
      split_range(H, omp_get_num_threads(), omp_get_thread_num(), &c0, &c1);
      for (int64_t r = 0; r < N; ++r) {
        float* d = dtable + int64_t(ids[r]) * H;
        const float* s = dx + r * H;
        for (int64_t j = c0; j < c1; ++j) d[j] += s[j];
      }
    }
  }

  void norm_fwd(float* out, const float* x, const float* w, float* rs = nullptr) {
    rmsnorm_forward(out, H, rs, x, H, w, N, H, eps, o.threads);
  }

  // out = ffn(xn) for block lw.
  void ffn_forward(float* out, const float* x, const LayerWeights& lw, const float* bias,
                   BlockState& bs, StepLosses* L, int64_t layer) {
    if (lw.is_moe) {
      MoeStats st;
      moe_train_forward(out, x, B, T, c, lw.moe, bias, float(o.balance_alpha), lc, bs.moe, moe_s, &st);
      if (L) {
        L->balance += st.balance_loss;
        L->load.push_back(st.load);
        L->moe_layer.push_back(layer);
      }
    } else {
      mlp_train_forward(out, x, N, H, lw.mlp, lc, bs.mlp, moe_s.mlp);
    }
  }

  // x [N, H] in place: block input -> block output.
  void block_forward(float* x, const LayerWeights& lw, BlockState& bs, StepLosses* L, int64_t layer,
                     const float* bias) {
    std::memcpy(bs.x_in.data(), x, size_t(N * H) * sizeof(float));
    float* xn_ = grow(xn, N * H);
    float* a_ = grow(a, N * H);
    norm_fwd(xn_, x, fp(lw.input_layernorm));
    mla_train_forward(a_, xn_, B, T, c, lw.self_attn, rope, softmax_scale, lc, bs.mla, mla_s);
    for (int64_t i = 0; i < N * H; ++i) bs.h[size_t(i)] = x[i] + a_[i];
    norm_fwd(xn_, bs.h.data(), fp(lw.post_attention_layernorm));
    float* f_ = grow(f, N * H);
    ffn_forward(f_, xn_, lw, bias, bs, L, layer);
    for (int64_t i = 0; i < N * H; ++i) x[i] = bs.h[size_t(i)] + f_[i];
  }

  // d [N, H] in place: dL/d(block output) -> dL/d(block input). Grads added into g.
  void block_backward(float* d, const LayerWeights& lw, LayerWeights& g, BlockState& bs) {
    float* xn_ = grow(xn, N * H);
    float* dxn_ = grow(dxn, N * H);
    float* rs = grow(rstd, N);
    // out = h + ffn(norm2(h))
    norm_fwd(xn_, bs.h.data(), fp(lw.post_attention_layernorm), rs);  // recompute (§3.3)
    if (lw.is_moe)
      moe_train_backward(dxn_, d, xn_, c, lw.moe, g.moe, float(o.balance_alpha), 1.0f / float(B), lc,
                         bs.moe, moe_s);
    else
      mlp_train_backward(dxn_, d, xn_, N, H, lw.mlp, g.mlp, lc, bs.mlp, moe_s.mlp);
    rmsnorm_backward(d, H, fp_mut(g.post_attention_layernorm), dxn_, H, bs.h.data(), H,
                     fp(lw.post_attention_layernorm), rs, N, H, true, o.threads);
    // h = x + attn(norm1(x))
    norm_fwd(xn_, bs.x_in.data(), fp(lw.input_layernorm), rs);
    mla_train_backward(dxn_, d, xn_, B, T, c, lw.self_attn, g.self_attn, rope, softmax_scale, lc,
                       bs.mla, mla_s);
    rmsnorm_backward(d, H, fp_mut(g.input_layernorm), dxn_, H, bs.x_in.data(), H,
                     fp(lw.input_layernorm), rs, N, H, true, o.threads);
  }

  // Head + cross-entropy over rows in chunks. h [N, H]; returns the mean loss over valid
  // targets; with grads, dh [N, H] is written (= loss_weight · dmean/dh) and dW added.
  double head_ce(const float* h, const int32_t* t, const float* W, float* dW, float* dh,
                 double loss_weight) {
    const int64_t n_valid = count_valid_targets(t, N, kIgnore);
    if (n_valid == 0) {
      if (dh) std::memset(dh, 0, size_t(N * H) * sizeof(float));
      return 0.0;
    }
    const int64_t R = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(16) << 20) / V));
    float* lg = grow(logits, R * V);
    float* ls_ = grow(losses, R);
    double sum = 0;
    const float scale = float(loss_weight / double(n_valid));
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t r = std::min(R, N - r0);
      tlinear_forward(lg, h + r0 * H, W, r, V, H, lc, ls);
      if (dh) {
        cross_entropy_forward_backward(ls_, lg, V, t + r0, scale, r, V, kIgnore, o.threads);
        tlinear_backward(dh + r0 * H, dW, lg, h + r0 * H, W, r, V, H, lc, ls);
      } else {
        cross_entropy_forward(ls_, nullptr, lg, V, t + r0, r, V, kIgnore, o.threads);
      }
      for (int64_t i = 0; i < r; ++i)
        if (t[r0 + i] != kIgnore) sum += ls_[i];
    }
    return sum / double(n_valid);
  }

  StepLosses step(const int32_t* ids, const float* params, float* grads) {
    ModelWeights pw = ps.bind(const_cast<float*>(params));
    ModelWeights gw;
    if (grads) gw = ps.bind(grads);
    StepLosses L;
    const int64_t T1 = T + 1;
    std::vector<int32_t> in(static_cast<size_t>(N));
    int32_t* tg = grow(tgt, N);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        in[size_t(b * T + t)] = ids[b * T1 + t];
        tg[b * T + t] = ids[b * T1 + t + 1];
      }
    for (int64_t r = 0; r < N; ++r)
      DSV3_CHECK(tg[r] >= 0 && tg[r] < V, "token id ", tg[r], " outside the vocabulary [0, ", V, ")");
    // ---- main forward ----
    std::vector<float> x(static_cast<size_t>(N * H));
    embed(x.data(), fp(pw.embed_tokens), in.data());
    const int64_t Lm = c.num_hidden_layers;
    for (int64_t l = 0; l < Lm; ++l) {
      const LayerWeights& lw = pw.layers[size_t(l)];
      const float* bias = lw.is_moe && lw.moe.e_score_correction_bias.present()
                              ? fp(lw.moe.e_score_correction_bias) : nullptr;
      block_forward(x.data(), lw, blocks[size_t(l)], &L, l, bias);
    }
    x_last = x;
    float* hn = grow(hN, N * H);
    norm_fwd(hn, x.data(), fp(pw.norm));
    float* dhn = grads ? grow(dhN, N * H) : nullptr;
    L.main = head_ce(hn, tg, fp(pw.lm_head), grads ? fp_mut(gw.lm_head) : nullptr, dhn, 1.0);
    L.total = L.main + L.balance;

    // ---- MTP forward (report §2.2) ----
    const double lam = D > 0 ? o.mtp_lambda / double(D) : 0.0;
    for (int64_t k = 1; k <= D; ++k) {
      MtpState& m = mtp[size_t(k - 1)];
      const MtpWeights& mw = pw.mtp[size_t(k - 1)];
      m.ids.resize(size_t(N));
      m.tgt.resize(size_t(N));
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < T; ++i) {
          m.ids[size_t(b * T + i)] = i + k <= T ? ids[b * T1 + i + k] : 0;
          m.tgt[size_t(b * T + i)] = i + k + 1 <= T ? ids[b * T1 + i + k + 1] : kIgnore;
        }
      const float* hprev = k == 1 ? hN.data() : mtp[size_t(k - 2)].hk.data();
      m.e.resize(size_t(N * H));
      embed(m.e.data(), fp(mw.embed_tokens), m.ids.data());
      m.cat.resize(size_t(N * 2 * H));
      rmsnorm_forward(m.cat.data(), 2 * H, nullptr, m.e.data(), H, fp(mw.enorm), N, H, eps, o.threads);
      rmsnorm_forward(m.cat.data() + H, 2 * H, nullptr, hprev, H, fp(mw.hnorm), N, H, eps, o.threads);
      std::vector<float> xm(static_cast<size_t>(N * H));
      tlinear_forward(xm.data(), m.cat.data(), fp(mw.eh_proj), N, H, 2 * H, lc, ls);
      const LayerWeights& bw = mw.block;
      const float* bias = bw.is_moe && bw.moe.e_score_correction_bias.present()
                              ? fp(bw.moe.e_score_correction_bias) : nullptr;
      block_forward(xm.data(), bw, blocks[size_t(Lm + k - 1)], &L, Lm + k - 1, bias);
      m.x_pre = xm;
      m.hk.resize(size_t(N * H));
      norm_fwd(m.hk.data(), xm.data(), fp(mw.shared_head_norm));
      m.dhk.assign(size_t(N * H), 0.0f);
      const double lk = head_ce(m.hk.data(), m.tgt.data(), fp(mw.shared_head_head),
                                grads ? fp_mut(gw.mtp[size_t(k - 1)].shared_head_head) : nullptr,
                                grads ? m.dhk.data() : nullptr, lam);
      L.mtp.push_back(lk);
      L.total += lam * lk;
    }
    L.total = L.main + L.balance;
    for (double v : L.mtp) L.total += lam * v;
    if (!grads) return L;

    // ---- MTP backward, last module first (module k feeds module k+1) ----
    float* rs = grow(rstd, N);
    for (int64_t k = D; k >= 1; --k) {
      MtpState& m = mtp[size_t(k - 1)];
      const MtpWeights& mw = pw.mtp[size_t(k - 1)];
      MtpWeights& mg = gw.mtp[size_t(k - 1)];
      // h^k = shared_head.norm(x_pre)
      std::vector<float> d(static_cast<size_t>(N * H), 0.0f);
      rmsnorm_forward(grow(xn, N * H), H, rs, m.x_pre.data(), H, fp(mw.shared_head_norm), N, H, eps,
                      o.threads);
      rmsnorm_backward(d.data(), H, fp_mut(mg.shared_head_norm), m.dhk.data(), H, m.x_pre.data(), H,
                       fp(mw.shared_head_norm), rs, N, H, false, o.threads);
      block_backward(d.data(), mw.block, mg.block, blocks[size_t(Lm + k - 1)]);
      std::vector<float> dcat(static_cast<size_t>(N * 2 * H));
      tlinear_backward(dcat.data(), fp_mut(mg.eh_proj), d.data(), m.cat.data(), fp(mw.eh_proj), N, H,
                       2 * H, lc, ls);
      // enorm(e): gradient into the (shared) embedding rows.
      std::vector<float> de(static_cast<size_t>(N * H));
      rmsnorm_forward(grow(xn, N * H), H, rs, m.e.data(), H, fp(mw.enorm), N, H, eps, o.threads);
      rmsnorm_backward(de.data(), H, fp_mut(mg.enorm), dcat.data(), 2 * H, m.e.data(), H,
                       fp(mw.enorm), rs, N, H, false, o.threads);
      embed_backward(fp_mut(mg.embed_tokens), m.ids.data(), de.data());
      // hnorm(h^{k-1}): into dhN (k = 1) or the previous module's dh.
      const float* hprev = k == 1 ? hN.data() : mtp[size_t(k - 2)].hk.data();
      float* dprev = k == 1 ? dhN.data() : mtp[size_t(k - 2)].dhk.data();
      rmsnorm_forward(grow(xn, N * H), H, rs, hprev, H, fp(mw.hnorm), N, H, eps, o.threads);
      rmsnorm_backward(dprev, H, fp_mut(mg.hnorm), dcat.data() + H, 2 * H, hprev, H, fp(mw.hnorm), rs,
                       N, H, true, o.threads);
    }

    // ---- main backward ----
    std::vector<float> d(static_cast<size_t>(N * H), 0.0f);
    rmsnorm_forward(grow(xn, N * H), H, rs, x_last.data(), H, fp(pw.norm), N, H, eps, o.threads);
    rmsnorm_backward(d.data(), H, fp_mut(gw.norm), dhN.data(), H, x_last.data(), H, fp(pw.norm), rs,
                     N, H, false, o.threads);
    for (int64_t l = Lm - 1; l >= 0; --l)
      block_backward(d.data(), pw.layers[size_t(l)], gw.layers[size_t(l)], blocks[size_t(l)]);
    embed_backward(fp_mut(gw.embed_tokens), in.data(), d.data());
    return L;
  }
};

TrainModel::TrainModel(const ParamSet& ps, const TrainModelOptions& o)
    : impl_(std::make_unique<Impl>(ps, o)), o_(o) {}
TrainModel::~TrainModel() = default;

void TrainModel::set_mtp_lambda(double lambda) {
  o_.mtp_lambda = lambda;
  impl_->o.mtp_lambda = lambda;
}

StepLosses TrainModel::step(const int32_t* ids, const float* params, float* grads) {
  return impl_->step(ids, params, grads);
}

}  // namespace dsv3
