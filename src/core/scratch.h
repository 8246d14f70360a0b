// Grow-only scratch buffers: layer code keeps std::vector scratch in its scratch structs and
// sizes it on use, so a steady-state step (a decode token, a training step) allocates
// nothing once the first call has grown every buffer.
#pragma once
#include <cstdint>
#include <vector>

namespace dsv3 {

// v.data() after making sure v holds at least n elements (never shrinks).
template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  if (v.size() < size_t(n)) v.resize(size_t(n));
  return v.data();
}

}  // namespace dsv3
