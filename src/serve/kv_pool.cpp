#include "serve/kv_pool.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace dsv3::serve {

KvPool::KvPool(int64_t n_blocks, int64_t block_rows, int64_t n_layers, int64_t row, CacheDtype dtype)
    : n_blocks_(n_blocks), block_rows_(block_rows), n_layers_(n_layers), row_(row), dtype_(dtype) {
  DSV3_CHECK(n_blocks > 0 && block_rows > 0, "the KV cache pool needs at least one block");
  data_.assign(size_t(n_blocks * bytes_per_block(block_rows, n_layers, row, dtype)), 0);
  meta_.resize(size_t(n_blocks));
  free_.reserve(size_t(n_blocks));
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(int32_t(b));  // pop 0 first
}

// Layer l, position p of a sequence lives at block table[p / block_rows], row p % block_rows
// of that layer's block array ([n_layers, n_blocks, block_rows, row_bytes]).
void KvPool::read_rows(const int32_t* table, int64_t P, uint8_t* out) const {
  const int64_t rb = row_bytes();
  for (int64_t l = 0; l < n_layers_; ++l)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t b = table[p / block_rows_];
      std::memcpy(out + (l * P + p) * rb,
                  data_.data() + ((l * n_blocks_ + b) * block_rows_ + p % block_rows_) * rb, size_t(rb));
    }
}

void KvPool::write_rows(const int32_t* table, int64_t P, const uint8_t* in) {
  const int64_t rb = row_bytes();
  for (int64_t l = 0; l < n_layers_; ++l)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t b = table[p / block_rows_];
      std::memcpy(data_.data() + ((l * n_blocks_ + b) * block_rows_ + p % block_rows_) * rb,
                  in + (l * P + p) * rb, size_t(rb));
    }
}

int32_t KvPool::allocate() {
  int32_t b = -1;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    b = lru_.front();
    lru_.pop_front();
    Meta& m = meta_[size_t(b)];
    auto it = by_hash_.find(m.hash);
    if (it != by_hash_.end() && it->second == b) by_hash_.erase(it);
    m.cached = false;
    m.tokens.clear();
  } else {
    return -1;
  }
  meta_[size_t(b)].ref = 1;
  ++used_;
  return b;
}

void KvPool::release(int32_t b) {
  Meta& m = meta_[size_t(b)];
  DSV3_ASSERT(m.ref > 0);
  if (--m.ref > 0) return;
  --used_;
  if (m.cached) {
    lru_.push_back(b);
    m.lru = std::prev(lru_.end());
  } else {
    free_.push_back(b);
  }
}

uint64_t KvPool::chain_hash(uint64_t prev, const int32_t* tokens, int64_t n) {
  // splitmix64-style mixing of the previous hash and each token.
  uint64_t h = prev ^ 0x9e3779b97f4a7c15ull;
  for (int64_t i = 0; i < n; ++i) {
    h ^= uint64_t(uint32_t(tokens[i])) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
  }
  return h == 0 ? 1 : h;
}

int32_t KvPool::lookup(uint64_t hash, uint64_t prev, const int32_t* tokens) {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  const int32_t b = it->second;
  Meta& m = meta_[size_t(b)];
  if (m.prev != prev || !std::equal(m.tokens.begin(), m.tokens.end(), tokens)) return -1;
  if (m.ref == 0) {
    lru_.erase(m.lru);
    ++used_;
  }
  ++m.ref;
  return b;
}

void KvPool::publish(int32_t b, uint64_t hash, uint64_t prev, const int32_t* tokens) {
  Meta& m = meta_[size_t(b)];
  DSV3_ASSERT(m.ref > 0);
  if (m.cached || by_hash_.count(hash)) return;
  m.cached = true;
  m.hash = hash;
  m.prev = prev;
  m.tokens.assign(tokens, tokens + block_rows_);
  by_hash_[hash] = b;
}

}  // namespace dsv3::serve
