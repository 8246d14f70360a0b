// `dsv3 bench train`: training-step throughput on random weights and random token batches
// (no data set needed): the step `dsv3 train` runs in one process (TrainStep: forward and
// backward, global-norm clipping, AdamW, the router-bias update), timed per step; median
// after 2 warm-up steps. Reports tokens/s, the model FLOPs per token (formula in
// train_flops_per_token) and the achieved fraction of the machine's GEMM peak measured in
// the same run (bench/train_vs_torch.sh compares with PyTorch).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "benches.h"
#include "core/clock.h"
#include "core/check.h"
#include "core/parallel.h"
#include "kernels/gemm.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/train_config.h"
#include "train/train_model.h"
#include "train/train_step.h"
#include "train/train_weights.h"
#include "parallel/comm.h"
#include "parallel/layout.h"

namespace dsv3::bench {
namespace {


struct TrainBenchOpts {
  std::string config;
  int64_t steps = 10;
  std::string precision;  // default: the config's
  int threads = 0;
  bool json = false;
};

bool is_moe(const ModelConfig& c, int64_t l) {
  return c.n_routed_experts > 0 && l >= c.first_k_dense_replace && l % c.moe_layer_freq == 0;
}

// Weights one token multiplies in one block (MLA projections; dense SwiGLU, or router + shared
// + top-k routed experts).
double block_active_params(const ModelConfig& c, int64_t l) {
  const double H = double(c.hidden_size), nh = double(c.num_attention_heads);
  const double dn = double(c.qk_nope_head_dim), dr = double(c.qk_rope_head_dim);
  const double dv = double(c.v_head_dim), r = double(c.kv_lora_rank), qr = double(c.q_lora_rank);
  double p = qr > 0 ? qr * H + nh * (dn + dr) * qr : nh * (dn + dr) * H;  // q_a + q_b (or q_proj)
  p += (r + dr) * H + nh * (dn + dv) * r + H * nh * dv;                   // kv_a, kv_b, o_proj
  if (is_moe(c, l))
    p += double(c.n_routed_experts) * H +  // router
         double(c.num_experts_per_tok + c.n_shared_experts) * 3.0 * H * double(c.moe_intermediate_size);
  else
    p += 3.0 * H * double(c.intermediate_size);
  return p;
}

// Model FLOPs per trained token (fwd + bwd), the usual 6N + attention accounting:
//   6 · N_act  with N_act = Σ_blocks block_active_params + V·H (lm_head)
//                         + per MTP module (2H·H eh_proj + V·H its head); the embedding
//                           lookups are excluded (no multiply);
// + 6 · (L + D) · nh · (d_qk + d_v) · (T + 1)/2  attention: QKᵀ and PV over the mean causal
//   context (T+1)/2, 2 FLOPs per multiply-add, ×3 for forward + backward.
// Every MTP module runs over all T positions (docs/training.md), so it counts per token too.
double train_flops_per_token(const ModelConfig& c, bool mtp, int64_t T, double* n_act) {
  const double H = double(c.hidden_size), V = double(c.vocab_size);
  const int64_t D = mtp ? c.num_nextn_predict_layers : 0;
  double p = V * H;
  for (int64_t l = 0; l < c.num_hidden_layers + D; ++l) p += block_active_params(c, l);
  p += double(D) * (2.0 * H * H + V * H);
  const double dqk = double(c.qk_nope_head_dim + c.qk_rope_head_dim), dv = double(c.v_head_dim);
  const double attn = 6.0 * double(c.num_hidden_layers + D) * double(c.num_attention_heads) *
                      (dqk + dv) * double(T + 1) / 2.0;
  *n_act = p;
  return 6.0 * p + attn;
}

void run_train_bench(const TrainBenchOpts& o) {
  DSV3_CHECK(!o.config.empty(), "dsv3 bench train needs --config (a training config, e.g. configs/tiny.json)");
  DSV3_CHECK(o.steps >= 1, "--steps must be ≥ 1");
  if (o.threads > 0) set_num_threads(o.threads);
  const int threads = resolve_threads(o.threads);
  const TrainConfig cfg = load_train_config(o.config);
  const Precision prec = o.precision.empty() ? cfg.precision : parse_precision(o.precision.c_str());
  const ModelConfig& c = cfg.model;

  // The trainer's own step (train/train_step.h) in one process: gradient arena zeroed,
  // forward and backward, global norm, clipping, AdamW, router-bias update.
  TrainConfig run = cfg;
  run.precision = prec;
  ParamSet ps(c, run.mtp);
  const dist::Comm one_rank;
  const Layout lay = make_layout(ParallelConfig{}, c, run.batch, 1, 0);
  TrainStep step(run, ps, lay, one_rank, one_rank, o.threads);
  TrainWeights params(ps, false);
  ps.init(params.mutable_data(), run.seed);

  const int64_t B = run.batch, T = run.seq_len;
  std::vector<int32_t> ids(size_t(B * (T + 1)));  // [B, T + 1]
  uint32_t seed = 12345;
  const int warmup = 2;
  std::vector<double> secs, cpu;  // wall and process CPU seconds per step (the CPU time
  double loss = 0;                // shows the work done when other processes share the cores)
  for (int64_t s = 0; s < warmup + o.steps; ++s) {
    for (auto& id : ids) id = int32_t(lcg(seed) % uint32_t(c.vocab_size));
    const double t0 = now_s(), c0 = double(std::clock()) / CLOCKS_PER_SEC;
    const StepResult r = step.compute(ids.data(), params, s);
    DSV3_CHECK(r.finite, "dsv3 bench train: step ", s + 1, " gave a non-finite loss or gradient");
    step.apply(params, r, s);
    if (s >= warmup) {
      secs.push_back(now_s() - t0);
      cpu.push_back(double(std::clock()) / CLOCKS_PER_SEC - c0);
    }
    loss = r.losses.total;
  }
  const double sec = median(secs), cpu_s = median(cpu);
  const double tok = double(B * T), tps = tok / sec;
  double n_act = 0;
  const double fpt = train_flops_per_token(c, cfg.mtp, T, &n_act);
  const double gflops = fpt * tps * 1e-9;
  const bool bf16_peak = prec != Precision::F32;
  const double peak = gemm_peak_gflops(bf16_peak, threads);
  const char* pname = precision_name(prec);
  if (o.json) {
    std::printf("{\"bench\":\"train\",\"impl\":\"dsv3\",\"precision\":\"%s\",\"threads\":%d,\"batch\":%lld,"
                "\"seq_len\":%lld,\"params\":%lld,\"active_params\":%.0f,\"steps\":%lld,"
                "\"step_s\":%.4f,\"cpu_s\":%.4f,\"tokens_per_s\":%.1f,\"flops_per_token\":%.0f,\"gflops\":%.2f,"
                "\"peak_gflops\":%.1f,\"peak_kind\":\"%s\",\"mfu\":%.4f,\"last_loss\":%.4f}\n",
                pname, threads, (long long)B, (long long)T, (long long)ps.numel(), n_act,
                (long long)o.steps, sec, cpu_s, tps, fpt, gflops, peak, bf16_peak ? "bf16_gemm_2048" : "f32_gemm_2048",
                gflops / peak, loss);
    return;
  }
  std::printf("train %s, batch %lld x %lld tokens, threads %d: %lld params (%.0f active per token)\n"
              "  step %.3f s median of %lld (after %d warm-up; %.3f s of process CPU time), %.0f tokens/s\n"
              "  %.3g FLOP/token (6·N_active + attention) -> %.1f GFLOP/s; %s GEMM 2048^3 peak "
              "%.1f GFLOP/s: MFU %.1f%%\n",
              pname, (long long)B, (long long)T, threads, (long long)ps.numel(), n_act, sec,
              (long long)o.steps, warmup, cpu_s, tps, fpt, gflops, bf16_peak ? "BF16" : "F32", peak,
              100.0 * gflops / peak);
}

}  // namespace

void add_train(CLI::App& bench) {
  auto o = std::make_shared<TrainBenchOpts>();
  CLI::App* t = bench.add_subcommand("train", "Training-step tokens/s and MFU on random weights and tokens");
  t->add_option("--config", o->config, "Training config (model + batch), e.g. configs/tiny.json")->required();
  t->add_option("--steps", o->steps, "Timed steps (after 2 warm-up steps; median)");
  t->add_option("--precision", o->precision, "f32 | bf16 | fp8 (default: the config's)");
  t->add_option("--threads", o->threads, "Threads (default: all cores)");
  t->add_flag("--json", o->json, "One JSON line");
  t->callback([o] { run_train_bench(*o); });
}

}  // namespace dsv3::bench
