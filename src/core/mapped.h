// Zeroed arrays in anonymous memory mappings, committed page by page as they are written: a
// page never written costs no memory (a read of it sees zeros from the kernel's shared zero
// page), and release() gives written pages back. The training arenas use them so that a rank
// pays only for the parts of the model it holds (train/train_weights.h, train/train_step.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>

namespace dsv3 {

class MappedBytes {
 public:
  MappedBytes() = default;
  // bytes zeroed bytes (whole pages); what names the array in an out-of-memory error.
  MappedBytes(size_t bytes, const char* what);
  ~MappedBytes();
  MappedBytes(MappedBytes&& o) noexcept { swap(o); }
  MappedBytes& operator=(MappedBytes&& o) noexcept {
    MappedBytes t(std::move(o));
    swap(t);
    return *this;
  }
  MappedBytes(const MappedBytes&) = delete;
  MappedBytes& operator=(const MappedBytes&) = delete;

  char* data() const { return p_; }
  // The whole pages inside [b, e) (bytes) back to the kernel: they read as zeros again;
  // with protect, any access to them faults until unprotect(). Returns the page range freed.
  std::pair<size_t, size_t> release(size_t b, size_t e, bool protect = false);
  void unprotect(size_t b, size_t e);  // a page range release(…, true) returned
  size_t resident() const;             // bytes of it in memory (mincore)
  static size_t page();

 private:
  void swap(MappedBytes& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
  }
  char* p_ = nullptr;
  size_t n_ = 0;
};

// n zeroed elements of T (trivially copyable) on a MappedBytes.
template <class T>
class MappedArray {
 public:
  MappedArray() = default;
  MappedArray(int64_t n, const char* what) : m_(size_t(n) * sizeof(T), what), n_(n) {}
  T* data() { return reinterpret_cast<T*>(m_.data()); }
  const T* data() const { return reinterpret_cast<const T*>(m_.data()); }
  int64_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  T& operator[](size_t i) { return data()[i]; }
  const T& operator[](size_t i) const { return data()[i]; }
  size_t resident_bytes() const { return m_.resident(); }

 private:
  MappedBytes m_;
  int64_t n_ = 0;
};

}  // namespace dsv3
