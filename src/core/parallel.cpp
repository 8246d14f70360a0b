#include "core/parallel.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <immintrin.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/check.h"

namespace dsv3 {

namespace {

std::atomic<int> g_threads{0};
std::atomic<int> g_spin_us{-1};  // -1: not set, read the environment

int env_int(const char* name, int fallback) {
  const char* e = std::getenv(name);
  if (!e || !*e) return fallback;
  char* end = nullptr;
  const long v = std::strtol(e, &end, 10);  // OMP_NUM_THREADS may be a list: its first number
  return end != e && v >= 0 && v <= 1 << 20 ? int(v) : fallback;
}

int cpus_available() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned h = std::thread::hardware_concurrency();
  return h > 0 ? int(h) : 1;
}

int env_threads() {
  static const int n = [] {
    int v = env_int("DSV3_THREADS", 0);
    if (v <= 0) v = env_int("OMP_NUM_THREADS", 0);
    return v > 0 ? v : cpus_available();
  }();
  return n;
}

int env_spin_us() {
  static const int us = [] {
    const int v = env_int("DSV3_SPIN_US", -1);
    if (v >= 0) return v;
    const char* p = std::getenv("OMP_WAIT_POLICY");
    if (p && (p[0] == 'p' || p[0] == 'P')) return 0;
    return 5000;
  }();
  return us;
}

thread_local int t_depth = 0;  // > 0 while this thread runs a region's member
std::atomic<uint64_t> g_regions{0};

// True while other processes compete with this one for the CPUs: in a window of ≥ 10 ms
// within the last kHoldNs, this process's threads were preempted (involuntary context
// switches, getrusage) more than kContendedPerS times a second. Measured on a 2-core VM
// training configs/tiny.json: ~50 a second idle (kernel threads), ~2,400 beside one busy
// loop. The hold keeps the state while the waits sleep — sleeping threads are preempted
// less, so without it the state flips back and forth (41% of waits saw it then). Then a
// waiting thread should sleep at once: polling keeps its core looking busy, so the scheduler
// leaves the partner it waits for time-sliced with another process's thread instead of
// moving it to this core, and polling spends the scheduling credit a sleeper has to run
// ahead of a CPU hog when woken (beside one busy loop, a pool that polled trained
// configs/tiny.json like libgomp's active waits: half the speed of its passive ones).
bool contended() {
  constexpr int64_t kWindowNs = 10'000'000;
  constexpr double kContendedPerS = 300;
  constexpr int64_t kHoldNs = 100'000'000;
  static std::atomic<int64_t> window_ns{-1}, until_ns{-1};
  static std::mutex sampling;  // one sampler at a time: the window's start and count agree
  static long window_nivcsw = 0;  // guarded by sampling
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch()).count();
  int64_t w = window_ns.load(std::memory_order_relaxed);
  if ((w < 0 || now - w >= kWindowNs) && sampling.try_lock()) {
    std::lock_guard<std::mutex> g(sampling, std::adopt_lock);
    w = window_ns.load(std::memory_order_relaxed);
    rusage ru;
    if ((w < 0 || now - w >= kWindowNs) && getrusage(RUSAGE_SELF, &ru) == 0) {
      if (w >= 0 && double(ru.ru_nivcsw - window_nivcsw) * 1e9 > kContendedPerS * double(now - w))
        until_ns.store(now + kHoldNs, std::memory_order_relaxed);
      window_nivcsw = ru.ru_nivcsw;
      window_ns.store(now, std::memory_order_relaxed);
    }
  }
  return now < until_ns.load(std::memory_order_relaxed);
}

// Waits while a == v and returns the new value: polls (with pause) for up to spin_us()
// unless other processes compete for the CPUs (contended, above), then sleeps on a's futex
// until a changes. Why poll at all: on a VM, waking a sleeping thread takes tens of µs (its
// vCPU halted), a decode step runs ~150 regions, and a training step's barriers and joins
// wait on a partner's share of a GEMM for a few ms at a time.
template <class T>
T wait_while_equal(const std::atomic<T>& a, T v) {
  T now = a.load(std::memory_order_acquire);
  if (now != v) return now;
  const int us = spin_us();
  if (us > 0 && !contended()) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
    for (int i = 1;; ++i) {
      _mm_pause();
      now = a.load(std::memory_order_acquire);
      if (now != v) return now;
      if ((i & 255) == 0 && (std::chrono::steady_clock::now() >= end || contended())) break;
    }
  }
  for (;;) {
    a.wait(v, std::memory_order_acquire);
    now = a.load(std::memory_order_acquire);
    if (now != v) return now;
  }
}

}  // namespace

namespace detail {

inline constexpr int kMaxLoops = 32;  // for_dynamic loops per region

// Thrown out of a barrier once another member has thrown; the region swallows it.
struct RegionCancelled {};

struct Region {
  void (*call)(void*, Team&) = nullptr;
  void* ctx = nullptr;
  int n = 1;
  std::atomic<bool> cancelled{false};
  alignas(64) std::atomic<int> arrived{0};
  alignas(64) std::atomic<uint32_t> phase{0};
  alignas(64) std::atomic<int64_t> next[kMaxLoops];
  Region() {
    for (auto& c : next) c.store(0, std::memory_order_relaxed);
  }
};

// A member threw: every other member leaves at its next barrier (or wakes from the one it
// waits at: the phase moves). cancelled is stored before the phase moves, and barrier()
// reads phase, arrives, then reads cancelled (all seq_cst): a member that reads cancelled
// false arrived before the phase moved, so its wait sees the move.
void cancel(Region& r) {
  r.cancelled.store(true, std::memory_order_seq_cst);
  r.phase.fetch_add(1, std::memory_order_seq_cst);
  r.phase.notify_all();
}

}  // namespace detail

