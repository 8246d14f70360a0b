// The thread pool (core/parallel.h): every index handled exactly once, barriers that order
// memory, dynamic loops, nesting, exceptions, several callers at once, sleeping workers
// (spin 0), and a forked child that starts a pool of its own.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/parallel.h"

namespace dsv3 {
namespace {

// Puts the spin setting a test changes back to unset (the environment's default).
struct SpinGuard {
  ~SpinGuard() { set_spin_us(-1); }
};

// Runs f in a forked child with a 20 s alarm, so that a hang fails the test instead of
// stalling the suite; f returns the child's exit status (0 = pass).
template <class F>
void in_child(F f, const char* what) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(20);
    _exit(f());
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << what << ": child killed by signal "
                                 << (WIFSIGNALED(status) ? WTERMSIG(status) : 0) << " (14 = a hang)";
  EXPECT_EQ(WEXITSTATUS(status), 0) << what;
}

void expect_each_once(const std::vector<std::atomic<int>>& hits, const char* what) {
  for (size_t i = 0; i < hits.size(); ++i) ASSERT_EQ(hits[i].load(), 1) << what << " index " << i;
}

TEST(Parallel, ForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 5})
    for (int64_t n : {0, 1, 2, 7, 64, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      parallel_for(n, threads, [&](int64_t i) { hits[size_t(i)].fetch_add(1); });
      expect_each_once(hits, "parallel_for");
      std::vector<std::atomic<int>> dyn(static_cast<size_t>(n));
      parallel_for_dynamic(n, threads, [&](int64_t i) { dyn[size_t(i)].fetch_add(1); });
      expect_each_once(dyn, "parallel_for_dynamic");
    }
}

TEST(Parallel, StaticPartsAreSplitRange) {
  // parallel_for gives member p the p-th contiguous part (kernels rely on which rows a
  // member owns only through split_range, but contiguity is promised).
  constexpr int64_t n = 103;
  std::vector<int> owner(n, -1);
  parallel_region(3, [&](Team& t) {
    t.for_static(n, [&](int64_t i) { owner[size_t(i)] = t.tid(); });
  });
  for (int p = 0; p < 3; ++p) {
    int64_t b, e;
    split_range(n, 3, p, &b, &e);
    for (int64_t i = b; i < e; ++i) EXPECT_EQ(owner[size_t(i)], p) << i;
  }
}

TEST(Parallel, TeamMembersAreDistinctAndBarriersOrderWrites) {
  for (int n : {2, 3, 4}) {
    std::vector<int64_t> slot(static_cast<size_t>(n));
    std::atomic<int> bad{0};
    std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
    parallel_region(n, [&](Team& t) {
      ASSERT_EQ(t.size(), n);
      seen[size_t(t.tid())].fetch_add(1);
      // 200 rounds: write own slot, barrier, check every slot holds this round's value,
      // barrier (so nobody overwrites before all have read).
      for (int64_t round = 0; round < 200; ++round) {
        slot[size_t(t.tid())] = round * 16 + t.tid();
        t.barrier();
        for (int k = 0; k < n; ++k)
          if (slot[size_t(k)] != round * 16 + k) bad.fetch_add(1);
        t.barrier();
      }
    });
    EXPECT_EQ(bad.load(), 0) << "team of " << n;
    for (int k = 0; k < n; ++k) EXPECT_EQ(seen[size_t(k)].load(), 1) << "member " << k;
  }
}

TEST(Parallel, SeveralDynamicLoopsInOneRegion) {
  constexpr int64_t n1 = 37, n2 = 5, n3 = 300;
  std::vector<std::atomic<int>> a(n1), b(n2), c(n3);
  std::atomic<int> order_bad{0};
  parallel_region(3, [&](Team& t) {
    t.for_dynamic(n1, [&](int64_t i) { a[size_t(i)].fetch_add(1); });
    // The loop ends with a barrier: every index of the first loop is done here.
    for (int64_t i = 0; i < n1; ++i)
      if (a[size_t(i)].load() != 1) order_bad.fetch_add(1);
    t.for_dynamic(n2, [&](int64_t i) { b[size_t(i)].fetch_add(1); });
    t.for_dynamic(n3, [&](int64_t i) { c[size_t(i)].fetch_add(1); });
  });
  expect_each_once(a, "loop 1");
  expect_each_once(b, "loop 2");
  expect_each_once(c, "loop 3");
  EXPECT_EQ(order_bad.load(), 0);
}

TEST(Parallel, NestedRegionRunsOnTheCallingThreadAlone) {
  EXPECT_FALSE(in_parallel_region());
  std::atomic<int> inner_sizes{0}, inner_calls{0}, flagged{0};
  parallel_region(2, [&](Team& t) {
    if (in_parallel_region()) flagged.fetch_add(1);
    const std::thread::id me = std::this_thread::get_id();
    parallel_region(4, [&](Team& inner) {
      inner_sizes.fetch_add(inner.size());
      inner_calls.fetch_add(1);
      EXPECT_EQ(std::this_thread::get_id(), me);
    });
    t.barrier();
  });
  EXPECT_EQ(flagged.load(), 2);
  EXPECT_EQ(inner_calls.load(), 2);  // once per outer member, each a team of one
  EXPECT_EQ(inner_sizes.load(), 2);
  EXPECT_FALSE(in_parallel_region());
}

