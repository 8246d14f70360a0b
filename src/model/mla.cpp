#include "model/mla.h"

#include "core/parallel.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "core/scratch.h"
#include "core/cpu.h"
#include "kernels/gemm.h"
#include "kernels/latent_attn.h"
#include "kernels/mla_absorb.h"
#include "kernels/norm.h"
#include "kernels/softmax.h"

namespace dsv3 {
namespace {

// C [M,N] (ldc) = A [M,K] (lda) · op(B); op(B) = Bᵀ when trans_b (B stored [N,K]).
void matmul(float* C, int64_t ldc, const float* A, int64_t lda, const float* B, int64_t ldb,
            bool trans_b, int64_t M, int64_t N, int64_t K, bool accumulate, int threads) {
  GemmF32 g;
  g.M = M; g.N = N; g.K = K;
  g.A = A; g.lda = lda;
  g.B = B; g.ldb = ldb; g.trans_b = trans_b;
  g.C = C; g.ldc = ldc; g.accumulate = accumulate;
  gemm_f32(g, threads);
}

// Query rows per attention chunk so that the score block stays around 32 MB.
int64_t chunk_rows(int64_t rows_per_token, int64_t S) {
  const int64_t budget = (int64_t(32) << 20) / int64_t(sizeof(float));
  return std::max<int64_t>(1, budget / std::max<int64_t>(1, rows_per_token * S));
}

void attention_naive(float* o, const float* q, int64_t T, int64_t p0, const float* cache,
                     const MlaLayer& L, const MlaContext& ctx, MlaScratch& s) {
  const ModelConfig& c = *ctx.c;
  const int64_t nh = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim;
  const int64_t dv = c.v_head_dim, dq = c.qk_head_dim(), R = mla_cache_row(c);
  const int64_t S = p0 + T, dkv = dn + dv;
  // K_nope and V of every position, from the cached latent: [S, heads, nope + v].
  float* kvb = grow(s.kvb, S * nh * dkv);
  linear_forward(kvb, nh * dkv, cache, R, S, L.w->kv_b_proj, s.lin, false, ctx.threads);
  const int64_t tc = chunk_rows(1, S);
  float* scores = grow(s.scores, std::min(tc, T) * S);
  int32_t* valid = grow(s.valid, T);
  for (int64_t t = 0; t < T; ++t) valid[t] = int32_t(p0 + t + 1);
  for (int64_t h = 0; h < nh; ++h) {
    for (int64_t t0 = 0; t0 < T; t0 += tc) {
      const int64_t m = std::min(tc, T - t0);
      const float* qh = q + t0 * nh * dq + h * dq;
      // scores = q_nope·k_noneᵀ + q_pe·k_peᵀ   [m, S]
      matmul(scores, S, qh, nh * dq, kvb + h * dkv, nh * dkv, true, m, S, dn, false, ctx.threads);
      matmul(scores, S, qh + dn, nh * dq, cache + c.kv_lora_rank, R, true, m, S, dr, true,
             ctx.threads);
      softmax_forward(scores, scores, m, S, ctx.softmax_scale, valid + t0, ctx.threads);
      // o_h = P · V_h   [m, v]
      matmul(o + t0 * nh * dv + h * dv, nh * dv, scores, S, kvb + h * dkv + dn, nh * dkv, false,
             m, dv, S, false, ctx.threads);
    }
  }
}

// Above this many tokens the absorbed form dequantises each head's W_UK / W_UV slice to F32 and
// runs gemm_f32 instead of kernels/mla_absorb.h: `dsv3 bench absorb` (DeepSeek-V3 shape, FP8,
// CPU time) measured the slice kernels 3.9x faster at T=1, 2.5x at T=4, 1.2x at T=16, 0.96x
// at T=32, 0.75x at T=64 (the kernels re-read the slice per 4 tokens; the GEMM amortises its
// copy over all T).
constexpr int64_t kAbsorbDequantMinT = 24;

// Up to this many query rows (T·heads) attention_absorbed uses kernels/latent_attn.h instead of
// score GEMM + softmax + P·V GEMM. Measured (1 thread, 16 rotating caches so each call reads
// from memory, medians of 15): bench-v3-1b shape (R 320, dc 256, S 8192) kernel/GEMM speed-up
// 1.9x at 8 rows, 1.25x at 32, 1.13-1.2x at 64, 0.93-0.98x at 128; DeepSeek-V3 shape (R 576,
// dc 512, S 4096) 1.54x at 16, 1.12x at 64, 0.91x at 128. With many rows both are bound by
// the same FLOPs and the packed GEMM's larger register tiles win.
constexpr int64_t kLatentAttnMaxRows = 64;

// Rows per slice-kernel pass (mla_absorb.h: each weight slice is read once per 4 rows); row
// chunks of the batched form are multiples of it.
constexpr int64_t kAbsorbRows = 4;

// The absorbed forms read kv_b_proj through the slice kernels inside parallel regions, where
// a thrown error would terminate: its dtype is checked before them.
void check_kv_b(const Weight& w) {
  DSV3_CHECK(w.w.dtype == DType::F32 || w.w.dtype == DType::BF16 || w.w.dtype == DType::F16 ||
                 w.fp8(),
             "kv_b_proj of dtype ", dtype_name(w.w.dtype), " is not supported");
}

// The weight side of a kernels/mla_absorb.h call on rows [r0, r0 + rows) of kv_b_proj.
MlaAbsorb absorb_params(const Weight& w, int64_t T, int64_t r0, int64_t rows) {
  MlaAbsorb p;
  p.T = T; p.rows = rows; p.K = linear_in(w); p.r0 = r0;
  p.dtype = w.w.dtype; p.w = w.w.data; p.ldw = p.K;
  if (w.fp8()) { p.scale = w.scale.ptr<float>(); p.ld_scale = w.scale.shape[1]; }
  return p;
}

// Rows [0, S) of a cache as one contiguous F32 [S, R] block: the block itself when contiguous
// F32, else a decoded copy in s.gather (only the GEMM forms, many rows per call, need that).
const float* contiguous_rows(const LatentCache& lc, int64_t S, int64_t R, MlaScratch& s) {
  if (!lc.table && lc.dtype == CacheDtype::F32) return reinterpret_cast<const float*>(lc.base);
  float* g = grow(s.gather, S * R);
  for (int64_t p = 0; p < S; ++p) cache_decode_row(g + p * R, lc.row(p), R, lc.dtype);
  return g;
}

// The fields of a kernels/latent_attn.h call that say where lc's rows are.
void set_cache(LatentAttn& a, const LatentCache& lc) {
  a.cache = lc.base;
  a.dtype = lc.dtype;
  a.block_table = lc.table;
  a.block_rows = lc.block_rows;
  a.block_stride = lc.block_stride;
}

// lc: the sequence's cache, rows [0, p0) held, [p0, p0 + T) just written.
void attention_absorbed(float* o, const float* q, int64_t T, int64_t p0, const LatentCache& lc,
                        const MlaLayer& L, const MlaContext& ctx, MlaScratch& s) {
  const ModelConfig& c = *ctx.c;
  const int64_t nh = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim;
  const int64_t dv = c.v_head_dim, dq = c.qk_head_dim(), dc = c.kv_lora_rank;
  const int64_t R = mla_cache_row(c), S = p0 + T, dkv = dn + dv;
  const Weight& wkv_b = L.w->kv_b_proj;
  const int nt = resolve_threads(ctx.threads);
  check_kv_b(wkv_b);
  float* qcat = grow(s.qcat, T * nh * R);  // [T, heads, kv_lora + rope]
  float* olat = grow(s.olat, T * nh * dc);  // [T, heads, kv_lora]

  // q_lat[t,h,:] = q_nope[t,h,:] · W_UK_h, W_UK_h = kv_b_proj rows [h·(nope+v), +nope), read in
  // place (kernels/mla_absorb.h: decoded in registers, no F32 copy of the slice).
  const bool dequant = T > kAbsorbDequantMinT;
  if (dequant && s.per_thread.size() < size_t(nt)) s.per_thread.resize(size_t(nt));
  parallel_region(std::min<int64_t>(nt, nh), [&](Team& team) { team.for_static(nh, [&](int64_t h) {
    if (dequant) {
      float* wbuf = grow(s.per_thread[size_t(team.tid())], std::max(dn, dv) * dc);
      dequantize_rows(wbuf, wkv_b, h * dkv, dn);  // W_UK_h [nope, kv_lora]
      matmul(qcat + h * R, nh * R, q + h * dq, nh * dq, wbuf, dc, false, T, dc, dn, false, 1);
    } else {
      MlaAbsorb p = absorb_params(wkv_b, T, h * dkv, dn);
      p.x = q + h * dq; p.ldx = nh * dq;   // q_nope of head h  [T, nope]
      p.y = qcat + h * R; p.ldy = nh * R;  // q_lat of head h   [T, kv_lora]
      slice_xw(p);
    }
    for (int64_t t = 0; t < T; ++t)
      std::memcpy(qcat + (t * nh + h) * R + dc, q + t * nh * dq + h * dq + dn,
                  size_t(dr) * sizeof(float));
  }); });

  // Attention over the latent cache. Decode-sized steps: kernels/latent_attn.h reads each
  // cache row once for all T·heads rows; the GEMM form packs the whole cache (the B operand)
  // twice per call, which only pays off with many rows.
  // Without AVX-512 latent_attention is its scalar double twin: the GEMMs are faster there.
  if (T * nh <= kLatentAttnMaxRows && active_isa() == Isa::Avx512) {
    int32_t* valid = grow(s.valid, T * nh);  // [T, heads]
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < nh; ++h) valid[t * nh + h] = int32_t(p0 + t + 1);
    LatentAttn a;
    a.o = olat; a.ldo = dc;
    a.q = qcat; a.ldq = R;
    set_cache(a, lc);
    a.valid_len = valid;
    a.scale = ctx.softmax_scale; a.M = T * nh; a.S = S; a.dc = dc; a.R = R;
    latent_attention(a, ctx.threads);
  } else {  // all heads of a token as rows of one GEMM
    const float* cache = contiguous_rows(lc, S, R, s);
    const int64_t tc = chunk_rows(nh, S);
    float* scores = grow(s.scores, std::min(tc, T) * nh * S);
    int32_t* valid = grow(s.valid, std::min(tc, T) * nh);
    for (int64_t t0 = 0; t0 < T; t0 += tc) {
      const int64_t m = std::min(tc, T - t0), rows = m * nh;
      for (int64_t t = 0; t < m; ++t)
        for (int64_t h = 0; h < nh; ++h) valid[t * nh + h] = int32_t(p0 + t0 + t + 1);
      matmul(scores, S, qcat + t0 * nh * R, R, cache, R, true, rows, S, R, false, ctx.threads);
      softmax_forward(scores, scores, rows, S, ctx.softmax_scale, valid, ctx.threads);
      matmul(olat + t0 * nh * dc, dc, scores, S, cache, R, false, rows, dc, S, false,
             ctx.threads);
    }
  }

