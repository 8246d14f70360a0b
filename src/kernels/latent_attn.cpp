// Latent-cache decode attention: argument checks, the split of positions over threads and
// the log-sum-exp merge of the per-thread partials (kernels/latent_attn.h).
#include "kernels/latent_attn.h"

#include "core/parallel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"
#include "core/cpu.h"

namespace dsv3 {
namespace {

// A thread's share must pay for the fork/join and the merge: at least kMinWorkPerThread
// row-positions (M · positions: the work grows with the rows, T · heads) and at least
// kMinPositionsPerThread positions. Before, any S < 512 ran on one thread whatever M.
// Measured at S = 200, dc 256, R 288 (µs, one thread → two, the other core busy): M = 16
// 46 → 36, M = 24 71 → 50, M = 32 93 → 65; M = 8 (one decode token of 8 heads) stays on one.
constexpr int64_t kMinWorkPerThread = 1024;
constexpr int64_t kMinPositionsPerThread = 32;

void check_args(const LatentAttn& a) {
  DSV3_CHECK(a.M >= 0 && a.S >= 0 && a.dc >= 0 && a.R >= 0, "latent_attention: negative dimension",
             " M ", a.M, " S ", a.S, " dc ", a.dc, " R ", a.R);
  DSV3_CHECK(a.dc <= a.R, "latent_attention: dc ", a.dc, " > R ", a.R);
  DSV3_CHECK(a.scale > 0 && std::isfinite(a.scale), "latent_attention: scale ", a.scale,
             " must be finite and > 0");
  if (a.M == 0) return;
  DSV3_CHECK(a.M <= 1 || a.ldq >= a.R, "latent_attention: ldq ", a.ldq, " < R ", a.R);
  DSV3_CHECK(a.M <= 1 || a.ldo >= a.dc, "latent_attention: ldo ", a.ldo, " < dc ", a.dc);
  DSV3_CHECK(a.o && a.q && a.valid_len, "latent_attention: null pointer");
  for (int64_t m = 0; m < a.M; ++m)
    DSV3_CHECK(a.valid_len[m] >= 0 && a.valid_len[m] <= a.S, "latent_attention: valid_len[", m,
               "] = ", a.valid_len[m], " outside [0, S = ", a.S, "]");
  DSV3_CHECK(a.S == 0 || a.cache, "latent_attention: null cache");
  const int64_t rb = cache_row_bytes(a.dtype, a.R);
  DSV3_CHECK(!a.block_table || (a.block_rows > 0 && a.block_stride >= a.block_rows * rb),
             "latent_attention: block_rows ", a.block_rows, " / block_stride ", a.block_stride,
             " do not describe blocks of ", rb, "-byte rows (R = ", a.R, ", ",
             cache_dtype_name(a.dtype), ")");
}

// Position s's row decoded into buf [R] (the scalar twin's view of the cache).
const float* ref_row(const LatentAttn& a, int64_t s, float* buf) {
  const int64_t rb = cache_row_bytes(a.dtype, a.R);
  const uint8_t* base = static_cast<const uint8_t*>(a.cache);
  const uint8_t* row = a.block_table ? base + int64_t(a.block_table[s / a.block_rows]) * a.block_stride +
                                           (s % a.block_rows) * rb
                                     : base + s * rb;
  cache_decode_row(buf, row, a.R, a.dtype);
  return buf;
}

// o[m] = Σ_t w_t·po_t[m] / Σ_t w_t·l_t[m], w_t = exp(mx_t[m] − max_t mx_t[m]), rows [m0, m1).
// part(t) points at thread t's partial: mx [M], l [M], po [M, dc].
void merge_rows(const LatentAttn& a, int parts, const float* scratch, int64_t stride,
                int64_t m0, int64_t m1) {
  const int64_t M = a.M, dc = a.dc;
  for (int64_t m = m0; m < m1; ++m) {
    float* o = a.o + m * a.ldo;
    float gmax = -std::numeric_limits<float>::infinity();
    for (int t = 0; t < parts; ++t) gmax = std::max(gmax, scratch[t * stride + m]);
    if (gmax == -std::numeric_limits<float>::infinity()) {  // no valid position
      std::fill(o, o + dc, 0.0f);
      continue;
    }
    float L = 0;
    bool first = true;
    for (int t = 0; t < parts; ++t) {
      const float* base = scratch + t * stride;
      if (base[m] == -std::numeric_limits<float>::infinity()) continue;
      const float w = std::exp(base[m] - gmax);
      const float* po = base + 2 * M + m * dc;
      L += w * base[M + m];
      if (first) for (int64_t j = 0; j < dc; ++j) o[j] = w * po[j];
      else for (int64_t j = 0; j < dc; ++j) o[j] += w * po[j];
      first = false;
    }
    const float inv = 1.0f / L;
    for (int64_t j = 0; j < dc; ++j) o[j] *= inv;
  }
}

// How one call is split: parts (each a contiguous block of positions [0, smax)) and the
// scratch per part. Depends on the call and the thread count only, never on other calls, so
// latent_attention_batch computes each call exactly as latent_attention would.
struct Plan {
  int64_t smax = 0, stride = 0;  // floats per part
  int parts = 1;
};

Plan plan_call(const LatentAttn& a, int threads) {
  Plan p;
  for (int64_t m = 0; m < a.M; ++m) p.smax = std::max<int64_t>(p.smax, a.valid_len[m]);
  const int64_t by_work = p.smax * a.M / kMinWorkPerThread,
                by_positions = p.smax / kMinPositionsPerThread;
  p.parts = int(std::clamp<int64_t>(std::min(by_work, by_positions), 1, threads));
  // Per part: mx [M], l [M], po [M, dc], p [M, kLatentTile], padded to 64 bytes.
  p.stride = (2 * a.M + a.M * a.dc + a.M * kLatentTile + 15) / 16 * 16;
  return p;
}

void run_part(const LatentAttn& a, const Plan& p, float* scratch, int part) {
  float* base = scratch + part * p.stride;
  int64_t s0, s1;
  split_range(p.smax, p.parts, part, &s0, &s1);
  avx512::latent_attn_partial(a, s0, s1, base, base + a.M, base + 2 * a.M,
                              base + 2 * a.M + a.M * a.dc);
}

}  // namespace

void latent_attention(const LatentAttn& a, int threads) {
  check_args(a);
  if (a.M == 0 || a.dc == 0) return;
  if (active_isa() != Isa::Avx512) return latent_attention_ref(a);
  const Plan p = plan_call(a, resolve_threads(threads));
  const int nt = p.parts;
  thread_local std::vector<float> scratch;
  if (scratch.size() < size_t(nt * p.stride)) scratch.resize(size_t(nt * p.stride));
  float* sp = scratch.data();
  if (nt == 1) {
    run_part(a, p, sp, 0);
    merge_rows(a, 1, sp, p.stride, 0, a.M);
    return;
  }
  parallel_region(nt, [&](Team& team) {
    const int t = team.tid(), got = team.size();
    for (int part = t; part < nt; part += got) run_part(a, p, sp, part);  // got < nt when nested
    team.barrier();
    int64_t m0, m1;
    split_range(a.M, got, t, &m0, &m1);
    merge_rows(a, nt, sp, p.stride, m0, m1);
  });
}

void latent_attention_batch(const LatentAttn* calls, int n, int threads) {
  for (int i = 0; i < n; ++i) check_args(calls[i]);
  if (n == 0) return;
  if (active_isa() != Isa::Avx512) {
    for (int i = 0; i < n; ++i)
      if (calls[i].M > 0 && calls[i].dc > 0) latent_attention_ref(calls[i]);
    return;
  }
  const int nt = resolve_threads(threads);
  thread_local std::vector<Plan> plans;
  thread_local std::vector<int64_t> offs;      // [n + 1]: scratch offset of each call
  thread_local std::vector<std::pair<int, int>> items;  // (call, part)
  plans.resize(size_t(n));
  offs.assign(size_t(n) + 1, 0);
  items.clear();
  for (int i = 0; i < n; ++i) {
    const LatentAttn& a = calls[i];
    if (a.M == 0 || a.dc == 0) {
      plans[size_t(i)].parts = 0;
    } else {
      plans[size_t(i)] = plan_call(a, nt);
      for (int part = 0; part < plans[size_t(i)].parts; ++part) items.emplace_back(i, part);
    }
    offs[size_t(i) + 1] = offs[size_t(i)] + plans[size_t(i)].parts * plans[size_t(i)].stride;
  }
  thread_local std::vector<float> scratch;
  if (scratch.size() < size_t(offs[size_t(n)])) scratch.resize(size_t(offs[size_t(n)]));
  // Plain pointers: the thread_local vectors are this thread's; the region's other threads
  // must read these, not their own (empty) ones.
  float* sp = scratch.data();
  const Plan* pl = plans.data();
  const int64_t* of = offs.data();
  const std::pair<int, int>* it = items.data();
  const int64_t n_items = int64_t(items.size());
  // One region for every call: the partials spread over the threads, then the merges.
  parallel_region(nt, [&](Team& team) {
    team.for_dynamic(n_items, [&](int64_t k) {
      const auto [i, part] = it[k];
      run_part(calls[i], pl[i], sp + of[i], part);
    });
    team.for_dynamic(n, [&](int64_t i) {
      if (pl[i].parts > 0) merge_rows(calls[i], pl[i].parts, sp + of[i], pl[i].stride, 0, calls[i].M);
    });
  });
}

void latent_attention_ref(const LatentAttn& a) {
  thread_local std::vector<double> z, acc;  // [S] scaled scores, [dc] Σ p·c of one row
  thread_local std::vector<float> rowbuf;   // [R] one decoded cache row
  if (z.size() < size_t(a.S)) z.resize(size_t(a.S));
  if (acc.size() < size_t(a.dc)) acc.resize(size_t(a.dc));
  if (rowbuf.size() < size_t(a.R)) rowbuf.resize(size_t(a.R));
  float* buf = rowbuf.data();
  for (int64_t m = 0; m < a.M; ++m) {
    const float* q = a.q + m * a.ldq;
    float* o = a.o + m * a.ldo;
    const int64_t n = a.valid_len[m];
    if (n == 0) {
      std::fill(o, o + a.dc, 0.0f);
      continue;
    }
    double zmax = -std::numeric_limits<double>::infinity();
    for (int64_t s = 0; s < n; ++s) {
      const float* c = ref_row(a, s, buf);
      double d = 0;
      for (int64_t r = 0; r < a.R; ++r) d += double(q[r]) * double(c[r]);
      z[size_t(s)] = double(a.scale) * d;
      zmax = std::max(zmax, z[size_t(s)]);
    }
    double L = 0;
    for (int64_t s = 0; s < n; ++s) L += (z[size_t(s)] = std::exp(z[size_t(s)] - zmax));
    std::fill(acc.begin(), acc.begin() + a.dc, 0.0);
    for (int64_t s = 0; s < n; ++s) {
      const float* c = ref_row(a, s, buf);
      for (int64_t j = 0; j < a.dc; ++j) acc[size_t(j)] += z[size_t(s)] * double(c[j]);
    }
    for (int64_t j = 0; j < a.dc; ++j) o[j] = float(acc[size_t(j)] / L);
  }
}

}  // namespace dsv3
