#include "train/params.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "io/checkpoint.h"
#include "kernels/convert.h"
#include "kernels/quant.h"

namespace dsv3 {
namespace {

uint64_t hash_name(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Standard normal by Box–Muller on our own generator (identical on every platform).
void fill_normal(float* p, int64_t n, float stddev, uint64_t state) {
  for (int64_t i = 0; i < n; i += 2) {
    const double u1 = (double(splitmix(state) >> 11) + 0.5) * 0x1.0p-53;
    const double u2 = double(splitmix(state) >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    p[i] = float(r * std::cos(6.283185307179586 * u2)) * stddev;
    if (i + 1 < n) p[i + 1] = float(r * std::sin(6.283185307179586 * u2)) * stddev;
  }
}

}  // namespace

ParamSet::ParamSet(const ModelConfig& c, bool with_mtp) : cfg_(c), with_mtp_(with_mtp) {
  int64_t embed_off = -1, head_off = -1;
  visit_weights(c, with_mtp, nullptr, [&](const WeightSpec& s, Weight*) {
    ParamInfo p;
    p.spec = s;
    const bool mtp_embed = s.kind == WeightKind::Embedding && s.name != "model.embed_tokens.weight";
    const bool mtp_head = s.kind == WeightKind::Head && s.name != "lm_head.weight";
    if (mtp_embed || mtp_head) {
      p.alias = true;
      p.offset = mtp_embed ? embed_off : (head_off >= 0 ? head_off : embed_off);
    } else {
      p.offset = numel_;
      numel_ += s.numel();
      if (s.name == "model.embed_tokens.weight") embed_off = p.offset;
      if (s.name == "lm_head.weight") head_off = p.offset;
    }
    p.trainable = s.kind != WeightKind::RouterBias;
    p.decay = s.ndim == 2 && s.kind != WeightKind::Embedding;
    p.gemm = !p.alias && (s.kind == WeightKind::Linear || s.kind == WeightKind::Head);
    infos_.push_back(p);
  });
}

const ParamInfo* ParamSet::find(const std::string& name) const {
  for (const ParamInfo& p : infos_)
    if (p.spec.name == name) return &p;
  return nullptr;
}

std::vector<std::pair<int64_t, int64_t>> ParamSet::gemm_ranges() const {
  std::vector<std::pair<int64_t, int64_t>> v, out;
  for (const ParamInfo& p : infos_)
    if (p.gemm) v.push_back({p.offset, p.offset + p.spec.numel()});
  std::sort(v.begin(), v.end());
  for (const auto& r : v) {
    if (!out.empty() && out.back().second == r.first)
      out.back().second = r.second;
    else
      out.push_back(r);
  }
  return out;
}

std::vector<TrainableRange> ParamSet::trainable_ranges(int64_t lo, int64_t hi) const {
  if (hi < 0) hi = numel_;
  std::vector<TrainableRange> out;
  for (const ParamInfo& p : infos_) {
    if (p.alias || !p.trainable) continue;
    const int64_t b = std::max(lo, p.offset), e = std::min(hi, p.offset + p.spec.numel());
    if (b < e) out.push_back({b, e, p.decay});
  }
  return out;
}

TensorView ParamSet::view(const float* base, const ParamInfo& p) const {
  return TensorView(const_cast<float*>(base) + p.offset, DType::F32, p.spec.ndim, p.spec.shape);
}

ModelWeights ParamSet::bind(float* base) const {
  ModelWeights mw;
  size_t i = 0;
  visit_weights(cfg_, with_mtp_, &mw, [&](const WeightSpec& s, Weight* w) {
    const ParamInfo& p = infos_[i++];
    DSV3_ASSERT(p.spec.name == s.name);
    w->w = view(base, p);
  });
  if (cfg_.tie_word_embeddings) mw.lm_head = mw.embed_tokens;
  return mw;
}

void ParamSet::init(float* base, uint64_t seed) const {
  const float std = float(cfg_.initializer_range);
  for (const ParamInfo& p : infos_) {
    if (p.alias) continue;
    float* d = base + p.offset;
    const int64_t n = p.spec.numel();
    switch (p.spec.kind) {
      case WeightKind::Norm:
        for (int64_t i = 0; i < n; ++i) d[i] = 1.0f;
        break;
      case WeightKind::RouterBias: std::memset(d, 0, size_t(n) * sizeof(float)); break;
      default: fill_normal(d, n, std, hash_name(p.spec.name, seed));
    }
  }
}

void ParamSet::load(float* base, const Checkpoint& ck) const {
  for (const ParamInfo& p : infos_) {
    if (p.alias) continue;
    const CheckpointTensor& t = ck.get(p.spec.name);
    const TensorView& v = t.view;
    DSV3_CHECK(v.numel() == p.spec.numel(), *t.shard, ": tensor '", p.spec.name, "' has shape ",
               v.shape_str(), ", expected ", p.spec.shape_str());
    float* d = base + p.offset;
    const int64_t n = v.numel();
    switch (v.dtype) {
      case DType::F32: std::memcpy(d, v.data, size_t(n) * sizeof(float)); break;
      case DType::BF16: convert_bf16_to_f32(v.ptr<uint16_t>(), d, n); break;
      case DType::F16: convert_f16_to_f32(v.ptr<uint16_t>(), d, n); break;
      case DType::F8_E4M3: {
        const CheckpointTensor& sc = ck.get(p.spec.name + "_scale_inv");
        dequantize_fp8_128x128(v.ptr<uint8_t>(), p.spec.shape[0], p.spec.shape[1], p.spec.shape[1],
                               sc.view.ptr<float>(), d, DType::F32, p.spec.shape[1]);
        break;
      }
      default:
        DSV3_FAIL(*t.shard, ": tensor '", p.spec.name, "' has dtype ", dtype_name(v.dtype),
                  ", which cannot hold a parameter");
    }
  }
}

}  // namespace dsv3
