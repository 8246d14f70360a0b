// Splitting row-wise kernels over threads (used by the dispatchers of norm, activation,
// softmax, rope, loss, topk; never by *_avx512.cpp files). Small problems run on the
// calling thread: waking a worker costs a microsecond or more, more than a short row takes.
#pragma once
#include <cstdint>

#include "core/cpu.h"
#include "core/parallel.h"

namespace dsv3 {

// The kernel for the active ISA level (core/cpu.h).
template <class F>
F* pick(F* avx512, F* avx2, F* ref) {
  const Isa isa = active_isa();
  return isa == Isa::Avx512 ? avx512 : isa == Isa::Avx2 ? avx2 : ref;
}

// Below this many elements of work, one thread.
inline constexpr int64_t kParallelMinWork = 1 << 15;

// Calls body(begin, end) over contiguous ranges covering [0, n); `work` is the total
// element count, to decide whether threads are worth it. Deterministic: each index is
// handled by exactly one call, whatever the thread count.
template <class Body>
void parallel_rows(int64_t n, int64_t work, int threads, const Body& body) {
  int nt = resolve_threads(threads);
  if (nt > n) nt = int(n);
  if (nt <= 1 || work < kParallelMinWork) {
    if (n > 0) body(int64_t(0), n);
    return;
  }
  parallel_region(nt, [&](Team& t) {
    int64_t b, e;
    split_range(n, t.size(), t.tid(), &b, &e);
    if (b < e) body(b, e);
  });
}

}  // namespace dsv3
