// dsv3 bench latent [--m 8] [--s 8192] [--r 320] [--dc 256] [--kv-cache f32,bf16,fp8]
//                   [--threads T] [--runs 15] [--json]
//   The decode attention over the latent cache alone (kernels/latent_attn.h): one layer's call
//   of M query rows (T·heads) over S cached positions, for each stored form of the cache, beside
//   the memory-bandwidth limit measured in the same run (stream_read). Enough independent
//   caches are cycled that each call reads its rows from memory (≥ 512 MB in all), as a decode
//   step does for each of its layers; the forms run interleaved round by round, medians.
//   Default shape: configs/bench-v3-1b.json (8 heads, kv_lora 256 + rope 64), one token.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "benches.h"
#include "cli/model_args.h"
#include "core/check.h"
#include "core/clock.h"
#include "core/parallel.h"
#include "kernels/latent_attn.h"
#include "kernels/latent_cache.h"

namespace dsv3::bench {
namespace {

struct LatentOpts {
  int64_t m = 8, s = 8192, r = 320, dc = 256;
  std::string kv = "f32,bf16,fp8";
  int threads = 0, runs = 15;
  bool json = false;
};

void run_latent(const LatentOpts& o) {
  DSV3_CHECK(o.m >= 1 && o.s >= 1 && o.r >= 1 && o.dc >= 1 && o.dc <= o.r,
             "need m, s, r, dc ≥ 1 and dc ≤ r");
  DSV3_CHECK(o.runs >= 3, "--runs must be ≥ 3");
  std::vector<CacheDtype> kvs;
  for (int d : cli::parse_kv_cache_list(o.kv)) kvs.push_back(CacheDtype(d));
  if (o.threads > 0) set_num_threads(o.threads);
  const int nt = resolve_threads(o.threads);
  // Copies of the F32-sized cache so that one round streams ≥ 512 MB per form.
  const int64_t f32_bytes = o.s * o.r * 4;
  const int copies = int(std::max<int64_t>(2, ((int64_t(512) << 20) + f32_bytes - 1) / f32_bytes));
  uint32_t seed = 7;
  std::vector<float> q(size_t(o.m * o.r)), out(size_t(o.m * o.dc)), row(size_t(o.r));
  for (float& v : q) v = float(int32_t(lcg(seed) % 2001) - 1000) * 1e-3f;
  std::vector<int32_t> valid(size_t(o.m), int32_t(o.s));
  struct Form { CacheDtype kv; std::vector<std::vector<uint8_t>> caches; std::vector<double> t; };
  std::vector<Form> forms;
  for (CacheDtype kv : kvs) {
    Form f;
    f.kv = kv;
    const int64_t rb = cache_row_bytes(kv, o.r);
    for (int c = 0; c < copies; ++c) {
      f.caches.emplace_back(size_t(o.s * rb));
      for (int64_t p = 0; p < o.s; ++p) {
        for (float& v : row) v = float(int32_t(lcg(seed) % 2001) - 1000) * 1e-3f;
        cache_encode_row(f.caches.back().data() + p * rb, row.data(), o.r, kv);
      }
    }
    forms.push_back(std::move(f));
  }
  const double bw0 = measure_membw(nt);
  auto round = [&](Form& f, bool keep) {
    for (int c = 0; c < copies; ++c) {
      LatentAttn a;
      a.o = out.data(); a.ldo = o.dc;
      a.q = q.data(); a.ldq = o.r;
      a.cache = f.caches[size_t(c)].data();
      a.dtype = f.kv;
      a.valid_len = valid.data();
      a.scale = 0.06f; a.M = o.m; a.S = o.s; a.dc = o.dc; a.R = o.r;
      const double t0 = now_s();
      latent_attention(a, nt);
      if (keep) f.t.push_back(now_s() - t0);
    }
  };
  for (Form& f : forms) round(f, false);  // warm-up: page faults, the OpenMP pool
  for (int r = 0; r < o.runs; ++r)
    for (Form& f : forms) round(f, true);
  const double bw1 = measure_membw(nt);
  const double flops = 2.0 * double(o.m) * double(o.s) * double(o.r + o.dc);
  if (o.json) {
    std::printf("{\"bench\":\"latent\",\"m\":%lld,\"s\":%lld,\"r\":%lld,\"dc\":%lld,\"threads\":%d,"
                "\"membw_gbps\":[%.2f,%.2f],\"forms\":[",
                (long long)o.m, (long long)o.s, (long long)o.r, (long long)o.dc, nt, bw0, bw1);
  } else {
    std::printf("latent attention, M %lld rows over S %lld positions, R %lld (dc %lld), %d thread(s), "
                "%d caches cycled, median of %d x %d calls\n",
                (long long)o.m, (long long)o.s, (long long)o.r, (long long)o.dc, nt, copies, o.runs, copies);
    std::printf("membw %.1f GB/s before, %.1f GB/s after\n", bw0, bw1);
    std::printf("%6s %10s %10s %10s %12s %10s %10s\n", "cache", "us/call", "MB/call", "GB/s",
                "of membw", "GFLOP/s", "x first");
  }
  const double bw = std::max(bw0, bw1);
  double first = 0;
  for (size_t i = 0; i < forms.size(); ++i) {
    const Form& f = forms[i];
    const double t = median(f.t), bytes = double(o.s * cache_row_bytes(f.kv, o.r));
    if (i == 0) first = t;
    if (o.json) {
      std::printf("%s{\"kv_cache\":\"%s\",\"us\":%.2f,\"bytes\":%.0f,\"gbps\":%.3f,\"of_membw\":%.3f,"
                  "\"gflops\":%.2f,\"speedup\":%.3f}",
                  i ? "," : "", cache_dtype_name(f.kv), t * 1e6, bytes, bytes / t * 1e-9,
                  bytes / t * 1e-9 / bw, flops / t * 1e-9, first / t);
    } else {
      std::printf("%6s %10.1f %10.2f %10.2f %11.1f%% %10.1f %9.2fx\n", cache_dtype_name(f.kv), t * 1e6,
                  bytes * 1e-6, bytes / t * 1e-9, 100.0 * bytes / t * 1e-9 / bw, flops / t * 1e-9, first / t);
    }
  }
  if (o.json) std::printf("]}\n");
}

}  // namespace

void add_latent(CLI::App& bench) {
  auto o = std::make_shared<LatentOpts>();
  CLI::App* s = bench.add_subcommand("latent", "Decode attention over the latent cache, per stored form, vs membw");
  s->add_option("--m", o->m, "query rows (tokens x heads)")->capture_default_str();
  s->add_option("--s", o->s, "cached positions")->capture_default_str();
  s->add_option("--r", o->r, "row width: kv_lora_rank + qk_rope_head_dim")->capture_default_str();
  s->add_option("--dc", o->dc, "kv_lora_rank")->capture_default_str();
  s->add_option("--kv-cache", o->kv, "stored forms, e.g. f32,bf16,fp8")->capture_default_str();
  s->add_option("--threads", o->threads, "threads (0 = all cores)")->capture_default_str();
  s->add_option("--runs", o->runs, "timed rounds (median reported)")->capture_default_str();
  s->add_flag("--json", o->json, "print one JSON object");
  s->callback([o] { run_latent(*o); });
}

}  // namespace dsv3::bench
