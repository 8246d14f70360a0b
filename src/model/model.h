// A DeepSeek-V3 / V2 model loaded for inference: the config, the checkpoint mmapped and
// its weights bound in place (FP8, BF16 or F32: no conversion copy; only the 1-D norm gains
// and router biases are converted to F32), and the forward of the main model and of the MTP
// modules over a latent KV cache (SPEC §1; docs/numerics.md states the arithmetic).
//
// A forward appends T tokens at the cache's current length: a prefill is one call with the
// prompt, a decode step one call with one token, a speculative verification one call with
// the drafted tokens (then KvCache::truncate rolls back the rejected ones).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/expert_placement.h"
#include "model/mla.h"
#include "model/moe.h"
#include "model/weights.h"

namespace dsv3 {
namespace dist { class Comm; }

// Per layer (main layers, then one per MTP module) the latent cache rows of `capacity`
// positions: the normalised c_KV and the rotated k_pe, row = kv_lora_rank + qk_rope_head_dim
// values stored as `dtype` (kernels/latent_cache.h: row_bytes each). That is all MLA keeps
// per token (SPEC §1: 576 values per layer for DeepSeek-V3; 1152 bytes in BF16).
struct KvCache {
  int64_t capacity = 0, row = 0, n_main = 0;
  CacheDtype dtype = CacheDtype::F32;
  int64_t row_bytes = 0;
  int64_t first_layer = 0;       // data starts at this layer (a cache of the MTP layers only)
  std::vector<uint8_t> data;     // [n_main + n_mtp − first_layer, capacity, row_bytes]
  int64_t len = 0;               // positions held by the main model
  std::vector<int64_t> mtp_len;  // positions held by each MTP module
  LatentCache layer(int64_t l) {
    return LatentCache::contiguous(data.data() + (l - first_layer) * capacity * row_bytes, dtype, row);
  }
  // Forget the main model's positions >= n. MTP layers are managed by their user (mtp_len;
  // src/infer/speculative.h keeps their invariant).
  void truncate(int64_t n);
  size_t bytes() const { return data.size(); }
};

struct ModelOptions {
  bool with_mtp = true;   // load the MTP modules (needed for --mtp scoring and drafting)
  int threads = 0;        // 0: default_threads()
  // The linears (projections, experts, output heads) round their input activations to BF16
  // once, as BF16 inference does, instead of carrying ≈16 significant bits as a hi+lo pair:
  // half the multiply work wherever it is compute-bound (prefill, a batched serving step),
  // relative error 2^-9 per activation instead of 2^-16. Never the router (its top-k decides
  // the experts) nor the absorbed-MLA slices and attention (F32). docs/numerics.md.
  bool bf16_activations = false;
  // How new_cache and a serving pool store the latent rows (kernels/latent_cache.h). BF16
  // halves the bytes a long-context decode step reads, at a relative rounding of 2^-8 per
  // cached value (docs/long-context.md measures what it does to log-probs); F32 is exact.
  CacheDtype kv_cache = CacheDtype::BF16;
  // Expert parallelism (dsv3 serve --ep; moe.h MoeLayer::ep): this rank keeps only its block
  // of each MoE layer's routed experts (the others' tensors are checked, then unbound: their
  // pages are never read) and every forward combines the ranks' expert outputs. Every rank
  // of the group must run the same forwards. nullptr or one rank: all experts here.
  const dist::Comm* ep = nullptr;
};

// Intermediate values a test or debugger may inspect: name ("embed", "layer.3.attn",
// "layer.3.ffn", "layer.3.out", "norm", "mtp.0.out"...), rows x cols, row-major.
using ForwardTrace = std::function<void(const std::string& name, const float* data, int64_t rows,
                                        int64_t cols)>;

// Wall seconds spent per part of the forward, accumulated (`dsv3 bench decode --profile`).
struct ForwardProfile {
  double attn = 0, ffn = 0, norm = 0, head = 0;
  int64_t calls = 0;
};

struct ForwardArgs {
  const int32_t* ids = nullptr;  // [T] token ids (checked against the vocabulary)
  int64_t T = 0;
  AttnForm form = AttnForm::Auto;
  float* logits = nullptr;       // [T − logits_from, V] or nullptr (no head)
  int64_t logits_from = 0;
  float* hidden = nullptr;       // [T, H]: the state after model.norm (MTP's input), or nullptr
  const ForwardTrace* trace = nullptr;
  ForwardProfile* profile = nullptr;
};

struct MtpArgs {
  int k = 1;                     // module 1..num_nextn_predict_layers
  const int32_t* ids = nullptr;  // [T]: token t_{i+k} for each position i
  const float* h_prev = nullptr; // [T, H]: h^{k−1}_i (main: after model.norm; module: h^{k−1})
  int64_t T = 0;
  AttnForm form = AttnForm::Auto;
  float* logits = nullptr;       // [T − logits_from, V] or nullptr
  int64_t logits_from = 0;
  float* hidden = nullptr;       // [T, H]: h^k (after shared_head.norm), or nullptr
  const ForwardTrace* trace = nullptr;
};

// The paged latent cache of a serving engine (serve/kv_pool.h): for each layer (main layers,
// then one per MTP module) n_blocks blocks of block_rows positions of `row` values stored as
// `dtype` (row_bytes each).
struct KvPoolView {
  uint8_t* data = nullptr;  // [n_layers, n_blocks, block_rows, row_bytes]
  int64_t n_blocks = 0, block_rows = 0, row = 0;
  CacheDtype dtype = CacheDtype::F32;
  LatentCache layer(int64_t l, const int32_t* table) const {
    LatentCache c = LatentCache::contiguous(nullptr, dtype, row);
    c.base = data + l * n_blocks * block_rows * c.row_bytes;
    c.table = table;
    c.block_rows = block_rows;
    c.block_stride = block_rows * c.row_bytes;
    return c;
  }
};

// One sequence of a batched forward: T new tokens at positions p0 .. p0 + T − 1 of its
// cache, whose blocks `table` lists (covering [0, p0 + T)).
struct BatchSeq {
  const int32_t* ids = nullptr;    // [T]
  int64_t T = 0, p0 = 0;
  const int32_t* table = nullptr;
  float* logits = nullptr;         // [T − logits_from, V] or nullptr
  int64_t logits_from = 0;
  float* hidden = nullptr;         // [T, H] after model.norm, or nullptr
};

struct ForwardScratch {
  std::vector<int64_t> off;              // batch: [seqs + 1] row offsets
  std::vector<MlaSeq> mseq;              // batch: per sequence
  std::vector<float> head_x, head_y;     // batch: gathered head rows and their logits
  std::vector<float> x, xn, attn, ffn;   // [T, H]
  std::vector<float> cat;                // MTP: [T, 2H]
  MlaScratch mla;
  FfnScratch ffn_s;
  LinearScratch lin;
  // forward_batch counts the routed (token, expert) assignments of every main MoE layer into
  // expert_load [num_hidden_layers, n_routed_experts] when it is set (the server's expert
  // load, for EPLB); layer_load is its row of the layer running (internal).
  uint64_t* expert_load = nullptr;
  uint64_t* layer_load = nullptr;
  // Under expert parallelism, when set: [num_hidden_layers, P] += the routed rows each rank
  // computed (model/expert_placement.h; what rebalancing evens out).
  int64_t* rank_load = nullptr;
  // Under expert parallelism with copies of experts: the rows each rank took per main layer
  // under the current placement [L, P] (moe.h MoeLayer::balance), reset when the placement
  // changes. Every rank must run its forwards on one scratch, in the same order.
  std::vector<int64_t> ep_balance;
  uint64_t ep_placement = 0;  // the placement ep_balance counts for (Model's generation)
};

class Model {
 public:
  // Loads dir/config.json and the checkpoint; throws dsv3::Error naming what is wrong (not
  // a DeepSeek model, missing tensors, wrong shapes or dtypes...).
  explicit Model(const std::string& dir, const ModelOptions& o = {});
  const ModelConfig& config() const { return cfg_; }
  const ModelWeights& weights() const { return w_; }
  const Checkpoint& checkpoint() const { return *ckpt_; }
  int64_t vocab() const { return cfg_.vocab_size; }
  int64_t n_mtp() const { return int64_t(w_.mtp.size()); }
  int threads() const { return threads_; }