  // o[t,h,:] = o_lat[t,h,:] · W_UV_hᵀ, W_UV_h = kv_b_proj rows [h·(nope+v) + nope, +v).
  parallel_region(std::min<int64_t>(nt, nh), [&](Team& team) { team.for_static(nh, [&](int64_t h) {
    if (dequant) {
      float* wbuf = grow(s.per_thread[size_t(team.tid())], std::max(dn, dv) * dc);
      dequantize_rows(wbuf, wkv_b, h * dkv + dn, dv);  // W_UV_h [v, kv_lora]
      matmul(o + h * dv, nh * dv, olat + h * dc, nh * dc, wbuf, dc, true, T, dv, dc, false, 1);
    } else {
      MlaAbsorb p = absorb_params(wkv_b, T, h * dkv + dn, dv);
      p.x = olat + h * dc; p.ldx = nh * dc;  // o_lat of head h  [T, kv_lora]
      p.y = o + h * dv; p.ldy = nh * dv;     // o of head h      [T, v]
      slice_xwt(p);
    }
  }); });
}

// True when attention_absorbed of this sequence runs the slice kernels and the latent
// kernel (a decode-sized step): those sequences attend together in attention_decode_batch.
bool decode_sized(int64_t T, int64_t nh) {
  return T <= kAbsorbDequantMinT && T * nh <= kLatentAttnMaxRows && active_isa() == Isa::Avx512;
}

// attention_absorbed for several decode-sized sequences (decode_sized) in three parallel
// regions instead of three per sequence, and with each weight slice read once per 4 rows of
// the whole batch instead of once per sequence: the sequences' rows are gathered, each head's
// q absorption runs over all of them in one slice_xw call (likewise o), and one
// latent_attention_batch attends every sequence over its own cache. A row's arithmetic is
// exactly that of attention_absorbed on its sequence alone — the slice kernels compute each
// row the same whatever the rows beside it (mla_absorb.h: groups of ≤ 4 tokens, the same
// per-row sums), the latent kernel splits each call as alone — so a token's result does not
// depend on the batch. q, o: the batch's [rows, heads, ·]; idx: the sequences (into seqs).
void attention_decode_batch(float* o, const float* q, const MlaSeq* seqs, const int* idx, int n,
                            const MlaLayer& L, const MlaContext& ctx, MlaScratch& s) {
  const ModelConfig& c = *ctx.c;
  const int64_t nh = c.num_attention_heads, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim;
  const int64_t dv = c.v_head_dim, dq = c.qk_head_dim(), dc = c.kv_lora_rank;
  const int64_t R = mla_cache_row(c), dkv = dn + dv;
  const Weight& wkv_b = L.w->kv_b_proj;
  const int nt = resolve_threads(ctx.threads);
  check_kv_b(wkv_b);
  // Rows b0[j] .. b0[j] + T of the gathered arrays belong to sequence idx[j].
  int64_t* b0 = grow(s.decode_row, int64_t(n) + 1);
  b0[0] = 0;
  for (int j = 0; j < n; ++j) b0[j + 1] = b0[j] + seqs[idx[j]].T;
  const int64_t rows = b0[n];
  float* qd = grow(s.gather, rows * nh * std::max(dq, dv));  // q rows in, then o rows out
  float* qcat = grow(s.qcat, rows * nh * R);
  float* olat = grow(s.olat, rows * nh * dc);
  int32_t* valid = grow(s.valid, rows * nh);
  for (int j = 0; j < n; ++j) {
    const MlaSeq& sq = seqs[idx[j]];
    std::memcpy(qd + b0[j] * nh * dq, q + sq.r0 * nh * dq, size_t(sq.T * nh * dq) * sizeof(float));
  }
  // Work items: (head, chunk of rows); chunks only when there are more threads than heads.
  const int64_t chunks = std::min<int64_t>((nt + nh - 1) / nh, (rows + kAbsorbRows - 1) / kAbsorbRows);
  const int64_t per_chunk = ((rows + chunks - 1) / chunks + kAbsorbRows - 1) / kAbsorbRows * kAbsorbRows;
  const int64_t items = nh * chunks;

  parallel_for(items, nt, [&](int64_t k) {
    const int64_t h = k % nh, t0 = (k / nh) * per_chunk, t1 = std::min(rows, t0 + per_chunk);
    if (t0 >= t1) return;
    MlaAbsorb p = absorb_params(wkv_b, t1 - t0, h * dkv, dn);
    p.x = qd + t0 * nh * dq + h * dq; p.ldx = nh * dq;   // q_nope of head h
    p.y = qcat + t0 * nh * R + h * R; p.ldy = nh * R;    // q_lat of head h
    slice_xw(p);
    for (int64_t t = t0; t < t1; ++t)
      std::memcpy(qcat + (t * nh + h) * R + dc, qd + t * nh * dq + h * dq + dn,
                  size_t(dr) * sizeof(float));
  });

  s.calls.assign(size_t(n), LatentAttn{});
  for (int j = 0; j < n; ++j) {
    const MlaSeq& sq = seqs[idx[j]];
    for (int64_t t = 0; t < sq.T; ++t)
      for (int64_t h = 0; h < nh; ++h) valid[(b0[j] + t) * nh + h] = int32_t(sq.p0 + t + 1);
    LatentAttn& a = s.calls[size_t(j)];
    a.o = olat + b0[j] * nh * dc; a.ldo = dc;
    a.q = qcat + b0[j] * nh * R; a.ldq = R;
    set_cache(a, sq.cache);
    a.valid_len = valid + b0[j] * nh;
    a.scale = ctx.softmax_scale; a.M = sq.T * nh; a.S = sq.p0 + sq.T; a.dc = dc; a.R = R;
  }
  latent_attention_batch(s.calls.data(), n, ctx.threads);

  float* od = qd;  // the gathered q rows are spent: o rows [rows, heads, v]
  parallel_for(items, nt, [&](int64_t k) {
    const int64_t h = k % nh, t0 = (k / nh) * per_chunk, t1 = std::min(rows, t0 + per_chunk);
    if (t0 >= t1) return;
    MlaAbsorb p = absorb_params(wkv_b, t1 - t0, h * dkv + dn, dv);
    p.x = olat + t0 * nh * dc + h * dc; p.ldx = nh * dc;  // o_lat of head h
    p.y = od + t0 * nh * dv + h * dv; p.ldy = nh * dv;    // o of head h
    slice_xwt(p);
  });
  for (int j = 0; j < n; ++j) {
    const MlaSeq& sq = seqs[idx[j]];
    std::memcpy(o + sq.r0 * nh * dv, od + b0[j] * nh * dv, size_t(sq.T * nh * dv) * sizeof(float));
  }
}

}  // namespace

