// Cooperative fibers on one thread: several computations take turns on the calling thread,
// each on its own stack, switching only where one of them calls fiber_yield().
//
// What for: the training step's two-micro-batch overlap (docs/distributed.md). Each
// micro-batch's forward and backward is ordinary sequential code; at every expert-parallel
// exchange it starts the transfer and yields, so the other micro-batch computes while the
// rows travel. Threads would do the same with locks and MPI_THREAD_MULTIPLE; fibers keep one
// thread calling MPI and make the interleaving a fixed function of the code: a fiber runs
// until it yields, then the next unfinished fiber in task order resumes (round robin). Every
// rank running the same code therefore issues its collectives in the same order, as MPI
// requires.
//
// Rules: yield only between pieces of work (never inside a parallel region, a catch block or
// while a thread-local scratch buffer is in use across the call); every fiber has its own
// state and scratch.
//
// Errors: an exception that leaves a task ends run_fibers at once — it is rethrown there and
// the other fibers are never resumed. Running them on would be wrong under MPI: a fiber left
// alone no longer yields, so its collectives would pair with other ranks' collectives of the
// other fiber. An abandoned fiber's stack is left mapped (a leak on a path that ends the
// process: under mpirun, main() turns the error into dist::fatal).
#pragma once
#include <cstddef>
#include <functional>
#include <vector>

namespace dsv3 {

// Runs tasks[i] each on a fiber of its own (a stack of stack_bytes, reserved, committed as
// touched; a guard page below it), starting with tasks[0]. Returns when every task has
// returned; rethrows the first exception a task throws, at once (above). Not reentrant:
// calling it from a fiber is an error (dsv3::Error).
void run_fibers(const std::vector<std::function<void()>>& tasks,
                size_t stack_bytes = size_t(64) << 20);

// On a fiber of run_fibers with another fiber unfinished: switches to the next unfinished
// one and returns when this fiber's turn comes again. Otherwise (no fibers, or the last one
// left) returns at once.
void fiber_yield();

// True on a fiber of run_fibers.
bool in_fiber();
// The running fiber's index in run_fibers' tasks; -1 when not on a fiber.
int fiber_index();

}  // namespace dsv3
