#include "train/train_step.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/parallel.h"

namespace dsv3 {
namespace {

// ZeRO shards and the gradient norm's partial sums are made of whole blocks of the arena, so
// that both are the same sums whatever the number of ranks.
constexpr int64_t kBlock = int64_t(1) << 14;

// v[0] = the sum of v[0..n) in the canonical order: consecutive pairs, then pairs of pairs
// (((v0 + v1) + (v2 + v3)) + ...; an odd last one joins at the next level). Float addition is
// commutative, so the result does not depend on which process computes a pair.
void tree_sum(const std::vector<float*>& v, int64_t n) {
  for (size_t step = 1; step < v.size(); step *= 2)
    for (size_t i = 0; i + step < v.size(); i += 2 * step) {
      float* a = v[i];
      const float* b = v[i + step];
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (int64_t k = 0; k < n; ++k) a[k] += b[k];
    }
}

}  // namespace

TrainStep::TrainStep(const TrainConfig& cfg, const ParamSet& ps, const Layout& lay, const dist::Comm& dp,
                     const dist::Comm& ep, int threads)
    : cfg_(cfg), ps_(ps), lay_(lay), dp_(dp) {
  DSV3_ASSERT(dp.size() == lay.dp);
  const int64_t n = ps.numel(), blocks = (n + kBlock - 1) / kBlock;
  for (int q = 0; q < lay.dp; ++q) {
    int64_t b, e;
    split_range(blocks, lay.dp, q, &b, &e);
    shard_.push_back(std::min(e * kBlock, n) - std::min(b * kBlock, n));
    shard_blocks_.push_back(e - b);
    if (q == lay.dp_rank) {
      lo_ = std::min(b * kBlock, n);
      hi_ = std::min(e * kBlock, n);
      block_lo_ = b;
      block_hi_ = e;
    }
  }
  // The trainable storage (not the MTP aliases, not the router bias), merged into ranges.
  for (const ParamInfo& p : ps.infos()) {
    if (p.alias || !p.trainable) continue;
    if (!trainable_.empty() && trainable_.back().second == p.offset)
      trainable_.back().second += p.spec.numel();
    else
      trainable_.push_back({p.offset, p.offset + p.spec.numel()});
  }
  std::sort(trainable_.begin(), trainable_.end());
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
  grads_.resize(size_t(n));
  units_.resize(size_t(lay.micro_batches - 1));
  for (auto& u : units_) u.resize(size_t(n));
  if (lay.dp > 1) pieces_.resize(size_t(lay.dp * (hi_ - lo_)));
}

TrainStep::~TrainStep() = default;

// Σ g² over the trainable elements of blocks [b0, b1), one double per block, each summed in
// element order (the same partials whatever the threads or the shard).
void TrainStep::block_sumsq(int64_t b0, int64_t b1, double* out) const {
  const int64_t n = ps_.numel();
  const float* g = grads_.data();
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
    double s = 0;
    for (const auto& [r0, r1] : trainable_) {
      const int64_t x0 = std::max(lo, r0), x1 = std::min(hi, r1);
      for (int64_t i = x0; i < x1; ++i) s += double(g[i]) * double(g[i]);
    }
    out[b - b0] = s;
  }
}

