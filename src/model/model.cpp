#include "model/model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/clock.h"
#include "core/check.h"
#include "core/scratch.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "io/safetensors.h"
#include "kernels/convert.h"
#include "kernels/gemv.h"
#include "kernels/norm.h"
#include "parallel/comm.h"

namespace dsv3 {
namespace {

void add_rows(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

int64_t weight_bytes(const Weight& w) {
  if (!w.present()) return 0;
  return int64_t(w.w.nbytes() + (w.scale.ndim ? w.scale.nbytes() : 0));
}
int64_t mlp_bytes(const MlpWeights& m) {
  return weight_bytes(m.gate_proj) + weight_bytes(m.up_proj) + weight_bytes(m.down_proj);
}

// Whether two weights hold the same values in the same encoding (data and scales).
bool same_bytes(const Weight& a, const Weight& b) {
  auto same = [](const TensorView& x, const TensorView& y) {
    if (x.dtype != y.dtype || x.ndim != y.ndim) return false;
    if (x.data == nullptr || y.data == nullptr) return x.data == y.data;  // e.g. no scales
    for (int i = 0; i < x.ndim; ++i)
      if (x.shape[i] != y.shape[i]) return false;
    return x.nbytes() == 0 || x.data == y.data || std::memcmp(x.data, y.data, x.nbytes()) == 0;
  };
  return a.present() && b.present() && same(a.w, b.w) && same(a.scale, b.scale);
}

}  // namespace

void KvCache::truncate(int64_t n) {
  len = std::min(len, std::max<int64_t>(0, n));
}

Model::Model(const std::string& dir, const ModelOptions& o)
    : threads_(resolve_threads(o.threads)), kv_dtype_(o.kv_cache) {
  DSV3_CHECK(!dir.empty(), "no model directory given");
  DSV3_CHECK(std::filesystem::is_directory(dir), dir, ": not a directory (expected a model directory "
             "with config.json and safetensors)");
  DSV3_CHECK(std::filesystem::exists(dir + "/config.json"), dir, ": not a model directory (no "
             "config.json)");
  cfg_ = load_model_config(dir + "/config.json");
  ckpt_ = std::make_unique<Checkpoint>(dir);
  LoadOptions lo;
  lo.with_mtp = o.with_mtp;
  lo.bf16_activations = o.bf16_activations;
  w_ = load_weights(cfg_, *ckpt_, lo);
  // DeepSeek-V3's MTP modules share the main model's output head (report §2.2); checkpoints
  // store a copy per module (dsv3 train writes the tied tensor twice, as the release does).
  // Reading the main tensor instead makes a draft's head GEMV hit the cache lines the verify
  // step just streamed rather than a second copy in memory, and keeps one copy resident.
  for (MtpWeights& m : w_.mtp)
    if (same_bytes(m.shared_head_head, w_.lm_head)) m.shared_head_head = w_.lm_head;
  e1_ = cfg_.n_routed_experts;
  if (o.ep && o.ep->size() > 1) {
    const int P = o.ep->size();
    DSV3_CHECK(cfg_.n_routed_experts % P == 0, "expert parallelism over ", P, " ranks needs "
               "n_routed_experts (", cfg_.n_routed_experts, ") divisible by ", P);
    ep_ = o.ep;
    e0_ = ep_first_expert(cfg_.n_routed_experts, P, o.ep->rank());
    e1_ = ep_first_expert(cfg_.n_routed_experts, P, o.ep->rank() + 1);
    // Another rank's expert: unbound (its mmapped pages, never touched, stay unread). The
    // main layers start in the contiguous layout; the MTP blocks keep it.
    const ExpertPlacement plain = ExpertPlacement::contiguous(cfg_.n_routed_experts, P);
    place_.resize(size_t(cfg_.num_hidden_layers));
    experts_bound_.resize(size_t(cfg_.num_hidden_layers));
    auto shard = [&](LayerWeights& lw) {
      for (int64_t e = 0; e < cfg_.n_routed_experts; ++e)
        if (!plain.holds(o.ep->rank(), e)) unbind_expert(lw.moe.experts[size_t(e)], false);
    };
    for (size_t l = 0; l < w_.layers.size(); ++l) {
      LayerWeights& lw = w_.layers[l];
      if (!lw.is_moe) continue;
      place_[l] = plain;
      experts_bound_[l] = lw.moe.experts;
      shard(lw);
    }
    for (MtpWeights& m : w_.mtp)
      if (m.block.is_moe) shard(m.block);
  }

  auto layer_f32 = [&](const LayerWeights& lw) {
    LayerF32 f;
    f.input_norm = weight_to_f32(lw.input_layernorm);
    f.post_norm = weight_to_f32(lw.post_attention_layernorm);
    if (cfg_.has_q_lora()) f.q_a_norm = weight_to_f32(lw.self_attn.q_a_layernorm);
    f.kv_a_norm = weight_to_f32(lw.self_attn.kv_a_layernorm);
    if (lw.is_moe && lw.moe.e_score_correction_bias.present())
      f.bias = weight_to_f32(lw.moe.e_score_correction_bias);
    return f;
  };
  for (const LayerWeights& lw : w_.layers) lf_.push_back(layer_f32(lw));
  for (const MtpWeights& m : w_.mtp) {
    lf_.push_back(layer_f32(m.block));
    mtp_f_.push_back({weight_to_f32(m.enorm), weight_to_f32(m.hnorm), weight_to_f32(m.shared_head_norm)});
  }
  norm_ = weight_to_f32(w_.norm);
  has_yarn_ = yarn_params(cfg_, &yarn_) != nullptr;
  softmax_scale_ = attention_softmax_scale(cfg_.qk_head_dim(), yarn());
}

void Model::set_expert_placement(const std::vector<ExpertPlacement>& layers) {
  DSV3_CHECK(ep_, "an expert placement needs expert parallelism (the model was loaded without a group)");
  const int P = ep_->size(), rank = ep_->rank();
  const int64_t L = cfg_.num_hidden_layers, E = cfg_.n_routed_experts;
  DSV3_CHECK(int64_t(layers.size()) == L, "expert placement: ", layers.size(), " layers given, the model has ", L);
  for (int64_t l = 0; l < L; ++l) {
    if (!w_.layers[size_t(l)].is_moe) continue;
    const ExpertPlacement& p = layers[size_t(l)];
    DSV3_CHECK(p.n_experts() == E && p.ranks() == P, "expert placement: layer ", l, " places ",
               p.n_experts(), " experts on ", p.ranks(), " ranks; the model has ", E, " on ", P);
  }
  uint64_t sink = 0;
  ++place_gen_;
  for (int64_t l = 0; l < L; ++l) {
    LayerWeights& lw = w_.layers[size_t(l)];
    if (!lw.is_moe) continue;
    place_[size_t(l)] = layers[size_t(l)];
    for (int64_t e = 0; e < E; ++e) {
      MlpWeights& m = lw.moe.experts[size_t(e)];
      const MlpWeights& full = experts_bound_[size_t(l)][size_t(e)];
      const bool held = m.gate_proj.w.data != nullptr, want = place_[size_t(l)].holds(rank, e);
      if (held == want) continue;
      if (!want) {
        unbind_expert(m, true);  // its pages leave this process, as the placement says
        continue;
      }
      m = full;
      for (const Weight* w : {&m.gate_proj, &m.up_proj, &m.down_proj}) {
        unbound_bytes_ -= weight_bytes(*w);
        // Read a newly held expert now, not in the next step (a page fault per 4 KiB).
        for (const TensorView* v : {&w->w, &w->scale})
          if (v->data != nullptr && v->ndim > 0) sink ^= stream_read(v->data, v->nbytes(), 1);
      }
    }
  }
  volatile uint64_t keep = sink;
  (void)keep;
}

void Model::unbind_expert(MlpWeights& m, bool release) {
  for (Weight* w : {&m.gate_proj, &m.up_proj, &m.down_proj}) {
    unbound_bytes_ += weight_bytes(*w);
    for (const TensorView* v : {&w->w, &w->scale})
      if (release && v->data != nullptr && v->ndim > 0) release_mapped_pages(v->data, v->nbytes());
    // Shapes kept (the task layout reads them); a stray use of the data faults at once.
    w->w.data = nullptr;
    w->scale.data = nullptr;
  }
}

int Model::mapped_shard(const void* p, size_t n) const {
  const auto* b = static_cast<const uint8_t*>(p);
  const auto& shards = ckpt_->shards();
  for (size_t k = 0; k < shards.size(); ++k) {
    const uint8_t* lo = shards[k]->data();
    const uint8_t* hi = lo + (shards[k]->file_size() - size_t(shards[k]->header().data_start()));
    if (b >= lo && b + n <= hi) return int(k);
  }
  return -1;
}

void Model::release_mapped_pages(const void* p, size_t n) const {
  if (mapped_shard(p, n) < 0) return;
  // Whole pages only: the first and last may hold a neighbouring tensor still in use.
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t a0 = (uintptr_t(p) + page - 1) / page * page, a1 = (uintptr_t(p) + n) / page * page;
  if (a1 > a0) ::madvise(reinterpret_cast<void*>(a0), a1 - a0, MADV_DONTNEED);
}

int64_t Model::mapped_weight_bytes() const {
  int64_t b = 0;
  for (const auto& [p, n] : held_tensors())
    if (mapped_shard(p, n) >= 0) b += int64_t(n);
  return b;
}

int64_t Model::held_experts() const {
  int64_t n = 0;
  for (const LayerWeights& lw : w_.layers)
    if (lw.is_moe)
      for (const MlpWeights& m : lw.moe.experts) n += m.gate_proj.w.data != nullptr;
  return n;
}

namespace {
// A view with data to read or copy (not an absent scale, not an empty tensor).
bool has_bytes(const TensorView& v) { return v.data != nullptr && v.ndim > 0 && v.nbytes() > 0; }

// Calls f on every Weight of w (ModelWeights, const or not) that a forward reads: the layers'
// projections, norms, routers and experts, the embedding, norm and head, the MTP modules.
template <class Weights, class F>
void visit_used_weights(Weights& w, F&& f) {
  auto mlp = [&](auto& m) {
    for (auto* x : {&m.gate_proj, &m.up_proj, &m.down_proj}) f(*x);
  };
  auto layer = [&](auto& lw) {
    auto& a = lw.self_attn;
    for (auto* x : {&lw.input_layernorm, &lw.post_attention_layernorm, &a.q_a_proj,
                    &a.q_a_layernorm, &a.q_b_proj, &a.q_proj, &a.kv_a_proj_with_mqa,
                    &a.kv_a_layernorm, &a.kv_b_proj, &a.o_proj})
      f(*x);
    if (!lw.is_moe) return mlp(lw.mlp);
    f(lw.moe.gate);
    f(lw.moe.e_score_correction_bias);
    for (auto& e : lw.moe.experts) mlp(e);
    mlp(lw.moe.shared_experts);
  };
  f(w.embed_tokens);
  for (auto& lw : w.layers) layer(lw);
  f(w.norm);
  f(w.lm_head);
  for (auto& m : w.mtp) {
    for (auto* x : {&m.enorm, &m.hnorm, &m.eh_proj, &m.shared_head_norm, &m.shared_head_head,
                    &m.embed_tokens})
      f(*x);
    layer(m.block);
  }
}

}  // namespace

std::vector<std::pair<const void*, size_t>> Model::held_tensors() const {
  std::vector<std::pair<const void*, size_t>> out;
  visit_used_weights(w_, [&](const Weight& w) {
    for (const TensorView* v : {&w.w, &w.scale})
      if (has_bytes(*v)) out.emplace_back(v->data, v->nbytes());
  });
  // A tied head, or an MTP head replaced by the main one, is one tensor.
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end(),
                        [](const auto& a, const auto& b) { return a.first == b.first; }),
            out.end());
  return out;
}

