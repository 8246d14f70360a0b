// Helpers shared by the model-level tests (test_model, test_generate, test_speculative).
#pragma once
#include <cstdint>
#include <vector>

namespace dsv3::testing {

// n token ids in [0, V), a fixed function of seed (an LCG, so every platform agrees).
inline std::vector<int32_t> ids_for(int64_t n, int64_t V, uint32_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& v : ids) {
    seed = seed * 1664525u + 1013904223u;
    v = int32_t((seed >> 8) % uint32_t(V));
  }
  return ids;
}

}  // namespace dsv3::testing
