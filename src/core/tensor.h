// TensorView: a non-owning view (pointer, dtype, shape, strides in elements). It never
// allocates. Buffer: owning, 64-byte aligned memory. Arena: a bump allocator for
// activations, sized once from the config so that hot loops never allocate.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "core/check.h"
#include "core/dtype.h"

namespace dsv3 {

inline constexpr int kMaxDims = 6;
inline constexpr size_t kAlign = 64;  // one cache line, one AVX-512 register

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};  // in elements, not bytes

  TensorView() = default;
  // A row-major contiguous view.
  TensorView(void* data, DType dtype, std::initializer_list<int64_t> shape);
  TensorView(void* data, DType dtype, int ndim, const int64_t* shape);

  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  bool is_contiguous() const;
  int64_t size(int d) const { return shape[d < 0 ? d + ndim : d]; }
  std::string shape_str() const;  // "[4, 128]"

  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
  // Row r of a 2-D view as a 1-D view.
  TensorView row(int64_t r) const;
  // The 2-D view with leading dimensions merged (requires them contiguous).
  TensorView as_2d() const;
  TensorView transposed() const;  // swaps the last two dimensions (no copy)
};

// Owning, 64-byte aligned, zero-initialised memory.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes);
  void* data() const { return ptr_.get(); }
  size_t size() const { return size_; }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_.get()); }

 private:
  struct Free { void operator()(void* p) const; };
  std::unique_ptr<void, Free> ptr_;
  size_t size_ = 0;
};

// A tensor that owns its storage (parameters, gradients, test data).
struct Tensor {
  Buffer buffer;
  TensorView view;
  static Tensor empty(DType dtype, std::initializer_list<int64_t> shape);
  template <class T>
  T* ptr() const { return view.ptr<T>(); }
  int64_t numel() const { return view.numel(); }
};

// Bump allocator over one Buffer: alloc() is a pointer increment, reset() frees all.
class Arena {
 public:
  explicit Arena(size_t bytes) : buf_(bytes) {}
  void* alloc(size_t bytes, size_t align = kAlign);
  template <class T>
  T* alloc_array(size_t n) { return static_cast<T*>(alloc(n * sizeof(T), alignof(T) > kAlign ? alignof(T) : kAlign)); }
  TensorView view(DType dtype, std::initializer_list<int64_t> shape);
  size_t mark() const { return used_; }
  void reset(size_t mark = 0) { used_ = mark; }
  size_t used() const { return used_; }
  size_t capacity() const { return buf_.size(); }
  size_t high_water() const { return high_; }

 private:
  Buffer buf_;
  size_t used_ = 0;
  size_t high_ = 0;
};

}  // namespace dsv3
