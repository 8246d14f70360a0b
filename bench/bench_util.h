// Timing helpers shared by the benchmarks: run a body until a time budget is spent and
// report the median, because this machine is noisy (../shared/SPEC.md §8).
#pragma once
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace dsv3::bench {

// The median of v (the upper one for an even count); 0 for an empty v.
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
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
