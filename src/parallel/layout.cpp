#include "parallel/layout.h"

#include "core/check.h"
#include "model/moe.h"
#include "parallel/comm.h"
#include "parallel/schedule.h"

namespace dsv3 {

std::string Layout::describe() const {
  return str_cat("rank ", rank, "/", world, ": dp ", dp, " ep ", ep, " pp ", pp,
                 pp > 1 ? " " + schedule : std::string(), " (stage ", stage,
                 ", dp rank ", dp_rank, ", ep rank ", ep_rank, "), ", micro_batches, " micro-batch",
                 micro_batches == 1 ? "" : "es", " of ", micro_batch, " sequences, global batch ",
                 global_batch);
}

Layout make_layout(const ParallelConfig& pc, const ModelConfig& model, int64_t batch, int world_size,
                   int world_rank) {
  const int64_t n = pc.dp * pc.pp;
  if (n != world_size) {
    DSV3_CHECK(world_size > 1 || dist::mpi_built(), "the layout dp ", pc.dp, " × pp ", pc.pp, " = ", n,
               " needs ", n, " processes, but this dsv3 was built without MPI (install libopenmpi-dev "
               "and openmpi-bin, then rebuild)");
    DSV3_FAIL("the layout dp ", pc.dp, " × pp ", pc.pp, " = ", n, " processes, but ", world_size,
              world_size == 1 ? " runs (launch with mpirun -np " : " were launched (use mpirun -np ", n,
              world_size == 1 ? ")" : ", or change parallel.dp / parallel.pp)");
  }
  DSV3_CHECK(pc.dp % pc.ep == 0, "parallel.ep = ", pc.ep, " must divide parallel.dp = ", pc.dp,
             " (the expert-parallel groups are made of a stage's data-parallel ranks)");
  if (pc.ep > 1) {
    DSV3_CHECK(model.n_routed_experts > 0, "parallel.ep = ", pc.ep, " but the model has no routed experts");
    DSV3_CHECK(model.n_routed_experts % pc.ep == 0, "parallel.ep = ", pc.ep,
               " must divide the model's n_routed_experts = ", model.n_routed_experts);
  }
  try {
    pipe::parse_schedule(pc.schedule);
  } catch (const Error& e) {
    DSV3_FAIL("parallel.schedule = '", pc.schedule, "': ", e.what());
  }
  DSV3_CHECK(pc.pp >= 1, "parallel.pp = ", pc.pp, " must be at least 1");
  if (pc.pp > 1) {
    DSV3_CHECK(!model.tie_word_embeddings, "parallel.pp = ", pc.pp, " with tie_word_embeddings: the tied "
               "embedding and head live on the first and the last stage; untie them or use pp 1");
    // The schedule's own constraints (DualPipe: pp even, micro_batches even and ≥ 2·pp; ...).
    (void)pipe::make_schedule(pipe::parse_schedule(pc.schedule), int(pc.pp), int(pc.micro_batches));
  }
  DSV3_CHECK(batch % (pc.dp * pc.micro_batches) == 0, "batch = ", batch, " must be divisible by parallel.dp × "
             "parallel.micro_batches = ", pc.dp, " × ", pc.micro_batches, " (every rank draws an equal share "
             "of each step's sequences)");
  if (pc.max_nodes > 0) {
    DSV3_CHECK(pc.ep > 1, "parallel.max_nodes = ", pc.max_nodes, " needs expert parallelism (parallel.ep > 1)");
    const int64_t rpn = pc.ranks_per_node > 0 ? pc.ranks_per_node : pc.ep;
    DSV3_CHECK(pc.ep % rpn == 0, "parallel.ranks_per_node = ", rpn, " must divide parallel.ep = ", pc.ep);
    DSV3_CHECK(pc.max_nodes <= pc.ep / rpn, "parallel.max_nodes = ", pc.max_nodes, " exceeds the ",
               pc.ep / rpn, " nodes of an expert-parallel group");
    // The routing's own conditions (K/M per node, groups nesting in nodes, ...), here so a
    // bad combination is refused before any work rather than at the first forward.
    try {
      check_node_limit(model, NodeLimit{pc.ep / rpn, pc.max_nodes});
    } catch (const Error& e) {
      DSV3_FAIL("parallel.max_nodes = ", pc.max_nodes, " with ", pc.ep / rpn, " nodes: ", e.what());
    }
  }
  Layout l;
  l.world = world_size;
  l.rank = world_rank;
  l.dp = int(pc.dp);
  l.ep = int(pc.ep);
  l.pp = int(pc.pp);
  l.stage = world_rank / l.dp;
  l.dp_rank = world_rank % l.dp;
  l.ep_rank = l.dp_rank % l.ep;
  l.micro_batches = int(pc.micro_batches);
  l.schedule = pc.schedule;
  if (pc.max_nodes > 0) {
    l.max_nodes = int(pc.max_nodes);
    l.ranks_per_node = int(pc.ranks_per_node > 0 ? pc.ranks_per_node : pc.ep);
    l.nodes = l.ep / l.ranks_per_node;
  }
  l.global_batch = batch;
  l.micro_batch = batch / (pc.dp * pc.micro_batches);
  return l;
}

}  // namespace dsv3
