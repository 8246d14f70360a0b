// `dsv3 bench stage`: the costs of one pipeline stage per micro-batch, F (forward), B (full
// backward) and W (its weight-gradient part), for `dsv3 pipeline-sim` (docs/pipeline.md;
// bench/dist/pipeline.sh). A middle stage of DeepSeek-V3 is a run of MoE layers: the config's
// model with every layer MoE, no MTP, and `--layers` layers is timed against the same model
// with one layer, so the embedding, final norm, head and loss cancel in the difference:
//   F = fwd(1 + L) − fwd(1),   F + B = step(1 + L) − step(1)
// with fwd = TrainModel::step without gradients (the training forward: same work, same saved
// state) and step = forward + backward. W is not timed: it is B's weight-gradient share of the
// backward FLOPs, 2·N_lin / (4·N_lin + 4·A) per token (N_lin the active linear weights, whose
// backward is a dgrad and a wgrad GEMM of 2 FLOPs per weight each; A the causal attention's
// multiply-adds, QKᵀ and PV, whose backward has no weights). One process: the expert-parallel
// all-to-alls of a real stage are not in F or B.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "benches.h"
#include "core/check.h"
#include "core/clock.h"
#include "core/parallel.h"
#include "model/config.h"
#include "train/params.h"
#include "train/tlinear.h"
#include "train/train_model.h"

