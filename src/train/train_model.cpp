#include "train/train_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/parallel.h"
#include "kernels/row_parallel.h"

#include "core/check.h"
#include "core/fiber.h"
#include "core/scratch.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "model/mla.h"

namespace dsv3 {
namespace {

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
  // The work of one computation: buffers and scratch live only while a forward or backward
  // runs, but two computations can run at once on two fibers (core/fiber.h): the pipeline's
  // F&B pair, or two micro-batches' step()s. Each has its own (wk() picks by fiber: [0]
  // outside fibers and for the first fiber, [1] for the second).
  struct Work {
    TLinearCtx lc;
    TLinearScratch ls;
    MlaTrainScratch mla_s;
    MoeTrainScratch moe_s;
    std::vector<float> xn, dxn, a, f, rstd;  // [N, H] / [N]
    std::vector<float> logits, losses;
    std::vector<float> xs, ds;        // [N, H] the residual stream and its gradient (step())
    std::vector<float> dcat_s, dm_s, dprev_s;  // MTP backward: [Nk, 2H], [Nk, H], [Nk, H]
    std::vector<int32_t> kid_s;       // [Nk] MTP module k's input ids (the first stage's backward)
    std::vector<float> de_one;        // step(): the MTP embedding-row gradients [Σk Nk, H]
    int64_t ep_bytes = 0;             // this computation's expert-parallel traffic (predicted)
  };
  Work work[2];
  Work& wk() {
    const int i = fiber_index();
    DSV3_ASSERT(i < 2);
    return work[i > 0 ? 1 : 0];
  }

  struct BlockState {
    std::vector<float> x_in, h;  // [N, H] block input and the residual after attention
    MlaTrainSaved mla;
    MoeTrainSaved moe;
    MlpTrainSaved mlp;
  };

  struct MtpState {
    int64_t Tk = 0;                 // positions per sequence: T − k (those with a target)
    std::vector<float> hprev;       // [B·Tk, H] h^{k−1} rows of those positions
    std::vector<int32_t> ids, tgt;  // [B·Tk]
    std::vector<float> cat;         // [N, 2H] [enorm(e) ; hnorm(h_prev)]
    std::vector<float> x_pre;       // [N, H] block output before shared_head.norm
    std::vector<float> hk, dhk;     // [N, H] after shared_head.norm, and its gradient
    std::vector<float> e;           // [N, H] embedding rows
  };
  // What one micro-batch in flight keeps between its forward and its backward on a stage
  // (the pipeline holds several; step() uses slot 0).
  struct Slot {
    std::vector<BlockState> blocks;   // main layers, then one per MTP module (the stage's filled)
    std::vector<float> x_last;        // [N, H] the last main block's output (before model.norm)
    std::vector<float> hN, dhN;       // [N, H] after model.norm, and its gradient
    std::vector<int32_t> in_ids, tgt; // [N]
    std::vector<MtpState> mtp;
  };
  std::vector<std::unique_ptr<Slot>> slots;
  Slot& slot(int i) {
    if (size_t(i) >= slots.size()) slots.resize(size_t(i) + 1);
    if (!slots[size_t(i)]) {
      slots[size_t(i)] = std::make_unique<Slot>();
      slots[size_t(i)]->blocks.resize(size_t(c.num_hidden_layers + D));
      slots[size_t(i)]->mtp.resize(size_t(D));
    }
    return *slots[size_t(i)];
  }

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
    YarnParams storage;
    const YarnParams* yarn = yarn_params(c, &storage);
    rope_build_table(rope_cos.data(), rope_sin.data(), 0, T, c.qk_rope_head_dim, c.rope_theta, yarn);
    rope = RopeTable{rope_cos.data(), rope_sin.data(), T, c.qk_rope_head_dim};
    softmax_scale = attention_softmax_scale(c.qk_head_dim(), yarn);
    for (Work& w : work) {
      w.lc.prec = o.precision;
      w.lc.threads = o.threads;
    }
  }

