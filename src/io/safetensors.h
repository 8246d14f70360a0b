// safetensors: the Hugging Face tensor file format (../shared/SPEC.md §6).
//
//   [u64 LE N][N bytes of UTF-8 JSON header][data]
//   header = {name: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
//             "__metadata__": {str: str}}   (offsets relative to the start of data)
//
// The reader enforces every rule of the format and rejects anything else with a
// dsv3::Error naming the file, the tensor or key and what was expected: N <= 100 MB and
// inside the file, valid UTF-8, one JSON object, no duplicate names, known dtypes,
// size = prod(shape) * dtype size (no overflow), data contiguous (no holes, no overlaps)
// and file size exactly 8 + N + last end. Files are mmapped; tensors are zero-copy
// TensorViews into the mapping.
// The writer pads the header with spaces so that data starts at a multiple of 8 bytes and
// orders tensors by element size (largest first) so that each tensor starts at a multiple
// of its element size; it writes a temporary file and renames it (atomic).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace dsv3 {

inline constexpr uint64_t kSafetensorsMaxHeader = 100ull * 1000 * 1000;  // 100 MB

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  uint64_t begin = 0, end = 0;  // byte offsets relative to the start of the data section
  std::string shape_str() const;  // "[4, 128]"
};

struct SafetensorsHeader {
  uint64_t header_len = 0;   // N
  uint64_t data_size = 0;    // bytes of the data section (= last end)
  std::vector<SafetensorsEntry> tensors;  // in data order
  std::map<std::string, std::string> metadata;
  uint64_t data_start() const { return 8 + header_len; }
};

// Validates a whole file image (the 8-byte length, the header and the data layout; the
// data bytes themselves are not read). `where` names the file in error messages. This is
// the fuzz target (fuzz/fuzz_safetensors.cpp).
SafetensorsHeader parse_safetensors(const uint8_t* file, size_t file_size, const std::string& where);

// One mmapped safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  size_t file_size() const { return size_; }
  // nullptr when the file holds no tensor of that name.
  const SafetensorsEntry* find(std::string_view name) const;
  // A view of the tensor's bytes in the mapping (read-only memory: do not write through
  // it). Views of F32/BF16 data are aligned to their element size only when the file's
  // writer aligned them (ours and the Hugging Face library do).
  TensorView view(const SafetensorsEntry& e) const;
  const uint8_t* data() const { return base_ + header_.data_start(); }

 private:
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors
};

// Writes one safetensors file. Tensors are added with their dtype, shape and either a view
// to copy from or a fill function that writes exactly nbytes into a buffer (so huge files
// are produced one tensor at a time); nothing is written until finish().
class SafetensorsWriter {
 public:
  using Fill = std::function<void(void* dst, size_t nbytes)>;
  explicit SafetensorsWriter(std::string path) : path_(std::move(path)) {}

  void add(std::string name, DType dtype, std::vector<int64_t> shape, Fill fill);
  void add(std::string name, const TensorView& v);  // v must be contiguous and outlive finish()
  // A tensor written in pieces of at most kChunkBytes (whole elements): fill(dst, offset,
  // nbytes) supplies bytes [offset, offset + nbytes) of its data, in increasing offsets — so
  // a tensor larger than memory, or gathered from other processes, streams through one
  // buffer of that size.
  using ChunkFill = std::function<void(void* dst, uint64_t offset, size_t nbytes)>;
  static constexpr size_t kChunkBytes = size_t(64) << 20;
  void add_chunked(std::string name, DType dtype, std::vector<int64_t> shape, ChunkFill fill);
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }
  // Writes path.tmp.<pid> then renames it onto path. Returns the bytes of tensor data.
  uint64_t finish();
  // Bytes of data of one tensor (throws when the shape is too large).
  static uint64_t tensor_bytes(DType dtype, const std::vector<int64_t>& shape);

 private:
  struct Item {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    Fill fill;
    ChunkFill chunks;  // instead of fill
  };
  std::string path_;
  std::vector<Item> items_;
  std::map<std::string, std::string> metadata_;
};

// The byte size of prod(shape) elements of dtype; false when the product of the non-zero
// dimensions times the element size overflows int64 (even if another dimension is 0).
bool safetensors_nbytes(DType dtype, const int64_t* shape, int ndim, uint64_t* out);

}  // namespace dsv3
