// Helpers shared by the benchmarks: medians and timed repetition (this machine is noisy,
// ../shared/SPEC.md §8), the machine's limits measured in the same run (stream bandwidth,
// GEMM peak), and a tiny generator for benchmark inputs.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "core/clock.h"
#include "core/tensor.h"
#include "kernels/gemm.h"
#include "kernels/gemv.h"

namespace dsv3::bench {

// The median of v (the upper one for an even count); 0 for an empty v.
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Streaming-read GB/s of `threads` threads over 512 MB (kernels/gemv.h stream_read), the
// median of `passes` after one warm-up: the bandwidth a decode roofline is judged by.
inline double measure_membw(int threads, int passes = 7) {
  Buffer buf(size_t(512) << 20);
  uint8_t* p = buf.as<uint8_t>();
  for (size_t i = 0; i < buf.size(); i += 64) p[i] = uint8_t(i * 2654435761u >> 13);
  uint64_t sink = stream_read(buf.data(), buf.size(), threads);
  std::vector<double> v;
  for (int r = 0; r < passes; ++r) {
    const double t0 = now_s();
    sink ^= stream_read(buf.data(), buf.size(), threads);
    v.push_back(double(buf.size()) / (now_s() - t0) * 1e-9);
  }
  if (sink == 42) std::fprintf(stderr, " ");  // keeps the reads
  return median(v);
}

// y = x·Wᵀ at 2048³ with every element `one` (GemmF32 / GemmBF16 and its gemm), GFLOP/s,
// the median of 5 after one warm-up.
template <class G, class T>
double square_gemm_gflops(T one, void (*gemm)(const G&, int), int threads) {
  const int64_t n = 2048;
  std::vector<T> a(size_t(n * n), one), b(size_t(n * n), one);
  std::vector<float> c(size_t(n * n));
  G g;
  g.M = g.N = g.K = n;
  g.A = a.data(); g.lda = n;
  g.B = b.data(); g.ldb = n; g.trans_b = true;
  g.C = c.data(); g.ldc = n;
  gemm(g, threads);
  std::vector<double> v;
  for (int r = 0; r < 5; ++r) {
    const double t0 = now_s();
    gemm(g, threads);
    v.push_back(2.0 * double(n * n * n) / (now_s() - t0) * 1e-9);
  }
  return median(v);
}

// Our GEMM at 2048³ in BF16 or F32: the FLOP limit of this machine in this run, which
// prefill and training throughput are judged by.
inline double gemm_peak_gflops(bool bf16, int threads) {
  return bf16 ? square_gemm_gflops<GemmBF16, uint16_t>(0x3f80, gemm_bf16, threads)
              : square_gemm_gflops<GemmF32, float>(1.0f, gemm_f32, threads);
}

// A tiny LCG for benchmark inputs (token ids, cache rows): 24 bits per step.
inline uint32_t lcg(uint32_t& s) {
  s = s * 1664525u + 1013904223u;
  return s >> 8;
}

struct Timing {
  double median_s = 0, min_s = 0;
  int reps = 0;
};

// Runs body once to warm up, then repeatedly until min_reps runs and budget_s seconds.
inline Timing time_it(const std::function<void()>& body, double budget_s = 1.0,
                      int min_reps = 5) {
  using clock = std::chrono::steady_clock;
  body();
  std::vector<double> t;
  const auto start = clock::now();
  while (int(t.size()) < min_reps ||
         std::chrono::duration<double>(clock::now() - start).count() < budget_s) {
    const auto t0 = clock::now();
    body();
    t.push_back(std::chrono::duration<double>(clock::now() - t0).count());
    if (t.size() >= 10000) break;
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front(), int(t.size())};
}

}  // namespace dsv3::bench