TEST(Parallel, ExceptionFromAWorkerReachesTheCaller) {
  for (int thrower : {0, 1}) {
    try {
      parallel_for(8, 2, [&](int64_t i) {
        if ((thrower == 0 && i == 0) || (thrower == 1 && i == 7)) throw std::runtime_error("boom");
      });
      ADD_FAILURE() << "no exception (thrower " << thrower << ")";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "boom");
    }
    // The pool still works afterwards.
    std::atomic<int64_t> sum{0};
    parallel_for(100, 2, [&](int64_t i) { sum.fetch_add(i); });
    EXPECT_EQ(sum.load(), 4950);
  }
}

TEST(Parallel, ExceptionDoesNotLeaveOthersAtABarrier) {
  // A member that throws never reaches the barrier the others wait at: they must leave the
  // region too, and the caller get the exception. Each case in a child (a hang = SIGALRM).
  in_child([] {
    try {  // a dynamic loop with a closing barrier, the thrower on either member
      parallel_region(2, [&](Team& t) {
        t.for_dynamic(64, [&](int64_t i) {
          if (i == 5) throw std::runtime_error("dyn");
        });
        t.barrier();
      });
      return 2;
    } catch (const std::runtime_error& e) {
      if (std::string(e.what()) != "dyn") return 3;
    }
    return 0;
  }, "for_dynamic");
  for (int thrower : {0, 1, 2})
    in_child([thrower] {
      try {  // the others already waiting at the barrier when the thrower throws
        parallel_region(3, [&](Team& t) {
          if (t.tid() == thrower) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            throw std::runtime_error("late");
          }
          t.barrier();
          t.barrier();
        });
        return 2;
      } catch (const std::runtime_error& e) {
        if (std::string(e.what()) != "late") return 3;
      }
      std::atomic<int64_t> sum{0};  // the pool still works
      parallel_for(100, 3, [&](int64_t i) { sum.fetch_add(i); });
      return sum.load() == 4950 ? 0 : 4;
    }, "barrier");
  in_child([] {
    try {  // parallel_for_dynamic (no closing barrier, stops handing out indices)
      std::atomic<int> done{0};
      parallel_for_dynamic(100000, 2, [&](int64_t i) {
        if (i == 3) throw std::runtime_error("pfd");
        done.fetch_add(1);
      });
      return 2;
    } catch (const std::runtime_error&) {
    }
    return 0;
  }, "parallel_for_dynamic");
}

TEST(Parallel, TwoCallingThreadsTakeTurns) {
  // Two OS threads each run many regions at once; one region runs at a time, both finish
  // with correct sums.
  std::atomic<int> wrong{0};
  auto client = [&](int64_t base) {
    for (int r = 0; r < 200; ++r) {
      std::atomic<int64_t> sum{0};
      parallel_for(64, 2, [&](int64_t i) { sum.fetch_add(base + i); });
      if (sum.load() != 64 * base + 2016) wrong.fetch_add(1);
    }
  };
  std::thread a(client, 1000), b(client, 5000);
  a.join();
  b.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(Parallel, WorkersThatSleepAtOnceStillWake) {
  SpinGuard g;
  for (int us : {0, 1, 50}) {
    set_spin_us(us);
    EXPECT_EQ(spin_us(), us);
    for (int r = 0; r < 300; ++r) {
      std::atomic<int> hits{0};
      parallel_region(3, [&](Team& t) {
        hits.fetch_add(1);
        t.barrier();
        if (r % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
        t.barrier();
      });
      ASSERT_EQ(hits.load(), 3) << "spin " << us << " round " << r;
    }
  }
}

TEST(Parallel, DefaultThreadsFollowsSetNumThreads) {
  const int before = default_threads();
  EXPECT_GE(before, 1);
  set_num_threads(3);
  EXPECT_EQ(default_threads(), 3);
  EXPECT_EQ(resolve_threads(0), 3);
  EXPECT_EQ(resolve_threads(5), 5);
  set_num_threads(0);
  EXPECT_EQ(default_threads(), before);
}

TEST(Parallel, ForkedChildStartsItsOwnPool) {
  // The parent's workers exist before the fork; the child has none of them and must not
  // wait for them.
  std::atomic<int64_t> warm{0};
  parallel_for(16, 2, [&](int64_t i) { warm.fetch_add(i); });
  ASSERT_EQ(warm.load(), 120);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(20);  // a hang becomes SIGALRM, which the parent sees
    std::atomic<int64_t> sum{0};
    parallel_for(1000, 2, [&](int64_t i) { sum.fetch_add(i); });
    _exit(sum.load() == 499500 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace dsv3
