// Decode attention over the MLA latent cache (absorbed form, DeepSeek-V2 §2.1.2), flash-
// decoding style: every cache row is read once per call for all M query rows.
//
//   z[m, s]    = scale · q[m, :R] · cache[s, :R]                    (s < valid_len[m])
//   o[m, :dc]  = Σ_s softmax_s(z[m, ·]) · cache[s, :dc]             (o = 0 when valid_len[m] = 0)
//
// q rows are [q_lat ; q_pe] (R = kv_lora_rank + qk_rope_head_dim), cache rows [c_KV ; k_pe],
// o is o_lat (dc = kv_lora_rank columns). For a decode step M = T·heads with T ≤ 4 tokens;
// causal masking is valid_len[m] = p0 + t + 1 for the rows of token t.
//
// Fast path (AVX-512): the valid positions [0, max valid_len) are split into one contiguous
// block per thread; each thread walks its block in tiles of kLatentTile positions keeping, for all M
// rows, a running max, a running sum and an unnormalised partial o (online softmax: a new max
// rescales sum and o by exp(old − new), so no exp ever overflows). The partials are merged
// with log-sum-exp weights exp(max_t − max). F32 throughout, ≤ 2 ulp vector exp.
// Error (first order, u = 2^-24), per output o[m, j], with A = max_s Σ_r |q[m,r]·cache[s,r]|
// and C_j = max_s |cache[s, j]| over the valid s:
//   |o − o_exact| ≤ (2·scale·R·A + S + 16)·u·2·C_j
// (a score error δ changes each weight by the relative factor e^{±δ}, which moves the
// normalised average by ≤ 2δ·C_j; F32 exp ≤ 2 ulp, the rescalings and the merge add a few
// roundings; the Σ of ≤ S terms adds S·u relative to Σ p·|c| ≤ C_j).
// The scalar twin (*_ref) is a plain two-pass softmax in double, rounded once at the end.
//
// Paged caches (serve/kv_pool.h) pass a block table; the arithmetic is the same as over the
// same rows stored contiguously (only the address of each row changes).
//
// Stored rows may be F32, BF16 or FP8 with a per-row scale (kernels/latent_cache.h); cache
// below means their decoded values (cache_decode_row). F32 rows take the F32 arithmetic above.
// BF16 and FP8 rows are never widened to F32: the fast path multiplies in BF16 (VDPBF16PS):
//   - scores against the stored BF16 values (FP8: the E4M3 codes, exact in BF16, the row's
//     scale applied to the score) with q = q_hi + q_lo, two BF16 parts (2^-16 relative);
//   - P·V with each weight times the row's scale rounded to BF16 (≤ 2^-8 relative; FlashMLA's
//     P is BF16 too); the sum l is of the unrounded weights.
//   |o − o_exact| ≤ (2·scale·(2R + 260)·A + S + 16)·u·2·C_j + 2^-8·C_j
// (the P rounding moves o by ≤ 2^-8·Σ p·|c| / l ≤ 2^-8·C_j; VDPBF16PS rounds twice per pair;
// it also treats inputs below 2^-126 as 0: negligible while the cached values and weights
// are far above that, |cache| ≫ 2^-118 — a column of values all ≲ 1e-36 could come out 0).
// That is the size of the rounding the BF16 cache already makes to each value (2^-8); the
// oracle models' log-prob error with a BF16 cache did not change measurably with it
// (docs/long-context.md, "The latent cache").
//
// No allocation per call beyond a thread_local scratch that grows to the largest call.
#pragma once
#include <cstdint>

#include "kernels/latent_cache.h"

namespace dsv3 {

struct LatentAttn {
  float* o = nullptr; int64_t ldo = 0;        // o_lat [M, dc] (row stride ldo ≥ dc)
  const float* q = nullptr; int64_t ldq = 0;  // [M, R] (row stride ldq ≥ R)
  const void* cache = nullptr;                // S stored rows of rb = cache_row_bytes(dtype, R)
  CacheDtype dtype = CacheDtype::F32;         // bytes, contiguous (block_table null), or the
                                              // pool a block table points into:
  const int32_t* block_table = nullptr;       // position s at cache + block_table[s / block_rows]
  int64_t block_rows = 0, block_stride = 0;   //   · block_stride + (s % block_rows) · rb (bytes)
  const int32_t* valid_len = nullptr;         // [M]; row m attends to [0, valid_len[m]) ⊆ [0, S)
  float scale = 1.0f;                          // softmax scale (> 0)
  int64_t M = 0, S = 0, dc = 0, R = 0;         // dc ≤ R
};

// Checks arguments (DSV3_CHECK), then AVX-512 when active_isa() is Avx512, else the scalar
// twin. threads: resolve_threads() semantics (0 = default).
void latent_attention(const LatentAttn& a, int threads = 0);
void latent_attention_ref(const LatentAttn& a);
// n independent calls (the decode rows of several sequences, each over its own cache) in one
// parallel region: every call's result is bit-identical to latent_attention(calls[i], threads)
// — the same split of its positions into parts and the same merge — only which thread
// computes a part changes. Spares n − 1 fork/joins and keeps both cores busy when each call
// alone is too small to split.
void latent_attention_batch(const LatentAttn* calls, int n, int threads = 0);

namespace avx512 {
// latent_attn_avx512.cpp. Partial attention of all M rows over positions [s0, s1):
//   mx[m]  = max scaled score (−inf when row m has no valid position in the block),
//   l[m]   = Σ exp(z − mx[m]),  po[m·dc + j] = Σ exp(z − mx[m]) · cache[s, j].
// p: scratch of M·kLatentTile floats. BF16 and FP8 rows use a thread_local scratch of their
// own (q's BF16 parts, the tile's pairs, the partial o in lane order).
void latent_attn_partial(const LatentAttn& a, int64_t s0, int64_t s1, float* mx, float* l,
                         float* po, float* p);
}  // namespace avx512

inline constexpr int64_t kLatentTile = 32;  // positions per online-softmax step (fast path)

}  // namespace dsv3
