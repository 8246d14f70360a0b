// One optimizer step of `dsv3 train`, in one process or many (docs/distributed.md): the
// forward and backward of this rank's micro-batches, the gradient reduced over the
// data-parallel group (ZeRO-1: each rank receives the sum of its shard), the global norm and
// clipping, AdamW on the shard, the parameters all-gathered, and the aux-loss-free bias
// update from the expert loads of the whole global batch.
//
// The sums are canonical, so the bits do not depend on the layout: the global batch is cut
// into U = dp × micro_batches units of equal size; each unit's gradient is computed from
// zero and the U gradients are added in one fixed tree (consecutive pairs, then pairs of
// pairs), within a rank and then across ranks; the norm is summed per fixed block of the
// arena and the blocks in order; the losses per unit and the units in order. Two runs with
// the same U whose micro_batches are powers of two (so a rank's units form whole subtrees)
// produce the same bits — `mpirun -np 4 dsv3 train` and `dsv3 train --micro-batches 4`
// (tests/test_dist_train.cpp). Against another U the results differ by rounding only.
//
// With expert parallelism and ≥ 2 micro-batches (no pipeline), a rank runs its micro-batches
// two at a time on cooperative fibers (core/fiber.h): each yields at every expert-parallel
// exchange, so one micro-batch computes while the other's rows travel. Each has its own
// model slot, work buffers and gradient arena, so the bits are those of running them one
// after another.
//
// With pipeline stages (lay.pp > 1) a rank runs its pipeline's schedule (PipelineExec) on its
// stages, each micro-batch into its own arena; the other stages' tensors stay exactly zero, so
// ZeRO-1 over all dp × pp ranks (stage pieces first, then the dp tree) keeps the same sums.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/mapped.h"
#include "parallel/comm.h"
#include "parallel/layout.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/train_config.h"
#include "train/pipeline_exec.h"
#include "train/train_model.h"
#include "train/train_weights.h"

namespace dsv3 {

struct StepResult {
  StepLosses losses;   // means over the global batch; loads summed over it
  double grad_norm = 0;
  bool finite = true;  // the loss and the gradient norm are finite (the same on every rank)
  // Bytes this rank hands MPI in the step (compute() and apply()), predicted from the layout
  // and the routing — what dist::traffic() should count (docs/distributed.md).
  int64_t comm_bytes_predicted = 0;
};

class TrainStep {
 public:
  // dp / ep: this rank's groups (they must outlive the object); one process: Comm().
  // With pipeline stages (lay.pp > 1): dp is the ZeRO group, all dp × pp ranks of the job in
  // world order, and pipe the pipeline group of this rank's dp_rank (rank = stage).
  TrainStep(const TrainConfig& cfg, const ParamSet& ps, const Layout& lay, const dist::Comm& dp,
            const dist::Comm& ep, int threads, const dist::Comm* pipe = nullptr);
  ~TrainStep();

  // Forward and backward of this rank's rows of batch [global_batch, T + 1] (every rank
  // passes the whole batch), the gradient reduce-scattered and its global norm. After it,
  // grads()[lo(), hi()) holds the summed, unclipped gradient of this rank's shard. The
  // weights' BF16 copy, where they keep one, is brought up to date first if it is not.
  StepResult compute(const int32_t* batch, TrainWeights& w, int64_t step);
  // Clipping, AdamW on the shard, the all-gather of the weights, the router-bias update.
  // Returns MaxVio per MoE layer. Call only when compute() was finite. Afterwards part of a
  // rank's master arena may be stale until gather_params() (collective; before a checkpoint
  // or reading the whole arena): with pipeline stages the shards go only to the ranks whose
  // stages use them; with a sharded master (sharded_master()) the GEMM tensors' master stays
  // on its shard's rank (w.sharded()), the rest of the job holding their BF16 copy.
  std::vector<double> apply(TrainWeights& w, const StepResult& r, int64_t step);
  // Forward only (validation): the main and MTP losses of batch [global_batch, T + 1] (every
  // rank passes the whole batch; each computes its rows as in compute()), means over the
  // global batch summed in unit order; no gradient, no state changed. Collective over the
  // data- and expert-parallel groups, and with pipeline stages over the job (each
  // micro-batch passed forward along its stages, PipelineExec::evaluate).
  StepLosses evaluate(const int32_t* batch, TrainWeights& w);
  // The whole master arena on every rank (collective) — or, with lead_only, on the group's
  // rank 0 at least (a sharded master stays sharded on the others).
  void gather_params(TrainWeights& w, bool lead_only = false) const;
  // ZeRO-1 shards the master weights too: BF16 training, data parallel, no pipeline stages,
  // weights with a BF16 copy (train/train_weights.h).
  bool sharded_master() const { return sharded_master_; }

