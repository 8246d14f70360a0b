// Pipeline-parallel schedules as data (STYLE: "the schedule is data", as DualPipe's
// dualpipe.py): a generator emits each rank's sequence of F / B / W / F&B ops from a few
// counts, an executor (MPI, src/parallel/) runs it, and pipeline_sim.h times it.
//
//   1F1B       PipeDream-Flush / Megatron's non-interleaved schedule.
//   ZB1P       ZB-H1 of Zero Bubble (Qi et al. 2023): 1F1B's order with the backward split into
//              the input gradient B and the weight gradient W; stage r defers r W's so every
//              stage holds the same PP micro-batches in flight as 1F1B's first stage.
//   DualPipe   DeepSeek-V3 report §3.2 and deepseek-ai/DualPipe dualpipe.py: PP ranks, PP
//              stages, rank r holds stage r (chunk 0) and stage PP-1-r (chunk 1); half of the
//              micro-batches enter at rank 0, half at rank PP-1; the 8-phase construction.
//   DualPipeV  dualpipev.py: N ranks, 2N stages folded into a V, rank r holds stage r
//              (chunk 0) and stage 2N-1-r (chunk 1); all micro-batches enter and end on rank 0.
//
// docs/pipeline.md explains the op model, the cost convention and the bubble formulas.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3::pipe {

enum class ScheduleKind { OneF1B, ZB1P, DualPipe, DualPipeV };

// "1f1b" | "zb1p" | "dualpipe" | "dualpipev"; anything else is an Error naming s and the choices.
ScheduleKind parse_schedule(const std::string& s);
const char* schedule_name(ScheduleKind k);  // the same strings

enum class OpType : uint8_t { F, B, W, FB };

// One step of a rank's schedule.
//   F:  forward of micro-batch mb on this rank's chunk `chunk`.
//   B:  backward of (mb, chunk). split == false: full backward (input and weight gradients);
//       split == true: input gradient only, the weight gradient deferred to a later W op
//       naming the same (mb, chunk) on the same rank.
//   W:  the deferred weight gradient of (mb, chunk).
//   FB: an overlapped pair: forward of (mb, chunk) and backward of (mb2, chunk2, split2),
//       executed as the forward then the backward, their communication overlapped.
struct Op {
  OpType type = OpType::F;
  int mb = -1, chunk = 0;
  bool split = false;
  int mb2 = -1, chunk2 = 0;  // FB only: the backward half
  bool split2 = false;
};

struct Loc {
  int rank, chunk;
};

struct Schedule {
  ScheduleKind kind = ScheduleKind::OneF1B;
  int pp = 1, micro_batches = 1;  // pp: pipeline ranks
  int chunks = 1;                 // model chunks per rank: 1 (1F1B, ZB1P), 2 (DualPipe, DualPipeV)
  int n_stages = 1;               // stages a micro-batch passes: pp, or 2*pp for DualPipeV
  std::vector<std::vector<Op>> ops;  // [pp] each rank's ops in execution order

  // Which stage of micro-batch mb's path (0 = first, n_stages-1 = the loss) the pair
  // (rank, chunk) computes; -1 when (rank, chunk) is not on mb's path (DualPipe: chunk 0
  // carries the micro-batches mb < M/2, entering at rank 0, chunk 1 those mb >= M/2,
  // entering at rank PP-1).
  int stage_of(int rank, int chunk, int mb) const;
  // Where micro-batch mb's stage `stage` runs. DualPipe: stage s of direction 0 (mb < M/2)
  // is rank s chunk 0, of direction 1 rank PP-1-s chunk 1; the two are the same model stage
  // (two copies whose gradients the executor sums).
  Loc where(int stage, int mb) const;
  // Direction of mb: 0, or 1 for DualPipe's micro-batches mb >= M/2 (entering at rank PP-1).
  int direction(int mb) const;
  // The model stage (layers) that (rank, chunk) holds, whatever the micro-batch: 1F1B/ZB1P
  // rank; DualPipe r, PP-1-r; DualPipeV r, 2N-1-r.
  int chunk_stage(int rank, int chunk) const;
  // The rank and chunk whose forward output feeds (rank, chunk)'s forward on mb's path, or
  // {-1, -1} at the first stage (the executor's receive source; sends go the other way).
  Loc prev(int rank, int chunk, int mb) const;
  Loc next(int rank, int chunk, int mb) const;  // {-1, -1} at the last stage (the loss)

  // Parameter copies per rank relative to 1F1B on the same number of ranks: 2 for DualPipe
  // (stage r and PP-1-r, full-size stages: each stage's parameters live on two ranks), 1
  // for the others (DualPipeV's two chunks are half-size stages). The README's "Parameter
  // per device" column compares at the same number of *stages* instead: that is `chunks`
  // (1, 1, 2, 2) in units of one stage.
  int param_copies() const;
};

// The schedule for `pp` ranks and `micro_batches` micro-batches, with the published
// constraints (Error naming the value otherwise): 1F1B, ZB1P: pp >= 1, M >= 1. DualPipe
// (dualpipe.py): pp even and >= 2, M even and >= 2*pp. DualPipeV (dualpipev.py): pp >= 1,
// M >= 2*pp.
Schedule make_schedule(ScheduleKind k, int pp, int micro_batches);

// Every (mb, stage) has exactly one F and one backward (a full B, or a split B and one W
// after it on the same rank), each on where(stage, mb); ops name valid micro-batches and
// chunks. Throws Error ("internal error: ...") otherwise.
void validate(const Schedule& s);

// For messages: "F(3,c0)", "B(3,c1)" (full backward), "Bi(3,c0)" (input gradient only),
// "W(3,c0)", "F(3,c0)&B(7,c1)".
std::string op_label(const Op& op);

}  // namespace dsv3::pipe
