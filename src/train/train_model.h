// One training step's forward and backward over a batch (docs/training.md): embedding,
// blocks (MLA + dense SwiGLU or DeepSeekMoE, residuals, RMSNorms recomputed in backward),
// final norm, the head and cross-entropy in row chunks (B·T×V logits never exist at once),
// the MTP modules with their λ/D-weighted losses, and the sequence-wise balance loss.
// Gradients are added into a second ParamSet-shaped arena.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/rope.h"
#include "train/mla_train.h"
#include "train/moe_train.h"
#include "train/params.h"
#include "train/tlinear.h"

namespace dsv3 {

struct TrainModelOptions {
  int64_t batch = 4, seq_len = 256;   // B windows of T + 1 tokens
  // The sequences of the whole optimizer step (all micro-batches, all data-parallel ranks);
  // 0: batch. Gradients are those of the losses averaged over global_batch sequences, so
  // the gradients of the step's calls summed over ranks and micro-batches equal one call on
  // the whole batch. The returned losses stay the means over this call's B sequences.
  int64_t global_batch = 0;
  Precision precision = Precision::BF16;
  bool mtp = true;                    // train the MTP modules (when the config has them)
  double mtp_lambda = 0.3;            // L_MTP = λ/D Σ L_k
  double balance_alpha = 1e-4;        // sequence-wise balance loss weight (0: off)
  int threads = 0;
  // Expert parallelism (train/moe_train.h): the EP group and node-limited routing; ep.ep ==
  // nullptr: every expert computed here.
  MoeExpertParallel ep;
};

struct StepLosses {
  double main = 0;                    // mean CE of the main head
  std::vector<double> mtp;            // mean CE per MTP module (before λ/D)
  double balance = 0;                 // Σ over MoE layers of the batch-mean balance loss
  std::vector<double> balance_layer;  // per entry of load: that layer's term (summed in order: balance)
  double total = 0;                   // main + λ/D Σ mtp + balance
  std::vector<std::vector<int64_t>> load;  // per MoE layer (main, then MTP blocks): [E]
  std::vector<int64_t> moe_layer;     // the layer index of each entry of load
  int64_t ep_bytes = 0;               // expert-parallel bytes this rank sent (predicted from the routing)
};

// One pipeline stage (docs/distributed.md): main layers [l0, l1); the first stage also holds
// the embedding, the last the final norm, the head and the MTP modules.
struct StageSpan {
  int64_t l0 = 0, l1 = 0;
  bool first = true, last = true;
};

class TrainModel {
 public:
  TrainModel(const ParamSet& ps, const TrainModelOptions& o);
  ~TrainModel();
  const TrainModelOptions& options() const { return o_; }
  void set_mtp_lambda(double lambda);  // the report's schedule: 0.3 early, 0.1 late
  // BF16: the GEMMs read their weights from bf16, a BF16 copy of the arena params (the one
  // the steps are given) in the same layout, instead of rounding them on every call
  // (train/train_weights.h). Null: no copy.
  void set_weight_copy(const float* params, const uint16_t* bf16);

  // ids [B, T + 1]; params/grads are arenas of ps.numel() floats; gradients are ADDED.
  // Returns the losses; with grads == nullptr only the forward runs (evaluation). `slot`: the
  // saved state it uses (below); two steps may run at once on two fibers (core/fiber.h) with
  // different slots, each with its fiber's own work buffers.
  StepLosses step(const int32_t* ids, const float* params, float* grads, int slot = 0);

  // The pipeline's stage API: step() is forward_stage then backward_stage of the whole model
  // (one stage, slot 0), so a pipeline computes the same bits stage by stage. `slot` names the
  // saved state of one micro-batch in flight (grown on first use; reuse after its backward).
  // ids [B, T + 1] on every stage (the first embeds, the last takes targets and MTP inputs).
  // x [B·T, H]: in, the stage input (ignored on the first stage); out, its output (left as
  // the last block's output on the last stage). The head's weight gradient is computed in the
  // forward (the CE gradient is formed there), so grads is needed with a backward to follow.
  // Returns the losses the stage computed (main and MTP on the last; balance and loads of its
  // MoE layers; total = main + λ/D Σ mtp + balance of the stage).
  StepLosses forward_stage(const StageSpan& st, int slot, const int32_t* ids, const float* params,
                           float* grads, float* x);
  // d [B·T, H]: in, dL/d(stage output) (ignored on the last stage); out, dL/d(stage input).
  // de_rows [mtp_rows_numel()]: the MTP modules' embedding-row gradients, written by the last
  // stage and added into the shared embedding by the first stage before its own rows, in the
  // order one process adds them.
  // defer: ZB's split backward — the training linears' weight gradients are recorded there
  // instead (tlinear.h) and added by weight_stage (the W op); the norm gains, the router and
  // the embedding get theirs here.
  // Returns the expert-parallel bytes this rank sent in it (predicted from the routing; the
  // forward's are the losses' ep_bytes).
  int64_t backward_stage(const StageSpan& st, int slot, const int32_t* ids, const float* params,
                         float* grads, float* d, float* de_rows, std::vector<DeferredWGrad>* defer = nullptr);
  void weight_stage(std::vector<DeferredWGrad>& defer);
  int64_t activation_numel() const;  // B·T·H
  int64_t mtp_rows_numel() const;    // Σ_k B·(T − k)·H

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  TrainModelOptions o_;
};

// Aux-loss-free balancing after the optimizer step (report §2.1.2): per MoE layer of the step,
// b_i += γ·sign(mean_load − load_i) (overloaded experts go down). Also returns MaxVio per
// layer, (max_i load_i − mean)/mean, in the order of L.load. pw: the parameter views.
std::vector<double> update_router_bias(const ModelWeights& pw, const ModelConfig& c,
                                       const StepLosses& L, double gamma);

}  // namespace dsv3
