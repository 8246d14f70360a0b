// Expert-parallel serving (`mpirun -np P dsv3 serve --ep P`, docs/serve.md "Expert-parallel
// serving"). Rank 0 speaks HTTP and runs the scheduler (serve/engine.h); before each batched
// forward its engine loop broadcasts the step's inputs — every BatchSeq's token ids, T, p0,
// block table and whether it wants logits — and every other rank runs the same
// Model::forward_batch over its own replica of the paged latent cache. The block ids are
// rank 0's, so the replicas hold the same rows. Inside the forward each MoE layer combines
// the ranks' experts (model/moe.h MoeLayer::ep); attention, dense layers and shared experts
// are computed on every rank.
//
// Messages, all broadcasts from rank 0: a header of 4 int64 {kind, a, b, c} — setup
// {n_blocks, n_layers, context}, step {sequences, payload int64s, batch-invariant}, place
// {n_layers, slots per layer, 0}, stop — then, for a step, the payload: per sequence {T, p0,
// logits_from, wants_logits, table length}, then per sequence its T ids and its table; for a
// place, phy2log [n_layers][slots] (dense layers' rows -1), which every rank applies before
// the next step (serve/rebalance.h).
//
// Threads: the engine loop thread is the one that calls MPI on rank 0 (MPI_THREAD_SERIALIZED,
// parallel/comm.h); on the other ranks the main thread runs ep_follow.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace dsv3::dist { class Comm; }

namespace dsv3::serve {

// Rank 0's side, called from the engine loop thread.
class EpLeader {
 public:
  explicit EpLeader(const dist::Comm& comm) : comm_(comm) {}
  // The pool every rank allocates (same blocks) and the positions to reserve.
  void setup(int64_t n_blocks, int64_t n_layers, int64_t context);
  // The inputs of one forward_batch (sequences in the order it is called with).
  void step(const BatchSeq* seqs, int n, bool invariant, int64_t block_rows);
  // A new expert placement: phy2log [layers][slots], dense layers' rows empty.
  void place(const std::vector<std::vector<int>>& phy2log, int64_t slots);
  void stop();

 private:
  const dist::Comm& comm_;
  std::vector<int64_t> payload_;
};

// Ranks ≥ 1: waits for rank 0's setup, then runs every step it sends until the stop message.
// Returns the number of steps run. While idle it polls the next header every 100 µs rather
// than spinning inside MPI (the ranks share cores with rank 0's server).
int64_t ep_follow(Model& model, const dist::Comm& comm);

// Applies phy2log rows ([layers], dense layers' rows empty) to the model of an EP rank.
void apply_placement(Model& model, const std::vector<std::vector<int>>& phy2log);

}  // namespace dsv3::serve
