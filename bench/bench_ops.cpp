// dsv3 bench ops [--tokens T] [--threads N] [--seconds S] [--json]
//
// The row kernels (kernels/{norm,activation,softmax,rope,loss,topk}.h) at DeepSeek-V3
// shapes, each timed on the best path, the AVX2 path and the scalar twin in the same run. These ops
// are memory-bound, so the figure of merit is the bytes they must move (read + write, each
// once) per second, to compare with the machine's streaming bandwidth (SPEC §8: ≈ 28 GB/s
// on one thread, ≈ 55 GB/s on two).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/check.h"
#include "core/cpu.h"
#include "core/parallel.h"
#include "kernels/activation.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"
#include "kernels/topk.h"

namespace dsv3::bench {

namespace {

struct OpsOpts {
  int64_t tokens = 512;
  int threads = 0;
  double seconds = 0.5;
  bool json = false;
  std::string only;
};

std::vector<float> random_floats(int64_t n, float lo, float hi, uint32_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  for (float& f : v) f = u(rng);
  return v;
}

struct Case {
  std::string name, shape;
  double bytes;  // minimum traffic per call
  std::function<void()> body;
};

void run_ops(const OpsOpts& o) {
  DSV3_CHECK(o.tokens > 0 && o.tokens <= 7168, "--tokens must be in [1, 7168]");
  const int th = resolve_threads(o.threads);
  const int64_t T = o.tokens, C = 7168, I = 2048, H = 128, R = 64, V = 129280, E = 256;
  const int64_t Tv = T < 16 ? T : 16;  // cross-entropy rows per chunk
  auto x = random_floats(T * C, -2, 2, 1), w = random_floats(C, 0.5f, 1.5f, 2);
  auto y = random_floats(T * C, -1, 1, 3), dy = random_floats(T * C, -1, 1, 4);
  std::vector<float> rstd(static_cast<size_t>(T)), dw(static_cast<size_t>(C));
  auto gu = random_floats(T * 2 * I, -4, 4, 5), h = random_floats(T * I, 0, 1, 6);
  auto q = random_floats(T * H * R, -1, 1, 7);
  std::vector<float> cs(static_cast<size_t>(T * R / 2)), sn(cs.size());
  YarnParams ys;
  ys.factor = 40;
  ys.mscale_all_dim = 1;
  rope_build_table(cs.data(), sn.data(), 0, T, R, 10000.0, &ys);
  const RopeTable tab{cs.data(), sn.data(), T, R};
  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = int32_t(t);
  auto att = random_floats(T * T, -8, 8, 8);  // one head's causal scores [T, T]
  std::vector<int32_t> len(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) len[size_t(t)] = int32_t(t + 1);
  auto logits = random_floats(Tv * V, -10, 10, 9);
  std::vector<int32_t> tgt(static_cast<size_t>(Tv));
  for (int64_t t = 0; t < Tv; ++t) tgt[size_t(t)] = int32_t((t * 7919) % V);
  std::vector<float> loss(static_cast<size_t>(Tv)), tv(static_cast<size_t>(T * 8));
  std::vector<int32_t> ti(static_cast<size_t>(T * 8));
  std::vector<float> sv(50);
  std::vector<int32_t> si(50);
  auto scores = random_floats(T * E, 0, 1, 10);
  const double f = 4.0;  // bytes per float
  const float sc = attention_softmax_scale(192, &ys);
  std::vector<Case> cases = {
      {"rmsnorm_fwd", "T x 7168", f * (2.0 * T * C + C),
       [&] { rmsnorm_forward(y.data(), C, rstd.data(), x.data(), C, w.data(), T, C, 1e-6f, th); }},
      {"rmsnorm_bwd", "T x 7168", f * (4.0 * T * C + 3.0 * C),
       [&] {
         rmsnorm_backward(y.data(), C, dw.data(), dy.data(), C, x.data(), C, w.data(), rstd.data(),
                          T, C, false, th);
       }},
      {"swiglu_fwd", "T x 2048", f * 3.0 * T * I,
       [&] { swiglu_forward(h.data(), I, gu.data(), 2 * I, gu.data() + I, 2 * I, T, I, th); }},
      {"swiglu_bwd", "T x 2048", f * 5.0 * T * I,
       [&] {
         swiglu_backward(y.data(), 2 * I, y.data() + I, 2 * I, h.data(), I, gu.data(), 2 * I,
                         gu.data() + I, 2 * I, T, I, th);
       }},
      {"softmax_causal_fwd", "T x T", f * 2.0 * T * T,
       [&] { softmax_forward(y.data(), att.data(), T, T, sc, len.data(), th); }},
      {"softmax_bwd", "T x T", f * 3.0 * T * T,
       [&] { softmax_backward(dy.data(), x.data(), y.data(), T, T, sc, th); }},
      {"rope_fwd_inplace", "T x 128 x 64", f * 2.0 * T * H * R,
       [&] { rope_forward(q.data(), H * R, R, q.data(), H * R, R, pos.data(), T, H, tab, th); }},
      {"cross_entropy_fwd_bwd", "16 x 129280", f * 2.0 * Tv * V,
       // In place: after the first call the buffer holds gradients, the same amount of work.
       [&] {
         cross_entropy_forward_backward(loss.data(), logits.data(), V, tgt.data(), 1.0f / Tv, Tv, V,
                                        -100, th);
       }},
      {"topk_route_8of256", "T x 256", f * double(T * E),
       [&] { topk_forward(tv.data(), ti.data(), scores.data(), E, T, E, 8, th); }},
      {"topk_sample_50ofV", "1 x 129280", f * double(V),
       [&] { topk_forward(sv.data(), si.data(), logits.data(), V, 1, V, 50, th); }},
  };
  const Isa best = best_isa();
  for (const Case& c : cases) {
    if (!o.only.empty() && c.name.find(o.only) == std::string::npos) continue;
    set_isa(best);
    const Timing fast = time_it(c.body, o.seconds);
    set_isa(Isa::Avx2);  // clamped to the CPU: on an AVX2-only machine this repeats `fast`
    const Timing avx2 = time_it(c.body, o.seconds);
    set_isa(Isa::Scalar);
    const Timing slow = time_it(c.body, o.seconds);
    set_isa(best);
    const double gbs = c.bytes / fast.median_s * 1e-9, gbs2 = c.bytes / avx2.median_s * 1e-9,
                 gbs_s = c.bytes / slow.median_s * 1e-9;
    if (o.json)
      std::printf(
          "{\"bench\":\"ops\",\"op\":\"%s\",\"shape\":\"%s\",\"tokens\":%lld,\"threads\":%d,"
          "\"isa\":\"%s\",\"median_us\":%.2f,\"gbps\":%.2f,\"avx2_median_us\":%.2f,"
          "\"scalar_median_us\":%.2f,\"scalar_gbps\":%.2f,\"speedup\":%.2f}\n",
          c.name.c_str(), c.shape.c_str(), (long long)T, th, isa_name(best), fast.median_s * 1e6,
          gbs, avx2.median_s * 1e6, slow.median_s * 1e6, gbs_s, slow.median_s / fast.median_s);
    else
      std::printf(
          "%-22s %-13s T=%lld th=%d  %s %8.1f us %5.1f GB/s | avx2 %8.1f us %5.1f GB/s | "
          "scalar %9.1f us %5.1f GB/s | x%.1f\n",
          c.name.c_str(), c.shape.c_str(), (long long)T, th, isa_name(best), fast.median_s * 1e6,
          gbs, avx2.median_s * 1e6, gbs2, slow.median_s * 1e6, gbs_s,
          slow.median_s / fast.median_s);
  }
}

}  // namespace

void add_ops(CLI::App& bench) {
  auto o = std::make_shared<OpsOpts>();
  CLI::App* s = bench.add_subcommand(
      "ops", "Row kernels (norm, SwiGLU, softmax, RoPE, CE, top-k): fast vs scalar");
  s->add_option("--tokens", o->tokens, "tokens T (rows)")->capture_default_str();
  s->add_option("--threads", o->threads, "threads (0 = all cores)")->capture_default_str();
  s->add_option("--seconds", o->seconds, "time budget per measurement")->capture_default_str();
  s->add_option("--only", o->only, "run only ops whose name contains this");
  s->add_flag("--json", o->json, "one JSON object per op");
  s->callback([o] { run_ops(*o); });
}

}  // namespace dsv3::bench