StepResult TrainStep::compute(const int32_t* batch, const float* params, int64_t step) {
  const int64_t row = cfg_.seq_len + 1, n = ps_.numel();
  const int64_t D = cfg_.mtp ? cfg_.model.num_nextn_predict_layers : 0;
  const int m = lay_.micro_batches, U = lay_.dp * m;
  model_->set_mtp_lambda(cfg_.mtp_lambda_at(step));
  // Each micro-batch's gradient from zero, then their canonical sum (one: the arena itself).
  std::vector<float*> local;
  const int per = 2 + int(D);  // main, balance, MTP losses of one unit
  std::vector<double> unit_losses(size_t(U * per), 0.0);
  std::vector<int64_t> load;
  StepResult r;
  for (int j = 0; j < m; ++j) {
    float* g = j == 0 ? grads_.data() : units_[size_t(j - 1)].data();
    std::fill(g, g + n, 0.0f);
    const int64_t r0 = lay_.first_row() + int64_t(j) * lay_.micro_batch;
    const StepLosses L = model_->step(batch + r0 * row, params, g);
    local.push_back(g);
    double* ul = unit_losses.data() + size_t((lay_.dp_rank * m + j) * per);
    ul[0] = L.main;
    ul[1] = L.balance;
    for (int64_t k = 0; k < D; ++k) ul[2 + k] = L.mtp[size_t(k)];
    r.comm_bytes_predicted += L.ep_bytes;
    if (j == 0) {
      r.losses = L;
      for (const auto& l : L.load) load.insert(load.end(), l.begin(), l.end());
    } else {
      size_t k = 0;
      for (const auto& l : L.load)
        for (int64_t v : l) load[k++] += v;
    }
  }
  tree_sum(local, n);
  // The step's losses: the units' means summed in unit order, over the global batch.
  if (lay_.dp > 1) {
    std::vector<int64_t> counts(size_t(lay_.dp), int64_t(m * per));
    dp_.allgather(unit_losses.data(), counts);
    dp_.allreduce_sum(load.data(), int64_t(load.size()));
  }
  {
    StepLosses& L = r.losses;
    double sum[64] = {};
    DSV3_ASSERT(per <= 64);
    for (int u = 0; u < U; ++u)
      for (int k = 0; k < per; ++k) sum[k] += unit_losses[size_t(u * per + k)];
    L.main = sum[0] / double(U);
    L.balance = sum[1] / double(U);
    L.total = L.main + L.balance;
    const double lam = D > 0 ? cfg_.mtp_lambda_at(step) / double(D) : 0.0;
    for (int64_t k = 0; k < D; ++k) {
      L.mtp[size_t(k)] = sum[2 + k] / double(U);
      L.total += lam * L.mtp[size_t(k)];
    }
    size_t k = 0;
    for (auto& l : L.load)
      for (int64_t& v : l) v = load[k++];
  }
  // ZeRO-1: rank q receives every rank's piece of shard q and sums them in rank order — the
  // canonical tree continued across ranks (an MPI reduce-scatter would add in its own order).
  if (lay_.dp > 1) {
    const int P = lay_.dp;
    const int64_t S = hi_ - lo_;
    std::vector<int64_t> sc(static_cast<size_t>(P)), sd(sc), rc(sc), rd(sc);
    int64_t off = 0;
    for (int q = 0; q < P; ++q) {  // in floats
      sc[size_t(q)] = shard_[size_t(q)];
      sd[size_t(q)] = off;
      off += shard_[size_t(q)];
      rc[size_t(q)] = S;
      rd[size_t(q)] = int64_t(q) * S;
    }
    dp_.ialltoallv(grads_.data(), sc, sd, pieces_.data(), rc, rd, sizeof(float)).wait();
    if (S > 0) {  // a tiny model may leave a rank no block
      std::vector<float*> v;
      for (int q = 0; q < P; ++q) v.push_back(pieces_.data() + int64_t(q) * S);
      tree_sum(v, S);
      std::memcpy(grads_.data() + lo_, pieces_.data(), size_t(S) * sizeof(float));
    }
  }
  // ‖g‖: per-block partial sums, gathered, added in block order.
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(blocks));
  int64_t first = 0;
  for (int q = 0; q < lay_.dp_rank; ++q) first += shard_blocks_[size_t(q)];
  block_sumsq(block_lo_, block_hi_, part.data() + first);
  if (lay_.dp > 1) dp_.allgather(part.data(), shard_blocks_);
  double sumsq = 0;
  for (double x : part) sumsq += x;
  r.grad_norm = std::sqrt(sumsq);
  if (lay_.dp > 1) {
    // ZeRO-1: the other ranks' pieces of my gradient out, my shard of the weights to each
    // other rank (apply()), and the step's small vectors: unit losses, loads, norm blocks.
    const int64_t S = hi_ - lo_, others = lay_.dp - 1;
    r.comm_bytes_predicted += (n - S) * 4 + S * 4 * others + int64_t(m * per) * 8 * others +
                              int64_t(load.size()) * 8 + shard_blocks_[size_t(lay_.dp_rank)] * 8 * others;
  }
  r.finite = std::isfinite(r.losses.total) && std::isfinite(r.grad_norm);
  return r;
}

std::vector<double> TrainStep::apply(float* params, const StepResult& r, int64_t step) {
  const float clip = clip_factor(r.grad_norm, cfg_.grad_clip);
  if (clip != 1.0f) scale_grads(ps_, grads_.data(), clip, lo_, hi_);
  adam_->step(params, grads_.data(), cfg_.lr.at(step));
  if (lay_.dp > 1) dp_.allgather(params, shard_);
  // Aux-loss-free balancing (report §2.1.2): b_i += γ·sign(mean_load − load_i), from the
  // loads of the whole global batch (every rank applies the same update).
  return update_router_bias(ps_.bind(params), cfg_.model, r.losses, cfg_.gamma_at(step));
}

}  // namespace dsv3
