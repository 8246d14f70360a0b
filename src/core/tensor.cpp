#include "core/tensor.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace dsv3 {

namespace {

// Bytes of a dense tensor, checked: a negative dimension or an element/byte count that
// overflows int64 is a user error (the unchecked product was signed-overflow UB and could
// wrap to a small allocation).
size_t checked_bytes(DType dtype, std::initializer_list<int64_t> shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    DSV3_CHECK(s >= 0, "negative dimension ", s);
    DSV3_CHECK(s == 0 || n <= INT64_MAX / s, "tensor shape overflows int64");
    n *= s;
  }
  const int64_t es = int64_t(dtype_size(dtype));
  DSV3_CHECK(n <= INT64_MAX / es, "tensor of ", n, " elements is too large");
  return size_t(n * es);
}

}  // namespace

TensorView::TensorView(void* data, DType dtype, int nd, const int64_t* shp)
    : data(data), dtype(dtype), ndim(nd) {
  DSV3_CHECK(nd >= 0 && nd <= kMaxDims, "tensor rank ", nd, " exceeds the maximum of ",
             kMaxDims);
  int64_t s = 1;
  for (int d = nd - 1; d >= 0; --d) {
    DSV3_CHECK(shp[d] >= 0, "negative dimension ", shp[d]);
    DSV3_CHECK(shp[d] == 0 || s <= INT64_MAX / shp[d], "tensor shape overflows int64");
    shape[d] = shp[d];
    stride[d] = s;
    s *= shp[d];
  }
}

TensorView::TensorView(void* data, DType dtype, std::initializer_list<int64_t> shp)
    : TensorView(data, dtype, int(shp.size()), shp.begin()) {}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  return n;
}

bool TensorView::is_contiguous() const {
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] != 1 && stride[d] != s) return false;
    s *= shape[d];
  }
  return true;
}

std::string TensorView::shape_str() const {
  std::string s = "[";
  for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + "]";
}

TensorView TensorView::row(int64_t r) const {
  DSV3_ASSERT(ndim == 2 && r >= 0 && r < shape[0]);
  TensorView v = *this;
  v.data = static_cast<char*>(data) + r * stride[0] * int64_t(dtype_size(dtype));
  v.ndim = 1;
  v.shape[0] = shape[1];
  v.stride[0] = stride[1];
  return v;
}

TensorView TensorView::as_2d() const {
  DSV3_ASSERT(ndim >= 1);
  TensorView v = *this;
  if (ndim == 1) {
    v.ndim = 2;
    v.shape[0] = 1; v.shape[1] = shape[0];
    v.stride[0] = shape[0] * stride[0]; v.stride[1] = stride[0];
    return v;
  }
  int64_t rows = 1;
  for (int d = 0; d < ndim - 1; ++d) rows *= shape[d];
  for (int d = 0; d < ndim - 2; ++d) DSV3_ASSERT(shape[d + 1] == 1 || stride[d] == stride[d + 1] * shape[d + 1]);
  v.ndim = 2;
  v.shape[0] = rows; v.shape[1] = shape[ndim - 1];
  v.stride[0] = stride[ndim - 2]; v.stride[1] = stride[ndim - 1];
  return v;
}

TensorView TensorView::transposed() const {
  DSV3_ASSERT(ndim >= 2);
  TensorView v = *this;
  std::swap(v.shape[ndim - 1], v.shape[ndim - 2]);
  std::swap(v.stride[ndim - 1], v.stride[ndim - 2]);
  return v;
}

void Buffer::Free::operator()(void* p) const { std::free(p); }

Buffer::Buffer(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  DSV3_CHECK(bytes <= SIZE_MAX - kAlign, "out of memory allocating ", bytes, " bytes");
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded);
  DSV3_CHECK(p != nullptr, "out of memory allocating ", bytes, " bytes");
  std::memset(p, 0, rounded);
  ptr_.reset(p);
}

Tensor Tensor::empty(DType dtype, std::initializer_list<int64_t> shape) {
  Tensor t;
  t.buffer = Buffer(checked_bytes(dtype, shape));
  t.view = TensorView(t.buffer.data(), dtype, shape);
  return t;
}

void* Arena::alloc(size_t bytes, size_t align) {
  const size_t start = (used_ + align - 1) / align * align;
  DSV3_CHECK(start >= used_ && start <= buf_.size() && bytes <= buf_.size() - start,
             "activation arena exhausted: need ", start, " + ", bytes, " bytes, have ", buf_.size());
  used_ = start + bytes;
  if (used_ > high_) high_ = used_;
  return static_cast<char*>(buf_.data()) + start;
}

TensorView Arena::view(DType dtype, std::initializer_list<int64_t> shape) {
  return TensorView(alloc(checked_bytes(dtype, shape)), dtype, shape);
}

}  // namespace dsv3