int64_t Model::held_weight_bytes() const {
  int64_t b = 0;
  for (const auto& [p, n] : held_tensors()) b += int64_t(n);
  return b;
}

uint64_t Model::prefault() const {
  uint64_t bytes = 0, sink = 0;
  if (ep_) {  // only this rank's tensors: the other ranks' experts stay unread
    for (const auto& [p, n] : held_tensors()) {
      sink ^= stream_read(p, n, 1);
      bytes += n;
    }
    volatile uint64_t keep = sink;
    (void)keep;
    return bytes;
  }
  for (const auto& sh : ckpt_->shards()) {
    const size_t n = sh->file_size() - size_t(sh->header().data_start());
    // One thread, no parallel region: dsv3 serve calls this on its main thread while the
    // engine thread may be running steps, and the pool runs one region at a time, so a
    // region here would hold up the engine's. (Under OpenMP, a team made here parked a second
    // set of workers beside the engine thread's and libgomp throttled every spin wait: a
    // single stream through the server fell from ~52 to ~36 tokens/s.)
    sink ^= stream_read(sh->data(), n, 1);
    bytes += n;
  }
  volatile uint64_t keep = sink;  // the reads must happen
  (void)keep;
  return bytes;
}

void Model::FreeArena::operator()(uint8_t* p) const { std::free(p); }

