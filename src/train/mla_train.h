// Multi-head Latent Attention for training (SPEC §1, report §2.1.1): the naive form of
// model/mla.h (K, V materialised per head) over B sequences of T tokens, causal within each
// sequence, RoPE position t, with a forward that saves what the hand-written backward needs.
//
//   q      = q_b_proj(q_a_layernorm(q_a_proj(x)))   or q_proj(x)        [M, heads, nope+rope]
//   [c;k]  = kv_a_proj_with_mqa(x)                                        [M, kv_lora + rope]
//   kv     = kv_b_proj(kv_a_layernorm(c))                                 [M, heads, nope+v]
//   q_pe, k_pe rotated (interleaved pairs); k_pe is shared by all heads
//   P      = causal_softmax((q_nope·k_nopeᵀ + q_pe·k_peᵀ) · softmax_scale) per (sequence, head)
//   out    = o_proj(P · V)
//
// Recompute (report §3.3): the RMSNorm outputs and the up-projections (q from q_b_proj /
// q_proj, k_nope / v from kv_b_proj) are NOT saved; backward rebuilds them from the saved
// pre-norm inputs (q_a_proj and kv_a_proj_with_mqa outputs) with the same kernels, so the
// rebuilt values are bit-identical to the forward's. Saved per layer (floats, M = B·T):
//   qa   [M, q_lora_rank]            q_a_proj output (pre-norm), when q_lora_rank > 0
//   kv   [M, kv_lora + rope]         kv_a_proj_with_mqa output (pre-norm, k_pe unrotated)
//   rstd_q, rstd_kv [M]              the two RMSNorms' 1/rms (what rmsnorm_backward reads)
//   o    [M, heads·v]                attention output, the input of o_proj (its wgrad needs it);
//                                    under FP8 training in E5M6 1x128 tiles with power-of-two
//                                    scales, as the report caches it (train/act_cache.h)
//   P    per (sequence, head) the causal part of the probabilities, in row chunks of
//        kChunk: chunk k holds rows [k·kChunk, t1) × columns [0, t1) — about
//        T·(T + kChunk)/2 floats instead of T².
// P is saved rather than recomputed: recomputing it costs another q·kᵀ GEMM (K = nope+rope,
// the largest attention GEMM) plus the softmax per step, ~15% of the layer's FLOPs at the
// bench shape, while its memory at B·T = 1024 is B·heads·T(T+64)/2·4 bytes: T = 1024 → 2.1 MiB
// per head (17 MiB for 8 heads, 8.5 MiB for 4); T = 256 → 0.6 MiB per head — small next to
// a CPU's RAM for the model sizes this trainer runs. Everything saved at the bench shape
// (B·T = 1024, hidden 1024, 8 heads, q_lora 384, kv_lora 256, rope 64, v 128): 23.8 MiB per
// layer for T = 1024 (P 17 MiB, o 4 MiB, qa 1.5 MiB, kv 1.25 MiB), 11.8 MiB for T = 256.
//
// Memory is sized from (config, B, T) on first use and only grows; a step allocates nothing.
// Linear layers run in lc.prec (tlinear.h); norms, RoPE and the softmax in F32. The
// attention's own GEMMs (scores, P·V and their backward) run in F32 under F32 training and
// with BF16 operands and F32 accumulation under BF16 and FP8 training: q, k, v, dO and each
// chunk of P and dS rounded to BF16 — what PyTorch's bf16 autocast does to the same matmuls,
// and the report's BF16 for attention in FP8 training (§3.3.1). P is saved in F32.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/rope.h"
#include "model/config.h"
#include "model/weights.h"
#include "train/act_cache.h"
#include "train/tlinear.h"

namespace dsv3 {

struct MlaTrainSaved {
  int64_t B = 0, T = 0;
  std::vector<float> qa;       // [M, q_lora_rank]   pre-norm (q_lora_rank > 0)
  std::vector<float> rstd_q;   // [M]
  std::vector<float> kv;       // [M, kv_lora + rope] pre-norm c, unrotated k_pe
  std::vector<float> rstd_kv;  // [M]
  ActCache o;                  // [M, heads·v]; E5M6 under FP8 training (act_cache.h)
  std::vector<float> P;        // [B, heads, mla_train_p_floats(T)] causal chunks
  size_t bytes() const;        // what is held now
};

struct MlaTrainScratch {
  TLinearScratch lin;
  std::vector<float> qn;       // [M, q_lora_rank]  q_a_layernorm output (recomputed)
  std::vector<float> q;        // [M, heads, nope + rope]
  std::vector<float> kvn;      // [M, kv_lora]      kv_a_layernorm output (recomputed)
  std::vector<float> kpe;      // [M, rope]         rotated k_pe
  std::vector<float> kvb;      // [M, heads, nope + v]
  std::vector<float> d_o;      // [M, heads·v]
  std::vector<float> ow;       // [M, heads·v]      o while encoded / once decoded
  std::vector<float> dq;       // [M, heads, nope + rope]
  std::vector<float> dkvb;     // [M, heads, nope + v]
  std::vector<float> dkpe_h;   // [B, heads, T, rope]  per-head k_pe gradients, summed after
  std::vector<float> dkv;      // [M, kv_lora + rope]
  std::vector<float> dqa;      // [M, q_lora_rank]
  std::vector<int32_t> pos, valid;             // [T]
  std::vector<std::vector<float>> per_thread;  // dP chunk [kChunk, T]
  // BF16 / FP8 training: the attention GEMMs' operands in BF16 (below).
  std::vector<uint16_t> q16, kvb16, kpe16, do16;  // s.q, s.kvb, s.kpe, s.d_o rounded
  std::vector<std::vector<uint16_t>> per_thread16;  // a P or dS chunk [kChunk, T] rounded
};

// Floats of P per (sequence, head) for T tokens.
int64_t mla_train_p_floats(int64_t T);

// x [B·T, H]: the block's normed input -> out [B·T, H] (written). rope must cover T positions.
void mla_train_forward(float* out, const float* x, int64_t B, int64_t T, const ModelConfig& c,
                       const AttentionWeights& w, const RopeTable& rope, float softmax_scale,
                       const TLinearCtx& lc, MlaTrainSaved& saved, MlaTrainScratch& s);

// dout [B·T, H] -> dx [B·T, H] (written); parameter gradients ADDED into g (same layout as w,
// F32 views). x and saved as given to / filled by the forward.
void mla_train_backward(float* dx, const float* dout, const float* x, int64_t B, int64_t T,
                        const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                        const RopeTable& rope, float softmax_scale, const TLinearCtx& lc,
                        const MlaTrainSaved& saved, MlaTrainScratch& s);

}  // namespace dsv3
