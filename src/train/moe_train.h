// The feed-forward half of a block for training: the dense SwiGLU MLP and DeepSeekMoE
// (SPEC §1, §2; docs/training.md), each a forward that saves what its hand-written backward
// needs. Every expert projection is a training linear layer (train/tlinear.h) in the caller's
// Precision; the router matmul, the routing and the balance loss are always F32.
//
// Saved vs recomputed (report §3.3 recomputes cheap ops): the gate/up projections' outputs
// are saved ([rows, inter] each); the SwiGLU output h is recomputed from them in backward (an
// elementwise op), and the down projection's output is never kept: the routing-weight
// gradient dweight = <dout, down(h)> is taken as <downᵀ·dout, h>, which backward computes
// anyway. At B·T = 1024, H = 1024, moe_inter 256, 64 experts top-6, 1 shared expert, the
// state of one MoE layer is 2·(6144 + 1024)·256·4 B = 14.7 MB of gate/up, plus scores
// [B·T, E] 256 KiB and the routing (idx/weights/order) ~100 KiB.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/moe.h"
#include "model/weights.h"
#include "train/tlinear.h"

namespace dsv3 {

// ---- dense SwiGLU MLP: out [N, H] = down(silu(gate(x)) ⊙ up(x)) ----
struct MlpTrainSaved {
  std::vector<float> gate, up;  // [N, I] projection outputs (pre-activation)
};
struct MlpTrainScratch {
  TLinearScratch lin;
  std::vector<float> h, dh, dg, du;  // [N, I]
};
// out [N, H] written (or added to with acc). w: F32 views (training parameters).
void mlp_train_forward(float* out, const float* x, int64_t N, int64_t H, const MlpWeights& w,
                       const TLinearCtx& lc, MlpTrainSaved& saved, MlpTrainScratch& s,
                       bool acc = false);
// dout [N, H] -> dx [N, H] (written, or added to with acc_dx); parameter gradients are ADDED
// into g (same layout as w).
void mlp_train_backward(float* dx, const float* dout, const float* x, int64_t N, int64_t H,
                        const MlpWeights& w, MlpWeights& g, const TLinearCtx& lc,
                        const MlpTrainSaved& saved, MlpTrainScratch& s, bool acc_dx = false);

// ---- DeepSeekMoE ----
struct MoeTrainSaved {
  int64_t B = 0, T = 0;
  std::vector<float> scores;        // [N, E] unbiased scores (sigmoid, or softmax over E)
  std::vector<int32_t> idx;         // [N, K] chosen experts
  std::vector<float> weight;        // [N, K] gate weights (normalised / scaled)
  std::vector<int32_t> order;       // [N·K] (token, slot) indices grouped by expert
  std::vector<int64_t> start;       // [E + 1] expert e owns order[start[e], start[e+1])
  std::vector<float> gate, up;      // [N·K, I] routed projections, rows in `order` order
  std::vector<int32_t> seq_count;   // [B, E] top-k selections per sequence (balance loss f_i)
  MlpTrainSaved shared;             // shared experts (n_shared·moe_inter wide)
};
struct MoeTrainScratch {
  MlpTrainScratch mlp;
  std::vector<float> logits, dlogits, dscore;  // [N, E]
  std::vector<float> xe, ye;                   // [n, H] gathered rows of one expert
  std::vector<float> dweight;                  // [N, K]
  RouteScratch route;
};
struct MoeStats {
  std::vector<int64_t> load;  // [E] (token, slot) assignments this forward (sums to B·T·K)
  double balance_loss = 0;    // α Σ_i f_i P_i averaged over the B sequences (0 when α = 0)
};

// x [B·T, H] (the block's normed input), B sequences of T tokens. bias [E] or nullptr
// (steers selection only). alpha: balance-loss weight (0 = off). out [B·T, H] written.
// stats may be nullptr.
void moe_train_forward(float* out, const float* x, int64_t B, int64_t T, const ModelConfig& c,
                       const MoeWeights& w, const float* bias, float alpha, const TLinearCtx& lc,
                       MoeTrainSaved& saved, MoeTrainScratch& s, MoeStats* stats);
// dout [B·T, H] -> dx [B·T, H] (written); gradients ADDED into g (gate, experts,
// shared_experts; e_score_correction_bias gets none). bal_scale is dL/d(Σ_b L_bal,b): the
// factor the caller applies to the per-sequence balance terms — 1/B when the loss averages
// the B sequences of this call (the value stats.balance_loss reports), 1/(sequences in the
// step) under gradient accumulation. alpha = 0 or bal_scale = 0 skips the term.
void moe_train_backward(float* dx, const float* dout, const float* x, const ModelConfig& c,
                        const MoeWeights& w, MoeWeights& g, float alpha, float bal_scale,
                        const TLinearCtx& lc, const MoeTrainSaved& saved, MoeTrainScratch& s);

}  // namespace dsv3
