// A Hugging Face model directory: config.json plus either a sharded checkpoint
// (model.safetensors.index.json with weight_map name -> shard file) or a single
// model.safetensors (or *.safetensors files without an index). ../shared/SPEC.md §6.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/file_util.h"
#include "io/safetensors.h"

namespace dsv3 {

inline constexpr const char* kIndexFile = "model.safetensors.index.json";
inline constexpr const char* kSingleFile = "model.safetensors";

struct CheckpointTensor {
  TensorView view;          // zero-copy into the shard's mapping (read-only)
  const std::string* shard; // file name of the shard within the directory
};

class Checkpoint {
 public:
  // Opens every shard (mmap + header validation) and checks the index against them:
  // every shard named exists and holds every tensor mapped to it, and no shard holds a
  // tensor the index does not list. Throws dsv3::Error naming the file and tensor.
  explicit Checkpoint(const std::string& dir);

  // True when dir holds safetensors weights (an index or any *.safetensors file).
  static bool has_weights(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool sharded() const { return sharded_; }
  bool contains(std::string_view name) const { return tensors_.count(name) != 0; }
  // nullptr when absent.
  const CheckpointTensor* find(std::string_view name) const;
  // Throws "<dir>: missing tensor '<name>'" when absent.
  const CheckpointTensor& get(std::string_view name) const;
  // All tensor names, sorted.
  std::vector<std::string> names() const;
  size_t num_tensors() const { return tensors_.size(); }
  const std::vector<std::unique_ptr<SafetensorsFile>>& shards() const { return shards_; }
  const std::vector<std::string>& shard_names() const { return shard_names_; }
  uint64_t total_bytes() const;  // tensor data bytes, all shards

 private:
  std::string dir_;
  bool sharded_ = false;
  std::vector<std::string> shard_names_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, CheckpointTensor, std::less<>> tensors_;
};

// Writes a checkpoint directory: tensors are added in groups that stay in one shard (a
// weight and its weight_scale_inv); finish() splits them into shards of at most
// max_shard_bytes (or exactly `num_shards` shards by bytes when num_shards > 0), named
// model-00001-of-0000N.safetensors, and writes the index; a single shard is written as
// model.safetensors without an index. Each file is written atomically; the index last.
class CheckpointWriter {
 public:
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    SafetensorsWriter::Fill fill;
  };
  using Progress = std::function<void(size_t shard, size_t num_shards, const std::string& file)>;

  explicit CheckpointWriter(std::string dir) : dir_(std::move(dir)) {}
  void set_max_shard_bytes(uint64_t b) { max_shard_bytes_ = b; }
  void set_num_shards(int n) { num_shards_ = n; }
  void set_progress(Progress p) { progress_ = std::move(p); }
  void add_group(std::vector<Tensor> group);
  void add(Tensor t);
  // Returns the shard file names written.
  std::vector<std::string> finish();

 private:
  std::string dir_;
  uint64_t max_shard_bytes_ = 4ull << 30;
  int num_shards_ = 0;
  Progress progress_;
  std::vector<std::vector<Tensor>> groups_;
};

// A linear weight [N, K] written as F8_E4M3 plus its F32 `<name>_scale_inv`
// [ceil(N/128), ceil(K/128)] (kernels/quant.h, scale = amax/448 per 128x128 block), as one
// shard group. `source(scratch)` returns the weight as a contiguous F32, BF16 or F16 view
// (it may allocate it in scratch); it runs once, when the writer first needs either tensor.
std::vector<CheckpointWriter::Tensor> fp8_weight_group(
    const std::string& name, int64_t N, int64_t K, std::function<TensorView(Buffer& scratch)> source);

}  // namespace dsv3
