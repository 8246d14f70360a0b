// The feed-forward half of a block for training: the dense SwiGLU MLP and DeepSeekMoE
// (SPEC §1, §2; docs/training.md), each a forward that saves what its hand-written backward
// needs. Every expert projection is a training linear layer (train/tlinear.h) in the caller's
// Precision; the router matmul, the routing and the balance loss are always F32.
//
// Saved vs recomputed (report §3.3 recomputes cheap ops): the gate/up projections' outputs
// are saved ([rows, inter] each; under FP8 training in E4M3 1x128 tiles, as the report
// caches the SwiGLU's inputs — the forward itself uses the exact values); the SwiGLU output h is recomputed from them in backward (an
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
#include "parallel/comm.h"
#include "parallel/ep_dispatch.h"
#include "train/act_cache.h"
#include "train/tlinear.h"

namespace dsv3 {

// ---- dense SwiGLU MLP: out [N, H] = down(silu(gate(x)) ⊙ up(x)) ----
struct MlpTrainSaved {
  ActCache gate, up;  // [N, I] projection outputs (pre-activation): the SwiGLU's inputs,
                      // E4M3 1x128 under FP8 training (act_cache.h), F32 otherwise
};
struct MlpTrainScratch {
  TLinearScratch lin;
  std::vector<float> h, dh, dg, du;  // [N, I]
  std::vector<float> gw, uw;         // [N, I] gate/up values while encoded / once decoded
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

// Expert parallelism (SPEC §4, report §3.2; parallel/ep_dispatch.h for the layout): rank q of
// the EP group owns routed experts [q·E/P, (q+1)·E/P). The router and the shared experts run
// on the rank's own tokens; a token's rows go to the owners of its experts (dispatch), the
// owners compute and send the outputs back (combine), the token's rank weights and adds them.
// Every rank holds all parameters but computes, and writes gradients for, its own experts
// only (other experts' gradients are left untouched: the caller sums gradients over ranks).
// Node-limited routing (report §2.1.2): max_nodes = M > 0 keeps each token's experts on at
// most M nodes, a node being R = ranks_per_node consecutive EP ranks (model/moe.h NodeLimit).
struct MoeExpertParallel {
  const dist::Comm* ep = nullptr;  // the EP group; nullptr: every expert in this process
  int max_nodes = 0;               // M (0: no node limit)
  int ranks_per_node = 0;          // R: EP size must be divisible by it (with M > 0)
  // Without an EP group of > 1 rank: the node count to route for, so that one process routes
  // exactly as an EP run of nodes·R ranks would (its single-process reference). With one,
  // 0 or ep.size()/R.
  int nodes = 0;
  // Tests: run the dispatch/combine machinery even on a one-rank group (otherwise one rank
  // takes the plain path: the same code and bits as no EP at all).
  bool exchange_one_rank = false;
};
// The routing's node limit of an EP option (checks R and the node count against the EP size,
// and the rest against c: model/moe.h check_node_limit). ep may be nullptr (no limit).
NodeLimit moe_node_limit(const MoeExpertParallel* ep, const ModelConfig& c);

// DSV3_EP_OVERLAP=0 (read once) turns the EP overlap off: each exchange is waited on right
// after it starts, with no computation in between, and the training step runs its
// micro-batches one after another (train/train_step.h) — the baseline of the overlap
// experiment (docs/PERF.md, "Distributed training"). Unset or 1: overlapped. The same
// operations in the same order either way: the same bits.
bool moe_ep_overlap();

// The wire formats by linear precision (report §3.3.2): the dispatch in the GEMMs' input
// precision (F32 / BF16 / E4M3 1x128), the combine in BF16 (F32 under F32 training). The same
// two for backward (dout rows to the owners; dx rows back), each row with one F32 extra (the
// gate weight out, dweight back).
struct MoeEpWire {
  Wire dispatch = Wire::F32, combine = Wire::F32;
};
MoeEpWire moe_ep_wire(Precision p);

struct MoeEpSaved {
  bool active = false;              // the forward exchanged rows
  EpPlan plan;                      // who sends how many rows where
  MoeEpWire wire;
  std::vector<uint8_t> x_in;        // [n_recv, dispatch row] rows received (source-major): the
                                    // owner's expert inputs, decoded again in backward
};

struct MoeTrainSaved {
  int64_t B = 0, T = 0;
  std::vector<float> scores;        // [N, E] unbiased scores (sigmoid, or softmax over E)
  std::vector<int32_t> idx;         // [N, K] chosen experts
  std::vector<float> weight;        // [N, K] gate weights (normalised / scaled)
  std::vector<int32_t> order;       // [N·K] (token, slot) indices grouped by expert
  std::vector<int64_t> start;       // [E + 1] expert e owns order[start[e], start[e+1])
  ActCache gate, up;                // [N·K, I] routed projections, rows in `order` order
                                    // (under EP: [n_recv, I], the owner's rows expert-major);
                                    // E4M3 1x128 under FP8 training, F32 otherwise
  std::vector<int32_t> seq_count;   // [B, E] top-k selections per sequence (balance loss f_i)
  MlpTrainSaved shared;             // shared experts (n_shared·moe_inter wide)
  MoeEpSaved ep;
};
// One thread's scratch while it runs routed experts (moe_train.cpp): the expert's own, and
// under EP its rows decoded, their gradients, gate weights and dweights.
struct ExpertThreadScratch {
  MlpTrainScratch mlp;
  std::vector<float> xe, ye, rw, dw;
};
struct MoeTrainScratch {
  MlpTrainScratch mlp;
  std::vector<float> logits, dlogits, dscore;  // [N, E]
  std::vector<float> xe, ye;                   // [N·K, H] the routed rows in sorted order
  std::vector<float> dweight;                  // [N, K]
  std::vector<RouteScratch> routes;           // per thread
  std::vector<uint8_t> send, recv;             // EP wire buffers (rows × row bytes)
  std::vector<float> rw, dw;                   // [N·K] gate weights / dweight of the sorted rows
  std::vector<float> gw, uw;                   // routed gate/up values (MlpTrainScratch's)
  // Routed experts over the threads (one expert per thread at a time): each thread's own
  // expert scratch, and each token's K rows in the sorted order, ascending (= expert order).
  std::vector<ExpertThreadScratch> per_thread;
  std::vector<int32_t> tok_rows, tok_fill;     // [N, K], [N]
};
struct MoeStats {
  std::vector<int64_t> load;  // [E] (token, slot) assignments this forward (sums to B·T·K)
  double balance_loss = 0;    // α Σ_i f_i P_i averaged over the B sequences (0 when α = 0)
};

// x [B·T, H] (the block's normed input), B sequences of T tokens. bias [E] or nullptr
// (steers selection only). alpha: balance-loss weight (0 = off). out [B·T, H] written.
// stats may be nullptr; its load and balance loss are this rank's tokens'. ep: expert
// parallelism (nullptr, or a one-rank group: the plain path). Under EP every rank of the
// group must call with the same config and EP option (a collective).
void moe_train_forward(float* out, const float* x, int64_t B, int64_t T, const ModelConfig& c,
                       const MoeWeights& w, const float* bias, float alpha, const TLinearCtx& lc,
                       MoeTrainSaved& saved, MoeTrainScratch& s, MoeStats* stats,
                       const MoeExpertParallel* ep = nullptr);
// dout [B·T, H] -> dx [B·T, H] (written); gradients ADDED into g (gate, experts,
// shared_experts; e_score_correction_bias gets none). bal_scale is dL/d(Σ_b L_bal,b): the
// factor the caller applies to the per-sequence balance terms — 1/B when the loss averages
// the B sequences of this call (the value stats.balance_loss reports), 1/(sequences in the
// step) under gradient accumulation. alpha = 0 or bal_scale = 0 skips the term.
// Under EP (the forward's ep): the same ep; gradients of the experts this rank owns only.
void moe_train_backward(float* dx, const float* dout, const float* x, const ModelConfig& c,
                        const MoeWeights& w, MoeWeights& g, float alpha, float bal_scale,
                        const TLinearCtx& lc, const MoeTrainSaved& saved, MoeTrainScratch& s,
                        const MoeExpertParallel* ep = nullptr);

// Bytes the saved forward's exchange sent, and its backward sends, to other EP ranks (what
// dist::traffic() counts): rows × row bytes + the counts; zero without EP. For the trainer's
// measured-vs-predicted traffic line.
EpBytes moe_ep_forward_bytes(const MoeTrainSaved& saved, const ModelConfig& c);
EpBytes moe_ep_backward_bytes(const MoeTrainSaved& saved, const ModelConfig& c);

}  // namespace dsv3
