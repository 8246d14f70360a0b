// dsv3 bench decode  (--model DIR | --config JSON [--format fp8]) [--context 256,8192]
//                    [--kv-cache f32,bf16,fp8] [--steps 32] [--threads T] [--json]
//   Batch-1 decode tokens/s at each context length and stored cache form, beside the
//   memory-bandwidth roofline
//   measured in the same run: bytes each token must read (the weights a decode step touches,
//   Model::decode_bytes_per_token, plus the latent cache at that context) ÷ stream-read
//   bandwidth (kernels/gemv.h stream_read over 512 MB).
// dsv3 bench decode ... --batch 1,16 [--batch-mode invariant|fast] [--profile]
//   The serving engine's decode step instead: B sequences, each one token at the same context,
//   in one Model::forward_batch over a paged latent pool (block tables as dsv3 serve keeps
//   them). Per context and B: the step time (median), aggregate tokens/s and its ratio to
//   B = 1 — what continuous batching can gain before HTTP, scheduling and prefill.
// dsv3 bench prefill (--model DIR | --config JSON) [--tokens 512] [--reps 3] [--threads T] [--json]
//   Prefill tokens/s and model GFLOP/s beside the machine's BF16 FLOP limit, measured in the
//   same run as our BF16 GEMM at 2048³.
// With --config the benchmark first writes a checkpoint of random weights in the real layout
// (dsv3 init) to a temporary directory, removed afterwards.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "benches.h"
#include "cli/model_args.h"
#include "core/clock.h"
#include "core/check.h"
#include "core/parallel.h"
#include "core/tensor.h"
#include "io/random_checkpoint.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"
#include "model/model.h"
#include "model/mla.h"
#include "serve/kv_pool.h"