  void embed(float* x, const float* table, const int32_t* ids, int64_t n) {
    for (int64_t r = 0; r < n; ++r) {
      DSV3_CHECK(ids[r] >= 0 && ids[r] < V, "token id ", ids[r], " outside the vocabulary [0, ", V, ")");
      std::memcpy(x + r * H, table + int64_t(ids[r]) * H, size_t(H) * sizeof(float));
    }
  }
  void embed_backward(float* dtable, const int32_t* ids, const float* dx, int64_t n) {
    // Rows can repeat an id, so columns are split over threads rather than rows.
    const int nt = resolve_threads(o.threads);
    parallel_region(nt, [&](Team& t) {
      int64_t c0, c1;
      split_range(H, t.size(), t.tid(), &c0, &c1);
      for (int64_t r = 0; r < n; ++r) {
        float* d = dtable + int64_t(ids[r]) * H;
        const float* s = dx + r * H;
        for (int64_t j = c0; j < c1; ++j) d[j] += s[j];
      }
    });
  }

  void norm_fwd(float* out, const float* x, const float* w, int64_t n, float* rs = nullptr) {
    rmsnorm_forward(out, H, rs, x, H, w, n, H, eps, o.threads);
  }

  // out = ffn(xn) for block lw.
  void ffn_forward(float* out, const float* x, int64_t Tb, const LayerWeights& lw, const float* bias,
                   BlockState& bs, StepLosses* L, int64_t layer) {
    if (lw.is_moe) {
      MoeStats st;
      moe_train_forward(out, x, B, Tb, c, lw.moe, bias, float(o.balance_alpha), wk().lc, bs.moe, wk().moe_s, &st,
                        ep());
      if (o.ep.ep != nullptr) wk().ep_bytes += moe_ep_forward_bytes(bs.moe, c).total();
      if (L) {
        L->balance += st.balance_loss;
        L->balance_layer.push_back(st.balance_loss);
        L->load.push_back(st.load);
        L->moe_layer.push_back(layer);
      }
    } else {
      mlp_train_forward(out, x, B * Tb, H, lw.mlp, wk().lc, bs.mlp, wk().moe_s.mlp);
    }
  }

