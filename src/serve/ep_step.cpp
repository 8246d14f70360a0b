#include "serve/ep_step.h"

#include <chrono>
#include <memory>
#include <cstdio>
#include <thread>

#include "core/check.h"
#include "parallel/comm.h"
#include "serve/kv_pool.h"
#include "serve/rebalance.h"

namespace dsv3::serve {
namespace {

enum Kind : int64_t { kStop = 0, kSetup = 1, kStep = 2, kPlace = 3 };
constexpr int kPerSeq = 5;  // T, p0, logits_from, wants_logits, table length

}  // namespace

void EpLeader::setup(int64_t n_blocks, int64_t n_layers, int64_t context) {
  int64_t h[4] = {kSetup, n_blocks, n_layers, context};
  comm_.bcast(h, 4, 0);
}

void EpLeader::step(const BatchSeq* seqs, int n, bool invariant, int64_t block_rows) {
  payload_.clear();
  for (int i = 0; i < n; ++i) {
    const BatchSeq& q = seqs[i];
    const int64_t blocks = (q.p0 + q.T + block_rows - 1) / block_rows;  // the table forward reads
    payload_.insert(payload_.end(), {q.T, q.p0, q.logits_from, q.logits != nullptr ? 1 : 0, blocks});
  }
  for (int i = 0; i < n; ++i) {
    const BatchSeq& q = seqs[i];
    payload_.insert(payload_.end(), q.ids, q.ids + q.T);
    const int64_t blocks = payload_[size_t(i * kPerSeq + 4)];
    payload_.insert(payload_.end(), q.table, q.table + blocks);
  }
  int64_t h[4] = {kStep, n, int64_t(payload_.size()), invariant ? 1 : 0};
  comm_.bcast(h, 4, 0);
  comm_.bcast(payload_.data(), int64_t(payload_.size()), 0);
}

void EpLeader::place(const std::vector<std::vector<int>>& phy2log, int64_t slots) {
  payload_.assign(phy2log.size() * size_t(slots), -1);
  for (size_t l = 0; l < phy2log.size(); ++l)
    for (size_t s = 0; s < phy2log[l].size(); ++s) payload_[l * size_t(slots) + s] = phy2log[l][s];
  int64_t h[4] = {kPlace, int64_t(phy2log.size()), slots, 0};
  comm_.bcast(h, 4, 0);
  comm_.bcast(payload_.data(), int64_t(payload_.size()), 0);
}

void apply_placement(Model& model, const std::vector<std::vector<int>>& phy2log) {
  DSV3_ASSERT(model.ep() != nullptr);
  model.set_expert_placement(placements_from(model.config(), phy2log, model.ep()->size()));
}

void EpLeader::stop() {
  int64_t h[4] = {kStop, 0, 0, 0};
  comm_.bcast(h, 4, 0);
}

int64_t ep_follow(Model& model, const dist::Comm& comm) {
  DSV3_ASSERT(comm.rank() != 0);
  const ModelConfig& c = model.config();
  std::unique_ptr<KvPool> pool;
  ForwardScratch scratch;
  std::vector<int64_t> payload;
  std::vector<int32_t> ids, tables;
  std::vector<BatchSeq> batch;
  int64_t steps = 0;
  while (true) {
    int64_t h[4] = {};
    dist::Request r = comm.ibcast(h, 4, 0);
    while (!r.test()) std::this_thread::sleep_for(std::chrono::microseconds(100));
    if (h[0] == kStop) return steps;
    if (h[0] == kSetup) {
      model.reserve_positions(h[3]);
      pool = std::make_unique<KvPool>(h[1], kBlockRows, h[2], mla_cache_row(c), model.kv_cache_dtype());
      continue;
    }
    if (h[0] == kPlace) {
      payload.resize(size_t(h[1] * h[2]));
      comm.bcast(payload.data(), h[1] * h[2], 0);
      std::vector<std::vector<int>> phy2log(static_cast<size_t>(h[1]));
      for (int64_t l = 0; l < h[1]; ++l)
        if (payload[size_t(l * h[2])] >= 0)
          for (int64_t s = 0; s < h[2]; ++s) phy2log[size_t(l)].push_back(int(payload[size_t(l * h[2] + s)]));
      apply_placement(model, phy2log);
      continue;
    }
    DSV3_CHECK(h[0] == kStep && pool, "expert-parallel serving: unexpected message ", h[0],
               " from rank 0");
    const int n = int(h[1]);
    payload.resize(size_t(h[2]));
    comm.bcast(payload.data(), h[2], 0);
    // Ids and tables as int32 (BatchSeq's form), each sequence's run at its offset.
    int64_t n_ids = 0, n_tab = 0;
    for (int i = 0; i < n; ++i) {
      n_ids += payload[size_t(i * kPerSeq)];
      n_tab += payload[size_t(i * kPerSeq + 4)];
    }
    ids.resize(size_t(n_ids));
    tables.resize(size_t(n_tab));
    batch.assign(size_t(n), BatchSeq{});
    size_t at = size_t(n * kPerSeq);
    int64_t io = 0, to = 0;
    for (int i = 0; i < n; ++i) {
      const int64_t* f = &payload[size_t(i * kPerSeq)];
      BatchSeq& q = batch[size_t(i)];
      q.T = f[0];
      q.p0 = f[1];
      // No logits here: the head is rank 0's alone (it holds no MoE, so no collective).
      q.ids = ids.data() + io;
      q.table = tables.data() + to;
      for (int64_t j = 0; j < f[0]; ++j) ids[size_t(io++)] = int32_t(payload[at++]);
      for (int64_t j = 0; j < f[4]; ++j) tables[size_t(to++)] = int32_t(payload[at++]);
    }
    model.forward_batch(pool->view(), batch.data(), n, h[3] != 0, scratch);
    ++steps;
  }
}

}  // namespace dsv3::serve
