// The weights a training run holds (docs/distributed.md, "Master weights"): the F32 master
// arena in ParamSet's layout and, for BF16 training, a BF16 copy of the same layout that the
// training GEMMs read (train/tlinear.h) instead of rounding the F32 weight on every call.
//
// BF16 training rounds every GEMM weight to BF16 (round to nearest even) before its GEMM, so
// a copy that holds exactly those roundings gives the same bits as converting on the fly.
// That is what lets ZeRO-1 shard the F32 master too: with data parallelism (TrainStep, no
// pipeline stages) a rank keeps the master of the GEMM tensors only for its own shard, the
// BF16 copy whole (all-gathered in BF16 after each step: half the bytes of F32), and the
// other tensors (norm gains, the router and its bias, the embedding: read in F32) whole.
// Per rank that is 2 bytes per parameter plus 4 per parameter of the shard, instead of 4.
//
// Memory: both arenas are anonymous mappings, committed as touched; the master's pages that
// hold only stale values are returned to the kernel and made inaccessible (release()), so a
// read of a weight this rank does not hold faults at once instead of computing with zeros.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "train/params.h"

namespace dsv3 {

class TrainWeights {
 public:
  // bf16_copy: keep the BF16 copy (BF16 training); otherwise the GEMMs read the master.
  TrainWeights(const ParamSet& ps, bool bf16_copy);
  ~TrainWeights();
  TrainWeights(const TrainWeights&) = delete;
  TrainWeights& operator=(const TrainWeights&) = delete;

  int64_t size() const { return n_; }
  // The master arena for reading. While sharded() only part of it is current (below).
  const float* data() const { return f32_; }
  // The master arena for writing all of it (initialisation, loading a checkpoint, tests):
  // the BF16 copy is rebuilt from it before the next use (sync_copy). Not while sharded().
  float* mutable_data();
  const uint16_t* bf16() const { return bf16_; }  // null without the copy

  // Sharded: only the non-GEMM tensors and the ranges of keep() are current in the master;
  // TrainStep sets it after an update and clears it when it gathers the master again.
  bool sharded() const { return sharded_; }

  // --- for TrainStep ---
  float* master() { return f32_; }  // write access without the checks of mutable_data()
  uint16_t* bf16_mut() { return bf16_; }
  // The copy from the master over [lo, hi) (whole when it is out of date); copy_current():
  // the copy matches the master wherever the master is current.
  void sync_copy(int64_t lo = 0, int64_t hi = -1);
  bool copy_current() const { return copy_current_; }
  void set_copy_current() { copy_current_ = true; }
  // Keeps [lo, hi) and the non-GEMM tensors of the master; the rest (the GEMM tensors outside
  // [lo, hi)) is released: its whole pages returned to the kernel and made inaccessible.
  void shard(int64_t lo, int64_t hi);
  // The whole master accessible again (released pages read as zero until written).
  void unshard();
  // Bytes of the master arena resident in memory (mincore).
  int64_t master_resident_bytes() const;

  // GEMM weight storage ranges [begin, end) of the arena, merged and sorted (ParamInfo::gemm).
  const std::vector<std::pair<int64_t, int64_t>>& gemm_ranges() const { return gemm_; }

 private:
  int64_t n_ = 0;
  float* f32_ = nullptr;
  uint16_t* bf16_ = nullptr;
  size_t f32_bytes_ = 0, bf16_bytes_ = 0;  // mapped sizes (whole pages)
  bool sharded_ = false, copy_current_ = false;
  std::vector<std::pair<int64_t, int64_t>> gemm_;
  std::vector<std::pair<size_t, size_t>> released_;  // byte ranges of f32_ made inaccessible
};

}  // namespace dsv3