  // x [B·Tb, H] in place: block input -> block output (Tb tokens per sequence).
  void block_forward(float* x, int64_t Tb, const LayerWeights& lw, BlockState& bs, StepLosses* L,
                     int64_t layer, const float* bias) {
    const int64_t n = B * Tb;
    bs.x_in.resize(size_t(n * H));
    bs.h.resize(size_t(n * H));
    float* xin = bs.x_in.data();
    parallel_rows(n * H, n * H, o.threads, [&](int64_t b, int64_t e) {
      std::memcpy(xin + b, x + b, size_t(e - b) * sizeof(float));
    });
    float* xn_ = grow(wk().xn, n * H);
    float* a_ = grow(wk().a, n * H);
    norm_fwd(xn_, x, fp(lw.input_layernorm), n);
    mla_train_forward(a_, xn_, B, Tb, c, lw.self_attn, rope, softmax_scale, wk().lc, bs.mla, wk().mla_s);
    float* h_ = bs.h.data();
    parallel_rows(n * H, n * H, o.threads, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) h_[i] = x[i] + a_[i];
    });
    norm_fwd(xn_, bs.h.data(), fp(lw.post_attention_layernorm), n);
    float* f_ = grow(wk().f, n * H);
    ffn_forward(f_, xn_, Tb, lw, bias, bs, L, layer);
    parallel_rows(n * H, n * H, o.threads, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) x[i] = h_[i] + f_[i];
    });
  }

  // d [B·Tb, H] in place: dL/d(block output) -> dL/d(block input). Grads added into g.
  void block_backward(float* d, int64_t Tb, const LayerWeights& lw, LayerWeights& g, BlockState& bs) {
    const int64_t n = B * Tb;
    float* xn_ = grow(wk().xn, n * H);
    float* dxn_ = grow(wk().dxn, n * H);
    float* rs = grow(wk().rstd, n);
    // out = h + ffn(norm2(h))
    norm_fwd(xn_, bs.h.data(), fp(lw.post_attention_layernorm), n, rs);  // recompute (§3.3)
    if (lw.is_moe) {
      moe_train_backward(dxn_, d, xn_, c, lw.moe, g.moe, float(o.balance_alpha),
                         1.0f / float(o.global_batch > 0 ? o.global_batch : B), wk().lc,
                         bs.moe, wk().moe_s, ep());
      if (o.ep.ep != nullptr) wk().ep_bytes += moe_ep_backward_bytes(bs.moe, c).total();
    } else {
      mlp_train_backward(dxn_, d, xn_, n, H, lw.mlp, g.mlp, wk().lc, bs.mlp, wk().moe_s.mlp);
    }
    rmsnorm_backward(d, H, fp_mut(g.post_attention_layernorm), dxn_, H, bs.h.data(), H,
                     fp(lw.post_attention_layernorm), rs, n, H, true, o.threads);
    // h = x + attn(norm1(x))
    norm_fwd(xn_, bs.x_in.data(), fp(lw.input_layernorm), n, rs);
    mla_train_backward(dxn_, d, xn_, B, Tb, c, lw.self_attn, g.self_attn, rope, softmax_scale, wk().lc,
                       bs.mla, wk().mla_s);
    rmsnorm_backward(d, H, fp_mut(g.input_layernorm), dxn_, H, bs.x_in.data(), H,
                     fp(lw.input_layernorm), rs, n, H, true, o.threads);
  }

  // Head + cross-entropy over rows in chunks. h [N, H]; returns the mean loss over valid
  // targets; with grads, dh [N, H] is written (= loss_weight · dmean/dh) and dW added.
  double head_ce(const float* h, const int32_t* t, int64_t N, const float* W, float* dW, float* dh,
                 double loss_weight) {
    const int64_t n_valid = count_valid_targets(t, N, kIgnore);
    if (n_valid == 0) {
      if (dh) std::memset(dh, 0, size_t(N * H) * sizeof(float));
      return 0.0;
    }
    const int64_t R = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(16) << 20) / V));
    float* lg = grow(wk().logits, R * V);
    float* ls_ = grow(wk().losses, R);
    double sum = 0;
    const float scale = float(loss_weight / double(n_valid));
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t r = std::min(R, N - r0);
      tlinear_forward(lg, h + r0 * H, W, r, V, H, wk().lc, wk().ls);
      if (dh) {
        cross_entropy_forward_backward(ls_, lg, V, t + r0, scale, r, V, kIgnore, o.threads);
        tlinear_backward(dh + r0 * H, dW, lg, h + r0 * H, W, r, V, H, wk().lc, wk().ls);
      } else {
        cross_entropy_forward(ls_, nullptr, lg, V, t + r0, r, V, kIgnore, o.threads);
      }
      for (int64_t i = 0; i < r; ++i)
        if (t[r0 + i] != kIgnore) sum += ls_[i];
    }
    return sum / double(n_valid);
  }

  StepLosses step(const int32_t* ids, const float* params, float* grads, int si) {
    wk().ep_bytes = 0;
    const StageSpan all{0, c.num_hidden_layers, true, true};
    float* x = grow(wk().xs, N * H);
    StepLosses L = forward_stage(all, si, ids, params, grads, x);
    if (grads) {
      float* d = grow(wk().ds, N * H);
      backward_stage(all, si, ids, params, grads, d, grow(wk().de_one, mtp_rows() * H));
    }
    L.ep_bytes = wk().ep_bytes;
    return L;
  }

  int64_t mtp_rows() const {
    int64_t r = 0;
    for (int64_t k = 1; k <= D; ++k) r += B * (T - k);
    return r;
  }

  // The stage's forward (TrainModel::forward_stage).
  StepLosses forward_stage(const StageSpan& st, int si, const int32_t* ids, const float* params,
                           float* grads, float* x) {
    Slot& sl = slot(si);
    ModelWeights pw = ps.bind(const_cast<float*>(params));
    ModelWeights gw;
    if (grads) gw = ps.bind(grads);
    StepLosses L;
    const int64_t T1 = T + 1;
    int32_t* in = grow(sl.in_ids, N);
    int32_t* tg = grow(sl.tgt, N);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        in[b * T + t] = ids[b * T1 + t];
        tg[b * T + t] = ids[b * T1 + t + 1];
      }
    for (int64_t r = 0; r < N; ++r)
      DSV3_CHECK(tg[r] >= 0 && tg[r] < V, "token id ", tg[r], " outside the vocabulary [0, ", V, ")");
    // ---- main forward ----
    if (st.first) {
      std::memset(x, 0, size_t(N * H) * sizeof(float));
      embed(x, fp(pw.embed_tokens), in, N);
    }
    const int64_t Lm = c.num_hidden_layers;
    for (int64_t l = st.l0; l < st.l1; ++l) {
      const LayerWeights& lw = pw.layers[size_t(l)];
      block_forward(x, T, lw, sl.blocks[size_t(l)], &L, l, router_bias(lw));
    }
    if (!st.last) return L;
    sl.x_last.assign(x, x + N * H);
    float* hn = grow(sl.hN, N * H);
    norm_fwd(hn, x, fp(pw.norm), N);
    float* dhn = grads ? grow(sl.dhN, N * H) : nullptr;
    // This call's share of the step's mean: B of global_batch sequences (every target of a
    // packed window is valid, so sequences weigh alike).
    const double share = double(B) / double(o.global_batch > 0 ? o.global_batch : B);
    L.main = head_ce(hn, tg, N, fp(pw.lm_head), grads ? fp_mut(gw.lm_head) : nullptr, dhn, share);

    // ---- MTP forward (report §2.2): module k over the T − k positions with a target ----
    const double lam = D > 0 ? o.mtp_lambda / double(D) : 0.0;
    for (int64_t k = 1; k <= D; ++k) {
      MtpState& m = sl.mtp[size_t(k - 1)];
      const MtpWeights& mw = pw.mtp[size_t(k - 1)];
      const int64_t Tk = T - k, Nk = B * Tk, Tp = Tk + 1;  // Tp: rows per sequence of h^{k-1}
      m.Tk = Tk;
      m.ids.resize(size_t(Nk));
      m.tgt.resize(size_t(Nk));
      m.hprev.resize(size_t(Nk * H));
      const float* prev = k == 1 ? sl.hN.data() : sl.mtp[size_t(k - 2)].hk.data();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < Tk; ++i) {
          m.ids[size_t(b * Tk + i)] = ids[b * T1 + i + k];
          m.tgt[size_t(b * Tk + i)] = ids[b * T1 + i + k + 1];
          std::memcpy(&m.hprev[size_t((b * Tk + i) * H)], prev + (b * Tp + i) * H, size_t(H) * sizeof(float));
        }
      m.e.resize(size_t(Nk * H));
      embed(m.e.data(), fp(mw.embed_tokens), m.ids.data(), Nk);
      m.cat.resize(size_t(Nk * 2 * H));
      rmsnorm_forward(m.cat.data(), 2 * H, nullptr, m.e.data(), H, fp(mw.enorm), Nk, H, eps, o.threads);
      rmsnorm_forward(m.cat.data() + H, 2 * H, nullptr, m.hprev.data(), H, fp(mw.hnorm), Nk, H, eps,
                      o.threads);
      m.x_pre.resize(size_t(Nk * H));
      tlinear_forward(m.x_pre.data(), m.cat.data(), fp(mw.eh_proj), Nk, H, 2 * H, wk().lc, wk().ls);
      block_forward(m.x_pre.data(), Tk, mw.block, sl.blocks[size_t(Lm + k - 1)], &L, Lm + k - 1,
                    router_bias(mw.block));
      m.hk.resize(size_t(Nk * H));
      norm_fwd(m.hk.data(), m.x_pre.data(), fp(mw.shared_head_norm), Nk);
      m.dhk.assign(size_t(Nk * H), 0.0f);
      const double lk = head_ce(m.hk.data(), m.tgt.data(), Nk, fp(mw.shared_head_head),
                                grads ? fp_mut(gw.mtp[size_t(k - 1)].shared_head_head) : nullptr,
                                grads ? m.dhk.data() : nullptr, lam * share);
      L.mtp.push_back(lk);
    }
    L.total = L.main + L.balance;
    for (double v : L.mtp) L.total += lam * v;
    return L;
  }

  // The stage's backward (TrainModel::backward_stage).
  void backward_stage(const StageSpan& st, int si, const int32_t* ids, const float* params,
                      float* grads, float* d, float* de_rows) {
    Slot& sl = slot(si);
    ModelWeights pw = ps.bind(const_cast<float*>(params));
    ModelWeights gw = ps.bind(grads);
    const int64_t Lm = c.num_hidden_layers, T1 = T + 1;
    if (st.last) {
      // ---- MTP backward, last module first (module k feeds module k+1) ----
      int64_t de_off = mtp_rows() * H;  // module k's rows after module k−1's
      for (int64_t k = D; k >= 1; --k) {
        MtpState& m = sl.mtp[size_t(k - 1)];
        const MtpWeights& mw = pw.mtp[size_t(k - 1)];
        MtpWeights& mg = gw.mtp[size_t(k - 1)];
        const int64_t Tk = m.Tk, Nk = B * Tk, Tp = Tk + 1;
        float* rs = grow(wk().rstd, Nk);
        // h^k = shared_head.norm(x_pre)
        float* dm = zeros(wk().dm_s, Nk * H);
        norm_fwd(grow(wk().xn, Nk * H), m.x_pre.data(), fp(mw.shared_head_norm), Nk, rs);
        rmsnorm_backward(dm, H, fp_mut(mg.shared_head_norm), m.dhk.data(), H, m.x_pre.data(), H,
                         fp(mw.shared_head_norm), rs, Nk, H, false, o.threads);
        block_backward(dm, Tk, mw.block, mg.block, sl.blocks[size_t(Lm + k - 1)]);
        // x_pre came out of the block; the block's input was eh_proj(cat): dm is its gradient now.
        float* dcat = zeros(wk().dcat_s, Nk * 2 * H);
        tlinear_backward(dcat, fp_mut(mg.eh_proj), dm, m.cat.data(), fp(mw.eh_proj), Nk, H,
                         2 * H, wk().lc, wk().ls);
        // enorm(e): the embedding rows' gradient, added into the (shared) table by the first
        // stage, before its own rows — the order of one process.
        de_off -= Nk * H;
        float* de = de_rows + de_off;
        std::memset(de, 0, size_t(Nk * H) * sizeof(float));
        norm_fwd(grow(wk().xn, Nk * H), m.e.data(), fp(mw.enorm), Nk, rs);
        rmsnorm_backward(de, H, fp_mut(mg.enorm), dcat, 2 * H, m.e.data(), H, fp(mw.enorm),
                         rs, Nk, H, false, o.threads);
        // hnorm(h^{k-1}): into dhN (k = 1) or the previous module's dh, rows i < Tk.
        float* dprev_g = zeros(wk().dprev_s, Nk * H);
        norm_fwd(grow(wk().xn, Nk * H), m.hprev.data(), fp(mw.hnorm), Nk, rs);
        rmsnorm_backward(dprev_g, H, fp_mut(mg.hnorm), dcat + H, 2 * H, m.hprev.data(), H,
                         fp(mw.hnorm), rs, Nk, H, false, o.threads);
        float* dprev = k == 1 ? sl.dhN.data() : sl.mtp[size_t(k - 2)].dhk.data();
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < Tk; ++i) {
            float* dst = dprev + (b * Tp + i) * H;
            const float* src = dprev_g + (b * Tk + i) * H;
            for (int64_t j = 0; j < H; ++j) dst[j] += src[j];
          }
      }
      // ---- final norm ----
      float* rs = grow(wk().rstd, N);
      std::memset(d, 0, size_t(N * H) * sizeof(float));
      norm_fwd(grow(wk().xn, N * H), sl.x_last.data(), fp(pw.norm), N, rs);
      rmsnorm_backward(d, H, fp_mut(gw.norm), sl.dhN.data(), H, sl.x_last.data(), H, fp(pw.norm), rs,
                       N, H, false, o.threads);
    }
    for (int64_t l = st.l1 - 1; l >= st.l0; --l)
      block_backward(d, T, pw.layers[size_t(l)], gw.layers[size_t(l)], sl.blocks[size_t(l)]);
    if (!st.first) return;
    // The embedding: the MTP modules' rows (k = D first, as their backward ran), then the main rows.
    int64_t de_off = mtp_rows() * H;
    for (int64_t k = D; k >= 1; --k) {
      const int64_t Tk = T - k, Nk = B * Tk;
      de_off -= Nk * H;
      int32_t* kid = grow(wk().kid_s, Nk);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < Tk; ++i) kid[b * Tk + i] = ids[b * T1 + i + k];
      embed_backward(fp_mut(gw.mtp[size_t(k - 1)].embed_tokens), kid, de_rows + de_off, Nk);
    }
    embed_backward(fp_mut(gw.embed_tokens), sl.in_ids.data(), d, N);
  }

  const MoeExpertParallel* ep() const {
    return o.ep.ep != nullptr || o.ep.max_nodes > 0 ? &o.ep : nullptr;
  }

  // The router bias steers selection only for noaux_tc (report §2.1.2).
  const float* router_bias(const LayerWeights& lw) const {
    return lw.is_moe && c.has_router_bias() && lw.moe.e_score_correction_bias.present()
               ? fp(lw.moe.e_score_correction_bias) : nullptr;
  }
};

