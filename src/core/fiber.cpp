#include "core/fiber.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <exception>

#include "core/check.h"

#if defined(__SANITIZE_ADDRESS__)
#define DSV3_FIBER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DSV3_FIBER_ASAN 1
#endif
#endif
#ifdef DSV3_FIBER_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace dsv3 {
namespace {

// AddressSanitizer tracks one stack per thread; a switch must be announced (start) and
// acknowledged on arrival (finish), or it reports the other stack's frames as overflows.
void start_switch([[maybe_unused]] void** fake, [[maybe_unused]] const void* bottom,
                  [[maybe_unused]] size_t size) {
#ifdef DSV3_FIBER_ASAN
  __sanitizer_start_switch_fiber(fake, bottom, size);
#endif
}
void finish_switch([[maybe_unused]] void* fake, [[maybe_unused]] const void** from_bottom,
                   [[maybe_unused]] size_t* from_size) {
#ifdef DSV3_FIBER_ASAN
  __sanitizer_finish_switch_fiber(fake, from_bottom, from_size);
#endif
}

struct Fiber {
  ucontext_t ctx{};
  void* map = nullptr;           // the mapping: guard page, then the stack
  size_t map_bytes = 0;
  char* stack = nullptr;         // usable stack [stack, stack + stack_bytes)
  size_t stack_bytes = 0;
  const std::function<void()>* task = nullptr;
  bool done = false;
  std::exception_ptr error;
  void* fake = nullptr;          // ASan's fake-stack handle while switched out
};

struct Scheduler {
  ucontext_t main{};
  void* main_fake = nullptr;
  const void* main_bottom = nullptr;  // the thread's own stack, learnt on the first switch
  size_t main_size = 0;
  std::vector<Fiber> fibers;
  int current = -1;                   // the running fiber; -1: the scheduler (main context)
};

thread_local Scheduler* t_sched = nullptr;

// The task, its exception kept for run_fibers. Its own frame, so that nothing of it is live
// when fiber_main announces its last switch.
[[gnu::noinline]] void run_task(Fiber& f) {
  try {
    (*f.task)();
  } catch (...) {
    f.error = std::current_exception();
  }
  f.done = true;
}

void fiber_main() {
  Scheduler& s = *t_sched;
  finish_switch(nullptr, &s.main_bottom, &s.main_size);
  run_task(s.fibers[size_t(s.current)]);
  // Leaving for good: ASan may drop this stack's fake frames (nullptr), and the switch follows
  // at once (no return through uc_link, which would run this frame's epilogue after it).
  start_switch(nullptr, s.main_bottom, s.main_size);
  setcontext(&s.main);
  DSV3_ASSERT(false);  // setcontext returns only on failure
}

// A fiber's stack and context, to start task on its first switch and return to link. Its own
// function: getcontext "returns twice" as far as the compiler knows, which would make a
// caller's loop variables suspect (-Wclobbered).
[[gnu::noinline]] void make_fiber(Fiber& f, const std::function<void()>* task, size_t stack_bytes,
                                  size_t page, ucontext_t* link) {
  f.map_bytes = stack_bytes + page;
  void* m = mmap(nullptr, f.map_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  DSV3_CHECK(m != MAP_FAILED, "run_fibers: cannot map a fiber stack of ", stack_bytes, " bytes");
  f.map = m;
  DSV3_ASSERT(mprotect(m, page, PROT_NONE) == 0);  // overflow faults instead of corrupting
  f.stack = static_cast<char*>(m) + page;
  f.stack_bytes = stack_bytes;
  f.task = task;
  DSV3_ASSERT(getcontext(&f.ctx) == 0);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = f.stack_bytes;
  f.ctx.uc_link = link;
  makecontext(&f.ctx, fiber_main, 0);
}

}  // namespace

bool in_fiber() { return t_sched != nullptr && t_sched->current >= 0; }
int fiber_index() { return t_sched != nullptr ? t_sched->current : -1; }

void fiber_yield() {
  if (!in_fiber()) return;
  Scheduler& s = *t_sched;
  int unfinished = 0;
  for (const Fiber& f : s.fibers) unfinished += f.done ? 0 : 1;
  if (unfinished < 2) return;  // only this one: nothing to switch to
  Fiber& me = s.fibers[size_t(s.current)];
  start_switch(&me.fake, s.main_bottom, s.main_size);
  DSV3_ASSERT(swapcontext(&me.ctx, &s.main) == 0);
  finish_switch(me.fake, &s.main_bottom, &s.main_size);
}

void run_fibers(const std::vector<std::function<void()>>& tasks, size_t stack_bytes) {
  DSV3_CHECK(t_sched == nullptr, "run_fibers: called from a fiber (fibers do not nest)");
  if (tasks.empty()) return;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  stack_bytes = (stack_bytes + page - 1) / page * page;
  Scheduler s;
  s.fibers.resize(tasks.size());
  struct Unmap {  // the stacks go on every path (an abandoned fiber's is kept: map = nullptr)
    Scheduler& s;
    ~Unmap() {
      for (Fiber& f : s.fibers)
        if (f.map) munmap(f.map, f.map_bytes);
      t_sched = nullptr;
    }
  } unmap{s};
  for (size_t i = 0; i < tasks.size(); ++i) make_fiber(s.fibers[i], &tasks[i], stack_bytes, page, &s.main);
  t_sched = &s;
  // Round robin in task order until every fiber has returned, or one has thrown.
  for (bool any = true; any;) {
    any = false;
    for (size_t i = 0; i < s.fibers.size(); ++i) {
      Fiber& f = s.fibers[i];
      if (f.done) continue;
      any = true;
      s.current = int(i);
      start_switch(&s.main_fake, f.stack, f.stack_bytes);
      DSV3_ASSERT(swapcontext(&s.main, &f.ctx) == 0);
      finish_switch(s.main_fake, nullptr, nullptr);
      s.current = -1;
      if (f.error) {
        // The others are abandoned mid-way: their stacks stay mapped (their frames are never
        // unwound, and an MPI operation they started may still refer to their objects).
        for (Fiber& o : s.fibers)
          if (!o.done) o.map = nullptr;
        std::rethrow_exception(f.error);
      }
    }
  }
}

}  // namespace dsv3
