#include "train/train_step.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/fiber.h"
#include "core/parallel.h"
#include "kernels/adamw.h"

namespace dsv3 {
namespace {

// ZeRO shards and the gradient norm's partial sums are made of whole blocks of the arena, so
// that both are the same sums whatever the number of ranks.
constexpr int64_t kBlock = int64_t(1) << 14;

// v[0] = the sum of v[0..n) in the canonical order: consecutive pairs, then pairs of pairs
// (((v0 + v1) + (v2 + v3)) + ...; an odd last one joins at the next level). Float addition is
// commutative, so the result does not depend on which process computes a pair.
// Over elements [b, e) of the arrays.
void tree_sum(const std::vector<float*>& v, int64_t b, int64_t e) {
  const int64_t n = e - b;
  for (size_t step = 1; step < v.size(); step *= 2)
    for (size_t i = 0; i + step < v.size(); i += 2 * step) {
      float* x = v[i] + b;
      const float* y = v[i + step] + b;
      parallel_for(n, n > (1 << 16) ? 0 : 1, [&](int64_t k) { x[k] += y[k]; });
    }
}

// Sorted ranges with the touching ones joined.
std::vector<std::pair<int64_t, int64_t>> merged(std::vector<std::pair<int64_t, int64_t>> v) {
  std::sort(v.begin(), v.end());
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& r : v) {
    if (r.second <= r.first) continue;
    if (!out.empty() && r.first <= out.back().second)
      out.back().second = std::max(out.back().second, r.second);
    else
      out.push_back(r);
  }
  return out;
}

// dst[k] = 0 over the ranges, over the threads for large ones.
void zero_ranges(float* dst, const std::vector<std::pair<int64_t, int64_t>>& ranges) {
  for (const auto& [b, e] : ranges) {
    const int64_t n = e - b, chunk = int64_t(1) << 16;
    parallel_for((n + chunk - 1) / chunk, n > 4 * chunk ? 0 : 1, [&](int64_t c) {
      const int64_t x0 = b + c * chunk, x1 = std::min(e, x0 + chunk);
      std::memset(dst + x0, 0, size_t(x1 - x0) * sizeof(float));
    });
  }
}

}  // namespace

