// Two kinds of checks (as PyTorch c10):
//   DSV3_CHECK(cond, parts...)  user input: always on, throws dsv3::Error with a message
//                               that says what was wrong; the CLI prints it and exits 1.
//   DSV3_ASSERT(cond)           internal invariant: always on, aborts with file:line.
//   DSV3_DASSERT(cond)          internal invariant in hot paths: compiled out with NDEBUG.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dsv3 {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Parts>
std::string str_cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

[[noreturn]] void assert_fail(const char* expr, const char* file, int line);

}  // namespace dsv3

#define DSV3_CHECK(cond, ...)                                   \
  do {                                                          \
    if (!(cond)) [[unlikely]]                                   \
      throw ::dsv3::Error(::dsv3::str_cat(__VA_ARGS__));        \
  } while (0)

#define DSV3_FAIL(...) throw ::dsv3::Error(::dsv3::str_cat(__VA_ARGS__))

#define DSV3_ASSERT(cond)                                       \
  do {                                                          \
    if (!(cond)) [[unlikely]]                                   \
      ::dsv3::assert_fail(#cond, __FILE__, __LINE__);           \
  } while (0)

#ifdef NDEBUG
#define DSV3_DASSERT(cond) ((void)0)
#else
#define DSV3_DASSERT(cond) DSV3_ASSERT(cond)
#endif