namespace dsv3::bench {
namespace {

namespace fs = std::filesystem;


struct ModelBenchOpts {
  std::string model, config, format = "fp8", contexts = "256,8192", batches, batch_mode = "invariant";
  std::string activations = "f32", kv_cache = "bf16", weights = "huge";
  int64_t steps = 32, tokens = 512, reps = 3;
  int threads = 0;
  bool json = false, profile = false;
};

// Resolves --model / --config: a directory to load, and (for --config) the temporary one to
// remove afterwards.
struct ModelDir {
  std::string dir;
  bool temporary = false;
  ~ModelDir() {
    if (temporary) {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  }
};

void prepare(const ModelBenchOpts& o, ModelDir& md) {
  DSV3_CHECK(o.model.empty() != o.config.empty(), "give exactly one of --model and --config");
  if (!o.model.empty()) {
    md.dir = o.model;
    return;
  }
  ModelConfig c = load_model_config(o.config);
  md.dir = (fs::temp_directory_path() / ("dsv3_bench_model_" + std::to_string(::getpid()))).string();
  fs::remove_all(md.dir);
  fs::create_directories(md.dir);
  md.temporary = true;
  RandomCheckpointOptions ro;
  ro.format = parse_checkpoint_format(o.format);
  ro.with_mtp = false;
  std::fprintf(stderr, "writing random %s weights for %s to %s ...\n", o.format.c_str(),
               o.config.c_str(), md.dir.c_str());
  const double t0 = now_s();
  const uint64_t bytes = write_random_checkpoint(c, md.dir, ro);
  std::fprintf(stderr, "  %.2f GB in %.1f s\n", double(bytes) * 1e-9, now_s() - t0);
}

// The benchmarked model: --model, or random weights of --config (md holds that directory
// until the end); no MTP modules, these threads, --activations. The weights are made resident
// before timing (--weights, Model::make_resident): a short run would otherwise time the first
// touch of each expert, which a running server has long paid.
std::unique_ptr<Model> open_model(const ModelBenchOpts& o, int threads, ModelDir& md) {
  prepare(o, md);
  ModelOptions mo;
  mo.with_mtp = false;
  mo.threads = threads;
  mo.bf16_activations = cli::parse_activations(o.activations);
  // The first of a --kv-cache list (run_decode measures each; --batch and prefill the first).
  mo.kv_cache = CacheDtype(cli::parse_kv_cache(o.kv_cache.substr(0, o.kv_cache.find(','))));
  const bool huge = cli::parse_weights_memory(o.weights);
  auto m = std::make_unique<Model>(md.dir, mo);
  cli::make_weights_resident(*m, huge, "bench");
  return m;
}

// n stored latent rows of R values (cache_row_bytes(d, R) bytes each) from uniform values in
// [−1, 1]: a decode step's work depends on the number of cached positions, not their values
// (a real prefill of 8K tokens would dominate the run).
void fill_random_rows(uint8_t* dst, int64_t n, int64_t R, CacheDtype d, uint32_t& seed) {
  std::vector<float> row(static_cast<size_t>(R));
  const int64_t rb = cache_row_bytes(d, R);
  for (int64_t p = 0; p < n; ++p) {
    for (float& v : row) v = float(int32_t(lcg(seed) % 2001) - 1000) * 1e-3f;
    cache_encode_row(dst + p * rb, row.data(), R, d);
  }
}

// --batch: the serving step (see the header).
void run_decode_batched(const ModelBenchOpts& o) {
  DSV3_CHECK(o.batch_mode == "invariant" || o.batch_mode == "fast",
             "--batch-mode: expected 'invariant' or 'fast', got '", o.batch_mode, "'");
  const std::vector<int32_t> ctxs = cli::parse_id_list(o.contexts, "--context");
  const std::vector<int32_t> batches = cli::parse_id_list(o.batches, "--batch");
  if (o.threads > 0) set_num_threads(o.threads);
  const int threads = resolve_threads(o.threads);
  ModelDir md;
  const std::unique_ptr<Model> mp = open_model(o, threads, md);
  Model& m = *mp;
  const ModelConfig& c = m.config();
  const int64_t V = m.vocab(), R = serve::kBlockRows, row = mla_cache_row(c);
  const int64_t L = c.num_hidden_layers;
  std::printf("%8s %6s %10s %12s %10s   (threads %d, batch mode %s)\n", "context", "batch",
              "step ms", "tokens/s", "x batch 1", threads, o.batch_mode.c_str());
  uint32_t seed = 12345;
  for (int32_t ctx : ctxs) {
    DSV3_CHECK(ctx >= 1, "--context entries must be ≥ 1");
    double tps1 = 0;
    for (int32_t B : batches) {
      DSV3_CHECK(B >= 1 && B <= 1024, "--batch entries must be in [1, 1024], got ", B);
      const int64_t per_seq = (int64_t(ctx) + o.steps + R) / R;
      const int64_t n_blocks = per_seq * B;
      const CacheDtype kv = m.kv_cache_dtype();
      std::vector<uint8_t> data(static_cast<size_t>(L * n_blocks * R * cache_row_bytes(kv, row)));
      fill_random_rows(data.data(), L * n_blocks * R, row, kv, seed);
      KvPoolView view{data.data(), n_blocks, R, row, kv};
      std::vector<int32_t> tables(static_cast<size_t>(n_blocks));
      for (int64_t i = 0; i < n_blocks; ++i) tables[size_t(i)] = int32_t(i);
      m.reserve_positions(int64_t(ctx) + o.steps + 1);
      std::vector<int32_t> ids(static_cast<size_t>(B));
      std::vector<float> logits(static_cast<size_t>(B * V));
      std::vector<BatchSeq> seqs(static_cast<size_t>(B));
      ForwardScratch s;
      ForwardProfile prof;
      std::vector<double> step_s;
      for (int64_t t = 0; t < o.steps; ++t) {
        for (int32_t b = 0; b < B; ++b) {
          ids[size_t(b)] = int32_t(lcg(seed) % uint32_t(V));
          BatchSeq& q = seqs[size_t(b)];
          q.ids = &ids[size_t(b)];
          q.T = 1;
          q.p0 = ctx + t;
          q.table = tables.data() + b * per_seq;
          q.logits = logits.data() + b * V;
        }
        const double t0 = now_s();
        m.forward_batch(view, seqs.data(), B, o.batch_mode == "invariant", s,
                        o.profile && t > 0 ? &prof : nullptr);
        step_s.push_back(now_s() - t0);
      }
      step_s.erase(step_s.begin());
      const double step = median(step_s), tps = double(B) / step;
      if (B == 1) tps1 = tps;
      std::printf("%8d %6d %10.2f %12.2f %10s\n", ctx, B, step * 1e3, tps,
                  tps1 > 0 ? (std::to_string(tps / tps1).substr(0, 5) + "x").c_str() : "-");
      if (o.profile && prof.calls > 0) {
        const double n = double(prof.calls) * 1e-3;
        std::printf("         ms per step: attention %.2f, ffn %.2f, norms %.2f, head %.2f\n",
                    prof.attn / n, prof.ffn / n, prof.norm / n, prof.head / n);
      }
      std::fflush(stdout);
    }
  }
}

void run_decode(const ModelBenchOpts& o) {
  DSV3_CHECK(o.steps >= 3 && o.steps <= 100000, "--steps must be in [3, 100000], got ", o.steps);
  if (!o.batches.empty()) return run_decode_batched(o);
  const std::vector<int32_t> ctxs = cli::parse_id_list(o.contexts, "--context");
  // --kv-cache may list several stored forms: each is measured at every context, in this run.
  std::vector<CacheDtype> kvs;
  for (int d : cli::parse_kv_cache_list(o.kv_cache)) kvs.push_back(CacheDtype(d));
  if (o.threads > 0) set_num_threads(o.threads);
  const int threads = resolve_threads(o.threads);
  ModelDir md;
  const std::unique_ptr<Model> mp = open_model(o, threads, md);
  Model& m = *mp;
  const ModelConfig& c = m.config();
  const double wbytes = double(m.decode_bytes_per_token());
  const double bw0 = measure_membw(threads);
  struct Row { int64_t ctx; CacheDtype kv; double tps, cache_bytes, roof_w, roof; };
  std::vector<Row> rows;
  uint32_t seed = 12345;
  for (CacheDtype kv : kvs) {
    for (int32_t ctx : ctxs) {
      DSV3_CHECK(ctx >= 1, "--context entries must be ≥ 1");
      KvCache cache = m.new_cache(int64_t(ctx) + o.steps + 1, kv);
      // The cache of a `ctx`-token context: random latent rows (fill_random_rows).
      for (int64_t l = 0; l < cache.n_main; ++l)
        fill_random_rows(cache.layer(l).base, ctx, cache.row, cache.dtype, seed);
      cache.len = ctx;
      ForwardScratch s;
      std::vector<float> logits(static_cast<size_t>(m.vocab()));
      std::vector<double> step_s;
      ForwardProfile prof;
      uint64_t regions0 = 0;
      for (int64_t i = 0; i < o.steps; ++i) {
        if (i == 1) regions0 = parallel_regions_run();
        const int32_t id = int32_t(lcg(seed) % uint32_t(m.vocab()));
        ForwardArgs a;
        a.ids = &id;
        a.T = 1;
        a.logits = logits.data();
        if (o.profile && i > 0) a.profile = &prof;
        const double t0 = now_s();
        m.forward(cache, a, s);
        step_s.push_back(now_s() - t0);
      }
      if (o.profile && prof.calls > 0) {
        const double n = double(prof.calls) * 1e-3;
        std::fprintf(stderr, "context %d, %s cache, ms per step: attention %.2f, ffn %.2f, norms %.2f, head %.2f; "
                     "%.0f parallel regions per step\n",
                     ctx, cache_dtype_name(kv), prof.attn / n, prof.ffn / n, prof.norm / n, prof.head / n,
                     double(parallel_regions_run() - regions0) / double(o.steps - 1));
      }
      step_s.erase(step_s.begin());  // warm-up step (page faults of the mmapped weights)
      Row r;
      r.ctx = ctx;
      r.kv = kv;
      r.tps = 1.0 / median(step_s);
      r.cache_bytes = double(ctx) * double(cache.row_bytes) * double(c.num_hidden_layers);
      r.roof_w = bw0 * 1e9 / wbytes;
      r.roof = bw0 * 1e9 / (wbytes + r.cache_bytes);
      rows.push_back(r);
    }
  }
  const double bw1 = measure_membw(threads);
  const ParamCounts pc = count_parameters(c);
  // Stored bytes per token over all layers (kv_cache_elems_mla counts values).
  auto kv_bytes = [&](CacheDtype kv) {
    return (long long)(c.num_hidden_layers * cache_row_bytes(kv, mla_cache_row(c)));
  };
  if (o.json) {
    std::printf("{\"bench\":\"decode\",\"threads\":%d,\"params_main\":%lld,\"activated\":%lld,"
                "\"decode_bytes\":%.0f,\"membw_gbps\":[%.2f,%.2f],\"kv_cache\":\"%s\","
                "\"kv_bytes_per_token\":%lld,\"kv_bytes_per_token_mha\":%lld,\"runs\":[",
                threads, (long long)pc.main_total(), (long long)pc.activated, wbytes, bw0, bw1,
                cache_dtype_name(kvs[0]), kv_bytes(kvs[0]), (long long)(kv_cache_elems_mha(c) * 4));
    for (size_t i = 0; i < rows.size(); ++i)
      std::printf("%s{\"context\":%lld,\"kv_cache\":\"%s\",\"tokens_per_s\":%.2f,\"cache_bytes\":%.0f,"
                  "\"roofline_tps\":%.2f,\"roofline_weights_only_tps\":%.2f,\"of_roofline\":%.3f}",
                  i ? "," : "", (long long)rows[i].ctx, cache_dtype_name(rows[i].kv), rows[i].tps,
                  rows[i].cache_bytes, rows[i].roof, rows[i].roof_w, rows[i].tps / rows[i].roof);
    std::printf("]}\n");
    return;
  }
  std::printf("model %s: %.2fB parameters (main), %.1fM activated per token, threads %d\n",
              md.temporary ? o.config.c_str() : o.model.c_str(), double(pc.main_total()) * 1e-9,
              double(pc.activated) * 1e-6, threads);
  std::printf("weights read per decode step %.1f MB; KV cache per token: ", wbytes * 1e-6);
  for (CacheDtype kv : kvs) std::printf("%lld B (%s), ", kv_bytes(kv), cache_dtype_name(kv));
  std::printf("MHA of the same heads in F32 %lld B\n", (long long)(kv_cache_elems_mha(c) * 4));
  std::printf("membw %.1f GB/s before, %.1f GB/s after\n", bw0, bw1);
  std::printf("%8s %6s %12s %14s %16s %12s %10s\n", "context", "cache", "tokens/s", "cache MB read",
              "roofline tok/s", "of roofline", "x first");
  for (const Row& r : rows) {
    // The same context's speed with the first listed cache form.
    double base = 0;
    for (const Row& q : rows)
      if (q.ctx == r.ctx && q.kv == kvs[0]) base = q.tps;
    std::printf("%8lld %6s %12.2f %14.1f %16.2f %11.1f%% %9.2fx\n", (long long)r.ctx,
                cache_dtype_name(r.kv), r.tps, r.cache_bytes * 1e-6, r.roof, 100.0 * r.tps / r.roof,
                base > 0 ? r.tps / base : 0.0);
  }
}

void run_prefill(const ModelBenchOpts& o) {
  DSV3_CHECK(o.tokens >= 1, "--tokens must be ≥ 1");
  DSV3_CHECK(o.reps >= 1, "--reps must be ≥ 1");
  if (o.threads > 0) set_num_threads(o.threads);
  const int threads = resolve_threads(o.threads);
  ModelDir md;
  const std::unique_ptr<Model> mp = open_model(o, threads, md);
  Model& m = *mp;
  const ModelConfig& c = m.config();
  const int64_t T = o.tokens;
  DSV3_CHECK(T <= c.max_position_embeddings, "--tokens exceeds max_position_embeddings");
  std::vector<int32_t> ids(static_cast<size_t>(T));
  uint32_t seed = 99;
  for (auto& id : ids) id = int32_t(lcg(seed) % uint32_t(m.vocab()));
  ForwardScratch s;
  std::vector<float> logits(static_cast<size_t>(m.vocab()));
  std::vector<double> secs;
  for (int64_t r = 0; r <= o.reps; ++r) {
    KvCache cache = m.new_cache(T);
    ForwardArgs a;
    a.ids = ids.data();
    a.T = T;
    a.logits = logits.data();
    a.logits_from = T - 1;
    const double t0 = now_s();
    m.forward(cache, a, s);
    if (r > 0) secs.push_back(now_s() - t0);  // the first run faults the weights in
  }
  const double sec = median(secs);
  // Model FLOPs: 2 per activated parameter per token (the head only for the last token),
  // plus causal attention: per layer and head, q·k over qk_head_dim and p·v over v_head_dim
  // for (T+1)/2 positions on average.
  const ParamCounts pc = count_parameters(c);
  const double head = double(c.vocab_size) * double(c.hidden_size);
  const double attn = double(c.num_hidden_layers) * double(c.num_attention_heads) *
                      double(c.qk_head_dim() + c.v_head_dim) * 2.0 * double(T) * double(T + 1) / 2.0;
  const double flops = 2.0 * (double(pc.activated) - head) * double(T) + 2.0 * head + attn;
  const double gflops = flops / sec * 1e-9;
  const double peak = gemm_peak_gflops(true, threads);
  if (o.json) {
    std::printf("{\"bench\":\"prefill\",\"threads\":%d,\"tokens\":%lld,\"seconds\":%.4f,"
                "\"tokens_per_s\":%.2f,\"model_gflops\":%.1f,\"bf16_gemm_peak_gflops\":%.1f,"
                "\"of_peak\":%.3f}\n",
                threads, (long long)T, sec, double(T) / sec, gflops, peak, gflops / peak);
    return;
  }
  std::printf("prefill %lld tokens, threads %d: %.3f s median, %.1f tokens/s, %.1f GFLOP/s of "
              "model FLOPs; BF16 GEMM 2048^3 (the FLOP limit) %.1f GFLOP/s: %.1f%% of it\n",
              (long long)T, threads, sec, double(T) / sec, gflops, peak, 100.0 * gflops / peak);
}

void add_common(CLI::App* c, ModelBenchOpts& o) {
  c->add_option("--model", o.model, "Model directory");
  c->add_option("--config", o.config, "config.json: benchmark random weights of this shape");
  c->add_option("--format", o.format, "With --config: fp8 | bf16 | f32 (default fp8)");
  c->add_option("--threads", o.threads, "Threads (default: all cores)");
  c->add_option("--activations", o.activations, cli::kActivationsHelp);
  c->add_option("--kv-cache", o.kv_cache,
                 std::string(cli::kKvCacheHelp) + ". decode: a list measures each, e.g. f32,bf16,fp8");
  c->add_option("--weights", o.weights, cli::kWeightsHelp);
  c->add_flag("--json", o.json, "One JSON line");
}

}  // namespace

void add_model(CLI::App& bench) {
  auto o = std::make_shared<ModelBenchOpts>();
  CLI::App* d = bench.add_subcommand("decode", "Batch-1 decode tokens/s vs the memory-bandwidth roofline");
  add_common(d, *o);
  d->add_option("--context", o->contexts, "Context lengths to decode at, e.g. 256,8192");
  d->add_option("--steps", o->steps, "Decode steps per context (median)");
  d->add_flag("--profile", o->profile, "Print where the time goes (ms per step) to stderr");
  d->add_option("--batch", o->batches,
                "Sequences per step, e.g. 1,16: the serving engine's batched step instead");
  d->add_option("--batch-mode", o->batch_mode, "With --batch: invariant (default) | fast");
  d->callback([o] { run_decode(*o); });
  auto p = std::make_shared<ModelBenchOpts>();
  CLI::App* f = bench.add_subcommand("prefill", "Prefill tokens/s vs the BF16 FLOP limit");
  add_common(f, *p);
  f->add_option("--tokens", p->tokens, "Prompt length");
  f->add_option("--reps", p->reps, "Timed prefills after one untimed (median; default 3)");
  f->callback([p] { run_prefill(*p); });
}

}  // namespace dsv3::bench