TrainStep::TrainStep(const TrainConfig& cfg, const ParamSet& ps, const Layout& lay, const dist::Comm& dp,
                     const dist::Comm& ep, int threads, const dist::Comm* pipeline)
    : cfg_(cfg), ps_(ps), lay_(lay), dp_(dp), pipe_(pipeline) {
  // With pipeline stages every rank holds the whole arena but computes only its stages'
  // gradients (zeros elsewhere): ZeRO-1 runs over all dp × pp ranks, and adding the exact
  // zeros of the other stages changes no bit (docs/distributed.md).
  Z_ = lay.pp > 1 ? lay.dp * lay.pp : lay.dp;
  zr_ = lay.pp > 1 ? lay.stage * lay.dp + lay.dp_rank : lay.dp_rank;
  DSV3_ASSERT(dp.size() == Z_ && dp.rank() == zr_);
  DSV3_ASSERT(lay.pp == 1 || (pipeline != nullptr && pipeline->size() == lay.pp && pipeline->rank() == lay.stage));
  const int64_t n = ps.numel(), blocks = (n + kBlock - 1) / kBlock;
  shard_.resize(size_t(Z_));
  for (int q = 0; q < Z_; ++q) {
    int64_t b, e;
    split_range(blocks, Z_, q, &b, &e);
    shard_[size_t(q)] = std::min(e * kBlock, n) - std::min(b * kBlock, n);
    if (q == zr_) {
      lo_ = std::min(b * kBlock, n);
      hi_ = std::min(e * kBlock, n);
      block_lo_ = b;
      block_hi_ = e;
    }
  }
  for (int q = 0; q < Z_; ++q) {
    int64_t b, e;
    split_range(blocks, Z_, q, &b, &e);
    shard_blocks_.push_back(e - b);
  }
  std::vector<int64_t> shard_lo(size_t(Z_ + 1), 0);  // shard q: [shard_lo[q], shard_lo[q + 1])
  for (int q = 0; q < Z_; ++q) shard_lo[size_t(q + 1)] = shard_lo[size_t(q)] + shard_[size_t(q)];
  // The trainable storage (not the MTP aliases, not the router bias), merged into ranges.
  for (const TrainableRange& r : ps.trainable_ranges()) {
    if (!trainable_.empty() && trainable_.back().second == r.begin)
      trainable_.back().second = r.end;
    else
      trainable_.push_back({r.begin, r.end});
  }
  std::sort(trainable_.begin(), trainable_.end());
  // The master weights sharded with the moments (train/train_weights.h): the tensors read in
  // F32 (not GEMM weights) are exchanged in F32, per rank its pieces of them.
  sharded_master_ = cfg.precision == Precision::BF16 && lay.pp == 1 && Z_ > 1;
  if (sharded_master_) {
    std::vector<std::pair<int64_t, int64_t>> rest;  // the complement of the GEMM tensors in [0, n)
    int64_t at = 0;
    for (const auto& [b, e] : ps.gemm_ranges()) {
      if (b > at) rest.push_back({at, b});
      at = std::max(at, e);
    }
    if (at < n) rest.push_back({at, n});
    rest_.resize(size_t(Z_));
    rest_counts_.assign(size_t(Z_), 0);
    for (int q = 0; q < Z_; ++q) {
      const int64_t lo = shard_lo[size_t(q)], hi = shard_lo[size_t(q + 1)];
      for (const auto& [rb, re] : rest) {
        const int64_t x0 = std::max(lo, rb), x1 = std::min(hi, re);
        if (x0 < x1) {
          rest_[size_t(q)].push_back({x0, x1});
          rest_counts_[size_t(q)] += x1 - x0;
        }
      }
    }
    int64_t total = 0;
    for (int64_t c : rest_counts_) total += c;
    rest_buf_.resize(size_t(total));
  }
  adam_ = std::make_unique<AdamW>(ps, cfg.adam, lo_, hi_);
  TrainModelOptions mo;
  mo.batch = lay.micro_batch;
  mo.global_batch = lay.global_batch;
  mo.seq_len = cfg.seq_len;
  mo.precision = cfg.precision;
  mo.mtp = cfg.mtp;
  mo.balance_alpha = cfg.balance_alpha;
  mo.threads = threads;
  if (lay.ep > 1 || lay.max_nodes > 0) {
    DSV3_ASSERT(ep.size() == lay.ep);
    mo.ep.ep = lay.ep > 1 ? &ep : nullptr;
    mo.ep.max_nodes = lay.max_nodes;
    mo.ep.ranks_per_node = lay.ranks_per_node;
    mo.ep.nodes = lay.ep > 1 ? 0 : lay.nodes;
  }
  model_ = std::make_unique<TrainModel>(ps, mo);
  // Two computations at once, each yielding at its EP exchanges (train_step.h, docs/distributed.md).
  const bool overlap = lay.ep > 1 && cfg.parallel.overlap_micro_batches && moe_ep_overlap();
  overlap_pairs_ = overlap && lay.pp == 1 && lay.micro_batches >= 2;
  if (lay.pp > 1) {
    sched_ = std::make_unique<pipe::Schedule>(
        pipe::make_schedule(pipe::parse_schedule(lay.schedule), lay.pp, lay.micro_batches));
    exec_ = std::make_unique<PipelineExec>(*model_, *sched_, *pipeline, cfg.model.num_hidden_layers, overlap);
  }
  {
    const ModelWeights w = ps.bind(nullptr);
    for (size_t l = 0; l < w.layers.size(); ++l)
      if (w.layers[l].is_moe) moe_layers_.push_back(int64_t(l));
    if (cfg.mtp && ps.with_mtp())
      for (size_t k = 0; k < w.mtp.size(); ++k)
        if (w.mtp[k].block.is_moe) moe_layers_.push_back(int64_t(w.layers.size() + k));
  }
  // Which ranks' pieces of which shards can be non-zero: every one without pipeline stages;
  // with them, a tensor's gradient comes only from the pipeline ranks holding its stage (the
  // embedding: stage 0, a main layer: its stage, the rest: the last), all their dp ranks.
  piece_.assign(size_t(Z_) * size_t(Z_), lay.pp > 1 ? 0 : 1);
  need_ = piece_;
  if (lay.pp > 1) {
    const int64_t Lm = cfg.model.num_hidden_layers;
    const int ns = sched_->n_stages;
    for (const ParamInfo& p : ps.infos()) {
      if (p.alias) continue;
      int st = ns - 1;
      const std::string& nm = p.spec.name;
      if (nm.rfind("model.embed_tokens.", 0) == 0) {
        st = 0;
      } else if (nm.rfind("model.layers.", 0) == 0) {
        const int64_t l = std::stoll(nm.substr(13));
        for (int s = 0; s < ns && l < Lm; ++s) {
          const StageSpan sp = stage_span(Lm, ns, s);
          if (l >= sp.l0 && l < sp.l1) st = s;
        }
      }
      // The MTP modules on the last stage read the embedding too (its gradient rows go to
      // stage 0, so only stage 0's pieces carry it).
      const bool mtp_reads = st == 0 && cfg.mtp && ps.with_mtp() && cfg.model.num_nextn_predict_layers > 0;
      const int64_t b = p.offset, e = p.offset + p.spec.numel();
      for (int c = 0; c < sched_->chunks; ++c)
        if (sched_->chunk_stage(lay.stage, c) == st) mine_.push_back({b, e});
      for (int r = 0; r < lay.pp; ++r)
        for (int c = 0; c < sched_->chunks; ++c) {
          const int cs = sched_->chunk_stage(r, c);
          if (cs != st && !(mtp_reads && cs == ns - 1)) continue;
          for (int d = 0; d < lay.dp; ++d)
            for (int o = 0; o < Z_; ++o)
              if (b < shard_lo[size_t(o + 1)] && shard_lo[size_t(o)] < e) {
                need_[size_t((r * lay.dp + d) * Z_ + o)] = 1;
                if (cs == st) piece_[size_t((r * lay.dp + d) * Z_ + o)] = 1;
              }
        }
    }
  }
  // What this rank's arenas hold (train_step.h): the gradients it writes, the master weights
  // it keeps.
  if (lay.pp == 1) {
    mine_ = {{0, n}};
    if (sharded_master_) keep_ = {{lo_, hi_}};
  } else {
    mine_ = merged(mine_);
    for (int o = 0; o < Z_; ++o)
      if (o == zr_ || need_[size_t(zr_) * size_t(Z_) + size_t(o)])
        keep_.push_back({shard_lo[size_t(o)], shard_lo[size_t(o + 1)]});
    keep_ = merged(keep_);
  }
  zero0_ = merged([&] {
    auto v = mine_;
    v.push_back({lo_, hi_});
    return v;
  }());
  // The gradient arenas are allocated by the first compute(), after a sharded master has
  // given back its pages (so the two do not add up in the peak).
  if (Z_ > 1) {
    // Rounds of ≤ zero_bucket_mb of pieces received; every rank runs as many rounds as the
    // largest shard needs.
    const double floats = cfg.parallel.zero_bucket_mb * double(1 << 20) / 4.0 / double(Z_);
    const int64_t largest = *std::max_element(shard_.begin(), shard_.end());
    bucket_ = std::max<int64_t>(1, std::min<int64_t>(largest, int64_t(floats)));
    rounds_ = (largest + bucket_ - 1) / bucket_;
    pieces_.resize(size_t(Z_ * bucket_));
  }
}

