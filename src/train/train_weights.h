// The weights a training run holds (docs/distributed.md, "Master weights"): the F32 master
// arena in ParamSet's layout and, where ZeRO-1 shards the master (BF16 training, data
// parallel), a BF16 copy of the same layout that the training GEMMs read (train/tlinear.h)
// instead of rounding the F32 weight at each call.
//
// BF16 training rounds every GEMM weight to BF16 (round to nearest even) before its GEMM, so
// a copy that holds exactly those roundings gives the same bits as converting on the fly.
// That is what lets ZeRO-1 shard the F32 master too: with data parallelism (TrainStep, no
// pipeline stages) a rank keeps the master of the GEMM tensors only for its own shard, the
// BF16 copy whole (all-gathered in BF16 after each step: half the bytes of F32), and the
// other tensors (norm gains, the router and its bias, the embedding: read in F32) whole.
// Per rank that is 2 bytes per parameter plus 4 per parameter of the shard, instead of 4.
//
// Memory: both arenas are anonymous mappings (core/mapped.h), committed as written; the
// master's pages that hold only weights this rank does not keep are returned to the kernel
// and made inaccessible (shard()), so a read of one faults at once instead of computing with
// stale values. With pipeline stages a rank keeps only what its stages read (TrainStep).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "core/mapped.h"
#include "train/params.h"

namespace dsv3 {

class TrainWeights {
 public:
  using Ranges = std::vector<std::pair<int64_t, int64_t>>;  // [begin, end) of the arena, sorted

  // bf16_copy: keep the BF16 copy (BF16 training); otherwise the GEMMs read the master.
  TrainWeights(const ParamSet& ps, bool bf16_copy);
  TrainWeights(const TrainWeights&) = delete;
  TrainWeights& operator=(const TrainWeights&) = delete;

  int64_t size() const { return n_; }
  // The master arena for reading. While sharded() only part of it is current (below).
  const float* data() const { return reinterpret_cast<const float*>(f32_.data()); }
  // The master arena for writing all of it (initialisation, loading a checkpoint, tests):
  // marks the BF16 copy out of date. Not while sharded().
  float* mutable_data();
  const uint16_t* bf16() const { return reinterpret_cast<const uint16_t*>(bf16_.data()); }  // null without

  // Sharded: the master holds only the non-GEMM tensors and the ranges given to shard();
  // TrainStep shards it and gathers it whole again (TrainStep::gather_params).
  bool sharded() const { return sharded_; }

  // --- for TrainStep ---
  float* master() { return reinterpret_cast<float*>(f32_.data()); }  // without mutable_data()'s checks
  uint16_t* bf16_mut() { return reinterpret_cast<uint16_t*>(bf16_.data()); }
  // copy[lo, hi) = BF16(master[lo, hi)) (hi < 0: the end).
  void sync_copy(int64_t lo = 0, int64_t hi = -1);
  // Whether the copy matches the master wherever the model reads it: cleared by
  // mutable_data(), set by TrainStep once it has synced what it reads.
  bool copy_current() const { return copy_current_; }
  void set_copy_current() { copy_current_ = true; }
  // Keeps `keep` and the non-GEMM tensors of the master; the GEMM tensors' whole pages
  // outside them are given back to the kernel and made inaccessible. No-op when sharded().
  void shard(const Ranges& keep);
  // The whole master accessible again (released pages read as zero until written).
  void unshard();
  int64_t master_resident_bytes() const { return int64_t(f32_.resident()); }

  // The GEMM tensors' storage, merged and sorted (ParamSet::gemm_ranges).
  const Ranges& gemm_ranges() const { return gemm_; }

 private:
  int64_t n_ = 0;
  MappedBytes f32_, bf16_;
  bool sharded_ = false, copy_current_ = false;
  Ranges gemm_;
  std::vector<std::pair<size_t, size_t>> released_;  // byte ranges of f32_ made inaccessible
};

}  // namespace dsv3