namespace {
// MemAvailable from /proc/meminfo in bytes, or -1 when unknown.
int64_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("MemAvailable:", 0) == 0) return std::strtoll(line.c_str() + 13, nullptr, 10) * 1024;
  return -1;
}

// Whether Linux may back an MADV_HUGEPAGE range with transparent huge pages.
bool thp_available(std::string* why) {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!f || !std::getline(f, line)) {
    if (why) *why = "no /sys/kernel/mm/transparent_hugepage/enabled";
    return false;
  }
  if (line.find("[never]") != std::string::npos) {
    if (why) *why = "transparent huge pages are off (" + line + ")";
    return false;
  }
  return true;
}
}  // namespace

uint64_t Model::make_resident(Residency r, std::string* why) {
  DSV3_CHECK(!arena_, "make_resident: the weights are already copied");
  if (why) why->clear();
  auto stay_mapped = [&] {
    residency_ = Residency::Mapped;
    return prefault();
  };
  if (r == Residency::Mapped) return stay_mapped();
  if (ep_) {
    if (why) *why = "expert parallelism rebinds experts from the mapped checkpoint";
    return stay_mapped();
  }
  if (!thp_available(why)) return stay_mapped();
  // Each tensor at a 64-byte boundary of the arena, in address order (as the file has them).
  const std::vector<std::pair<const void*, size_t>> held = held_tensors();
  constexpr size_t kAlign = 64, kHuge = size_t(2) << 20;
  std::vector<size_t> at(held.size());
  size_t total = 0;
  for (size_t i = 0; i < held.size(); ++i) {
    at[i] = total;
    total += (held[i].second + kAlign - 1) / kAlign * kAlign;
  }
  const size_t cap = std::max(kHuge, (total + kHuge - 1) / kHuge * kHuge);
  // A model larger than the free memory stays mapped (its pages come and go with the page
  // cache) rather than being copied into memory it would be swapped or killed for.
  const int64_t avail = mem_available_bytes();
  if (avail > 0 && cap > uint64_t(avail) * 9 / 10) {
    if (why)
      *why = str_cat("the weights (", double(cap) * 1e-9, " GB) do not fit in the available memory (",
                     double(avail) * 1e-9, " GB)");
    return stay_mapped();
  }
  void* mem = nullptr;
  if (::posix_memalign(&mem, kHuge, cap) != 0 || mem == nullptr) {
    if (why) *why = str_cat("cannot allocate ", double(cap) * 1e-9, " GB for the weights");
    return stay_mapped();
  }
  std::unique_ptr<uint8_t, FreeArena> arena(static_cast<uint8_t*>(mem));
  // Before the first touch, so the faults allocate 2 MiB pages. Advisory: without it the
  // copy still works, on 4 KiB pages.
  (void)::madvise(arena.get(), cap, MADV_HUGEPAGE);
  // Read from the files (pread, one thread, no parallel region: see prefault) rather than
  // copied from the mapping: no page fault per 4 KiB of source, and this process never maps
  // a second copy.
  {
    const auto& shards = ckpt_->shards();
    std::vector<int> fds(shards.size(), -1);
    struct Close {
      std::vector<int>& f;
      ~Close() {
        for (int fd : f)
          if (fd >= 0) ::close(fd);
      }
    } close_all{fds};
    for (size_t i = 0; i < held.size(); ++i) {
      const auto* p = static_cast<const uint8_t*>(held[i].first);
      const int ks = mapped_shard(p, held[i].second);
      DSV3_ASSERT(ks >= 0);
      const size_t k = size_t(ks);
      const SafetensorsFile& sh = *shards[k];
      if (fds[k] < 0) {
        fds[k] = ::open(sh.path().c_str(), O_RDONLY | O_CLOEXEC);
        DSV3_CHECK(fds[k] >= 0, sh.path(), ": cannot reopen to copy the weights: ", std::strerror(errno));
      }
      off_t off = off_t(sh.header().data_start() + size_t(p - sh.data()));
      uint8_t* dst = arena.get() + at[i];
      for (size_t left = held[i].second; left > 0;) {
        ssize_t got;
        do got = ::pread(fds[k], dst, left, off);
        while (got < 0 && errno == EINTR);
        DSV3_CHECK(got > 0, sh.path(), ": reading ", held[i].second, " bytes at offset ", off,
                   " failed: ", got == 0 ? "unexpected end of file" : std::strerror(errno));
        dst += got;
        off += got;
        left -= size_t(got);
      }
    }
  }
  // Repoint every view: the copies are in the sorted order of held.
  auto moved = [&](const void* p) -> void* {
    auto it = std::lower_bound(held.begin(), held.end(), std::make_pair(p, size_t(0)),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    DSV3_ASSERT(it != held.end() && it->first == p);
    return arena.get() + at[size_t(it - held.begin())];
  };
  visit_used_weights(w_, [&](Weight& w) {
    for (TensorView* v : {&w.w, &w.scale})
      if (has_bytes(*v)) v->data = moved(v->data);
  });
  arena_ = std::move(arena);
  residency_ = Residency::HugePages;
  return total;
}

KvCache Model::new_mtp_cache(int64_t capacity) {
  return make_cache(capacity, cfg_.num_hidden_layers, kv_dtype_);
}

KvCache Model::make_cache(int64_t capacity, int64_t first_layer, CacheDtype dtype) {
  DSV3_CHECK(capacity > 0, "the context size must be positive, got ", capacity);
  reserve_positions(capacity);  // also refuses capacity > max_position_embeddings
  KvCache c;
  c.capacity = capacity;
  c.row = mla_cache_row(cfg_);
  c.dtype = dtype;
  c.row_bytes = cache_row_bytes(c.dtype, c.row);
  c.n_main = cfg_.num_hidden_layers;
  c.first_layer = first_layer;
  c.mtp_len.assign(w_.mtp.size(), 0);
  c.data.assign(size_t((c.n_main + n_mtp() - first_layer) * capacity * c.row_bytes), 0);
  return c;
}

void Model::reserve_positions(int64_t n) {
  DSV3_CHECK(n <= cfg_.max_position_embeddings, "a context of ", n,
             " positions exceeds the model's max_position_embeddings (",
             cfg_.max_position_embeddings, ")");
  if (rope_n_ >= n) return;
  const int64_t half = cfg_.qk_rope_head_dim / 2;
  rope_cos_.assign(size_t(n * half), 0.0f);
  rope_sin_.assign(size_t(n * half), 0.0f);
  rope_build_table(rope_cos_.data(), rope_sin_.data(), 0, n, cfg_.qk_rope_head_dim,
                   cfg_.rope_theta, yarn());
  rope_n_ = n;
}

void Model::embed(float* x, const Weight& table, const int32_t* ids, int64_t T) const {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size;
  for (int64_t t = 0; t < T; ++t) {
    DSV3_CHECK(ids[t] >= 0 && ids[t] < V, "token id ", ids[t], " at position ", t,
               " is outside the vocabulary [0, ", V, ")");
    const int64_t r = ids[t];
    switch (table.w.dtype) {
      case DType::F32:
        std::memcpy(x + t * H, table.w.ptr<float>() + r * H, size_t(H) * sizeof(float));
        break;
      case DType::BF16: convert_bf16_to_f32(table.w.ptr<uint16_t>() + r * H, x + t * H, H); break;
      case DType::F16: convert_f16_to_f32(table.w.ptr<uint16_t>() + r * H, x + t * H, H); break;
      default: DSV3_ASSERT(false);
    }
  }
}

void Model::head(float* logits, const float* h, int64_t T, const Weight& w, ForwardScratch& s) const {
  linear_forward(logits, cfg_.vocab_size, h, cfg_.hidden_size, T, w, s.lin, false, threads_);
}

void Model::block(int64_t li, const LayerWeights& lw, const MlaSeq* seqs, int n,
                  const LinearBatch& lb, ForwardScratch& s, const ForwardTrace* trace,
                  const std::string& prefix, ForwardProfile* prof) const {
  const LayerF32& lf = lf_[size_t(li)];
  double t0 = prof ? now_s() : 0;
  auto lap = [&](double* slot) {
    if (!prof) return;
    const double t = now_s();
    *slot += t - t0;
    t0 = t;
  };
  const int64_t H = cfg_.hidden_size, T = lb.rows();
  const float eps = float(cfg_.rms_norm_eps);
  float* x = s.x.data();
  float* xn = grow(s.xn, T * H);
  float* attn = grow(s.attn, T * H);
  float* ffn = grow(s.ffn, T * H);

  rmsnorm_forward(xn, H, nullptr, x, H, lf.input_norm.data(), T, H, eps, threads_);
  if (prof) lap(&prof->norm);
  MlaLayer ml;
  ml.w = &lw.self_attn;
  ml.q_a_norm = lf.q_a_norm.data();
  ml.kv_a_norm = lf.kv_a_norm.data();
  MlaContext ctx;
  ctx.c = &cfg_;
  ctx.rope = RopeTable{rope_cos_.data(), rope_sin_.data(), rope_n_, cfg_.qk_rope_head_dim};
  ctx.softmax_scale = softmax_scale_;
  ctx.threads = threads_;
  mla_forward_batch(attn, xn, seqs, n, ml, ctx, lb, s.mla);
  if (prof) lap(&prof->attn);
  if (trace) (*trace)(prefix + ".attn", attn, T, H);
  add_rows(x, attn, T * H);

  rmsnorm_forward(xn, H, nullptr, x, H, lf.post_norm.data(), T, H, eps, threads_);
  if (prof) lap(&prof->norm);
  // The FFN: the small sequences' rows together in the decode form (every expert of the step
  // in one parallel region) and each larger sequence as forward() of it alone would — in both
  // batch modes: grouping a decode batch's few tokens per expert into GEMMs only multiplies
  // fork/joins (docs/serve.md).
  const int64_t ns = lb.small_rows();
  MoeLayer moe;
  moe.w = &lw.moe;
  moe.bias = lf.bias.empty() ? nullptr : lf.bias.data();
  moe.ep = ep_;
  if (ep_ && li < cfg_.num_hidden_layers) {
    const int P = ep_->size();
    moe.place = &place_[size_t(li)];
    moe.rank_rows = s.rank_load ? s.rank_load + li * P : nullptr;
    if (s.ep_placement != place_gen_) {
      s.ep_balance.assign(size_t(cfg_.num_hidden_layers * P), 0);
      s.ep_placement = place_gen_;
    }
    moe.balance = s.ep_balance.data() + li * P;
  }
  auto run = [&](float* o, const float* xi, int64_t rows, bool decode_form) {
    if (lw.is_moe && decode_form) moe_forward_decode(o, xi, rows, cfg_, moe, s.ffn_s, threads_);
    else if (lw.is_moe) moe_forward(o, xi, rows, cfg_, moe, s.ffn_s, threads_);
    else if (decode_form) mlp_forward_decode(o, xi, rows, H, lw.mlp, s.ffn_s, false, threads_);
    else mlp_forward(o, xi, rows, H, lw.mlp, s.ffn_s, false, threads_);
    if (lw.is_moe && s.layer_load)  // the routing moe_forward(_decode) left in topk_idx
      for (int64_t i = 0; i < rows * cfg_.num_experts_per_tok; ++i) ++s.layer_load[s.ffn_s.topk_idx[size_t(i)]];
  };
  if (ns > 0) run(ffn, xn, ns, true);
  for (int i = lb.n_small; i < lb.n_seqs; ++i)
    run(ffn + lb.off[i] * H, xn + lb.off[i] * H, lb.off[i + 1] - lb.off[i], false);
  if (trace && lw.is_moe) {
    const int64_t K = cfg_.num_experts_per_tok;
    std::vector<float> ids(size_t(T * K));
    for (int64_t i = 0; i < T * K; ++i) ids[size_t(i)] = float(s.ffn_s.topk_idx[size_t(i)]);
    (*trace)(prefix + ".route_ids", ids.data(), T, K);
    (*trace)(prefix + ".route_w", s.ffn_s.topk_w.data(), T, K);
  }
  if (prof) lap(&prof->ffn);
  if (trace) (*trace)(prefix + ".ffn", ffn, T, H);
  add_rows(x, ffn, T * H);
  if (trace) (*trace)(prefix + ".out", x, T, H);
}

void Model::forward(KvCache& cache, const ForwardArgs& a, ForwardScratch& s) const {
  const int64_t H = cfg_.hidden_size, T = a.T, p0 = cache.len;
  DSV3_CHECK(T > 0, "forward of an empty token sequence");
  DSV3_CHECK(p0 + T <= cache.capacity, "the context is full: ", p0, " positions held + ", T,
             " new > ", cache.capacity, " (raise --context, at most max_position_embeddings = ",
             cfg_.max_position_embeddings, ")");
  DSV3_ASSERT(a.logits_from >= 0 && a.logits_from <= T);
  float* x = grow(s.x, T * H);
  embed(x, w_.embed_tokens, a.ids, T);
  if (a.trace) (*a.trace)("embed", x, T, H);
  int64_t off[2];
  const LinearBatch lb = LinearBatch::single(off, T, threads_);
  MlaSeq seq = MlaSeq::single(T, p0, a.form);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    seq.cache = cache.layer(l);
    block(l, w_.layers[size_t(l)], &seq, 1, lb, s, a.trace,
          a.trace ? "layer." + std::to_string(l) : std::string(), a.profile);
  }
  cache.len = p0 + T;
  float* xn = grow(s.xn, T * H);
  rmsnorm_forward(xn, H, nullptr, x, H, norm_.data(), T, H, float(cfg_.rms_norm_eps), threads_);
  if (a.trace) (*a.trace)("norm", xn, T, H);
  if (a.hidden) std::memcpy(a.hidden, xn, size_t(T * H) * sizeof(float));
  const double t0 = a.profile ? now_s() : 0;
  if (a.logits) head(a.logits, xn + a.logits_from * H, T - a.logits_from, w_.lm_head, s);
  if (a.profile) {
    a.profile->head += now_s() - t0;
    ++a.profile->calls;
  }
}

