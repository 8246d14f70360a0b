// The pipeline executor (docs/distributed.md, "Pipeline parallelism"): runs one rank's ops of
// a schedule (parallel/schedule.h) for one optimizer step over TrainModel's stage API.
//
//   F(mb, c)   wait for the stage input from prev (its irecv posted a few ops ahead),
//              forward_stage, isend the output to next.
//   B(mb, c)   wait for the output gradient from next, backward_stage, isend the input
//              gradient to prev; the last stage also sends the MTP modules' embedding-row
//              gradients to micro-batch mb's first stage, which adds them before its own rows
//              (the order of one process).
//   FB         the F and the B; both inputs were posted before either computes (how far a
//              transfer advances during compute is up to MPI's progress engine). With
//              overlap_fb (expert parallelism inside the stages) they run at once on two
//              fibers (core/fiber.h), each yielding at its expert-parallel exchanges, so one's
//              all-to-all travels while the other computes — DualPipe's F&B overlap. Each has
//              its own work buffers (TrainModel), so the bits are those of F then B.
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
  PipelineExec(TrainModel& model, const pipe::Schedule& s, const dist::Comm& pipe, int64_t layers,
               bool overlap_fb = false);

  // rows [M·b, T + 1]: this pipeline's micro-batches, mb's rows at mb·b·(T + 1); g[mb]:
  // micro-batch mb's gradient arena (zeroed by the caller; this rank's stages' tensors are
  // added). per_stage[mb]: (stage, losses) of each stage of mb that ran here, in stage order.
  // Returns the bytes this rank sent point to point, and the expert-parallel bytes of the
  // backwards (the forwards' are in their losses).
  int64_t run(const int32_t* rows, const float* params, const std::vector<float*>& g,
              std::vector<std::vector<std::pair<int, StepLosses>>>& per_stage);
  bool overlaps_fb() const { return overlap_fb_; }  // FB pairs on two fibers
  // Forward only (validation), no schedule: each micro-batch in turn along its path, a stage's
  // output handed to the next stage's rank; per_stage as run() fills it (the last stage's
  // main and MTP losses). Every rank of the pipeline calls it; the order is (mb, stage), so a
  // blocking transfer only ever waits for work earlier in that order.
  void evaluate(const int32_t* rows, const float* params,
                std::vector<std::vector<std::pair<int, StepLosses>>>& per_stage);

 private:
  void forward(int mb, int chunk);
  void backward(int mb, int chunk, bool split);
  void weight(int mb, int chunk);
  void post(const pipe::Op& op);
  void post_one(bool is_f, int mb, int chunk);
  void wait_recv(int t);
  // Message buffers from a pool, named by key(kind, chunk, mb): taken when a receive is posted
  // or an output is formed, given back when used and (for a send) when the send completed.
  int tag(int kind, int stage, int mb) const { return (kind * s_.n_stages + stage) * s_.micro_batches + mb; }
  int key(int kind, int chunk, int mb) const { return (kind * s_.chunks + chunk) * s_.micro_batches + mb; }
  float* buffer(int k, int64_t n);  // the buffer of key k, taken from the pool if it has none
  void release(int k);
  void send(int k, int64_t n, int dest, int t);
  void reap_sends(bool wait);

  TrainModel& model_;
  const pipe::Schedule& s_;
  const dist::Comm& pipe_;
  int64_t layers_;
  int me_;
  bool overlap_fb_ = false;
  int64_t A_, E_, row_elems_;  // activation elements, MTP embedding-row elements, ids per micro-batch
  std::vector<std::vector<float>> pool_;        // message buffers, reused across ops and steps
  std::vector<int> free_bufs_;
  std::map<int, int> buf_of_;                   // key -> pool index
  std::map<int, dist::Request> recv_;           // posted receives by tag
  std::vector<std::pair<int, dist::Request>> sends_;  // (key, request) in flight
  std::map<int, int> slot_of_;                  // (chunk·M + mb) -> model slot
  std::vector<int> free_slots_;
  std::map<int, std::vector<DeferredWGrad>> deferred_;  // (chunk·M + mb) -> its W's GEMMs
  int n_slots_ = 0;
  size_t posted_ = 0;                           // ops whose receives are posted
  // Per run.
  const int32_t* rows_ = nullptr;
  const float* params_ = nullptr;
  const std::vector<float*>* g_ = nullptr;
  std::vector<std::vector<std::pair<int, StepLosses>>>* per_stage_ = nullptr;
  int64_t sent_ = 0;
};

}  // namespace dsv3
