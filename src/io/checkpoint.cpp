// Checkpoint directories: the sharded index and its shards (checkpoint.h).
#include "io/checkpoint.h"


#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "io/json_strict.h"
#include "kernels/quant.h"
#include "model/weights.h"

namespace dsv3 {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> safetensors_files(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && n.size() > 12 && n.ends_with(".safetensors")) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A shard named in the index must be a plain file name in the directory.
bool plain_file_name(const std::string& n) {
  return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos &&
         n.find('\\') == std::string::npos && n.find('\0') == std::string::npos;
}

}  // namespace

bool Checkpoint::has_weights(const std::string& dir) {
  std::error_code ec;
  return fs::exists(fs::path(dir) / kIndexFile, ec) || !safetensors_files(dir).empty();
}

Checkpoint::Checkpoint(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  DSV3_CHECK(fs::is_directory(dir, ec), dir, ": not a directory");
  const fs::path index_path = fs::path(dir) / kIndexFile;
  std::map<std::string, std::string> weight_map;  // name -> shard
  if (fs::exists(index_path, ec)) {
    sharded_ = true;
    const std::string where = index_path.string();
    const nlohmann::json j = parse_json_strict(read_text_file(where), where, "index");
    DSV3_CHECK(j.is_object(), where, ": expected a JSON object, got ", j.type_name());
    auto wm = j.find("weight_map");
    DSV3_CHECK(wm != j.end(), where, ": missing \"weight_map\"");
    DSV3_CHECK(wm->is_object(), where, ": \"weight_map\" must be an object name -> shard, got ",
               wm->type_name());
    for (const auto& [name, shard] : wm->items()) {
      DSV3_CHECK(shard.is_string(), where, ": weight_map['", name,
                 "'] must be a shard file name, got ", shard.dump());
      const std::string s = shard.get<std::string>();
      DSV3_CHECK(plain_file_name(s), where, ": weight_map['", name, "'] = '", s,
                 "' is not a file name in the model directory");
      weight_map[name] = s;
      if (std::find(shard_names_.begin(), shard_names_.end(), s) == shard_names_.end())
        shard_names_.push_back(s);
    }
    std::sort(shard_names_.begin(), shard_names_.end());
    for (const std::string& s : shard_names_)
      DSV3_CHECK(fs::is_regular_file(fs::path(dir) / s, ec), where, ": shard '", s,
                 "' named in weight_map is missing from ", dir);
  } else {
    shard_names_ = safetensors_files(dir);
    DSV3_CHECK(!shard_names_.empty(), dir, ": no ", kIndexFile, " and no *.safetensors files");
  }

  for (const std::string& s : shard_names_)
    shards_.push_back(std::make_unique<SafetensorsFile>((fs::path(dir) / s).string()));
  for (size_t i = 0; i < shards_.size(); ++i) {
    for (const SafetensorsEntry& e : shards_[i]->header().tensors) {
      if (sharded_) {
        auto it = weight_map.find(e.name);
        DSV3_CHECK(it != weight_map.end(), shards_[i]->path(), ": holds tensor '", e.name,
                   "' that ", kIndexFile, " does not list");
        DSV3_CHECK(it->second == shard_names_[i], shards_[i]->path(), ": holds tensor '",
                   e.name, "' that ", kIndexFile, " maps to shard '", it->second, "'");
      }
      auto [pos, inserted] =
          tensors_.emplace(e.name, CheckpointTensor{shards_[i]->view(e), &shard_names_[i]});
      DSV3_CHECK(inserted, dir, ": tensor '", e.name, "' appears in both ", *pos->second.shard,
                 " and ", shard_names_[i]);
    }
  }
  for (const auto& [name, shard] : weight_map)
    DSV3_CHECK(tensors_.count(name), (fs::path(dir) / kIndexFile).string(), ": tensor '", name,
               "' is mapped to shard '", shard, "', which does not hold it");
}

const CheckpointTensor* Checkpoint::find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const CheckpointTensor& Checkpoint::get(std::string_view name) const {
  const CheckpointTensor* t = find(name);
  DSV3_CHECK(t != nullptr, dir_, ": missing tensor '", name, "'");
  return *t;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& s : shards_) n += s->header().data_size;
  return n;
}

void CheckpointWriter::add_group(std::vector<Tensor> group) {
  DSV3_ASSERT(!group.empty());
  groups_.push_back(std::move(group));
}

