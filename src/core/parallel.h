// Threading: OpenMP underneath, behind two small helpers so that kernels state how many
// threads they want and split work the same way everywhere. Scales to any core count.
#pragma once
#include <cstdint>

namespace dsv3 {

// Threads kernels use when the caller passes 0: set_num_threads() if called, else
// OMP_NUM_THREADS, else the number of cores.
int default_threads();
void set_num_threads(int n);
// Resolves a caller's request: n > 0 is taken as is, 0 means default_threads().
inline int resolve_threads(int n) { return n > 0 ? n : default_threads(); }

// Splits [0, n) into `parts` contiguous ranges; part p is [begin, end).
inline void split_range(int64_t n, int parts, int p, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts, rem = n % parts;
  *begin = p * base + (p < rem ? p : rem);
  *end = *begin + base + (p < rem ? 1 : 0);
}

}  // namespace dsv3
