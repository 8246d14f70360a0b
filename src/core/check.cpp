#include "core/check.h"

#include <cstdio>
#include <cstdlib>

namespace dsv3 {

void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "dsv3: internal error: assertion `%s` failed at %s:%d\n", expr, file,
               line);
  std::abort();
}

}  // namespace dsv3