TrainStep::~TrainStep() = default;

// Σ g² over the trainable elements of blocks [b0, b1), one double per block, each summed in
// element order (the same partials whatever the threads or the shard).
void TrainStep::block_sumsq(int64_t b0, int64_t b1, double* out) const {
  const int64_t n = ps_.numel();
  const float* g = grads_.data();
  parallel_for_dynamic((b1 - b0 + 3) / 4, 0, [&](int64_t q) {
    for (int64_t b = b0 + 4 * q; b < std::min(b1, b0 + 4 * q + 4); ++b) {
      const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
      double s = 0;
      for (const auto& [r0, r1] : trainable_) {
        const int64_t x0 = std::max(lo, r0), x1 = std::min(hi, r1);
        if (x0 < x1) s += sum_squares(g + x0, x1 - x0);
      }
      out[b - b0] = s;
    }
  });
}

// The model reads w: its master arena, and the BF16 copy (made current) where w keeps one.
// A sharded master is sharded from the first step on: the copy made, the rest released.
void TrainStep::use_weights(TrainWeights& w) {
  DSV3_ASSERT(w.size() == ps_.numel());
  if (w.bf16() != nullptr && !w.copy_current()) {
    DSV3_ASSERT(!w.sharded());
    sync_copy(w);
    w.set_copy_current();
  }
  if (shards_weights(w)) w.shard(keep_);
  model_->set_weight_copy(w.data(), w.bf16());
}

