// Multi-head Latent Attention (SPEC §1, report §2.1.1) over the latent KV cache, in the two
// forms of DeepSeek-V3's inference code, side by side so that each checks the other:
//
//   naive     K, V materialised per head from the cached latent (kv_b_proj over every cached
//             position); cheapest for a long prefill from an empty cache.
//   absorbed  W_UK folded into the query (q_lat = q_nope · W_UK, per head) and W_UV applied
//             after attention over the latent cache; per token it reads only the cache rows
//             (kv_lora_rank + qk_rope_head_dim values), the decode form.
//
// Both compute the same sums (docs/numerics.md); tests/test_model.cpp holds them together.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/latent_attn.h"
#include "kernels/latent_cache.h"
#include "kernels/rope.h"
#include "model/config.h"
#include "model/linear.h"

namespace dsv3 {

enum class AttnForm { Auto, Naive, Absorbed };  // Auto: naive for a prefill from an empty cache

struct MlaLayer {
  const AttentionWeights* w = nullptr;
  const float* q_a_norm = nullptr;   // [q_lora_rank] (F32 copy), when q compression is used
  const float* kv_a_norm = nullptr;  // [kv_lora_rank]
};

struct MlaContext {
  const ModelConfig* c = nullptr;
  RopeTable rope;               // cos/sin for positions [0, rope.n_pos)
  float softmax_scale = 0;      // 1/sqrt(qk_head_dim) · mscale² (rope.h)
  int threads = 0;
};

// Where one layer's latent rows live, stored as `dtype` (kernels/latent_cache.h: row_bytes
// per position): contiguous rows (table null: KvCache), or blocks of a pool (serve/kv_pool.h):
// position s at base + table[s / block_rows]·block_stride + (s % block_rows)·row_bytes, all
// in bytes. The arithmetic never depends on where (kernels/latent_attn.h).
struct LatentCache {
  uint8_t* base = nullptr;
  CacheDtype dtype = CacheDtype::F32;
  int64_t row_bytes = 0;
  const int32_t* table = nullptr;
  int64_t block_rows = 0, block_stride = 0;
  uint8_t* row(int64_t s) const {
    return table ? base + int64_t(table[s / block_rows]) * block_stride + (s % block_rows) * row_bytes
                 : base + s * row_bytes;
  }
  static LatentCache contiguous(void* base, CacheDtype d, int64_t R) {
    LatentCache c;
    c.base = static_cast<uint8_t*>(base);
    c.dtype = d;
    c.row_bytes = cache_row_bytes(d, R);
    return c;
  }
};

// One sequence of a batched MLA call: rows [r0, r0 + T) of x, at positions p0 .. p0 + T − 1.
struct MlaSeq {
  int64_t r0 = 0, T = 0, p0 = 0;
  LatentCache cache;
  AttnForm form = AttnForm::Auto;
  static MlaSeq single(int64_t T, int64_t p0, AttnForm form, const LatentCache& cache = {}) {
    MlaSeq q;
    q.T = T;
    q.p0 = p0;
    q.form = form;
    q.cache = cache;
    return q;
  }
};

struct MlaScratch {
  LinearScratch lin;
  std::vector<float> rows;    // [rows, R] the new cache rows (normalised c_KV ; rotated k_pe)
  std::vector<float> gather;  // [S, R] a paged or non-F32 cache's rows as F32 (GEMM forms)
  std::vector<float> qa;      // [T, q_lora_rank]
  std::vector<float> q;       // [T, heads, qk_head_dim]
  std::vector<float> kv;      // [T, kv_lora_rank + qk_rope_head_dim]
  std::vector<float> kvb;     // naive: [S, heads, nope + v]
  std::vector<float> qcat;    // absorbed: [T, heads, kv_lora + rope]
  std::vector<float> scores;  // [rows, S]
  std::vector<float> olat;    // absorbed: [T, heads, kv_lora]
  std::vector<float> o;       // [T, heads, v]
  std::vector<int32_t> pos, valid;
  std::vector<std::vector<float>> per_thread;  // dequantised W_UK / W_UV slices
  std::vector<int> decode;                     // batch: the sequences attended together
  std::vector<char> batched;                   // batch: [seqs] 1 for those
  std::vector<int64_t> decode_row;             // batch: their first row among those
  std::vector<LatentAttn> calls;               // batch: their latent-attention calls
};

// The config's "rope_scaling" as the RoPE kernels take it: storage filled from c and returned,
// or nullptr when the config has none (plain RoPE). Shared by inference and training.
const YarnParams* yarn_params(const ModelConfig& c, YarnParams* storage);

// The cache row of one position: [c (kv_lora_rank) ; k_pe (qk_rope_head_dim)].
inline int64_t mla_cache_row(const ModelConfig& c) { return c.kv_lora_rank + c.qk_rope_head_dim; }

// x [T, H] (the normed block input) at positions p0 .. p0+T−1 -> out [T, H] (written).
// cache [capacity, mla_cache_row] (F32) holds positions [0, p0); rows p0 .. p0+T−1 are written.
void mla_forward(float* out, const float* x, int64_t T, int64_t p0, float* cache, const MlaLayer& L,
                 const MlaContext& ctx, AttnForm form, MlaScratch& s);

// The same for several sequences at once (a serving step): the projections run over all rows
// through `lb` (linear.h: batch-invariant or one GEMM), the attention per sequence over its
// own cache, of any stored form (each new row is rounded through that form before anything
// attends to it, latent_cache.h). x, out [rows, H] with rows = lb.rows().
void mla_forward_batch(float* out, const float* x, const MlaSeq* seqs, int n_seqs,
                       const MlaLayer& L, const MlaContext& ctx, const LinearBatch& lb,
                       MlaScratch& s);

}  // namespace dsv3
