#include "core/mapped.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "core/check.h"

namespace dsv3 {

size_t MappedBytes::page() {
  static const size_t p = size_t(sysconf(_SC_PAGESIZE));
  return p;
}

MappedBytes::MappedBytes(size_t bytes, const char* what) {
  if (bytes == 0) return;
  n_ = (bytes + page() - 1) / page() * page();
  void* m = mmap(nullptr, n_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  DSV3_CHECK(m != MAP_FAILED, "cannot map ", n_ >> 20, " MiB for the ", what, ": ", std::strerror(errno));
  p_ = static_cast<char*>(m);
}

MappedBytes::~MappedBytes() {
  if (p_) munmap(p_, n_);
}

std::pair<size_t, size_t> MappedBytes::release(size_t b, size_t e, bool protect) {
  const size_t pg = page(), pb = (b + pg - 1) / pg * pg, pe = std::min(e, n_) / pg * pg;
  if (pe <= pb) return {pb, pb};
  DSV3_CHECK(madvise(p_ + pb, pe - pb, MADV_DONTNEED) == 0, "madvise: ", std::strerror(errno));
  if (protect) DSV3_CHECK(mprotect(p_ + pb, pe - pb, PROT_NONE) == 0, "mprotect: ", std::strerror(errno));
  return {pb, pe};
}

void MappedBytes::unprotect(size_t b, size_t e) {
  if (e > b) DSV3_CHECK(mprotect(p_ + b, e - b, PROT_READ | PROT_WRITE) == 0, "mprotect: ", std::strerror(errno));
}

size_t MappedBytes::resident() const {
  std::vector<unsigned char> v(n_ / page());
  if (v.empty()) return 0;
  DSV3_CHECK(mincore(p_, n_, v.data()) == 0, "mincore: ", std::strerror(errno));
  size_t r = 0;
  for (unsigned char c : v) r += (c & 1) ? page() : 0;
  return r;
}

}  // namespace dsv3
