// Wall-clock seconds from a monotonic clock, for progress lines, statistics and benchmarks.
#pragma once
#include <chrono>

namespace dsv3 {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace dsv3