void CheckpointWriter::add(Tensor t) {
  std::vector<Tensor> g;
  g.push_back(std::move(t));
  add_group(std::move(g));
}

std::vector<std::string> CheckpointWriter::finish() {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  DSV3_CHECK(fs::is_directory(dir_, ec), dir_, ": cannot create directory");
  std::vector<uint64_t> bytes(groups_.size());
  uint64_t total = 0;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (const Tensor& t : groups_[g]) bytes[g] += SafetensorsWriter::tensor_bytes(t.dtype, t.shape);
    total += bytes[g];
  }
  // Split groups, in the order added, into consecutive shards.
  uint64_t cap = max_shard_bytes_;
  if (num_shards_ > 0) cap = (total + uint64_t(num_shards_) - 1) / uint64_t(num_shards_);
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const bool room = num_shards_ > 0 ? int(shards.size()) < num_shards_ : true;
    if (!shards.back().empty() && in_shard + bytes[g] > cap && room) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(g);
    in_shard += bytes[g];
  }
  const size_t n = shards.size();
  std::vector<std::string> names;
  char buf[64];
  for (size_t s = 0; s < n; ++s) {
    if (n == 1) {
      names.push_back(kSingleFile);
    } else {
      std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", s + 1, n);
      names.push_back(buf);
    }
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < n; ++s) {
    if (progress_) progress_(s, n, names[s]);
    SafetensorsWriter w((fs::path(dir_) / names[s]).string());
    w.set_metadata("format", "pt");  // what transformers expects of a PyTorch checkpoint
    for (size_t g : shards[s]) {
      for (Tensor& t : groups_[g]) {
        weight_map[t.name] = names[s];
        w.add(t.name, t.dtype, t.shape, std::move(t.fill));
      }
    }
    w.finish();
  }
  const fs::path index = fs::path(dir_) / kIndexFile;
  if (n > 1) {
    nlohmann::ordered_json j;
    j["metadata"] = {{"total_size", total}};
    j["weight_map"] = std::move(weight_map);
    write_file_atomic(index.string(), j.dump(2) + "\n");
  } else {
    fs::remove(index, ec);  // a stale index would point at shards that are not there
  }
  groups_.clear();
  return names;
}

std::vector<CheckpointWriter::Tensor> fp8_weight_group(
    const std::string& name, int64_t N, int64_t K, std::function<TensorView(Buffer& scratch)> source) {
  struct Quantised {
    Buffer q, scale;  // [N, K] codes, [ceil(N/128), ceil(K/128)] scales
    bool done = false;
  };
  auto st = std::make_shared<Quantised>();
  // The writer orders tensors by element size, so the scale (F32) is usually asked for
  // first: quantise once, keep both, release each after it is copied.
  auto compute = [st, N, K, source = std::move(source)] {
    if (st->done) return;
    Buffer scratch, wide;
    TensorView v = source(scratch);
    DSV3_CHECK(v.ndim == 2 && v.shape[0] == N && v.shape[1] == K && v.is_contiguous(),
               "fp8_weight_group: source has shape ", v.shape_str(), ", expected [", N, ", ", K, "]");
    if (v.dtype == DType::F16) {  // the quantiser reads F32 or BF16
      wide = Buffer(size_t(N * K) * sizeof(float));
      for (int64_t i = 0; i < N * K; ++i) wide.as<float>()[i] = f16_to_f32(v.ptr<uint16_t>()[i]);
      v = TensorView(wide.data(), DType::F32, {N, K});
    }
    st->q = Buffer(size_t(N * K));
    st->scale = Buffer(size_t(fp8_blocks(N) * fp8_blocks(K)) * sizeof(float));
    quantize_fp8_128x128(v.data, v.dtype, N, K, K, st->q.as<uint8_t>(), K, st->scale.as<float>());
    st->done = true;
  };
  std::vector<CheckpointWriter::Tensor> g;
  g.push_back({name, DType::F8_E4M3, {N, K}, [st, compute](void* d, size_t nb) {
                 compute();
                 std::memcpy(d, st->q.data(), nb);
                 st->q = Buffer();
               }});
  g.push_back({scale_name(name), DType::F32, {fp8_blocks(N), fp8_blocks(K)},
               [st, compute](void* d, size_t nb) {
                 compute();
                 std::memcpy(d, st->scale.data(), nb);
                 st->scale = Buffer();
               }});
  return g;
}

}  // namespace dsv3
