// Cooperative fibers (core/fiber.h): the round-robin order the training step's overlap relies
// on (the same interleaving on every rank), yields outside fibers and of the last fiber, the
// first exception ending the run, deep stacks, the thread pool used from fibers, and refusal
// to nest.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/fiber.h"
#include "core/parallel.h"

namespace dsv3 {
namespace {

TEST(Fiber, RoundRobinInTaskOrder) {
  std::string log;
  auto task = [&](char c, int yields) {
    return [&log, c, yields] {
      for (int i = 0; i <= yields; ++i) {
        EXPECT_TRUE(in_fiber());
        EXPECT_EQ(fiber_index(), c - 'A');
        log += c;
        log += char('0' + i);
        fiber_yield();
      }
    };
  };
  // A yields 3 times, B once, C twice: once B is done the turns go A, C, A, ...
  run_fibers({task('A', 3), task('B', 1), task('C', 2)});
  EXPECT_EQ(log, "A0B0C0A1B1C1A2C2A3");
  EXPECT_FALSE(in_fiber());
  EXPECT_EQ(fiber_index(), -1);
}

TEST(Fiber, YieldOutsideFibersAndOfTheLastFiberReturnsAtOnce) {
  fiber_yield();  // no scheduler: nothing happens
  int steps = 0;
  run_fibers({[&] {
    for (int i = 0; i < 5; ++i) {
      fiber_yield();  // the only fiber
      ++steps;
    }
  }});
  EXPECT_EQ(steps, 5);
  run_fibers({});
}

// The first exception ends run_fibers at once: the fiber that would run next is not resumed
// (under MPI it would issue its collectives out of step with the other ranks).
TEST(Fiber, FirstExceptionEndsTheRunAtOnce) {
  std::string log;
  try {
    run_fibers({[&] {
                  log += "a1";
                  fiber_yield();
                  log += "a2";
                  fiber_yield();
                  log += "a3";
                },
                [&] {
                  log += "b1";
                  fiber_yield();
                  throw std::runtime_error("b fails");
                },
                [&] {
                  log += "c1";
                  fiber_yield();
                  log += "c2";
                }});
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "b fails");
  }
  EXPECT_EQ(log, "a1b1c1a2");  // c2 and a3 never run
  EXPECT_FALSE(in_fiber());
  // The scheduler was left in order: fibers run again afterwards.
  int n = 0;
  run_fibers({[&] { ++n; fiber_yield(); ++n; }, [&] { ++n; }});
  EXPECT_EQ(n, 3);
}

// Each fiber's locals live on its own stack: deep recursion with large frames in two
// fibers that switch at every level keeps both intact.
int deep(int level, int tag) {
  volatile char frame[16 << 10];
  std::memset(const_cast<char*>(frame), tag + level, sizeof frame);
  fiber_yield();
  const int below = level > 0 ? deep(level - 1, tag) : 0;
  for (size_t i = 0; i < sizeof frame; i += 4096)
    if (frame[i] != char(tag + level)) return -1'000'000;
  return below + level;
}

TEST(Fiber, StacksAreSeparateAndDeep) {
  int a = 0, b = 0;
  // 256 levels × 16 KiB = 4 MiB of frames on each fiber.
  run_fibers({[&] { a = deep(256, 1); }, [&] { b = deep(256, 7); }});
  EXPECT_EQ(a, 256 * 257 / 2);
  EXPECT_EQ(b, 256 * 257 / 2);
}

TEST(Fiber, ThreadPoolRegionsRunFromFibers) {
  std::vector<int64_t> sums(2, 0);
  auto task = [&](int which) {
    return [&sums, which] {
      for (int round = 0; round < 20; ++round) {
        std::atomic<int64_t> s{0};
        parallel_for(1000, 2, [&](int64_t i) { s += i; });
        sums[size_t(which)] += s.load();
        fiber_yield();
      }
    };
  };
  run_fibers({task(0), task(1)});
  EXPECT_EQ(sums[0], 20 * 999 * 1000 / 2);
  EXPECT_EQ(sums[1], sums[0]);
}

TEST(Fiber, DoesNotNest) {
  bool refused = false;
  run_fibers({[&] {
    try {
      run_fibers({[] {}});
    } catch (const Error& e) {
      refused = std::string(e.what()).find("do not nest") != std::string::npos;
    }
  }});
  EXPECT_TRUE(refused);
}

}  // namespace
}  // namespace dsv3