void Model::forward_batch(const KvPoolView& pool, const BatchSeq* seqs, int n, bool invariant,
                          ForwardScratch& s, ForwardProfile* prof) const {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size;
  DSV3_ASSERT(n > 0);
  int64_t* off = grow(s.off, int64_t(n) + 1);
  off[0] = 0;
  int n_small = 0;
  for (int i = 0; i < n; ++i) {
    const BatchSeq& q = seqs[i];
    DSV3_ASSERT(q.T > 0 && q.p0 + q.T <= rope_n_ && q.table);
    DSV3_ASSERT(q.logits_from >= 0 && q.logits_from <= q.T);
    if (q.T <= kLinearGemvMaxM) {
      DSV3_ASSERT(n_small == i);  // small sequences first
      ++n_small;
    }
    off[i + 1] = off[i] + q.T;
  }
  LinearBatch lb;
  lb.off = off;
  lb.n_seqs = n;
  lb.n_small = n_small;
  lb.invariant = invariant;
  lb.threads = threads_;
  const int64_t T = lb.rows();
  float* x = grow(s.x, T * H);
  for (int i = 0; i < n; ++i) embed(x + off[i] * H, w_.embed_tokens, seqs[i].ids, seqs[i].T);
  s.mseq.resize(size_t(n));
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    for (int i = 0; i < n; ++i) {
      MlaSeq& m = s.mseq[size_t(i)];
      m.r0 = off[i];
      m.T = seqs[i].T;
      m.p0 = seqs[i].p0;
      m.cache = pool.layer(l, seqs[i].table);
      m.form = AttnForm::Auto;
    }
    s.layer_load = s.expert_load ? s.expert_load + l * cfg_.n_routed_experts : nullptr;
    block(l, w_.layers[size_t(l)], s.mseq.data(), n, lb, s, nullptr, std::string(),
          prof);
  }
  s.layer_load = nullptr;  // forward() and mtp_forward() on this scratch count nothing
  const double t_head = prof ? now_s() : 0;
  float* xn = grow(s.xn, T * H);
  rmsnorm_forward(xn, H, nullptr, x, H, norm_.data(), T, H, float(cfg_.rms_norm_eps), threads_);
  for (int i = 0; i < n; ++i)
    if (seqs[i].hidden)
      std::memcpy(seqs[i].hidden, xn + off[i] * H, size_t(seqs[i].T * H) * sizeof(float));
  // The head: sequences wanting ≤ kLinearGemvMaxM rows of logits gathered through the GEMV
  // (each row as alone), the others by their own call (as forward() would make it).
  int64_t nh = 0;
  for (int i = 0; i < n; ++i) {
    const int64_t r = seqs[i].logits ? seqs[i].T - seqs[i].logits_from : 0;
    if (r > 0 && (r <= kLinearGemvMaxM || !invariant)) nh += r;
  }
  float* hx = grow(s.head_x, nh * H);
  float* hy = grow(s.head_y, nh * V);
  int64_t j = 0;
  for (int i = 0; i < n; ++i) {
    const BatchSeq& q = seqs[i];
    const int64_t r = q.logits ? q.T - q.logits_from : 0;
    if (r == 0) continue;
    const float* src = xn + (off[i] + q.logits_from) * H;
    if (r <= kLinearGemvMaxM || !invariant) {
      std::memcpy(hx + j * H, src, size_t(r * H) * sizeof(float));
      j += r;
    } else {
      linear_forward(q.logits, V, src, H, r, w_.lm_head, s.lin, false, threads_);
    }
  }
  if (nh > 0) {
    if (invariant) linear_gemv(hy, V, hx, H, nh, w_.lm_head, s.lin, false, threads_);
    else linear_forward(hy, V, hx, H, nh, w_.lm_head, s.lin, false, threads_);
  }
  j = 0;
  for (int i = 0; i < n; ++i) {
    const BatchSeq& q = seqs[i];
    const int64_t r = q.logits ? q.T - q.logits_from : 0;
    if (r == 0 || (r > kLinearGemvMaxM && invariant)) continue;
    std::memcpy(q.logits, hy + j * V, size_t(r * V) * sizeof(float));
    j += r;
  }
  if (prof) {
    prof->head += now_s() - t_head;
    ++prof->calls;
  }
}

