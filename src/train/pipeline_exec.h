// The pipeline executor (docs/distributed.md, "Pipeline parallelism"): runs one rank's ops of
// a schedule (parallel/schedule.h) for one optimizer step over TrainModel's stage API.
//
//   F(mb, c)   wait for the stage input from prev (posted as an irecv before the step),
//              forward_stage, isend the output to next.
//   B(mb, c)   wait for the output gradient from next, backward_stage, isend the input
//              gradient to prev; the last stage also sends the MTP modules' embedding-row
//              gradients to micro-batch mb's first stage, which adds them before its own rows
//              (the order of one process).
//   FB         the F then the B; both inputs were posted before the step (how far a transfer
//              advances during compute is up to MPI's progress engine).
//   B split    the same with every tlinear weight-gradient GEMM deferred (attention, experts,
//              dense MLP, router, MTP eh_proj; their dy and x copied, tlinear.h); the norm
//              gains and the embedding get theirs in B, the head its own in F.
//   W          the deferred GEMMs of (mb, c), in the order B recorded them: the same sums.
//
// Every micro-batch's gradient goes to its own arena, so the caller sums them in the canonical
// tree, in micro-batch order, exactly as one process with the same micro-batches does.
#pragma once
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "parallel/comm.h"
#include "parallel/schedule.h"
#include "train/train_model.h"

namespace dsv3 {

// The main layers [l0, l1) of pipeline stage s of n (as even as possible, earlier stages take
// the remainder); the embedding on stage 0, the norm, head and MTP on stage n − 1.
StageSpan stage_span(int64_t layers, int n_stages, int s);

class PipelineExec {
 public:
  // pipe: this data-parallel rank's pipeline group, rank = pipeline rank (the schedule's rank).
  PipelineExec(TrainModel& model, const pipe::Schedule& s, const dist::Comm& pipe, int64_t layers);

  // rows [M·b, T + 1]: this pipeline's micro-batches, mb's rows at mb·b·(T + 1); g[mb]:
  // micro-batch mb's gradient arena (zeroed by the caller; this rank's stages' tensors are
  // added). per_stage[mb]: (stage, losses) of each stage of mb that ran here, in stage order.
  // Returns the bytes this rank sent point to point, and the expert-parallel bytes of the
  // backwards (the forwards' are in their losses).
  int64_t run(const int32_t* rows, const float* params, const std::vector<float*>& g,
              std::vector<std::vector<std::pair<int, StepLosses>>>& per_stage);

 private:
  void forward(int mb, int chunk);
  void backward(int mb, int chunk, bool split);
  void weight(int mb, int chunk);
  void wait_recv(int t);
  int tag(int kind, int stage, int mb) const { return (kind * s_.n_stages + stage) * s_.micro_batches + mb; }
  float* act(int chunk, int mb) { return act_[size_t(chunk * s_.micro_batches + mb)].data(); }
  float* grad(int chunk, int mb) { return grad_[size_t(chunk * s_.micro_batches + mb)].data(); }

  TrainModel& model_;
  const pipe::Schedule& s_;
  const dist::Comm& pipe_;
  int64_t layers_;
  int me_;
  int64_t A_, E_, row_elems_;  // activation elements, MTP embedding-row elements, ids per micro-batch
  std::vector<std::vector<float>> act_, grad_;  // [chunks·M][A] stage inputs/outputs and their gradients
  std::vector<std::vector<float>> de_;          // [M][E]
  std::map<int, dist::Request> recv_;           // posted receives by tag
  std::vector<dist::Request> sends_;
  std::map<int, int> slot_of_;                  // (chunk·M + mb) -> model slot
  std::vector<int> free_slots_;
  std::map<int, std::vector<DeferredWGrad>> deferred_;  // (chunk·M + mb) -> its W's GEMMs
  int n_slots_ = 0;
  // Per run.
  const int32_t* rows_ = nullptr;
  const float* params_ = nullptr;
  const std::vector<float*>* g_ = nullptr;
  std::vector<std::vector<std::pair<int, StepLosses>>>* per_stage_ = nullptr;
  int64_t sent_ = 0;
};

}  // namespace dsv3
