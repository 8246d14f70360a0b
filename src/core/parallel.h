// Threading: dsv3's own pool of persistent worker threads (core/parallel.cpp), behind a few
// helpers so that kernels state how many threads they want and split work the same way
// everywhere.
//
// Why not OpenMP: a decode step runs ~150 short parallel regions, and libgomp's waiting
// threads either spin for a long time (OMP_WAIT_POLICY=active: fastest on an idle machine,
// but a spinning thread holds a core another process's thread — or its own partner,
// time-sliced with that thread — needs: 1.5–2x slower steps beside one busy process) or
// sleep at once (passive: a futex wake per region, 25–30% slower decode on an idle VM).
// The pool's waiting threads — idle workers, and members at a barrier or join — poll while
// the process runs unhindered and sleep at once while it is being preempted: they poll (with
// pause) for up to spin_us() (default 5 ms) and then sleep on a futex until woken, and skip
// the polling while this process's threads are preempted more than 300 times a second
// (getrusage's involuntary context switches over ≥ 10 ms windows, held for 100 ms). So one
// binary behaves like libgomp's active policy on an idle machine and like its passive
// policy on a shared one.
//
// One region runs at a time: a second OS thread that asks for one waits for it. A region
// asked for from inside a region (nested) runs on the calling thread alone, team size 1,
// as OpenMP does with nesting off.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace dsv3 {

// Threads kernels use when the caller passes 0: set_num_threads() if called, else
// DSV3_THREADS, else OMP_NUM_THREADS (its first number), else the CPUs this process may
// run on.
int default_threads();
void set_num_threads(int n);
// Resolves a caller's request: n > 0 is taken as is, 0 means default_threads().
inline int resolve_threads(int n) { return n > 0 ? n : default_threads(); }

// How long (µs) an idle worker, or a thread at a barrier or join, polls before it sleeps
// while the process is not being preempted: set_spin_us() if called, else DSV3_SPIN_US, else
// 0 when OMP_WAIT_POLICY=passive, else 5000.
int spin_us();
void set_spin_us(int us);

// Splits [0, n) into `parts` contiguous ranges; part p is [begin, end).
inline void split_range(int64_t n, int parts, int p, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts, rem = n % parts;
  *begin = p * base + (p < rem ? p : rem);
  *end = *begin + base + (p < rem ? 1 : 0);
}

namespace detail {
struct Region;
}

// One thread's view of a running region: its index, the team's size, and the region's
// collectives. Every member must call the same sequence of barrier / for_* (as with
// OpenMP's worksharing constructs).
class Team {
 public:
  Team(detail::Region* r, int tid, int n) : r_(r), tid_(tid), n_(n) {}
  int tid() const { return tid_; }
  int size() const { return n_; }
  // Waits until every member has arrived.
  void barrier();
  // Hands out the indices of [0, n) one at a time to whichever member asks next (OpenMP's
  // schedule(dynamic, 1)), then a barrier.
  template <class F>
  void for_dynamic(int64_t n, F&& body) {
    for_dynamic_nowait(n, body);
    barrier();
  }
  // The same without the closing barrier (when the region ends right after: its join
  // waits for every member anyway). Stops handing out indices once a member has thrown.
  template <class F>
  void for_dynamic_nowait(int64_t n, F&& body) {
    if (n_ == 1) {
      for (int64_t i = 0; i < n; ++i) body(i);
      return;
    }
    std::atomic<int64_t>& next = next_counter();
    for (int64_t i; !cancelled() && (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) body(i);
  }
  // True once a member of this region has thrown: its barriers then throw too (an internal
  // tag the region swallows), so no member waits for one that will never arrive.
  bool cancelled() const;
  // Member p takes the p-th of size() contiguous parts of [0, n) (split_range; OpenMP's
  // schedule(static)), then a barrier.
  template <class F>
  void for_static(int64_t n, F&& body) {
    int64_t b, e;
    split_range(n, n_, tid_, &b, &e);
    for (int64_t i = b; i < e; ++i) body(i);
    if (n_ > 1) barrier();
  }

 private:
  std::atomic<int64_t>& next_counter();
  detail::Region* r_;
  int tid_, n_;
  int loops_ = 0;  // for_dynamic loops entered so far: which counter the next one takes
};

namespace detail {
void run_region(int n, void (*call)(void*, Team&), void* ctx);
}

// Runs f(team) on n threads: the calling thread is member 0, n − 1 pool workers the
// others; returns when all have. n ≤ 1, or a call from inside a region, runs f on the
// calling thread with a team of one. An exception thrown by a member is rethrown here
// (the first one) once every member has returned; the others leave the region at their
// next barrier (Team::cancelled).
template <class F>
void parallel_region(int n, F&& f) {
  using Fn = std::remove_reference_t<F>;
  detail::run_region(n, [](void* c, Team& t) { (*static_cast<Fn*>(c))(t); }, &f);
}

// body(i) for every i in [0, n), on resolve_threads(threads) threads (never more than n),
// each taking one contiguous part (split_range).
template <class F>
void parallel_for(int64_t n, int threads, F&& body) {
  if (n <= 0) return;
  int nt = resolve_threads(threads);
  if (nt > n) nt = int(n);
  parallel_region(nt, [&](Team& t) {
    int64_t b, e;
    split_range(n, t.size(), t.tid(), &b, &e);
    for (int64_t i = b; i < e; ++i) body(i);
  });
}

// body(i) for every i in [0, n), indices handed out one at a time (uneven items).
template <class F>
void parallel_for_dynamic(int64_t n, int threads, F&& body) {
  if (n <= 0) return;
  int nt = resolve_threads(threads);
  if (nt > n) nt = int(n);
  parallel_region(nt, [&](Team& t) { t.for_dynamic_nowait(n, body); });
}

// body(item, tid) for every item of `items` (reordered: a stable sort by size(item),
// largest first), handed out one at a time to resolve_threads(threads) threads; tid is the
// member's index in the region (< threads), for per-thread scratch. Uneven work items such
// as a MoE layer's experts: the big ones start first, the small ones fill the tail.
template <class Size, class Body>
void for_each_largest_first(std::vector<int32_t>& items, int threads, Size size, Body&& body) {
  std::stable_sort(items.begin(), items.end(), [&](int32_t a, int32_t b) { return size(a) > size(b); });
  parallel_region(resolve_threads(threads), [&](Team& team) {
    team.for_dynamic_nowait(int64_t(items.size()),
                            [&](int64_t i) { body(items[size_t(i)], team.tid()); });
  });
}

// True on a thread that is running a region's member (so a region asked for here would
// run with a team of one).
bool in_parallel_region();

// Regions that woke pool workers since the process started (`bench decode --profile`
// reports them per step: each costs a wake-up and a join).
uint64_t parallel_regions_run();

}  // namespace dsv3