TrainModel::TrainModel(const ParamSet& ps, const TrainModelOptions& o)
    : impl_(std::make_unique<Impl>(ps, o)), o_(o) {}
TrainModel::~TrainModel() = default;

std::vector<double> update_router_bias(const ModelWeights& pw, const ModelConfig& c,
                                       const StepLosses& L, double gamma) {
  std::vector<double> maxvio;
  for (size_t i = 0; i < L.load.size(); ++i) {
    const std::vector<int64_t>& load = L.load[i];
    double mean = 0;
    int64_t mx = 0;
    for (int64_t v : load) {
      mean += double(v);
      mx = std::max(mx, v);
    }
    mean /= double(load.size());
    maxvio.push_back(mean > 0 ? (double(mx) - mean) / mean : 0.0);
    const int64_t l = L.moe_layer[i];
    const LayerWeights& lw = l < c.num_hidden_layers ? pw.layers[size_t(l)]
                                                     : pw.mtp[size_t(l - c.num_hidden_layers)].block;
    if (gamma > 0 && lw.moe.e_score_correction_bias.present()) {
      float* b = lw.moe.e_score_correction_bias.w.ptr<float>();
      for (size_t e = 0; e < load.size(); ++e) {
        const double d = mean - double(load[e]);
        b[e] += float(gamma * double((d > 0) - (d < 0)));
      }
    }
  }
  return maxvio;
}