  AdamW& adam() { return *adam_; }
  bool overlaps_micro_batches() const { return overlap_pairs_; }  // two at a time (above)
  bool overlaps_fb_pairs() const { return exec_ && exec_->overlaps_fb(); }  // pipeline F&B on fibers
  const MappedArray<float>& grads() const { return grads_; }
  // Bytes of the gradient arenas in memory (with pipeline stages, about the rank's stages).
  int64_t gradient_resident_bytes() const {
    int64_t r = int64_t(grads_.resident_bytes());
    for (const auto& u : units_) r += int64_t(u.resident_bytes());
    return r;
  }
  int64_t lo() const { return lo_; }
  int64_t hi() const { return hi_; }
  const std::vector<int64_t>& shard_sizes() const { return shard_; }  // [ZeRO group size]

 private:
  const TrainConfig& cfg_;
  const ParamSet& ps_;
  Layout lay_;
  const dist::Comm& dp_;
  std::unique_ptr<AdamW> adam_;
  std::unique_ptr<TrainModel> model_;
  // Two-micro-batch overlap (ep > 1, pp = 1, ≥ 2 micro-batches, parallel.overlap_micro_batches):
  // a pair runs on model_'s slots 0 and 1.
  bool overlap_pairs_ = false;
  const dist::Comm* pipe_ = nullptr;
  std::unique_ptr<pipe::Schedule> sched_;
  std::unique_ptr<PipelineExec> exec_;
  int Z_ = 1, zr_ = 0;               // ZeRO group: size and this rank's place (dp, or dp × pp)
  std::vector<int64_t> moe_layers_;  // the MoE layers of a step, in forward order (loads, balance)
  // [Z, Z] piece_[q·Z + o]: rank q's piece of shard o can be non-zero (with pipeline stages,
  // only where shard o meets a tensor of q's stages; the others are exact zeros, not sent).
  std::vector<char> piece_;
  std::vector<char> need_;        // [Z, Z] rank q reads weights of shard o (apply() sends them)
  std::vector<float> shard_out_;  // [hi − lo] this rank's updated weights, sent by apply()
  // Sharded master: every rank's ranges of the non-GEMM tensors inside its shard [Z], their
  // sizes, and the buffer they are all-gathered in (F32; the GEMM tensors go in BF16).
  bool sharded_master_ = false;
  std::vector<std::vector<std::pair<int64_t, int64_t>>> rest_;
  std::vector<int64_t> rest_counts_;
  std::vector<float> rest_buf_;
  void block_sumsq(int64_t b0, int64_t b1, double* out) const;
  void send_weights(float* params);
  void gather_sharded(TrainWeights& w);
  void use_weights(TrainWeights& w);
  int64_t weight_bytes(const TrainWeights& w) const;  // the weights apply() sends

  // [numel] the step's gradient (this rank's micro-batch 0 first), and the other micro-batches':
  // mappings of which only mine_ (and the shard, in grads_) is ever written.
  MappedArray<float> grads_;
  std::vector<MappedArray<float>> units_;    // [micro_batches − 1]
  // The arena ranges this rank's stages write gradients to (without pipeline stages: all);
  // those and the shard [lo, hi) (zeroed in grads_ each step); the master ranges it keeps
  // when its weights are sharded: the shard, and with pipeline stages the shards it receives.
  std::vector<std::pair<int64_t, int64_t>> mine_, zero0_, keep_;
  void sync_copy(TrainWeights& w) const;
  bool shards_master(const TrainWeights& w) const;   // sharded_master_, and w has the copy
  bool shards_weights(const TrainWeights& w) const;  // that, or pipeline stages
  std::vector<float> pieces_;                // [Z, bucket_] every rank's piece of a bucket of this shard
  int64_t bucket_ = 0;                       // elements of a shard exchanged per round
  int64_t rounds_ = 0;                       // rounds: the largest shard over bucket_, rounded up
  std::vector<int64_t> shard_, shard_blocks_;  // [dp] shard sizes in elements / in blocks
  std::vector<std::pair<int64_t, int64_t>> trainable_;  // arena ranges AdamW updates
  int64_t lo_ = 0, hi_ = 0, block_lo_ = 0, block_hi_ = 0;
};

}  // namespace dsv3