  // A cache for up to `capacity` positions (≤ max_position_embeddings), stored as the
  // options' kv_cache; grows the RoPE table.
  KvCache new_cache(int64_t capacity) { return make_cache(capacity, 0, kv_dtype_); }
  KvCache new_cache(int64_t capacity, CacheDtype dtype) { return make_cache(capacity, 0, dtype); }
  CacheDtype kv_cache_dtype() const { return kv_dtype_; }

  void forward(KvCache& cache, const ForwardArgs& a, ForwardScratch& s) const;

  // Several sequences in one forward (a serving step) over the paged pool: the linears and
  // MoE run over all rows (invariant: each row exactly as in forward() of its sequence
  // alone, docs/serve.md; !invariant: one GEMM over the batch), attention per sequence.
  // Sequences with T ≤ kLinearGemvMaxM come first. Needs rope positions: reserve_positions.
  void forward_batch(const KvPoolView& pool, const BatchSeq* seqs, int n, bool invariant,
                     ForwardScratch& s, ForwardProfile* prof = nullptr) const;
  // A cache of the MTP modules' layers only (the serving engine keeps the main layers paged).
  KvCache new_mtp_cache(int64_t capacity);
  // Grows the RoPE table to n positions (new_cache does it for its capacity).
  void reserve_positions(int64_t n);
  void mtp_forward(KvCache& cache, const MtpArgs& a, ForwardScratch& s) const;

