// The paged latent cache of the serving engine: fixed-size blocks of positions from one pool,
// a block table per sequence (vLLM's PagedAttention layout applied to MLA's latent rows: a
// block holds, for every layer, block_rows rows of kv_lora_rank + qk_rope_head_dim values,
// stored as the model's cache dtype, kernels/latent_cache.h).
//
// Prefix cache (SGLang's radix cache at block granularity, vLLM's automatic prefix caching):
// a block whose positions are all computed is keyed by the hash chain of its tokens,
// h_j = mix(h_{j−1}, tokens of block j), so equal keys mean equal whole prefixes. Its tokens
// are kept too, so a hash collision can never hand out wrong rows. Blocks are reference
// counted; a cached block nobody holds stays in an LRU list and is evicted only when the
// free list is empty.
#pragma once
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "model/model.h"

namespace dsv3::serve {

// Positions per cache block (vLLM's default). Small blocks waste little of the pool at the
// end of each sequence and let short shared prefixes (a system prompt) be reused.
constexpr int64_t kBlockRows = 16;

class KvPool {
 public:
  // n_layers: the model's layers (main, then MTP); row: values per position and layer,
  // stored as dtype.
  KvPool(int64_t n_blocks, int64_t block_rows, int64_t n_layers, int64_t row, CacheDtype dtype);

  KvPoolView view() { return {data_.data(), n_blocks_, block_rows_, row_, dtype_}; }
  int64_t block_rows() const { return block_rows_; }
  int64_t n_blocks() const { return n_blocks_; }
  int64_t used() const { return used_; }                  // blocks held by a sequence
  int64_t available() const { return int64_t(free_.size() + lru_.size()); }
  static int64_t bytes_per_block(int64_t block_rows, int64_t n_layers, int64_t row, CacheDtype dtype) {
    return block_rows * n_layers * cache_row_bytes(dtype, row);
  }

  // A block for a sequence (refcount 1): a free one, else the least recently used cached
  // one (forgotten). −1 when every block is held.
  int32_t allocate();
  // Drops one reference; a cached block at zero joins the LRU list, another the free list.
  void release(int32_t b);

  // The hash of block j's tokens given the previous block's hash (0 for the first).
  static uint64_t chain_hash(uint64_t prev, const int32_t* tokens, int64_t n);
  // A cached block holding exactly these tokens after the prefix `prev`, with one more
  // reference taken; −1 when none.
  int32_t lookup(uint64_t hash, uint64_t prev, const int32_t* tokens);
  // Block b (held, all its positions computed) now answers lookups for (hash, prev, tokens).
  // A no-op when another block already does.
  void publish(int32_t b, uint64_t hash, uint64_t prev, const int32_t* tokens);

  // The stored rows of positions [0, P) of the sequence whose blocks are `table`, every
  // layer, as [n_layers][P][row_bytes] (the KV transfer layout, serve/kv_transfer.h), and
  // back into a sequence's blocks.
  void read_rows(const int32_t* table, int64_t P, uint8_t* out) const;
  void write_rows(const int32_t* table, int64_t P, const uint8_t* in);
  int64_t n_layers() const { return n_layers_; }
  int64_t row_bytes() const { return cache_row_bytes(dtype_, row_); }

 private:
  struct Meta {
    int32_t ref = 0;
    bool cached = false;
    uint64_t hash = 0, prev = 0;
    std::vector<int32_t> tokens;
    std::list<int32_t>::iterator lru;  // valid when cached && ref == 0
  };
  int64_t n_blocks_, block_rows_, n_layers_, row_;
  CacheDtype dtype_;
  std::vector<uint8_t> data_;
  std::vector<Meta> meta_;
  std::vector<int32_t> free_;
  std::list<int32_t> lru_;  // cached, unreferenced; front = least recently used
  std::unordered_map<uint64_t, int32_t> by_hash_;
  int64_t used_ = 0;
};

}  // namespace dsv3::serve