namespace dsv3::bench {
namespace {

struct StageOpts {
  std::string config;
  int64_t layers = 4, batch = 1, seq = 4096, vocab = 1024, reps = 5;
  std::string precision = "bf16";
  int threads = 0;
  bool json = false;
};

// One model of `layers` MoE layers and its timings, alternated with the other's.
struct Timed {
  std::unique_ptr<ParamSet> ps;
  std::vector<float> params, grads;
  std::unique_ptr<TrainModel> model;
  std::vector<double> fwd, full;
};

void make(Timed& t, ModelConfig c, int64_t layers, const TrainModelOptions& mo) {
  c.num_hidden_layers = layers;
  t.ps = std::make_unique<ParamSet>(c, false);
  t.params.resize(size_t(t.ps->numel()));
  t.grads.resize(size_t(t.ps->numel()));
  t.ps->init(t.params.data(), 1);
  t.model = std::make_unique<TrainModel>(*t.ps, mo);
}

double timed(Timed& t, const int32_t* ids, bool grads) {
  const double t0 = now_s();
  t.model->step(ids, t.params.data(), grads ? t.grads.data() : nullptr);
  return now_s() - t0;
}

void run_stage_bench(const StageOpts& o) {
  DSV3_CHECK(o.layers >= 1 && o.batch >= 1 && o.seq >= 1 && o.reps >= 1,
             "--layers, --batch, --seq and --reps must be ≥ 1");
  if (o.threads > 0) set_num_threads(o.threads);
  ModelConfig c = load_model_config(o.config);
  DSV3_CHECK(c.n_routed_experts > 0, o.config, ": not an MoE model (n_routed_experts = 0)");
  c.first_k_dense_replace = 0;  // a middle stage: MoE layers only
  c.moe_layer_freq = 1;
  c.num_nextn_predict_layers = 0;
  c.vocab_size = o.vocab;  // the head cancels; a small one keeps it out of the noise
  TrainModelOptions mo;
  mo.batch = o.batch;
  mo.seq_len = o.seq;
  mo.precision = parse_precision(o.precision.c_str());
  mo.mtp = false;
  mo.threads = o.threads;
  Timed one, many;
  make(one, c, 1, mo);
  make(many, c, 1 + o.layers, mo);

  std::vector<int32_t> ids(size_t(o.batch * (o.seq + 1)));
  uint32_t seed = 7;
  for (auto& id : ids) id = int32_t(lcg(seed) % uint32_t(c.vocab_size));
  timed(one, ids.data(), true);  // warm-up: scratch grows to size
  timed(many, ids.data(), true);
  for (int64_t r = 0; r < o.reps; ++r) {  // interleaved, so drift hits both alike
    one.fwd.push_back(timed(one, ids.data(), false));
    many.fwd.push_back(timed(many, ids.data(), false));
    one.full.push_back(timed(one, ids.data(), true));
    many.full.push_back(timed(many, ids.data(), true));
  }
  const double F = median(many.fwd) - median(one.fwd);
  const double B = median(many.full) - median(one.full) - F;

  // Weights and attention multiply-adds per token and layer (as bench train counts them).
  const double H = double(c.hidden_size), nh = double(c.num_attention_heads);
  const double dqk = double(c.qk_head_dim()), dv = double(c.v_head_dim);
  const double r = double(c.kv_lora_rank), qr = double(c.q_lora_rank);
  double lin = qr > 0 ? qr * H + nh * dqk * qr : nh * dqk * H;
  lin += (r + double(c.qk_rope_head_dim)) * H + nh * (double(c.qk_nope_head_dim) + dv) * r + H * nh * dv;
  lin += double(c.n_routed_experts) * H +
         double(c.num_experts_per_tok + c.n_shared_experts) * 3.0 * H * double(c.moe_intermediate_size);
  const double attn = nh * (dqk + dv) * double(o.seq + 1) / 2.0;  // multiply-adds per token
  const double w_share = 2.0 * lin / (4.0 * lin + 4.0 * attn);
  const double W = w_share * B;
  const int threads = resolve_threads(o.threads);
  if (o.json) {
    std::printf("{\"bench\":\"stage\",\"config\":\"%s\",\"layers\":%lld,\"batch\":%lld,\"seq\":%lld,"
                "\"precision\":\"%s\",\"threads\":%d,\"reps\":%lld,\"F\":%.4f,\"B\":%.4f,\"W\":%.4f,"
                "\"w_share\":%.4f,\"b_over_f\":%.3f,"
                "\"fwd_1\":%.4f,\"fwd_n\":%.4f,\"step_1\":%.4f,\"step_n\":%.4f}\n",
                o.config.c_str(), (long long)o.layers, (long long)o.batch, (long long)o.seq,
                o.precision.c_str(), threads, (long long)o.reps, F, B, W, w_share, B / F,
                median(one.fwd), median(many.fwd), median(one.full), median(many.full));
    return;
  }
  std::printf("stage of %lld MoE layers of %s, micro-batch %lld x %lld tokens, %s, threads %d, "
              "medians of %lld:\n"
              "  forward %.3f s (1 layer) / %.3f s (%lld layers); forward+backward %.3f / %.3f s\n"
              "  F = %.4f s  B = %.4f s (B/F %.2f; 2 by FLOPs)  W = %.4f s (%.1f%% of B, by FLOPs)\n",
              (long long)o.layers, o.config.c_str(), (long long)o.batch, (long long)o.seq,
              o.precision.c_str(), threads, (long long)o.reps, median(one.fwd), median(many.fwd),
              (long long)(1 + o.layers), median(one.full), median(many.full), F, B, B / F, W,
              100.0 * w_share);
}

}  // namespace

void add_stage(CLI::App& bench) {
  auto o = std::make_shared<StageOpts>();
  CLI::App* s = bench.add_subcommand("stage", "Pipeline-stage F, B, W per micro-batch (for pipeline-sim)");
  s->add_option("--config", o->config, "Model config.json with routed experts, e.g. configs/bench-v3-1b.json")->required();
  s->add_option("--layers", o->layers, "MoE layers in the stage (default 4: 61 layers / 16 stages)");
  s->add_option("--batch", o->batch, "Sequences per micro-batch (default 1)");
  s->add_option("--seq", o->seq, "Tokens per sequence (default 4096)");
  s->add_option("--vocab", o->vocab, "Vocabulary of the timed models (cancels; default 1024)");
  s->add_option("--precision", o->precision, "f32 | bf16 | fp8 (default bf16)");
  s->add_option("--reps", o->reps, "Timed repetitions (median; default 5)");
  s->add_option("--threads", o->threads, "Threads (default: all cores)");
  s->add_flag("--json", o->json, "One JSON line");
  s->callback([o] { run_stage_bench(*o); });
}

}  // namespace dsv3::bench