  // logits [T, V] from final hidden states h [T, H]: module 0 = lm_head (h after
  // model.norm), module k ≥ 1 = MTP module k's shared_head.head (h after shared_head.norm).
  // Lets callers run the head over a long sequence in chunks instead of holding T x V.
  void head_logits(int module, const float* h, int64_t T, float* logits, ForwardScratch& s) const;

  // Reads every byte of the checkpoint's mapped tensor data once on the calling thread
  // (kernels/gemv.h stream_read over each shard; no OpenMP team, see model.cpp), so the pages are resident and mapped before timing or
  // serving: a decode step that touches an expert for the first time otherwise pays a page
  // fault per 4 KiB of it. Returns the bytes read.
  uint64_t prefault() const;
  // Where the weights live once the model is ready to decode (Model::make_resident).
  enum class Residency {
    Mapped,     // the checkpoint's mapped pages, each read once (prefault)
    HugePages,  // copied into one anonymous allocation backed by transparent huge pages
  };
  // HugePages: copies every tensor this process uses (held_tensors) into one allocation that
  // asks Linux for 2 MiB pages (MADV_HUGEPAGE) and points the weights at the copies. It reads
  // the files with pread, not through the mapping, so the process maps no second copy (pages
  // the load itself touched, e.g. a head compared against the MTP head, stay mapped; the
  // page cache keeps a reclaimable copy). A decode step streams
  // every expert it touches once; on 4 KiB pages each of them costs a TLB miss and a page walk
  // per 4 KiB, and measured streaming of 128–256 KB tensors runs ~1.4x faster from huge pages
  // (docs/PERF.md "Weights on huge pages"). Falls back to Mapped (and says why in *why) when
  // transparent huge pages are off (/sys/kernel/mm/transparent_hugepage/enabled = never), when
  // the weights exceed the memory Linux reports available (MemAvailable) or cannot be
  // allocated, or under expert parallelism (set_expert_placement rebinds experts from the
  // mapping).
  // Returns the bytes copied or read; call once, before serving or timing.
  uint64_t make_resident(Residency r, std::string* why = nullptr);
  Residency residency() const { return residency_; }
  // Bytes of the tensors this process uses that still lie in the mapped checkpoint (all of
  // them until make_resident(HugePages) copies them, none after).
  int64_t mapped_weight_bytes() const;
  // Bytes of tensor data this process uses (each tensor once): under expert parallelism
  // without the other ranks' routed experts.
  int64_t held_weight_bytes() const;
  // Under expert parallelism: the bytes of the other ranks' routed experts, not held here.
  int64_t unbound_expert_bytes() const { return unbound_bytes_; }
  // The expert-parallel group (nullptr: none) and this rank's routed experts [first, last)
  // in the contiguous layout it starts with.
  const dist::Comm* ep() const { return ep_; }
  int64_t first_expert() const { return e0_; }
  int64_t last_expert() const { return e1_; }
  // Under expert parallelism: where each main MoE layer's experts live ([num_hidden_layers],
  // dense layers empty). set_expert_placement replaces it — every rank of the group with the
  // same placement, between forwards: this rank binds the weights of the experts with a slot
  // on it (reading them once, so the next step pays no page faults) and unbinds the others.
  // Throws dsv3::Error when a layer does not fit the model or the group.
  const std::vector<ExpertPlacement>& expert_placement() const { return place_; }
  void set_expert_placement(const std::vector<ExpertPlacement>& layers);
  // Routed experts of the main layers whose weights this rank holds (all, in one process).
  int64_t held_experts() const;