// The BF16 copy of what the model reads: all of it, or with pipeline stages what the rank keeps.
void TrainStep::sync_copy(TrainWeights& w) const {
  if (lay_.pp == 1) return w.sync_copy();
  for (const auto& [b, e] : keep_) w.sync_copy(b, e);
}

bool TrainStep::shards_master(const TrainWeights& w) const { return sharded_master_ && w.bf16() != nullptr; }

bool TrainStep::shards_weights(const TrainWeights& w) const { return lay_.pp > 1 || shards_master(w); }

StepLosses TrainStep::evaluate(const int32_t* batch, TrainWeights& w) {
  use_weights(w);
  const float* params = w.data();
  const int64_t row = cfg_.seq_len + 1;
  const int64_t D = cfg_.mtp ? cfg_.model.num_nextn_predict_layers : 0;
  const int m = lay_.micro_batches, U = lay_.dp * m, per = 1 + int(D);
  std::vector<double> unit_losses(size_t(U * per), 0.0);
  const int32_t* rows = batch + lay_.first_row() * row;
  auto record = [&](int j, const StepLosses& L) {
    double* ul = unit_losses.data() + size_t((lay_.dp_rank * m + j) * per);
    ul[0] = L.main;
    for (int64_t k = 0; k < int64_t(L.mtp.size()) && k < D; ++k) ul[1 + k] = L.mtp[size_t(k)];
  };
  if (lay_.pp == 1) {
    for (int j = 0; j < m; ++j) record(j, model_->step(rows + int64_t(j) * lay_.micro_batch * row, params, nullptr));
    if (lay_.dp > 1) {
      std::vector<int64_t> counts(size_t(lay_.dp), int64_t(m * per));
      dp_.allgather(unit_losses.data(), counts);
    }
  } else {
    // The last stage's rank of each pipeline fills its units; summed over the job (one
    // non-zero per entry: exact).
    std::vector<std::vector<std::pair<int, StepLosses>>> per_stage;
    exec_->evaluate(rows, params, per_stage);
    for (int j = 0; j < m; ++j)
      for (const auto& [stage, L] : per_stage[size_t(j)])
        if (stage == sched_->n_stages - 1) record(j, L);
    dp_.allreduce_sum(unit_losses.data(), int64_t(unit_losses.size()));
  }
  StepLosses L;
  L.mtp.assign(size_t(D), 0.0);
  for (int u = 0; u < U; ++u) {
    const double* ul = unit_losses.data() + size_t(u * per);
    L.main += ul[0];
    for (int64_t k = 0; k < D; ++k) L.mtp[size_t(k)] += ul[1 + k];
  }
  L.main /= double(U);
  for (double& v : L.mtp) v /= double(U);
  L.total = L.main;
  return L;
}