const YarnParams* yarn_params(const ModelConfig& c, YarnParams* y) {
  const RopeScaling& rs = c.rope_scaling;
  if (rs.type != "yarn") return nullptr;
  y->factor = rs.factor;
  y->original_max_position_embeddings = rs.original_max_position_embeddings;
  y->beta_fast = rs.beta_fast;
  y->beta_slow = rs.beta_slow;
  y->mscale = rs.mscale;
  y->mscale_all_dim = rs.mscale_all_dim;
  return y;
}

void mla_forward(float* out, const float* x, int64_t T, int64_t p0, float* cache, const MlaLayer& L,
                 const MlaContext& ctx, AttnForm form, MlaScratch& s) {
  int64_t off[2];
  const LinearBatch lb = LinearBatch::single(off, T, ctx.threads);
  const MlaSeq seq = MlaSeq::single(T, p0, form, LatentCache::contiguous(cache, CacheDtype::F32, mla_cache_row(*ctx.c)));
  mla_forward_batch(out, x, &seq, 1, L, ctx, lb, s);
}

void mla_forward_batch(float* out, const float* x, const MlaSeq* seqs, int n_seqs,
                       const MlaLayer& L, const MlaContext& ctx, const LinearBatch& lb,
                       MlaScratch& s) {
  const ModelConfig& c = *ctx.c;
  const AttentionWeights& w = *L.w;
  const int64_t H = c.hidden_size, nh = c.num_attention_heads, dq = c.qk_head_dim();
  const int64_t dn = c.qk_nope_head_dim, dc = c.kv_lora_rank, R = mla_cache_row(c);
  const int64_t dv = c.v_head_dim, T = lb.rows();
  const float eps = float(c.rms_norm_eps);
  int32_t* pos = grow(s.pos, T);
  for (int i = 0; i < n_seqs; ++i) {
    const MlaSeq& q = seqs[i];
    DSV3_ASSERT(q.r0 == lb.off[i] && q.T == lb.off[i + 1] - lb.off[i]);
    DSV3_ASSERT(q.p0 + q.T <= ctx.rope.n_pos);
    for (int64_t t = 0; t < q.T; ++t) pos[q.r0 + t] = int32_t(q.p0 + t);
  }

  // Queries [T, heads, nope + rope], q_pe rotated. (Row-wise from here to the attention: norms
  // and RoPE treat each row alone, the linears as lb says.)
  float* q = grow(s.q, T * nh * dq);
  if (c.has_q_lora()) {
    const int64_t r = c.q_lora_rank;
    float* qa = grow(s.qa, T * r);
    lb.run(qa, r, x, H, w.q_a_proj, s.lin);
    rmsnorm_forward(qa, r, nullptr, qa, r, L.q_a_norm, T, r, eps, ctx.threads);
    lb.run(q, nh * dq, qa, r, w.q_b_proj, s.lin);
  } else {
    lb.run(q, nh * dq, x, H, w.q_proj, s.lin);
  }
  rope_forward(q + dn, nh * dq, dq, q + dn, nh * dq, dq, pos, T, nh, ctx.rope, ctx.threads);

  // [c_kv ; k_pe] -> the new cache rows: c normalised, k_pe rotated; then into each cache,
  // and rounded in place to what the cache holds, so that attending over `rows` (the naive
  // form of a prefill) and over the cache (every later step) see the same values.
  float* kv = grow(s.kv, T * R);
  lb.run(kv, R, x, H, w.kv_a_proj_with_mqa, s.lin);
  float* rows = grow(s.rows, T * R);
  rmsnorm_forward(rows, R, nullptr, kv, R, L.kv_a_norm, T, dc, eps, ctx.threads);
  rope_forward(rows + dc, R, 0, kv + dc, R, 0, pos, T, 1, ctx.rope, ctx.threads);
  for (int i = 0; i < n_seqs; ++i) {
    const MlaSeq& sq = seqs[i];
    for (int64_t t = 0; t < sq.T; ++t)
      cache_round_row(sq.cache.row(sq.p0 + t), rows + (sq.r0 + t) * R, R, sq.cache.dtype);
  }

  // Attention, per sequence over its own cache: o [T, heads, v]. Decode-sized sequences in
  // the absorbed form together (attention_decode_batch: the same arithmetic, fewer regions).
  float* o = grow(s.o, T * nh * dv);
  auto form_of = [&](const MlaSeq& sq) {
    if (sq.form != AttnForm::Auto) return sq.form;
    return sq.p0 == 0 && sq.T > 1 ? AttnForm::Naive : AttnForm::Absorbed;
  };
  std::vector<char>& batched = s.batched;
  batched.assign(size_t(n_seqs), 0);
  s.decode.clear();
  for (int i = 0; i < n_seqs; ++i)
    if (form_of(seqs[i]) == AttnForm::Absorbed && decode_sized(seqs[i].T, nh)) s.decode.push_back(i);
  if (s.decode.size() > 1) {
    attention_decode_batch(o, q, seqs, s.decode.data(), int(s.decode.size()), L, ctx, s);
    for (int i : s.decode) batched[size_t(i)] = 1;
  }
  for (int i = 0; i < n_seqs; ++i) {
    const MlaSeq& sq = seqs[i];
    if (batched[size_t(i)]) continue;
    const AttnForm form = form_of(sq);
    const float* qs = q + sq.r0 * nh * dq;
    float* os = o + sq.r0 * nh * dv;
    if (form == AttnForm::Naive) {
      // The naive form reads rows [0, S) contiguously: this call's own rows from an empty
      // cache, else the cache (gathered when paged).
      const float* cache =
          sq.p0 == 0 ? rows + sq.r0 * R : contiguous_rows(sq.cache, sq.p0 + sq.T, R, s);
      attention_naive(os, qs, sq.T, sq.p0, cache, L, ctx, s);
    } else {
      attention_absorbed(os, qs, sq.T, sq.p0, sq.cache, L, ctx, s);
    }
  }
  lb.run(out, H, o, nh * dv, w.o_proj, s.lin);
}

}  // namespace dsv3
