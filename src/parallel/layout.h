// The process layout of a distributed training run (report §3.2; docs/distributed.md).
//
// N = dp × pp ranks. Ranks are stage-major: stage s holds ranks [s·dp, (s+1)·dp), its
// data-parallel group; within it, consecutive runs of ep ranks form the expert-parallel
// groups (as in the report, the data-parallel ranks of a stage are also its expert-parallel
// ranks: attention replicated, routed experts sharded). Each data-parallel rank draws
// global_batch / dp of the step's sequences — the rows [dp_rank·b, (dp_rank+1)·b) of the
// global batch, in micro_batches pieces — so the run sees exactly the batches one process
// sees. With pp > 1 the ranks with the same dp_rank form a pipeline running `schedule`
// (parallel/schedule.h) over the stages (train/pipeline_exec.h).
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"

namespace dsv3 {

// The config's "parallel" object, or the same names as `dsv3 train` flags. One process: all 1.
struct ParallelConfig {
  int64_t dp = 1;             // data-parallel ranks per stage (ZeRO-1 over them)
  int64_t ep = 1;             // expert-parallel group size; divides dp
  int64_t pp = 1;             // pipeline stages
  std::string schedule = "1f1b";  // 1f1b | zb1p | dualpipe | dualpipev
  int64_t micro_batches = 1;  // per rank and step (gradient accumulation when pp = 1)
  int64_t max_nodes = 0;      // node-limited routing: a token's experts on ≤ max_nodes nodes (0: off)
  int64_t ranks_per_node = 0; // ranks per node, for max_nodes (0: every rank on one node)
  // ZeRO-1's gradient exchange runs in rounds whose receive buffer (every rank's piece of a
  // bucket of this rank's shard) holds at most this many MiB, instead of one arena's worth.
  double zero_bucket_mb = 64;
  // With expert parallelism (ep > 1): without pipeline stages and with ≥ 2 micro-batches, run
  // them two at a time, each one's expert-parallel exchanges hidden behind the other's
  // computation (costs a second micro-batch's activations); with stages, run the F and the B
  // of each F&B pair (DualPipe, DualPipeV) at once the same way (docs/distributed.md). The
  // same bits either way.
  bool overlap_micro_batches = true;
  bool dp_given = false;      // dp set by the config or a flag (else mpirun's size is the dp)
};

struct Layout {
  int world = 1, rank = 0;
  int dp = 1, ep = 1, pp = 1;
  int stage = 0;       // rank / dp
  int dp_rank = 0;     // rank % dp: place in the stage's data-parallel group
  int ep_rank = 0;     // dp_rank % ep: place in the expert-parallel group
  int micro_batches = 1;
  std::string schedule = "1f1b";  // the pipeline schedule (pp > 1)
  // Node-limited routing: a token's experts on ≤ max_nodes of the EP group's nodes of
  // ranks_per_node ranks (0: off). `nodes` lets one process route as an EP run would (tests).
  int max_nodes = 0, ranks_per_node = 0, nodes = 0;
  int64_t global_batch = 1;  // sequences per optimizer step, all ranks
  int64_t micro_batch = 1;   // sequences per micro-batch on this rank
  // The first row of this rank's share of the global batch [global_batch, T + 1].
  int64_t first_row() const { return int64_t(dp_rank) * micro_batch * micro_batches; }
  std::string describe() const;  // one line for the log
};

// Checks the layout against the world and the model; every rank runs the same check on the
// same inputs, so an inconsistent layout is refused by every rank with the same message
// before any work. Throws dsv3::Error naming the offending value.
Layout make_layout(const ParallelConfig& pc, const ModelConfig& model, int64_t batch,
                   int world_size, int world_rank);

}  // namespace dsv3