StepResult TrainStep::compute(const int32_t* batch, TrainWeights& w, int64_t step) {
  use_weights(w);
  const float* params = w.data();
  const int64_t row = cfg_.seq_len + 1, n = ps_.numel();
  const int64_t D = cfg_.mtp ? cfg_.model.num_nextn_predict_layers : 0;
  const int m = lay_.micro_batches, U = lay_.dp * m;
  const int64_t nB = int64_t(moe_layers_.size()), E = cfg_.model.n_routed_experts;
  model_->set_mtp_lambda(cfg_.mtp_lambda_at(step));
  if (grads_.empty()) {
    grads_ = MappedArray<float>(n, "gradient");
    units_.clear();
    for (int j = 1; j < m; ++j) units_.emplace_back(n, "gradient of a micro-batch");
  }
  // Each micro-batch's gradient from zero, then their canonical sum (one: the arena itself).
  // Only what this rank writes is zeroed (the rest is never written: zero pages, no memory);
  // the shard of arena 0 too, which the exchange below overwrites.
  std::vector<float*> local;
  for (int j = 0; j < m; ++j) {
    float* g = j == 0 ? grads_.data() : units_[size_t(j - 1)].data();
    zero_ranges(g, j == 0 ? zero0_ : mine_);
    local.push_back(g);
  }
  // Per unit: the main loss, each MoE layer's balance term, the MTP losses; per MoE layer the
  // loads [nB, E]. Each rank fills what it computed (zeros elsewhere: other ranks' units, other
  // stages' layers), and one all-reduce over the job assembles them exactly (below).
  const int per = 1 + int(nB) + int(D);
  std::vector<double> red(size_t(U * per + nB * E), 0.0);
  double* unit_losses = red.data();        // [U, per]
  double* load = red.data() + U * per;     // [nB, E] integers, exact in doubles below 2^53
  StepResult r;
  auto record = [&](int j, bool last, const StepLosses& L) {
    double* ul = unit_losses + size_t((lay_.dp_rank * m + j) * per);
    if (last) {  // the last stage (or the whole model)
      ul[0] = L.main;
      for (int64_t k = 0; k < int64_t(L.mtp.size()); ++k) ul[1 + nB + k] = L.mtp[size_t(k)];
    }
    for (size_t i = 0; i < L.load.size(); ++i) {
      const int64_t b = std::lower_bound(moe_layers_.begin(), moe_layers_.end(), L.moe_layer[i]) -
                        moe_layers_.begin();
      DSV3_ASSERT(b < nB && moe_layers_[size_t(b)] == L.moe_layer[i]);
      ul[1 + b] = L.balance_layer[i];
      for (int64_t e = 0; e < E; ++e) load[b * E + e] += double(L.load[i][size_t(e)]);
    }
    r.comm_bytes_predicted += L.ep_bytes;
  };
  const int32_t* rows = batch + lay_.first_row() * row;
  auto rows_of = [&](int j) { return rows + int64_t(j) * lay_.micro_batch * row; };
  if (lay_.pp == 1 && overlap_pairs_) {
    // Two at a time (slots 0 and 1), interleaved at the EP exchanges; an odd last one alone.
    for (int j = 0; j < m; j += 2) {
      if (j + 1 == m) {
        record(j, true, model_->step(rows_of(j), params, local[size_t(j)]));
        break;
      }
      StepLosses a, b;
      run_fibers({[&] { a = model_->step(rows_of(j), params, local[size_t(j)]); },
                  [&] { b = model_->step(rows_of(j + 1), params, local[size_t(j + 1)], 1); }});
      record(j, true, a);
      record(j + 1, true, b);
    }
  } else if (lay_.pp == 1) {
    for (int j = 0; j < m; ++j) record(j, true, model_->step(rows_of(j), params, local[size_t(j)]));
  } else {
    std::vector<std::vector<std::pair<int, StepLosses>>> per_stage;
    r.comm_bytes_predicted += exec_->run(rows, params, local, per_stage);
    for (int j = 0; j < m; ++j)
      for (const auto& [stage, L] : per_stage[size_t(j)]) record(j, stage == sched_->n_stages - 1, L);
  }
  // The unit losses and the loads of every rank, summed over the job in one non-blocking
  // all-reduce that runs while the micro-batches' gradients are added and exchanged. Exact: a
  // unit's entries are non-zero on the one rank that computed them (x + 0 = x), and the loads
  // are integers.
  dist::Request red_req;
  if (Z_ > 1) red_req = dp_.iallreduce_sum(red.data(), int64_t(red.size()));  // pp > 1: the whole job
  for (const auto& [b, e] : mine_) tree_sum(local, b, e);
  // ZeRO-1: rank q receives every rank's piece of shard q and sums them — the canonical tree
  // continued across ranks (an MPI reduce-scatter would add in its own order). With pipeline
  // stages the pieces of one data-parallel rank's stages are added first (one is non-zero, or
  // DualPipe's two copies: direction 0's micro-batches, the first half, then direction 1's),
  // then the data-parallel ranks in the tree.
  // In rounds of bucket_ elements per shard (the receive buffer is Z × bucket_, not an arena):
  // each element's additions are the same, in the same order, whatever the bucket.
  int64_t pieces_sent = 0;
  if (Z_ > 1) {
    const int P = Z_;
    const int64_t S = hi_ - lo_, B = bucket_;
    auto nonzero = [&](int q, int o) { return piece_[size_t(q) * size_t(P) + size_t(o)] != 0; };
    std::vector<int64_t> sc(static_cast<size_t>(P)), sd(sc), rc(sc), rd(sc);
    std::vector<float*> v;
    for (int64_t round = 0, c0 = 0; round < rounds_; ++round, c0 += B) {
      int64_t off = 0;
      for (int q = 0; q < P; ++q) {  // in floats (MPI's int counts: elements, not bytes)
        const int64_t sq = shard_[size_t(q)];
        sc[size_t(q)] = nonzero(zr_, q) ? std::clamp<int64_t>(sq - c0, 0, B) : 0;
        if (q != zr_) pieces_sent += sc[size_t(q)] * 4;
        sd[size_t(q)] = off + std::min(c0, sq);
        off += sq;
        rc[size_t(q)] = nonzero(q, zr_) ? std::clamp<int64_t>(S - c0, 0, B) : 0;
        rd[size_t(q)] = int64_t(q) * B;
      }
      dp_.ialltoallv(grads_.data(), sc, sd, pieces_.data(), rc, rd, sizeof(float)).wait();
      const int64_t len = std::clamp<int64_t>(S - c0, 0, B);
      if (len == 0) continue;
      v.clear();
      for (int d = 0; d < lay_.dp; ++d) {
        float* a = nullptr;  // the first non-zero piece of data-parallel rank d's stages
        for (int st = 0; st < lay_.pp; ++st) {
          const int q = st * lay_.dp + d;
          if (!nonzero(q, zr_)) continue;
          float* b = pieces_.data() + int64_t(q) * B;
          if (a == nullptr) {
            a = b;
            continue;
          }
          for (int64_t k = 0; k < len; ++k) a[k] += b[k];
        }
        DSV3_ASSERT(a != nullptr);
        v.push_back(a);
      }
      tree_sum(v, 0, len);
      std::memcpy(grads_.data() + lo_ + c0, v[0], size_t(len) * sizeof(float));
    }
  }
  // The step's losses: the units' means summed in unit order, over the global batch.
  red_req.wait();
  {
    StepLosses& L = r.losses;
    std::vector<double> sum(size_t(1 + 1 + D), 0.0);  // main, balance, MTP
    for (int u = 0; u < U; ++u) {
      const double* ul = unit_losses + size_t(u * per);
      double bal = 0;  // the layers' terms in forward order, as TrainModel adds them
      for (int64_t b = 0; b < nB; ++b) bal += ul[1 + b];
      sum[0] += ul[0];
      sum[1] += bal;
      for (int64_t k = 0; k < D; ++k) sum[size_t(2 + k)] += ul[1 + nB + k];
    }
    L.main = sum[0] / double(U);
    L.balance = sum[1] / double(U);
    L.total = L.main + L.balance;
    L.mtp.assign(size_t(D), 0.0);
    const double lam = D > 0 ? cfg_.mtp_lambda_at(step) / double(D) : 0.0;
    for (int64_t k = 0; k < D; ++k) {
      L.mtp[size_t(k)] = sum[size_t(2 + k)] / double(U);
      L.total += lam * L.mtp[size_t(k)];
    }
    L.load.assign(size_t(nB), std::vector<int64_t>(size_t(E)));
    L.moe_layer = moe_layers_;
    for (int64_t b = 0; b < nB; ++b)
      for (int64_t e = 0; e < E; ++e) L.load[size_t(b)][size_t(e)] = int64_t(load[b * E + e]);
  }
  // ‖g‖: per-block partial sums, gathered, added in block order.
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(blocks));
  int64_t first = 0;
  for (int q = 0; q < zr_; ++q) first += shard_blocks_[size_t(q)];
  block_sumsq(block_lo_, block_hi_, part.data() + first);
  if (Z_ > 1) dp_.allgather(part.data(), shard_blocks_);
  double sumsq = 0;
  for (double x : part) sumsq += x;
  r.grad_norm = std::sqrt(sumsq);
  if (Z_ > 1) {
    // ZeRO-1: the other ranks' pieces of my gradient out, my shard of the weights to each
    // other rank (apply()), and the step's small vectors: unit losses, loads, norm blocks.
    const int64_t others = Z_ - 1;
    r.comm_bytes_predicted += pieces_sent + weight_bytes(w) + int64_t(red.size()) * 8 +
                              shard_blocks_[size_t(zr_)] * 8 * others;
  }
  r.finite = std::isfinite(r.losses.total) && std::isfinite(r.grad_norm);
  return r;
}

