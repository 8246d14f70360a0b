// Distributed training equals one process (docs/distributed.md; STYLE §10).
//
// Run two ways:
// - under mpirun (ctest entries mpi_dist_train_np2 / _np4): every rank runs the distributed
//   TrainStep on its share of each global batch and, beside it, the one-process TrainStep on
//   the whole batch; for 20 steps of a tiny MoE + MTP model in F32, every step's losses
//   agree to 1e-6 relative, the expert loads exactly, and every gradient tensor (its shards
//   summed over ranks) with calc_diff = 1 − 2Σxy/Σ(x²+y²) < 1e-12;
// - alone (ctest entry test_dist_train): the same comparisons with one rank (gradient
//   accumulation over micro-batches against one call), the layout checks, and the CLI:
//   `mpirun -np 2 dsv3 train` against `dsv3 train`, a distributed checkpoint resumed by one
//   process, refused layouts, and a rank killed mid-run taking the job down, not hanging.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

#include "core/check.h"
#include "parallel/comm.h"
#include "parallel/layout.h"
#include "core/dtype.h"
#include "train/train_step.h"
#include "train/train_weights.h"
#include "train_test_util.h"

namespace dsv3 {
namespace {

using namespace train_test;

constexpr int64_t kBatch = 8, kSeq = 16, kSteps = 20, kVocab = 96;

TrainConfig tiny_config(const char* precision = "f32", int layers = 2) {
  json j = train_json(precision);
  j.erase("tokenizer");
  j["model"] = model_json(kVocab);
  j["model"]["num_hidden_layers"] = layers;
  j["batch"] = kBatch;
  j["seq_len"] = kSeq;
  j["steps"] = kSteps;
  j["checkpoint_every"] = 0;
  return parse_train_config(j.dump(), "tiny config", "");
}

// The global batch of a step [B, T + 1]: the same on every rank.
std::vector<int32_t> batch_of(int64_t step) {
  std::mt19937 g(uint32_t(1000 + step));
  std::vector<int32_t> b(size_t(kBatch * (kSeq + 1)));
  for (int32_t& t : b) t = int32_t(g() % kVocab);
  return b;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(1e-30, std::max(std::abs(a), std::abs(b))); }

void copy_weights(TrainWeights& to, const TrainWeights& from) {
  ASSERT_EQ(to.size(), from.size());
  std::memcpy(to.mutable_data(), from.data(), size_t(from.size()) * sizeof(float));
}

// A sharded master (train/train_weights.h) against the whole one of `whole`, at the same
// weights: the shard [lo, hi) and every non-GEMM tensor hold the same bits, the BF16 copy is
// the rounding of every GEMM weight, and every whole page of the master that holds only GEMM
// weights outside the shard is out of memory (at least a fifth of the arena here).
void expect_sharded_master(const ParamSet& ps, const TrainWeights& w, int64_t lo, int64_t hi,
                           const TrainWeights& whole) {
  std::vector<std::pair<int64_t, int64_t>> gemm;  // merged
  for (const ParamInfo& p : ps.infos()) {
    if (p.alias) continue;
    const int64_t b = p.offset, e = p.offset + p.spec.numel();
    const int64_t x0 = p.gemm ? std::max(b, lo) : b, x1 = p.gemm ? std::min(e, hi) : e;
    if (x0 < x1) {
      EXPECT_EQ(0, std::memcmp(w.data() + x0, whole.data() + x0, size_t(x1 - x0) * sizeof(float))) << p.spec.name;
    }
    if (!p.gemm) continue;
    if (!gemm.empty() && gemm.back().second == b)
      gemm.back().second = e;
    else
      gemm.push_back({b, e});
    for (int64_t i = b; i < e; ++i) {
      const uint16_t r = f32_to_bf16(whole.data()[i]);
      if (w.bf16()[i] != r) {
        ADD_FAILURE() << p.spec.name << "[" << i - b << "]: BF16 copy " << w.bf16()[i] << ", expected " << r;
        break;
      }
    }
  }
  const int64_t page = int64_t(sysconf(_SC_PAGESIZE)), fpp = page / 4;  // floats per page
  int64_t out = 0;  // pages that hold only GEMM weights outside the shard
  auto count = [&](int64_t b, int64_t e) { out += std::max<int64_t>(0, e / fpp - (b + fpp - 1) / fpp); };
  for (const auto& [b, e] : gemm) {
    if (b < lo) count(b, std::min(e, lo));
    if (e > hi) count(std::max(b, hi), e);
  }
  const int64_t pages = (w.size() + fpp - 1) / fpp;
  EXPECT_GE(5 * out, pages) << "only " << out << " of " << pages << " pages to release";
  EXPECT_LE(w.master_resident_bytes(), (pages - out) * page);
}

// Compares the distributed step (this rank's shard of the gradient) with the one-process
// step (the whole gradient) tensor by tensor; the three sums are reduced over the group.
void expect_same_gradients(const ParamSet& ps, const TrainStep& dist, const TrainStep& one,
                           const dist::Comm& dp, int64_t step) {
  std::vector<double> sums;  // per tensor: Σxy, Σx², Σy²
  std::vector<const ParamInfo*> ts;
  for (const ParamInfo& p : ps.infos()) {
    if (p.alias || !p.trainable) continue;
    const int64_t b = std::max(dist.lo(), p.offset), e = std::min(dist.hi(), p.offset + p.spec.numel());
    double xy = 0, xx = 0, yy = 0;
    for (int64_t i = b; i < e; ++i) {
      const double x = dist.grads()[size_t(i)], y = one.grads()[size_t(i)];
      xy += x * y;
      xx += x * x;
      yy += y * y;
    }
    sums.insert(sums.end(), {xy, xx, yy});
    ts.push_back(&p);
  }
  dp.allreduce_sum(sums.data(), int64_t(sums.size()));
  for (size_t k = 0; k < ts.size(); ++k) {
    const double xy = sums[3 * k], den = sums[3 * k + 1] + sums[3 * k + 2];
    const double diff = den > 0 ? 1.0 - 2.0 * xy / den : 0.0;
    EXPECT_LT(diff, 1e-12) << ts[k]->spec.name << " at step " << step + 1;
  }
}

struct Layouts {
  int64_t dp, ep, micro, max_nodes = 0, ranks_per_node = 0, pp = 1;
  std::string schedule = "1f1b";
};

// The layout of l over the world and this rank's groups: data-parallel (its stage's),
// expert-parallel, and with pipeline stages ZeRO over the whole job and its dp rank's pipeline.
struct Groups {
  Layout lay;
  dist::Comm dpc, epc, zero, pipe;
  Groups(const Layouts& l, const TrainConfig& cfg) {
    dist::Comm& world = dist::Comm::world();
    ParallelConfig pc;
    pc.dp = l.dp;
    pc.ep = l.ep;
    pc.micro_batches = l.micro;
    pc.max_nodes = l.max_nodes;
    pc.ranks_per_node = l.ranks_per_node;
    pc.pp = l.pp;
    pc.schedule = l.schedule;
    lay = make_layout(pc, cfg.model, cfg.batch, world.size(), world.rank());
    dpc = world.split(lay.stage, lay.dp_rank);
    epc = dpc.split(lay.dp_rank / lay.ep, lay.ep_rank);
    zero = world.split(0, world.rank());
    pipe = world.split(lay.dp_rank, lay.stage);
  }
  const dist::Comm& zero_group() const { return lay.pp > 1 ? zero : dpc; }
  const dist::Comm* pipeline() const { return lay.pp > 1 ? &pipe : nullptr; }
};

void run_equivalence(const Layouts& l) {
  const TrainConfig cfg = tiny_config();
  const Groups gr(l, cfg);
  const Layout& lay = gr.lay;
  const dist::Comm& zg = gr.zero_group();
  const dist::Comm one_rank;
  Layout lay1 = make_layout(ParallelConfig{}, cfg.model, cfg.batch, 1, 0);
  // Node-limited routing in one process: routed for the same nodes as the EP run.
  lay1.max_nodes = lay.max_nodes;
  lay1.ranks_per_node = lay.ranks_per_node;
  lay1.nodes = lay.nodes;

  ParamSet ps(cfg.model, cfg.mtp);
  TrainWeights pd(ps, false), p1(ps, false);
  ps.init(pd.mutable_data(), cfg.seed);
  copy_weights(p1, pd);
  // `one` trains on its own (its losses are compared); `probe` takes the distributed run's
  // weights at every step, so the gradients are compared at the same point (on separate
  // trajectories AdamW turns last-bit differences of near-zero gradients into different
  // updates, and gradients a few steps on differ by more than the reduction order).
  TrainStep dist_step(cfg, ps, lay, zg, gr.epc, 1, gr.pipeline()),
      one(cfg, ps, lay1, one_rank, one_rank, 1),
      probe(cfg, ps, lay1, one_rank, one_rank, 1);
  for (int64_t s = 0; s < kSteps; ++s) {
    const std::vector<int32_t> b = batch_of(s);
    // The probe first: the distributed step keeps only its stages' weights of pd (with
    // pipeline stages) until they are gathered again.
    const StepResult rp = probe.compute(b.data(), pd, s);
    const StepResult rd = dist_step.compute(b.data(), pd, s);
    const StepResult r1 = one.compute(b.data(), p1, s);
    // F32 gradients summed in another order differ by ~1e-7 relative per element.
    EXPECT_LT(rel(rd.grad_norm, rp.grad_norm), 1e-6) << "step " << s + 1;
    EXPECT_EQ(rd.losses.load, rp.losses.load) << "step " << s + 1;
    expect_same_gradients(ps, dist_step, probe, zg, s);
    ASSERT_TRUE(rd.finite && r1.finite);
    EXPECT_LT(rel(rd.losses.total, r1.losses.total), 1e-6) << "step " << s + 1;
    EXPECT_LT(rel(rd.losses.main, r1.losses.main), 1e-6) << "step " << s + 1;
    EXPECT_LT(rel(rd.losses.balance, r1.losses.balance), 1e-6) << "step " << s + 1;
    ASSERT_EQ(rd.losses.mtp.size(), r1.losses.mtp.size());
    for (size_t k = 0; k < rd.losses.mtp.size(); ++k)
      EXPECT_LT(rel(rd.losses.mtp[k], r1.losses.mtp[k]), 1e-6) << "step " << s + 1;
    EXPECT_EQ(rd.losses.load, r1.losses.load) << "step " << s + 1;
    dist_step.apply(pd, rd, s);
    dist_step.gather_params(pd);  // the probe runs the whole model on these weights
    one.apply(p1, r1, s);
  }
}

// Two steps that must have computed the same bits: every loss, the loads, the norm, and the
// gradient of a's shard (b holds at least that range), tensor by tensor — or, with whole, every
// element of the shard (the non-trainable slots included; with pipeline stages those hold
// stale values on some ranks).
void expect_same_step(const ParamSet& ps, const StepResult& ra, const TrainStep& a, const StepResult& rb,
                      const TrainStep& b, int64_t s, bool whole = false) {
  EXPECT_EQ(ra.losses.total, rb.losses.total) << "step " << s + 1;
  EXPECT_EQ(ra.losses.main, rb.losses.main) << "step " << s + 1;
  EXPECT_EQ(ra.losses.mtp, rb.losses.mtp) << "step " << s + 1;
  EXPECT_EQ(ra.losses.balance, rb.losses.balance) << "step " << s + 1;
  EXPECT_EQ(ra.losses.load, rb.losses.load) << "step " << s + 1;
  EXPECT_EQ(ra.grad_norm, rb.grad_norm) << "step " << s + 1;
  if (whole) {
    EXPECT_EQ(0, std::memcmp(a.grads().data() + a.lo(), b.grads().data() + a.lo(),
                             size_t(a.hi() - a.lo()) * sizeof(float))) << "step " << s + 1;
    return;
  }
  for (const ParamInfo& p : ps.infos()) {
    if (p.alias || !p.trainable) continue;
    const int64_t lo = std::max(a.lo(), p.offset), hi = std::min(a.hi(), p.offset + p.spec.numel());
    if (lo < hi) {
      EXPECT_EQ(0, std::memcmp(a.grads().data() + lo, b.grads().data() + lo, size_t(hi - lo) * sizeof(float)))
          << p.spec.name << " at step " << s + 1;
    }
  }
}

// The canonical sums (train/train_step.h): dp ranks of m micro-batches and one process of
// dp × m micro-batches compute the same bits — losses, loads, gradient shards, the norm and,
// step after step, the weights — on their separate trajectories.
void run_bitwise(int64_t dp, int64_t m, const char* precision = "f32") {
  SCOPED_TRACE(std::string(precision) + " dp " + std::to_string(dp) + " M " + std::to_string(m));
  dist::Comm& world = dist::Comm::world();
  const TrainConfig cfg = tiny_config(precision);
  const Layout lay = make_layout({.dp = dp, .micro_batches = m}, cfg.model, cfg.batch, world.size(), world.rank());
  const dist::Comm dpc = world.split(lay.stage, lay.dp_rank), epc;
  const dist::Comm one_rank;
  const Layout lay1 = make_layout({.micro_batches = dp * m}, cfg.model, cfg.batch, 1, 0);
  ParamSet ps(cfg.model, cfg.mtp);
  const bool bf16 = cfg.precision == Precision::BF16;
  // The ranks keep a BF16 copy where they shard the master (as dsv3 train does); one process
  // rounds each weight at its GEMM.
  TrainStep ds(cfg, ps, lay, dpc, epc, 1), one(cfg, ps, lay1, one_rank, one_rank, 1);
  EXPECT_EQ(ds.sharded_master(), bf16 && dp > 1);
  TrainWeights pd(ps, ds.sharded_master()), p1(ps, false);
  ps.init(pd.mutable_data(), cfg.seed);
  copy_weights(p1, pd);
  for (int64_t s = 0; s < kSteps; ++s) {
    const std::vector<int32_t> b = batch_of(s);
    const StepResult rd = ds.compute(b.data(), pd, s), r1 = one.compute(b.data(), p1, s);
    expect_same_step(ps, rd, ds, r1, one, s, true);
    ds.apply(pd, rd, s);
    one.apply(p1, r1, s);
    ASSERT_EQ(pd.sharded(), ds.sharded_master());
    if (pd.sharded()) expect_sharded_master(ps, pd, ds.lo(), ds.hi(), p1);
    // Every few steps the whole master gathered (as before a checkpoint), and sharded again
    // by the next step.
    if (s % 5 == 4 || s + 1 == kSteps) {
      // Validation on the sharded master (the copy and the F32 tensors) first.
      const std::vector<int32_t> v = batch_of(1000 + s);
      const StepLosses ld = ds.evaluate(v.data(), pd), l1 = one.evaluate(v.data(), p1);
      EXPECT_EQ(ld.main, l1.main) << "validation after step " << s + 1;
      EXPECT_EQ(ld.mtp, l1.mtp) << "validation after step " << s + 1;
      ds.gather_params(pd);
      ASSERT_FALSE(pd.sharded());
      ASSERT_EQ(0, std::memcmp(pd.data(), p1.data(), size_t(pd.size()) * sizeof(float)))
          << "weights after step " << s + 1;
    }
  }
}

// Pipeline stages (docs/distributed.md): dp × pp ranks running `schedule` with m
// micro-batches per pipeline compute the bits of one process with dp × m micro-batches —
// losses, loads, the norm, every gradient (each rank's ZeRO shard, at the same weights every
// step since the weights stay equal) and the weights, step after step.
void run_pipeline_bitwise(int64_t dp, int64_t pp, const std::string& schedule, int64_t m,
                          const char* precision = "f32", double zero_bucket_mb = 64) {
  SCOPED_TRACE("dp " + std::to_string(dp) + " pp " + std::to_string(pp) + " " + schedule + " M " +
               std::to_string(m) + " " + precision + " bucket " + std::to_string(zero_bucket_mb) + " MiB");
  dist::Comm& world = dist::Comm::world();
  TrainConfig cfg = tiny_config(precision, 4);  // 4 main layers (a dense one, then MoE)
  cfg.parallel.zero_bucket_mb = zero_bucket_mb;
  const Layout lay = make_layout({.dp = dp, .pp = pp, .schedule = schedule, .micro_batches = m}, cfg.model,
                                 cfg.batch, world.size(), world.rank());
  const dist::Comm zero = world.split(0, world.rank()), pipe = world.split(lay.dp_rank, lay.stage), epc;
  const dist::Comm one_rank;
  const Layout lay1 = make_layout({.micro_batches = dp * m}, cfg.model, cfg.batch, 1, 0);
  ParamSet ps(cfg.model, cfg.mtp);
  const bool bf16 = cfg.precision == Precision::BF16;
  TrainWeights pd(ps, bf16), p1(ps, bf16);
  ps.init(pd.mutable_data(), cfg.seed);
  copy_weights(p1, pd);
  TrainStep ds(cfg, ps, lay, zero, epc, 1, &pipe), one(cfg, ps, lay1, one_rank, one_rank, 1);
  const bool sched1 = pipe::make_schedule(pipe::parse_schedule(schedule), int(pp), int(m)).chunks == 1;
  for (int64_t s = 0; s < kSteps; ++s) {
    const std::vector<int32_t> b = batch_of(s);
    const StepResult rd = ds.compute(b.data(), pd, s), r1 = one.compute(b.data(), p1, s);
    expect_same_step(ps, rd, ds, r1, one, s);
    ds.apply(pd, rd, s);
    one.apply(p1, r1, s);
    if (s == 0 && sched1) {
      // One stage per rank: its gradient arenas hold that stage's tensors (the embedding on
      // the first, a main layer on its own, the rest on the last) and arena 0 its shard; the
      // other pages are never written. Bound: those bytes, plus a page at each end of each
      // range per arena.
      const int64_t Lm = cfg.model.num_hidden_layers;
      const StageSpan sp = stage_span(Lm, int(pp), lay.stage);
      const int64_t fpp = int64_t(sysconf(_SC_PAGESIZE)) / 4;  // floats per page
      std::vector<char> mine(size_t((pd.size() + fpp - 1) / fpp), 0);  // pages of the stage's tensors
      for (const ParamInfo& p : ps.infos()) {
        if (p.alias) continue;
        const std::string& nm = p.spec.name;
        int st = int(pp) - 1;
        if (nm.rfind("model.embed_tokens.", 0) == 0) {
          st = 0;
        } else if (nm.rfind("model.layers.", 0) == 0 && std::stoll(nm.substr(13)) < Lm) {
          const int64_t l = std::stoll(nm.substr(13));
          st = l >= sp.l0 && l < sp.l1 ? lay.stage : -1;
        }
        if (st != lay.stage) continue;
        for (int64_t q = p.offset / fpp; q * fpp < p.offset + p.spec.numel(); ++q) mine[size_t(q)] = 1;
      }
      // Arena 0: also the shard (the exchange writes the sums there) and whatever the exchange
      // reads to send: the shards that meet the stage's tensors (mincore counts a page that was
      // only read, mapped to the kernel's zero page, though it costs no memory).
      std::vector<char> first = mine;
      for (int64_t q = ds.lo() / fpp; q * fpp < ds.hi(); ++q) first[size_t(q)] = 1;
      for (int64_t o = 0, at = 0; o < int64_t(ds.shard_sizes().size()); at += ds.shard_sizes()[size_t(o)], ++o) {
        const int64_t e = at + ds.shard_sizes()[size_t(o)];
        bool meets = false;
        for (int64_t q = at / fpp; q * fpp < e && !meets; ++q) meets = mine[size_t(q)] != 0;
        if (meets)
          for (int64_t q = at / fpp; q * fpp < e; ++q) first[size_t(q)] = 1;
      }
      const int64_t pages = (m - 1) * std::count(mine.begin(), mine.end(), 1) + std::count(first.begin(), first.end(), 1);
      EXPECT_LE(ds.gradient_resident_bytes(), pages * fpp * 4) << "rank " << world.rank() << " stage " << lay.stage;
      // ... and at least the pages every micro-batch's arena writes.
      EXPECT_GE(ds.gradient_resident_bytes(), m * std::count(mine.begin(), mine.end(), 1) * fpp * 4)
          << "rank " << world.rank() << " stage " << lay.stage;
    }
    // A rank's own stages' weights are current (the next step's bits depend on them); the
    // rest of its arena only after gather_params, checked every few steps.
    if (s % 5 == 4 || s + 1 == kSteps) {
      ds.gather_params(pd);
      ASSERT_EQ(0, std::memcmp(pd.data(), p1.data(), size_t(pd.size()) * sizeof(float)))
          << "weights after step " << s + 1;
      // Validation: each micro-batch forward along its stages gives one process's losses.
      const std::vector<int32_t> v = batch_of(1000 + s);
      const StepLosses ld = ds.evaluate(v.data(), pd), l1 = one.evaluate(v.data(), p1);
      EXPECT_EQ(ld.main, l1.main) << "validation after step " << s + 1;
      EXPECT_EQ(ld.mtp, l1.mtp) << "validation after step " << s + 1;
      EXPECT_GT(ld.main, 0.0);
    }
  }
}

// The stage API in one process: the model cut into 3 stages (forward 0, 1, 2, backward 2, 1,
// 0; the MTP embedding rows handed from the last stage to the first), with and without the
// weight gradients deferred to a W, gives step()'s losses and gradient bit for bit.
void expect_stages_equal_step(const char* prec) {
  SCOPED_TRACE(prec);
  const TrainConfig cfg = tiny_config(prec, 4);
  ParamSet ps(cfg.model, cfg.mtp);
  std::vector<float> p(size_t(ps.numel()));
  ps.init(p.data(), cfg.seed);
  TrainModelOptions mo;
  mo.batch = kBatch;
  mo.seq_len = kSeq;
  mo.precision = cfg.precision;
  mo.mtp = cfg.mtp;
  mo.balance_alpha = cfg.balance_alpha;
  mo.threads = 1;
  TrainModel one(ps, mo), staged(ps, mo);
  const std::vector<int32_t> b = batch_of(0);
  for (bool split : {false, true}) {
    std::vector<float> g1(p.size()), g3(p.size());
    const StepLosses L1 = one.step(b.data(), p.data(), g1.data());
    std::vector<float> x(size_t(staged.activation_numel())), de(size_t(staged.mtp_rows_numel()));
    double balance = 0, main = 0;
    std::vector<double> mtp;
    for (int s = 0; s < 3; ++s) {
      const StepLosses L = staged.forward_stage(stage_span(4, 3, s), s, b.data(), p.data(), g3.data(), x.data());
      for (double v : L.balance_layer) balance += v;
      if (s == 2) main = L.main, mtp = L.mtp;
    }
    std::vector<std::vector<DeferredWGrad>> w(3);
    for (int s = 2; s >= 0; --s)
      staged.backward_stage(stage_span(4, 3, s), s, b.data(), p.data(), g3.data(), x.data(), de.data(),
                            split ? &w[size_t(s)] : nullptr);
    for (int s = 0; s < 3; ++s) staged.weight_stage(w[size_t(s)]);
    EXPECT_EQ(main, L1.main);
    EXPECT_EQ(mtp, L1.mtp);
    EXPECT_EQ(balance, L1.balance);
    EXPECT_EQ(0, std::memcmp(g1.data(), g3.data(), g1.size() * sizeof(float))) << "split " << split;
  }
}

TEST(DistTrain, StagesInOneProcessEqualStep) {
  for (const char* prec : {"f32", "bf16", "fp8"}) expect_stages_equal_step(prec);
}

TEST(DistTrain, PipelineBitwiseEqualToOneProcess) {
  const int64_t n = dist::Comm::world().size();
  if (n == 1) GTEST_SKIP() << "needs mpirun (ctest: mpi_dist_train_np2 / _np4)";
  // pp = n: every schedule, with the micro-batches each allows (DualPipe(V): M ≥ 2·pp).
  for (const char* sch : {"1f1b", "zb1p", "dualpipe", "dualpipev"}) {
    const bool dual = std::string(sch).rfind("dual", 0) == 0;
    if (std::string(sch) == "dualpipe" && n % 2 != 0) continue;
    run_pipeline_bitwise(1, n, sch, dual ? 2 * n : n);
    if (!dual && n == 2) run_pipeline_bitwise(1, n, sch, 4);
  }
  // Fewer micro-batches than stages (a pipeline that never fills).
  run_pipeline_bitwise(1, n, "zb1p", 1);
  if (n == 4) {
    run_pipeline_bitwise(1, 4, "1f1b", 2);
    for (const char* sch : {"1f1b", "zb1p", "dualpipe", "dualpipev"}) run_pipeline_bitwise(2, 2, sch, 4);  // dp 2 × pp 2
    // ZeRO-1 over the 4 ranks in rounds of a few thousand floats (shards of unequal sizes,
    // pieces that are exact zeros and not sent).
    run_pipeline_bitwise(2, 2, "dualpipe", 4, "f32", 0.02);
  }
  if (n == 2) run_pipeline_bitwise(1, 2, "1f1b", 2, "f32", 0.02);
  // BF16 and FP8 GEMMs: the deferred weight gradients keep each GEMM's mode (the router F32).
  if (n == 2)
    for (const char* prec : {"bf16", "fp8"}) run_pipeline_bitwise(1, 2, "dualpipe", 4, prec);
}

TEST(DistTrain, BitwiseEqualToOneProcessWithTheSameUnits) {
  const int64_t n = dist::Comm::world().size();
  run_bitwise(n, 1);
  if (kBatch % (2 * n) == 0) run_bitwise(n, 2);
  // BF16: with more than one rank the master weights are sharded too (train_weights.h), with
  // two micro-batches the BF16 copy read by both.
  run_bitwise(n, 1, "bf16");
  if (kBatch % (2 * n) == 0) run_bitwise(n, 2, "bf16");
}

TEST(DistTrain, DataParallelZero1MatchesOneProcess) {
  run_equivalence({dist::Comm::world().size(), 1, 1});
}

// Routed experts sharded over the EP group (all of dp, or halves of it with 4 ranks):
// dispatch and combine by all-to-all, attention and shared experts replicated.
TEST(DistTrain, ExpertParallelMatchesOneProcess) {
  const int64_t n = dist::Comm::world().size();
  if (n == 1) GTEST_SKIP() << "needs mpirun (ctest: mpi_dist_train_np2 / _np4)";
  run_equivalence({n, n, 1});
  if (n == 4) run_equivalence({4, 2, 2});
}

// Expert parallelism inside pipeline stages (4 ranks: dp 2 × pp 2, each stage's two dp ranks
// its EP group): the EP ranks of a stage run the same ops in the same order, so their
// exchanges pair up; within tolerances of one process, as EP without pipelines.
TEST(DistTrain, ExpertParallelInsidePipelineStages) {
  if (dist::Comm::world().size() != 4) GTEST_SKIP() << "needs mpirun -np 4";
  run_equivalence({2, 2, 2, 0, 0, 2, "1f1b"});
  run_equivalence({2, 2, 4, 0, 0, 2, "dualpipe"});
}

// Node-limited routing (report §2.1.2): 4 EP ranks on 2 nodes of 2, each token's experts on
// one node; the one-process reference routes for the same 2 nodes.
TEST(DistTrain, NodeLimitedRoutingMatchesOneProcess) {
  if (dist::Comm::world().size() != 4) GTEST_SKIP() << "needs mpirun -np 4";
  run_equivalence({4, 4, 1, 1, 2});
}

// The two-micro-batch overlap (train_step.h, core/fiber.h): with expert parallelism a rank
// runs two micro-batches interleaved at every EP exchange — two at a time without pipeline
// stages, the F and the B of DualPipe's F&B pairs with them. Each has its own state and work
// buffers, so the step must compute exactly the bits of running them one after the other —
// in every precision (BF16/FP8 wire formats included), step after step.
void run_overlap_bitwise(const Layouts& l, const char* prec) {
  SCOPED_TRACE(std::string(prec) + " dp " + std::to_string(l.dp) + " ep " + std::to_string(l.ep) + " pp " +
               std::to_string(l.pp) + " " + l.schedule + " M " + std::to_string(l.micro));
  // With stages, 4 layers (the first dense): every stage holds MoE layers, so both the F and
  // the B of a pair exchange rows.
  TrainConfig on = tiny_config(prec, l.pp > 1 ? 4 : 2), off = on;
  off.parallel.overlap_micro_batches = false;
  const Groups gr(l, on);
  const Layout& lay = gr.lay;
  ParamSet ps(on.model, on.mtp);
  const bool bf16 = on.precision == Precision::BF16;
  TrainWeights pa(ps, bf16), pb(ps, bf16);
  ps.init(pa.mutable_data(), on.seed);
  copy_weights(pb, pa);
  TrainStep a(on, ps, lay, gr.zero_group(), gr.epc, 1, gr.pipeline()),
      b(off, ps, lay, gr.zero_group(), gr.epc, 1, gr.pipeline());
  if (lay.pp == 1) {
    ASSERT_TRUE(a.overlaps_micro_batches());
    ASSERT_FALSE(b.overlaps_micro_batches());
  } else {
    ASSERT_TRUE(a.overlaps_fb_pairs());
    ASSERT_FALSE(b.overlaps_fb_pairs());
    const pipe::Schedule sc = pipe::make_schedule(pipe::parse_schedule(l.schedule), int(l.pp), int(l.micro));
    int fb = 0;
    for (const pipe::Op& op : sc.ops[size_t(lay.stage)]) fb += op.type == pipe::OpType::FB ? 1 : 0;
    ASSERT_GT(fb, 0) << "the schedule has no F&B pair on this rank";
  }
  for (int64_t s = 0; s < 8; ++s) {
    const std::vector<int32_t> batch = batch_of(s);
    const StepResult ra = a.compute(batch.data(), pa, s), rb = b.compute(batch.data(), pb, s);
    expect_same_step(ps, ra, a, rb, b, s, lay.pp == 1);
    EXPECT_EQ(ra.comm_bytes_predicted, rb.comm_bytes_predicted) << "step " << s + 1;
    ASSERT_TRUE(ra.finite);
    a.apply(pa, ra, s);
    b.apply(pb, rb, s);
    a.gather_params(pa);  // pipeline stages, or a sharded master (bf16)
    b.gather_params(pb);
    ASSERT_EQ(0, std::memcmp(pa.data(), pb.data(), size_t(pa.size()) * sizeof(float)))
        << "weights after step " << s + 1;
  }
}

TEST(DistTrain, OverlappedMicroBatchesComputeTheBitsOfSequentialOnes) {
  const int64_t n = dist::Comm::world().size();
  if (n == 1) GTEST_SKIP() << "needs mpirun (ctest: mpi_dist_train_np2 / _np4)";
  for (const char* prec : {"f32", "bf16", "fp8"}) run_overlap_bitwise({n, n, 2}, prec);
  if (n == 4)  // EP inside the stages of a DualPipe: its F&B pairs on two fibers
    for (const char* prec : {"f32", "bf16", "fp8"}) run_overlap_bitwise({2, 2, 4, 0, 0, 2, "dualpipe"}, prec);
}

TEST(DistTrain, MicroBatchesMatchOneCall) {
  const int64_t n = dist::Comm::world().size();
  run_equivalence({n, 1, kBatch / n >= 2 ? 2 : 1});
}

// ---- Layout checks (the same on every rank, before any work) ------------------------------

TEST(DistLayout, RefusesInconsistentLayouts) {
  const ModelConfig m = tiny_config().model;  // 8 routed experts
  auto refused = [&](ParallelConfig pc, int world, const std::string& part) {
    try {
      make_layout(pc, m, kBatch, world, 0);
      ADD_FAILURE() << "accepted; expected an error naming '" << part << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  refused({.dp = 2}, 4, "= 2 processes, but 4 were launched");  // N ≠ dp × pp
  refused({.dp = 4, .ep = 3}, 4, "parallel.ep = 3 must divide parallel.dp = 4");
  refused({.dp = 2, .ep = 2, .schedule = "gpipe"}, 2, "parallel.schedule = 'gpipe'");
  refused({.dp = 3}, 3, "batch = 8 must be divisible");
  refused({.dp = 2, .micro_batches = 8}, 2, "parallel.micro_batches");
  refused({.dp = 2, .ep = 2, .max_nodes = 3}, 2, "parallel.max_nodes = 3");
  refused({.dp = 2, .max_nodes = 1}, 2, "needs expert parallelism");
  refused({.dp = 1, .pp = 2, .schedule = "dualpipe", .micro_batches = 2}, 2, "micro-batches = 2 < 2*pp = 4");
  refused({.dp = 1, .pp = 3, .schedule = "dualpipe", .micro_batches = 8}, 3, "dualpipe: pipeline ranks pp = 3");
  const Layout pl = make_layout({.dp = 2, .pp = 2, .micro_batches = 2}, m, kBatch, 4, 1);
  EXPECT_EQ(pl.stage, 0);
  EXPECT_EQ(pl.dp_rank, 1);
  EXPECT_EQ(pl.first_row(), 4);
  ModelConfig six = m;
  six.n_routed_experts = 6;
  try {
    make_layout({.dp = 4, .ep = 4}, six, kBatch, 4, 0);
    ADD_FAILURE() << "6 experts over ep 4 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("n_routed_experts = 6"), std::string::npos) << e.what();
  }
  const Layout l = make_layout({.dp = 4, .ep = 2, .micro_batches = 2}, m, kBatch, 4, 3);
  EXPECT_EQ(l.dp_rank, 3);
  EXPECT_EQ(l.ep_rank, 1);
  EXPECT_EQ(l.micro_batch, 1);
  EXPECT_EQ(l.first_row(), 6);
}

// ---- The CLI under mpirun (only from the one-process run of this binary) ------------------

bool have_mpirun() { return dist::mpi_built() && std::system("command -v mpirun >/dev/null 2>&1") == 0; }

#define NEED_MPIRUN()                                                                     \
  NEED_BIN();                                                                             \
  if (dist::Comm::world().size() > 1) GTEST_SKIP() << "the CLI tests run from one process"; \
  if (!have_mpirun()) GTEST_SKIP() << "mpirun or an MPI build not available"

std::string mpirun(int np) {
  return "mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -np " +
         std::to_string(np) + " ";
}

// The training config of the CLI tests: the tiny model on the prepared corpus, 20 steps
// (train_json's schedule, lr 1e-2). The CLI runs are compared bit for bit with one process of
// as many micro-batches; against other unit counts only in process (run_equivalence).
json cli_json(const char* precision = "f32", int64_t checkpoint_every = 0) {
  json j = train_json(precision);
  j["steps"] = kSteps;
  j["batch"] = 4;
  j["checkpoint_every"] = checkpoint_every;
  return j;
}

std::string cli_config(const std::string& name, int64_t checkpoint_every = 0, bool bf16_moments = false) {
  json j = cli_json("f32", checkpoint_every);
  if (bf16_moments) j["optimizer"]["moments"] = "bf16";
  return write_config(name, j);
}


CliRun mpi_train(int np, const std::string& cfg, const fs::path& out, const std::string& extra = "") {
  return run_shell(mpirun(np) + std::getenv("DSV3_BIN") + " " + train_args(cfg, out) + " " + extra);
}


// `mpirun -np N dsv3 train` computes the bits of `dsv3 train --micro-batches N`: the same
// metrics (as JSON text: shortest round-trip doubles, so equal text is equal bits) and the
// same master weights, byte for byte.
TEST(DistTrainCli, RanksComputeTheBitsOfOneProcess) {
  NEED_MPIRUN();
  const std::string cfg = cli_config("cli");
  for (int np : {2, 4}) {
    const fs::path one = fresh("mb" + std::to_string(np)), many = fresh("np" + std::to_string(np));
    const CliRun a = cli(train_args(cfg, one) + " --micro-batches " + std::to_string(np));
    ASSERT_EQ(a.rc, 0) << a.err;
    const CliRun b = mpi_train(np, cfg, many);
    ASSERT_EQ(b.rc, 0) << b.err;
    EXPECT_NE(b.err.find(std::to_string(np) + " ranks, dp " + std::to_string(np)), std::string::npos) << b.err;
    const std::vector<json> ma = metrics(one), mb = metrics(many);
    ASSERT_EQ(ma.size(), size_t(kSteps));
    ASSERT_EQ(mb.size(), ma.size());
    for (size_t i = 0; i < ma.size(); ++i) expect_same_metrics(mb[i], ma[i]);
    // Rank 0's bytes handed to MPI each step equal the prediction from the layout.
    for (const json& m : mb) EXPECT_EQ(m.at("comm_bytes"), m.at("comm_bytes_predicted")) << m.at("step");
    EXPECT_GT(mb.back().value("comm_bytes", 0), 0);
    ASSERT_EQ(latest(many), latest(one));
    EXPECT_TRUE(master_params(many / latest(many)) == master_params(one / latest(one)));
    // ZeRO-1's exchange in many small rounds (a receive buffer of ~10 KB instead of a shard
    // per rank): the same additions in the same order, so the same bits.
    if (np == 2) {
      const fs::path small = fresh("np2-buckets");
      const CliRun c = mpi_train(np, cfg, small, "--zero-bucket-mb 0.01");
      ASSERT_EQ(c.rc, 0) << c.err;
      const std::vector<json> mc = metrics(small);
      ASSERT_EQ(mc.size(), ma.size());
      for (size_t i = 0; i < ma.size(); ++i) {
        expect_same_metrics(mc[i], ma[i]);
        EXPECT_EQ(mc[i].at("comm_bytes"), mc[i].at("comm_bytes_predicted")) << mc[i].at("step");
      }
      EXPECT_TRUE(master_params(small / latest(small)) == master_params(one / latest(one)));
    }
  }
  // The kernels give the same bits on 2 threads as on 1, so the ranks' thread count does not
  // matter either.
  const fs::path t1 = fresh("mb2"), t2 = fresh("mb2-threads2");
  ASSERT_EQ(cli(train_args(cfg, t1) + " --micro-batches 2").rc, 0);
  std::string args = train_args(cfg, t2) + " --micro-batches 2";
  args.replace(args.find("--threads 1"), 11, "--threads 2");
  const CliRun b = cli(args);
  ASSERT_EQ(b.rc, 0) << b.err;
  const std::vector<json> m1 = metrics(t1), m2 = metrics(t2);
  ASSERT_EQ(m1.size(), m2.size());
  for (size_t i = 0; i < m1.size(); ++i) expect_same_metrics(m2[i], m1[i]);
}

// BF16 training shards the master weights as well (train/train_weights.h): the ranks still
// compute the bits of one process — metrics, every checkpoint's master weights (gathered for
// the mid-run ones, then sharded again) — and send what the layout predicts (the weights'
// all-gather in BF16, the F32 tensors' pieces in F32).
TEST(DistTrainCli, ShardedMasterWeightsComputeTheBitsOfOneProcess) {
  NEED_MPIRUN();
  json j = cli_json("bf16", 7);
  j["keep_checkpoints"] = 3;
  const std::string cfg = write_config("bf16", j);
  const fs::path one = fresh("bf16-mb2"), many = fresh("bf16-np2");
  const CliRun a = cli(train_args(cfg, one) + " --micro-batches 2");
  ASSERT_EQ(a.rc, 0) << a.err;
  const CliRun b = mpi_train(2, cfg, many);
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_NE(b.err.find("master weights sharded"), std::string::npos) << b.err;
  EXPECT_NE(b.err.find("peak resident memory per rank (MiB): "), std::string::npos) << b.err;
  const std::vector<json> ma = metrics(one), mb = metrics(many);
  ASSERT_EQ(ma.size(), size_t(kSteps));
  ASSERT_EQ(mb.size(), ma.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    expect_same_metrics(mb[i], ma[i]);
    EXPECT_EQ(mb[i].at("comm_bytes"), mb[i].at("comm_bytes_predicted")) << mb[i].at("step");
  }
  for (const char* ck : {"step-000007", "step-000014", "step-000020"})
    EXPECT_TRUE(master_params(many / ck) == master_params(one / ck)) << ck;
}

// The data with a held-out split (validation every 5 steps).
const std::string& val_data() {
  static const std::string dir = prepare_split_data("data-val", 0.25, 0);
  return dir;
}

// Two pipeline stages under DualPipe (and 1F1B) through the CLI: the metrics, validation
// losses and weights of one process with the same micro-batches, byte for byte, and
// comm_bytes as predicted.
TEST(DistTrainCli, PipelineRunComputesTheBitsOfOneProcess) {
  NEED_MPIRUN();
  json j = cli_json();
  j["eval_every"] = 5;
  const std::string cfg = write_config("pp", j);
  const fs::path one = fresh("pp-ref");
  const CliRun a = cli(train_args(cfg, one, val_data()) + " --micro-batches 4");
  ASSERT_EQ(a.rc, 0) << a.err;
  // np 2: one pipeline of 4 micro-batches; np 4: dp 2 (the ranks the pipeline leaves) × pp 2
  // of 2 micro-batches each — 4 units either way.
  for (const auto& [np, sch] : {std::pair{2, "dualpipe"}, std::pair{2, "1f1b"}, std::pair{4, "zb1p"}}) {
    const fs::path many = fresh("pp2-" + std::to_string(np) + sch);
    const CliRun b = run_shell(mpirun(np) + std::getenv("DSV3_BIN") + " " + train_args(cfg, many, val_data()) +
                               " --pp 2 --schedule " + sch + " --micro-batches " + (np == 2 ? "4" : "2"));
    ASSERT_EQ(b.rc, 0) << b.err;
    EXPECT_NE(b.err.find(np == 2 ? "2 ranks, dp 1 × pp 2 " : "4 ranks, dp 2 × pp 2 "), std::string::npos) << b.err;
    const std::vector<json> ma = metrics(one), mb = metrics(many);
    ASSERT_EQ(ma.size(), size_t(kSteps));
    ASSERT_EQ(mb.size(), ma.size());
    int evals = 0;
    for (size_t i = 0; i < ma.size(); ++i) {
      expect_same_metrics(mb[i], ma[i]);
      ASSERT_EQ(mb[i].contains("val_loss"), ma[i].contains("val_loss")) << "step " << i + 1;
      if (!ma[i].contains("val_loss")) continue;
      ++evals;
      EXPECT_TRUE(ma[i].at("val_loss").is_number_float()) << ma[i].at("val_loss");  // not NaN (null)
      EXPECT_EQ(mb[i].at("val_loss").dump(), ma[i].at("val_loss").dump()) << "step " << i + 1;
      EXPECT_EQ(mb[i].at("val_mtp_loss").dump(), ma[i].at("val_mtp_loss").dump()) << "step " << i + 1;
    }
    EXPECT_EQ(evals, kSteps / 5);
    for (const json& m : mb) EXPECT_EQ(m.at("comm_bytes"), m.at("comm_bytes_predicted")) << m.at("step");
    ASSERT_EQ(latest(many), latest(one));
    EXPECT_TRUE(master_params(many / latest(many)) == master_params(one / latest(one)));
  }
}

// A pipeline run's checkpoint (parameters and moments gathered from every stage's ZeRO
// shards) resumes in one process, and one process's resumes in a pipeline, bit for bit.
TEST(DistTrainCli, PipelineResumesIntoAnotherLayout) {
  NEED_MPIRUN();
  const std::string cfg = cli_config("pp-resume");
  const fs::path ref = fresh("pp-resume-ref"), a = fresh("pp-resume-2to1"), b = fresh("pp-resume-1to2");
  ASSERT_EQ(cli(train_args(cfg, ref) + " --micro-batches 4").rc, 0);
  const CliRun a1 = mpi_train(2, cfg, a, "--steps 10 --pp 2 --schedule zb1p --micro-batches 4");
  ASSERT_EQ(a1.rc, 0) << a1.err;
  const CliRun a2 = cli(train_args(cfg, a) + " --resume --micro-batches 4");
  ASSERT_EQ(a2.rc, 0) << a2.err;
  const CliRun b1 = cli(train_args(cfg, b) + " --steps 10 --micro-batches 4");
  ASSERT_EQ(b1.rc, 0) << b1.err;
  const CliRun b2 = mpi_train(2, cfg, b, "--resume --pp 2 --schedule dualpipev --micro-batches 4");
  ASSERT_EQ(b2.rc, 0) << b2.err;
  for (const fs::path& run : {a, b}) {
    const std::vector<json> mr = metrics(run), mf = metrics(ref);
    ASSERT_EQ(mr.size(), mf.size()) << run;
    for (size_t i = 0; i < mr.size(); ++i) expect_same_metrics(mr[i], mf[i]);
    EXPECT_TRUE(master_params(run / latest(run)) == master_params(ref / latest(ref))) << run;
  }
}

// An expert-parallel run against one process with as many units: not the same bits (an
// owner computes each expert over all ranks' rows at once), so the first step — the same
// weights on both sides — within 1e-6 and the same loads; the run finishes; and the
// all-to-all traffic follows the routing: measured = predicted at every step.
void expect_expert_parallel_run(const fs::path& run, const fs::path& one) {
  const std::vector<json> a = metrics(run), b = metrics(one);
  ASSERT_EQ(a.size(), b.size());
  for (const char* k : {"loss", "main_loss", "balance_loss"})
    EXPECT_LT(rel(a[0][k].get<double>(), b[0][k].get<double>()), 1e-6) << k;
  EXPECT_EQ(a[0]["load"], b[0]["load"]);
  EXPECT_TRUE(std::isfinite(a.back()["loss"].get<double>()));
  for (const json& m : a) EXPECT_EQ(m.at("comm_bytes"), m.at("comm_bytes_predicted")) << m.at("step");
}

// --pp 2 --ep 2 on 4 ranks: expert parallelism inside the stages trains, its first step (the
// same weights) within 1e-6 of one process, and its traffic as predicted.
TEST(DistTrainCli, ExpertParallelInsidePipelineTrains) {
  NEED_MPIRUN();
  const std::string cfg = cli_config("pp-ep");
  const fs::path one = fresh("pp-ep-ref"), run = fresh("pp2-ep2");
  ASSERT_EQ(cli(train_args(cfg, one) + " --micro-batches 4").rc, 0);
  const CliRun r = mpi_train(4, cfg, run, "--pp 2 --ep 2 --schedule zb1p --micro-batches 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  expect_expert_parallel_run(run, one);
}

// --ep 2 through the CLI: experts sharded over the two ranks. Not the same bits as one
// process (an owner computes each expert over both ranks' rows at once), so the first step —
// the same weights on both sides — is compared to 1e-6, and the run must finish.
TEST(DistTrainCli, ExpertParallelRunTrains) {
  NEED_MPIRUN();
  const std::string cfg = cli_config("ep");
  const fs::path one = fresh("ep-ref"), ep = fresh("ep2");
  ASSERT_EQ(cli(train_args(cfg, one) + " --micro-batches 2").rc, 0);
  const CliRun r = mpi_train(2, cfg, ep, "--ep 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("ep 2"), std::string::npos) << r.err;
  expect_expert_parallel_run(ep, one);
}

// --ep 2 with 2 micro-batches per rank runs them two at a time on fibers (the default) or
// one after the other (--overlap-micro-batches 0): the same metrics and the same weights.
TEST(DistTrainCli, OverlappedMicroBatchesTrainTheSameBits) {
  NEED_MPIRUN();
  const std::string cfg = cli_config("ep-overlap");
  const fs::path on = fresh("ep2-overlap"), off = fresh("ep2-sequential");
  const CliRun a = mpi_train(2, cfg, on, "--ep 2 --micro-batches 2");
  ASSERT_EQ(a.rc, 0) << a.err;
  const CliRun b = mpi_train(2, cfg, off, "--ep 2 --micro-batches 2 --overlap-micro-batches 0");
  ASSERT_EQ(b.rc, 0) << b.err;
  const std::vector<json> ma = metrics(on), mb = metrics(off);
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) expect_same_metrics(ma[i], mb[i]);
  EXPECT_TRUE(master_params(on / latest(on)) == master_params(off / latest(off)));
  EXPECT_NE(cli("train --config " + cfg + " --data x --out y --overlap-micro-batches 2").rc, 0);
}

// A checkpoint holds the whole arena and whole moments: it resumes into any layout.
TEST(DistTrainCli, ResumesIntoAnotherLayout) {
  NEED_MPIRUN();
  // BF16 AdamW moments (the report's recipe): the gathered checkpoint moments are 2-byte.
  const std::string cfg = cli_config("resume", 0, true);
  const fs::path ref2 = fresh("resume-ref2"), ref4 = fresh("resume-ref4");
  const fs::path a = fresh("resume-2to1"), b = fresh("resume-1to4");
  ASSERT_EQ(cli(train_args(cfg, ref2) + " --micro-batches 2").rc, 0);
  ASSERT_EQ(cli(train_args(cfg, ref4) + " --micro-batches 4").rc, 0);
  // 2 ranks for 10 steps, then one process with the same 2 units per step. The moments stream
  // to rank 0's writer in pieces of 1001 bytes (many per shard, cutting elements).
  const CliRun a1 = run_shell(mpirun(2) + "-x DSV3_CHECKPOINT_PIECE_BYTES=1001 " + std::getenv("DSV3_BIN") + " " +
                              train_args(cfg, a) + " --steps 10");
  ASSERT_EQ(a1.rc, 0) << a1.err;
  const CliRun a2 = cli(train_args(cfg, a) + " --resume --micro-batches 2");
  ASSERT_EQ(a2.rc, 0) << a2.err;
  // One process with 4 micro-batches for 10 steps, then 4 ranks.
  const CliRun b1 = cli(train_args(cfg, b) + " --steps 10 --micro-batches 4");
  ASSERT_EQ(b1.rc, 0) << b1.err;
  const CliRun b2 = mpi_train(4, cfg, b, "--resume");
  ASSERT_EQ(b2.rc, 0) << b2.err;
  for (const auto& [run, ref] : {std::pair{a, ref2}, std::pair{b, ref4}}) {
    const std::vector<json> mr = metrics(run), mf = metrics(ref);
    ASSERT_EQ(mr.size(), mf.size()) << run;
    for (size_t i = 0; i < mr.size(); ++i) expect_same_metrics(mr[i], mf[i]);
    EXPECT_TRUE(master_params(run / latest(run)) == master_params(ref / latest(ref))) << run;
  }
}

// --init (context extension, docs/long-context.md) under mpirun: every rank reads the init
// checkpoint's whole arena (the --resume path) and takes its ZeRO-1 shard or pipeline stage,
// so 2 data-parallel ranks and 2 pipeline stages compute the bits of one process with 2
// micro-batches, from the same weights, at the extension's seq_len and YaRN.
TEST(DistTrainCli, InitFromACheckpointOnEveryRank) {
  NEED_MPIRUN();
  const fs::path base = fresh("init-base");
  json j = train_json("f32");
  j["steps"] = 3;
  j["batch"] = 4;
  j["checkpoint_every"] = 0;
  ASSERT_EQ(cli(train_args(write_config("init-base", j), base)).rc, 0);
  json e = j;
  e["steps"] = 4;
  e["seq_len"] = 32;
  e["model"]["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 16},
                                {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}};
  e["optimizer"] = {{"lr", 1e-3}, {"lr_min", 1e-3}, {"warmup_steps", 0}, {"decay_start", 4}};
  const std::string cfg = write_config("init-ext", e);
  const std::string init = " --init " + (base / latest(base)).string();
  const fs::path one = fresh("init-one");
  const CliRun a = cli(train_args(cfg, one) + " --micro-batches 2" + init);
  ASSERT_EQ(a.rc, 0) << a.err;
  for (const char* layout : {"", "--pp 2 --schedule 1f1b --micro-batches 2"}) {
    const fs::path many = fresh(std::string("init-np2") + (*layout ? "-pp" : ""));
    const CliRun b = mpi_train(2, cfg, many, layout + init);
    ASSERT_EQ(b.rc, 0) << b.err;
    const std::vector<json> ma = metrics(one), mb = metrics(many);
    ASSERT_EQ(ma.size(), 4u);
    ASSERT_EQ(mb.size(), ma.size()) << layout;
    for (size_t i = 0; i < ma.size(); ++i) expect_same_metrics(mb[i], ma[i]);
    ASSERT_EQ(latest(many), latest(one));
    EXPECT_TRUE(master_params(many / latest(many)) == master_params(one / latest(one))) << layout;
  }
  // Refused on every rank, before anything is written.
  const fs::path bad = fresh("init-bad");
  const CliRun r = mpi_train(2, cfg, bad, "--init " + (root() / "no-such-dir").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("is not a directory"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(bad / "latest"));
}

TEST(DistTrainCli, InconsistentLayoutIsRefusedOnEveryRank) {
  NEED_MPIRUN();
  const std::string cfg = cli_config("bad");
  const fs::path out = fresh("bad-layout");
  const CliRun r = mpi_train(2, cfg, out, "--dp 2 --ep 3");
  EXPECT_NE(r.rc, 0);
  for (const char* rank : {"[rank 0]", "[rank 1]"})
    EXPECT_NE(r.err.find(std::string(rank) + " parallel.ep = 3 must divide parallel.dp = 2"), std::string::npos)
        << r.err;
  EXPECT_FALSE(fs::exists(out / "metrics.jsonl"));
  const CliRun alone = cli(train_args(cfg, out) + " --dp 2");
  EXPECT_EQ(alone.rc, 1);
  EXPECT_NE(alone.err.find("launch with mpirun -np 2"), std::string::npos) << alone.err;
}

// The pid of the rank-`rank` process of a run whose command line mentions `out`.
pid_t find_rank(int rank, const std::string& out) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = read(e.path() / "cmdline"), envs = read(e.path() / "environ");
    for (char& c : cmd) c = c == 0 ? ' ' : c;
    if (cmd.find(" train ") == std::string::npos || cmd.find(out) == std::string::npos) continue;
    if (cmd.find("mpirun") != std::string::npos) continue;
    const std::string want = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank);
    for (size_t p = 0; p < envs.size();) {
      const size_t z = envs.find('\0', p);
      if (envs.compare(p, (z == std::string::npos ? envs.size() : z) - p, want) == 0) return pid_t(std::stol(name));
      if (z == std::string::npos) break;
      p = z + 1;
    }
  }
  return -1;
}

// A long run under `mpirun -np 2` started in the background (its own process group, stderr
// to ERR); returns mpirun's pid once metrics.jsonl has `steps` lines, or -1.
struct Job {
  pid_t pid = -1;
  fs::path out, err;
};
Job start_long_job(const std::string& name, size_t steps) {
  json j = train_json("f32");
  j["steps"] = 100000;
  j["checkpoint_every"] = 0;
  const std::string cfg = write_config(name, j);
  Job job{-1, fresh(name), root() / (name + ".err")};
  // exec, so that the pid is mpirun's own (it takes SIGUSR1 for its ranks).
  const std::string cmd = "exec " + mpirun(2) + std::getenv("DSV3_BIN") + " " + train_args(cfg, job.out) +
                          " 2>" + job.err.string();
  job.pid = ::fork();
  if (job.pid == 0) {
    ::setpgid(0, 0);
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::setpgid(job.pid, job.pid);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string m = read(job.out / "metrics.jsonl");
    if (size_t(std::count(m.begin(), m.end(), '\n')) >= steps) return job;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(-job.pid, SIGKILL);
  ::waitpid(job.pid, nullptr, 0);
  ADD_FAILURE() << "the job did not start training: " << read(job.err);
  job.pid = -1;
  return job;
}

// Waits up to `seconds` for the job to end (killing its group if it does not): its status.
bool wait_job(const Job& job, int seconds, int* status) {
  const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < limit) {
    if (::waitpid(job.pid, status, WNOHANG) == job.pid) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(-job.pid, SIGKILL);
  ::waitpid(job.pid, status, 0);
  return false;
}

// `kill -USR1 <mpirun>`: mpirun forwards SIGUSR1 to every rank (SIGINT/SIGTERM it turns into
// SIGTERM and, a second later, SIGKILL); the ranks agree on the step, save a checkpoint and
// exit 138; the checkpoint resumes with the bits of an uninterrupted run.
TEST(DistTrainCli, Sigusr1StopsWithACheckpointThatResumes) {
  NEED_MPIRUN();
  const Job job = start_long_job("usr1", 3);
  ASSERT_GT(job.pid, 0);
  ASSERT_EQ(::kill(job.pid, SIGUSR1), 0);
  int st = 0;
  ASSERT_TRUE(wait_job(job, 60, &st)) << "the job did not stop on SIGUSR1";
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 138) << read(job.err);
  const std::string name = latest(job.out);
  ASSERT_FALSE(name.empty()) << read(job.err);
  EXPECT_NE(read(job.err).find("SIGUSR1 received; saved"), std::string::npos) << read(job.err);
  const int64_t stopped = std::stoll(name.substr(5));
  // Resume for 2 more steps in one process with 2 micro-batches, against an uninterrupted run.
  const std::string cfg_long = (root() / "configs" / "usr1.json").string();
  const CliRun r = cli(train_args(cfg_long, job.out) + " --resume --micro-batches 2 --steps " +
                       std::to_string(stopped + 2));
  ASSERT_EQ(r.rc, 0) << r.err;
  const fs::path ref = fresh("usr1-ref");
  ASSERT_EQ(cli(train_args(cfg_long, ref) + " --micro-batches 2 --steps " + std::to_string(stopped + 2)).rc, 0);
  const std::vector<json> a = metrics(job.out), b = metrics(ref);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) expect_same_metrics(a[i], b[i]);
  EXPECT_TRUE(master_params(job.out / latest(job.out)) == master_params(ref / latest(ref)));
}

TEST(DistTrainCli, AKilledRankEndsTheJobInsteadOfHanging) {
  NEED_MPIRUN();
  const Job job = start_long_job("killed", 3);
  ASSERT_GT(job.pid, 0);
  const fs::path out = job.out;
  // Kill rank 1 as a crash would (SIGKILL: no handler runs).
  const pid_t victim = find_rank(1, out.string());
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  // mpirun must notice and end rank 0, which may be blocked in a collective with rank 1.
  int st = 0;
  const bool ended = wait_job(job, 60, &st);
  EXPECT_TRUE(ended) << "the job hung after a rank died";
  EXPECT_FALSE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the job reported success after a rank died";
  EXPECT_EQ(find_rank(0, out.string()), -1) << "rank 0 outlived the job";
}

}  // namespace
}  // namespace dsv3

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  dsv3::dist::Comm::world();  // initialises MPI under mpirun
  // Only rank 0 prints gtest's report (the others' failures still fail the job's exit code).
  if (dsv3::dist::Comm::world().rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  int32_t any = rc;
  dsv3::dist::Comm::world().allreduce_max(&any, 1);
  dsv3::dist::finalize();
  return any;
}