void Model::mtp_forward(KvCache& cache, const MtpArgs& a, ForwardScratch& s) const {
  DSV3_CHECK(a.k >= 1 && a.k <= n_mtp(), "MTP module ", a.k, " does not exist (the model has ",
             n_mtp(), ")");
  const int64_t H = cfg_.hidden_size, T = a.T, L = cfg_.num_hidden_layers;
  const size_t k = size_t(a.k - 1);
  const int64_t p0 = cache.mtp_len[k];
  DSV3_CHECK(T > 0, "MTP forward of an empty token sequence");
  DSV3_CHECK(p0 + T <= cache.capacity, "the context is full for MTP module ", a.k);
  const MtpWeights& m = w_.mtp[k];
  const MtpF32& f = mtp_f_[k];
  const float eps = float(cfg_.rms_norm_eps);
  // h' = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)])   (report §2.2, embedding first)
  float* cat = grow(s.cat, T * 2 * H);
  float* e = grow(s.xn, T * H);
  embed(e, m.embed_tokens, a.ids, T);
  rmsnorm_forward(cat, 2 * H, nullptr, e, H, f.enorm.data(), T, H, eps, threads_);
  rmsnorm_forward(cat + H, 2 * H, nullptr, a.h_prev, H, f.hnorm.data(), T, H, eps, threads_);
  float* x = grow(s.x, T * H);
  linear_forward(x, H, cat, 2 * H, T, m.eh_proj, s.lin, false, threads_);
  const std::string prefix = "mtp." + std::to_string(k);
  int64_t off[2];
  const LinearBatch lb = LinearBatch::single(off, T, threads_);
  MlaSeq seq = MlaSeq::single(T, p0, a.form);
  seq.cache = cache.layer(L + int64_t(k));
  block(L + k, m.block, &seq, 1, lb, s, a.trace, prefix);
  cache.mtp_len[k] = p0 + T;
  float* h = grow(s.xn, T * H);
  rmsnorm_forward(h, H, nullptr, x, H, f.head_norm.data(), T, H, eps, threads_);
  if (a.trace) (*a.trace)(prefix + ".norm", h, T, H);
  if (a.hidden) std::memcpy(a.hidden, h, size_t(T * H) * sizeof(float));
  if (a.logits) head(a.logits, h + a.logits_from * H, T - a.logits_from, m.shared_head_head, s);
}