void TrainModel::set_mtp_lambda(double lambda) {
  o_.mtp_lambda = lambda;
  impl_->o.mtp_lambda = lambda;
}

void TrainModel::set_weight_copy(const float* params, const uint16_t* bf16) {
  for (auto& w : impl_->work) {
    w.lc.w_base = bf16 ? params : nullptr;
    w.lc.w_bf16 = bf16;
    w.lc.w_n = bf16 ? impl_->ps.numel() : 0;
  }
}

StepLosses TrainModel::step(const int32_t* ids, const float* params, float* grads, int slot) {
  return impl_->step(ids, params, grads, slot);
}

StepLosses TrainModel::forward_stage(const StageSpan& st, int slot, const int32_t* ids,
                                     const float* params, float* grads, float* x) {
  impl_->wk().ep_bytes = 0;
  StepLosses L = impl_->forward_stage(st, slot, ids, params, grads, x);
  L.ep_bytes = impl_->wk().ep_bytes;
  return L;
}

int64_t TrainModel::backward_stage(const StageSpan& st, int slot, const int32_t* ids, const float* params,
                                   float* grads, float* d, float* de_rows, std::vector<DeferredWGrad>* defer) {
  impl_->wk().ep_bytes = 0;
  impl_->wk().lc.defer = defer;
  impl_->backward_stage(st, slot, ids, params, grads, d, de_rows);
  impl_->wk().lc.defer = nullptr;
  return impl_->wk().ep_bytes;
}

void TrainModel::weight_stage(std::vector<DeferredWGrad>& defer) {
  tlinear_run_deferred(defer, impl_->wk().lc, impl_->wk().ls);
}

int64_t TrainModel::activation_numel() const { return impl_->N * impl_->H; }
int64_t TrainModel::mtp_rows_numel() const { return impl_->mtp_rows() * impl_->H; }

}  // namespace dsv3