  // Bytes of weights one decode step reads: every matrix of the attention, the dense layers,
  // the shared experts, the router, num_experts_per_tok routed experts per MoE layer, the
  // norms, the head and one embedding row — the numerator of the decode roofline.
  int64_t decode_bytes_per_token() const;

 private:
  struct LayerF32 {
    std::vector<float> input_norm, post_norm, q_a_norm, kv_a_norm, bias;
  };
  // One transformer block over the rows of lb (x in s.x): seqs[i] says where sequence i's
  // rows sit and its cache of this layer.
  // li: the layer's index in lf_ (main layers, then MTP blocks).
  void block(int64_t li, const LayerWeights& lw, const MlaSeq* seqs, int n, const LinearBatch& lb,
             ForwardScratch& s, const ForwardTrace* trace, const std::string& prefix,
             ForwardProfile* prof = nullptr) const;
  void embed(float* x, const Weight& table, const int32_t* ids, int64_t T) const;
  void head(float* logits, const float* h, int64_t T, const Weight& w, ForwardScratch& s) const;

  // Layers [first_layer, main + MTP) of `capacity` positions (new_cache, new_mtp_cache).
  KvCache make_cache(int64_t capacity, int64_t first_layer, CacheDtype dtype);

  std::unique_ptr<Checkpoint> ckpt_;
  ModelConfig cfg_;
  ModelWeights w_;
  std::vector<LayerF32> lf_;              // main layers, then MTP blocks
  std::vector<float> norm_;               // model.norm
  struct MtpF32 { std::vector<float> enorm, hnorm, head_norm; };
  std::vector<MtpF32> mtp_f_;
  YarnParams yarn_;
  bool has_yarn_ = false;
  const YarnParams* yarn() const { return has_yarn_ ? &yarn_ : nullptr; }
  float softmax_scale_ = 0;
  std::vector<float> rope_cos_, rope_sin_;  // [n_pos, rope/2]
  int64_t rope_n_ = 0;
  int threads_ = 0;
  const dist::Comm* ep_ = nullptr;
  int64_t e0_ = 0, e1_ = 0;  // this rank's routed experts (contiguous layout)
  int64_t unbound_bytes_ = 0;
  // Expert parallelism: per main layer, the placement and every expert's weights as loaded
  // (bound), from which set_expert_placement rebinds w_. The MTP blocks keep the contiguous
  // layout (the server does not draft under EP).
  std::vector<ExpertPlacement> place_;
  uint64_t place_gen_ = 1;  // bumped by every set_expert_placement
  std::vector<std::vector<MlpWeights>> experts_bound_;
  // Another rank's expert: its weights' data pointers cleared and their bytes counted as
  // unbound; release: also drop the pages this process read (release_mapped_pages).
  void unbind_expert(MlpWeights& m, bool release);
  // Drops this process's mapping of the whole pages in [p, p + n) when they lie in a mapped
  // checkpoint file (the page cache keeps them; a later read maps them again). Never on
  // owned memory, which MADV_DONTNEED would zero.
  void release_mapped_pages(const void* p, size_t n) const;
  // The shard whose mapped data holds [p, p + n), or -1.
  int mapped_shard(const void* p, size_t n) const;
  // Every tensor's data this process uses, each once (held_weight_bytes, prefault).
  std::vector<std::pair<const void*, size_t>> held_tensors() const;
  CacheDtype kv_dtype_ = CacheDtype::BF16;
  // make_resident(HugePages): the copies the weights point at.
  struct FreeArena { void operator()(uint8_t* p) const; };
  std::unique_ptr<uint8_t, FreeArena> arena_;
  Residency residency_ = Residency::Mapped;
};

}  // namespace dsv3