std::vector<double> TrainStep::apply(TrainWeights& w, const StepResult& r, int64_t step) {
  DSV3_ASSERT(w.size() == ps_.numel());
  float* params = w.master();
  // Clipping inside the update: no pass of its own over the gradient. With a sharded master
  // the update also writes the shard's BF16 copy (every GEMM tensor is trainable): no pass to
  // round it either.
  const bool sharded = shards_master(w);
  adam_->step(params, grads_.data(), cfg_.lr.at(step), clip_factor(r.grad_norm, cfg_.grad_clip),
              sharded ? w.bf16_mut() : nullptr);
  if (sharded) {
    // My shard's BF16 copy to every rank (the GEMMs read that), the F32 tensors' pieces in
    // F32; the other ranks' GEMM masters are not kept here (w was sharded by compute()).
    dp_.allgather(w.bf16_mut(), shard_);
    gather_sharded(w);
  } else {
    if (Z_ > 1 && lay_.pp == 1) dp_.allgather(params, shard_);
    if (lay_.pp > 1) send_weights(params);
    sync_copy(w);
  }
  // Aux-loss-free balancing (report §2.1.2): b_i += γ·sign(mean_load − load_i), from the
  // loads of the whole global batch (every rank applies the same update).
  return update_router_bias(ps_.bind(params), cfg_.model, r.losses, cfg_.gamma_at(step));
}

