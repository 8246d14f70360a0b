// The OpenBLAS side of the F32 GEMM comparison in docs/PERF.md, in its own process.
// usage: bench_openblas M N K [threads] [form]   -> prints one JSON line with gflops
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

extern "C" {
void openblas_set_num_threads(int);
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc);
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s M N K [threads] [fprop|dgrad|wgrad]\n", argv[0]);
    return 2;
  }
  const int m = std::atoi(argv[1]), n = std::atoi(argv[2]), k = std::atoi(argv[3]);
  const int threads = argc > 4 ? std::atoi(argv[4]) : 2;
  const char* form = argc > 5 ? argv[5] : "fprop";
  openblas_set_num_threads(threads);
  constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
  int ta = kNoTrans, tb = kTrans;  // fprop: y = x·Wᵀ
  if (!std::strcmp(form, "dgrad")) tb = kNoTrans;
  if (!std::strcmp(form, "wgrad")) { ta = kTrans; tb = kNoTrans; }
  const int lda = ta == kTrans ? m : k, ldb = tb == kTrans ? k : n;
  std::vector<float> a(size_t(m) * k), b(size_t(k) * n), c(size_t(m) * n);
  unsigned s = 1;
  for (auto* v : {&a, &b})
    for (float& x : *v) { s = s * 1664525u + 1013904223u; x = float(s >> 8) / 16777216.0f - 0.5f; }
  auto run = [&] { cblas_sgemm(kRowMajor, ta, tb, m, n, k, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), n); };
  // Process CPU seconds over the runs: GFLOP per CPU-second is the stable per-core figure
  // of a one-thread run on a shared machine.
  auto cpu = [] { timespec ts; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; };
  const double c0 = cpu();
  run();
  std::vector<double> t;
  const auto start = std::chrono::steady_clock::now();
  while (t.size() < 5 || std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 1.0) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double cpu_per_rep = (cpu() - c0) / double(t.size() + 1);
  std::sort(t.begin(), t.end());
  const double med = t[t.size() / 2];
  std::printf("{\"bench\":\"openblas_sgemm\",\"form\":\"%s\",\"m\":%d,\"n\":%d,\"k\":%d,\"threads\":%d,"
              "\"median_ms\":%.4f,\"gflops\":%.2f,\"gflops_best\":%.2f,\"gflops_cpu\":%.2f}\n",
              form, m, n, k, threads, med * 1e3, 2.0 * m * n * k / med * 1e-9,
              2.0 * m * n * k / t.front() * 1e-9, 2.0 * m * n * k / cpu_per_rep * 1e-9);
  return 0;
}