void Model::head_logits(int module, const float* h, int64_t T, float* logits,
                        ForwardScratch& s) const {
  DSV3_CHECK(module >= 0 && module <= n_mtp(), "no output head ", module);
  head(logits, h, T, module == 0 ? w_.lm_head : w_.mtp[size_t(module - 1)].shared_head_head, s);
}

int64_t Model::decode_bytes_per_token() const {
  int64_t b = int64_t(cfg_.hidden_size) * int64_t(dtype_size(w_.embed_tokens.w.dtype));
  b += weight_bytes(w_.norm) + weight_bytes(w_.lm_head);
  for (const LayerWeights& lw : w_.layers) {
    const AttentionWeights& a = lw.self_attn;
    b += weight_bytes(lw.input_layernorm) + weight_bytes(lw.post_attention_layernorm);
    for (const Weight* w : {&a.q_a_proj, &a.q_a_layernorm, &a.q_b_proj, &a.q_proj,
                            &a.kv_a_proj_with_mqa, &a.kv_a_layernorm, &a.kv_b_proj, &a.o_proj})
      b += weight_bytes(*w);
    if (lw.is_moe) {
      b += weight_bytes(lw.moe.gate) + weight_bytes(lw.moe.e_score_correction_bias);
      b += mlp_bytes(lw.moe.shared_experts);
      if (!lw.moe.experts.empty())
        b += cfg_.num_experts_per_tok * mlp_bytes(lw.moe.experts[0]);
    } else {
      b += mlp_bytes(lw.mlp);
    }
  }
  return b;
}

}  // namespace dsv3