// The non-GEMM tensors' pieces of every shard, in F32, into every rank's master.
void TrainStep::gather_sharded(TrainWeights& w) {
  float* p = w.master();
  float* buf = rest_buf_.data();
  std::vector<int64_t> at(size_t(Z_) + 1, 0);
  for (int q = 0; q < Z_; ++q) at[size_t(q + 1)] = at[size_t(q)] + rest_counts_[size_t(q)];
  float* mine = buf + at[size_t(zr_)];
  for (const auto& [b, e] : rest_[size_t(zr_)]) {
    std::memcpy(mine, p + b, size_t(e - b) * sizeof(float));
    mine += e - b;
  }
  dp_.allgather(buf, rest_counts_);
  for (int q = 0; q < Z_; ++q) {
    if (q == zr_) continue;
    const float* src = buf + at[size_t(q)];
    for (const auto& [b, e] : rest_[size_t(q)]) {
      std::memcpy(p + b, src, size_t(e - b) * sizeof(float));
      src += e - b;
    }
  }
}

// With pipeline stages a rank needs the weights of its own stages only: the owner of shard o
// sends it to the ranks whose stages read it (need_: the gradient pieces' pairs, and the
// embedding for the last stage's MTP modules).
// The other tensors of a rank's arena go stale until gather_params().
void TrainStep::send_weights(float* params) {
  const int P = Z_;
  const int64_t S = hi_ - lo_;
  std::vector<int64_t> sc(size_t(P), 0), sd(size_t(P), 0), rc(size_t(P), 0), rd(size_t(P), 0);
  int64_t off = 0;
  for (int q = 0; q < P; ++q) {  // in floats
    if (q != zr_ && need_[size_t(q) * size_t(P) + size_t(zr_)]) sc[size_t(q)] = S;
    if (q != zr_ && need_[size_t(zr_) * size_t(P) + size_t(q)]) rc[size_t(q)] = shard_[size_t(q)];
    rd[size_t(q)] = off;
    off += shard_[size_t(q)];
  }
  // The send buffer apart from the receive buffer (MPI forbids them to overlap).
  shard_out_.assign(params + lo_, params + hi_);
  dp_.ialltoallv(shard_out_.data(), sc, sd, params, rc, rd, sizeof(float)).wait();
}

int64_t TrainStep::weight_bytes(const TrainWeights& w) const {
  if (Z_ == 1) return 0;
  if (shards_master(w))  // BF16 of the shard, F32 of its non-GEMM pieces
    return ((hi_ - lo_) * 2 + rest_counts_[size_t(zr_)] * 4) * (Z_ - 1);
  if (lay_.pp == 1) return (hi_ - lo_) * 4 * (Z_ - 1);
  int64_t b = 0;
  for (int q = 0; q < Z_; ++q)
    if (q != zr_ && need_[size_t(q) * size_t(Z_) + size_t(zr_)]) b += (hi_ - lo_) * 4;
  return b;
}

void TrainStep::gather_params(TrainWeights& w, bool lead_only) const {
  // Decided by the layout, the same on every rank (a rank's own sharded() state is not: after
  // a lead-only gather rank 0 holds the whole arena and the others do not).
  if (Z_ == 1 || !shards_weights(w)) return;
  if (lead_only) {
    // The shards to rank 0 of the group (the checkpoint writer); the others stay as they are.
    if (zr_ == 0) w.unshard();
    dp_.gather(w.master() + lo_, zr_ == 0 ? w.master() : nullptr, shard_, 0);
  } else {
    w.unshard();
    dp_.allgather(w.master(), shard_);
  }
}

}  // namespace dsv3
