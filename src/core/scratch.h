// Grow-only scratch buffers: layer code keeps std::vector scratch in its scratch structs and
// sizes it on use, so a steady-state step (a decode token, a training step) allocates
// nothing once the first call has grown every buffer.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace dsv3 {

// v.data() after making sure v holds at least n elements (never shrinks).
template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  if (v.size() < size_t(n)) v.resize(size_t(n));
  return v.data();
}

// grow(v, n) with the first n elements set to zero (what a fresh std::vector<T>(n) gave).
template <class T>
T* zeros(std::vector<T>& v, int64_t n) {
  T* p = grow(v, n);
  std::fill(p, p + n, T());
  return p;
}

}  // namespace dsv3
