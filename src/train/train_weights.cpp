#include "train/train_weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/check.h"
#include "kernels/convert.h"

namespace dsv3 {
namespace {

size_t page_bytes() { return size_t(sysconf(_SC_PAGESIZE)); }

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

void* map_zeroed(size_t bytes, const char* what) {
  if (bytes == 0) return nullptr;
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  DSV3_CHECK(m != MAP_FAILED, "cannot map ", bytes >> 20, " MiB for the ", what, ": ", std::strerror(errno));
  return m;
}

}  // namespace

TrainWeights::TrainWeights(const ParamSet& ps, bool bf16_copy) : n_(ps.numel()) {
  const size_t page = page_bytes();
  f32_bytes_ = round_up(size_t(n_) * sizeof(float), page);
  f32_ = static_cast<float*>(map_zeroed(f32_bytes_, "master weights"));
  if (bf16_copy) {
    bf16_bytes_ = round_up(size_t(n_) * sizeof(uint16_t), page);
    bf16_ = static_cast<uint16_t*>(map_zeroed(bf16_bytes_, "BF16 weight copy"));
  }
  for (const ParamInfo& p : ps.infos()) {
    if (!p.gemm) continue;
    const int64_t b = p.offset, e = p.offset + p.spec.numel();
    if (!gemm_.empty() && gemm_.back().second == b)
      gemm_.back().second = e;
    else
      gemm_.push_back({b, e});
  }
  std::sort(gemm_.begin(), gemm_.end());
}

TrainWeights::~TrainWeights() {
  if (f32_) munmap(f32_, f32_bytes_);
  if (bf16_) munmap(bf16_, bf16_bytes_);
}

float* TrainWeights::mutable_data() {
  DSV3_ASSERT(!sharded_);  // gather the master first (TrainStep::gather_params)
  copy_current_ = false;
  return f32_;
}

void TrainWeights::sync_copy(int64_t lo, int64_t hi) {
  if (bf16_ == nullptr) return;
  if (hi < 0) hi = n_;
  if (!copy_current_) {
    DSV3_ASSERT(!sharded_);
    lo = 0;
    hi = n_;
  }
  if (hi > lo) convert_f32_to_bf16(f32_ + lo, bf16_ + lo, hi - lo);
  if (lo == 0 && hi == n_) copy_current_ = true;
}

void TrainWeights::shard(int64_t lo, int64_t hi) {
  DSV3_ASSERT(bf16_ != nullptr && copy_current_);
  if (sharded_) return;
  sharded_ = true;
  // Whole pages inside a GEMM range and outside [lo, hi): only stale values live there.
  const size_t page = page_bytes();
  auto release = [&](int64_t b, int64_t e) {
    const size_t pb = round_up(size_t(b) * sizeof(float), page), pe = size_t(e) * sizeof(float) / page * page;
    if (pe <= pb) return;
    char* base = reinterpret_cast<char*>(f32_);
    DSV3_CHECK(madvise(base + pb, pe - pb, MADV_DONTNEED) == 0, "madvise: ", std::strerror(errno));
    DSV3_CHECK(mprotect(base + pb, pe - pb, PROT_NONE) == 0, "mprotect: ", std::strerror(errno));
    released_.push_back({pb, pe});
  };
  for (const auto& [b, e] : gemm_) {
    if (b < lo) release(b, std::min(e, lo));
    if (e > hi) release(std::max(b, hi), e);
  }
}

void TrainWeights::unshard() {
  char* base = reinterpret_cast<char*>(f32_);
  for (const auto& [pb, pe] : released_)
    DSV3_CHECK(mprotect(base + pb, pe - pb, PROT_READ | PROT_WRITE) == 0, "mprotect: ", std::strerror(errno));
  released_.clear();
  sharded_ = false;
}

int64_t TrainWeights::master_resident_bytes() const {
  const size_t page = page_bytes();
  std::vector<unsigned char> v(f32_bytes_ / page);
  if (v.empty()) return 0;
  DSV3_CHECK(mincore(f32_, f32_bytes_, v.data()) == 0, "mincore: ", std::strerror(errno));
  int64_t r = 0;
  for (unsigned char c : v) r += (c & 1) ? int64_t(page) : 0;
  return r;
}

}  // namespace dsv3