namespace {

// Marks this thread as running a region's member for its lifetime (t_depth), on every exit.
struct InRegion {
  InRegion() { ++t_depth; }
  ~InRegion() { --t_depth; }
  InRegion(const InRegion&) = delete;
  InRegion& operator=(const InRegion&) = delete;
};

struct alignas(64) Worker {
  std::atomic<uint32_t> go{0};  // the sequence number of the last region it was given
  std::thread thread;
};

struct Pool {
  std::mutex busy;                              // one region at a time
  std::vector<std::unique_ptr<Worker>> workers;  // worker w is member w + 1
  detail::Region* current = nullptr;            // written before a worker's go, read after
  uint32_t seq = 0;
  alignas(64) std::atomic<int> pending{0};      // members (not the caller) still running
  std::mutex error_mu;
  std::exception_ptr error;

  // Runs member tid of region r: the first exception any member throws is kept for the
  // caller and cancels the region; the tag the others then throw at a barrier is dropped.
  void run_member(detail::Region& r, int tid) {
    InRegion in;
    Team t(&r, tid, r.n);
    try {
      r.call(r.ctx, t);
    } catch (const detail::RegionCancelled&) {
    } catch (...) {
      {
        std::lock_guard<std::mutex> g(error_mu);
        if (!error) error = std::current_exception();
      }
      detail::cancel(r);
    }
  }

  void worker_loop(Worker* w, int tid) {
    uint32_t seen = 0;
    for (;;) {
      seen = wait_while_equal(w->go, seen);
      run_member(*current, tid);
      // The pool outlives every region: notify on it, never on r (the caller may return
      // and free r as soon as pending reaches 0).
      if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) pending.notify_one();
    }
  }

  void ensure(int n_workers) {
    while (int(workers.size()) < n_workers) {
      auto w = std::make_unique<Worker>();
      Worker* wp = w.get();
      const int tid = int(workers.size()) + 1;
      w->thread = std::thread([this, wp, tid] { worker_loop(wp, tid); });
      w->thread.detach();  // the pool is never destroyed; workers end with the process
      workers.push_back(std::move(w));
    }
  }
};

Pool* g_pool = nullptr;
std::once_flag g_pool_once;

// A forked child has none of the parent's workers: it starts a pool of its own (the old
// one is leaked, its threads do not exist in the child).
void reset_pool_in_child() { g_pool = new Pool; }

Pool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool;  // never destroyed: detached workers may be asleep on it at exit
    pthread_atfork(nullptr, nullptr, reset_pool_in_child);
  });
  return *g_pool;
}

}  // namespace

int default_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : env_threads();
}

void set_num_threads(int n) { g_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }

int spin_us() {
  const int us = g_spin_us.load(std::memory_order_relaxed);
  return us >= 0 ? us : env_spin_us();
}

void set_spin_us(int us) { g_spin_us.store(us >= 0 ? us : -1, std::memory_order_relaxed); }

bool in_parallel_region() { return t_depth > 0; }

uint64_t parallel_regions_run() { return g_regions.load(std::memory_order_relaxed); }

void Team::barrier() {
  if (n_ == 1) return;
  detail::Region& r = *r_;
  if (r.cancelled.load(std::memory_order_seq_cst)) throw detail::RegionCancelled{};
  const uint32_t ph = r.phase.load(std::memory_order_seq_cst);
  if (r.arrived.fetch_add(1, std::memory_order_seq_cst) == n_ - 1) {
    r.arrived.store(0, std::memory_order_relaxed);
    r.phase.store(ph + 1, std::memory_order_release);
    r.phase.notify_all();
  } else {
    if (r.cancelled.load(std::memory_order_seq_cst)) throw detail::RegionCancelled{};
    wait_while_equal(r.phase, ph);
  }
  if (r.cancelled.load(std::memory_order_seq_cst)) throw detail::RegionCancelled{};
}

bool Team::cancelled() const { return r_->cancelled.load(std::memory_order_relaxed); }

std::atomic<int64_t>& Team::next_counter() {
  DSV3_CHECK(loops_ < detail::kMaxLoops, "a parallel region ran more than ", detail::kMaxLoops,
             " for_dynamic loops");
  return r_->next[loops_++];
}

namespace detail {

void run_region(int n, void (*call)(void*, Team&), void* ctx) {
  if (n <= 1 || t_depth > 0) {
    Region one;
    Team t(&one, 0, 1);
    InRegion in;
    call(ctx, t);
    return;
  }
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.busy);
  g_regions.fetch_add(1, std::memory_order_relaxed);
  p.ensure(n - 1);
  Region r;
  r.call = call;
  r.ctx = ctx;
  r.n = n;
  p.current = &r;
  p.error = nullptr;
  p.pending.store(n - 1, std::memory_order_relaxed);
  const uint32_t seq = ++p.seq == 0 ? ++p.seq : p.seq;  // a worker's go starts at 0
  for (int w = 0; w < n - 1; ++w) {
    Worker& wk = *p.workers[size_t(w)];
    wk.go.store(seq, std::memory_order_release);
    wk.go.notify_one();
  }
  p.run_member(r, 0);
  for (int left = p.pending.load(std::memory_order_acquire); left != 0;)
    left = wait_while_equal(p.pending, left);
  p.current = nullptr;
  if (p.error) {
    std::exception_ptr e = p.error;
    p.error = nullptr;
    std::rethrow_exception(e);
  }
}

}  // namespace detail

}  // namespace dsv3
